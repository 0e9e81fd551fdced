"""Devices and quantum tasks end to end: the device queue, a real device worker, priority for
the job holding a device, one job per device at a time, refusals and cancel."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from qiskit import QuantumCircuit, transpile
from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2
from qiskit.providers import JobStatus
from qiskit.quantum_info import SparsePauliOp

from app.service import DEVICE_WORKER, device_worker_command
from qhybrid import Client, Program
from qhybrid.backend import QhybridBackend
from qhybrid.codec import encode_circuits
from qhybrid.errors import Conflict, InvalidInput, NotFound
from tasks.devices.device_queue import NORMAL, PRIORITY, queued_key
from tasks.devices.quantum_tasks import QuantumTasks
from tests.conftest import RunningService, bell, wait_until, write_program

HELD = "generic_heavy_hex_27"       # not shared: a job naming it holds it
SHARED = "aer_simulator"


def run(client: Client, tmp_path: Path, source: str, device: str | None = None,
        title: str = "devices", **arguments: Any) -> Any:
    program = client.upload(Program(title=title, entrypoint="main.py",
                                    working_dir=write_program(tmp_path / title, source)))
    return client.run(program.title, arguments, device=device)


def post_task(client: Client, body: dict[str, Any]) -> requests.Response:
    return client.session.post(f"{client.url}/api/v1/quantum-tasks", json=body, timeout=60)


@contextmanager
def device_worker_stopped(service: RunningService) -> Iterator[None]:
    """Stop the device worker (its queues fill up meanwhile), then start it again."""
    proc = service.service.procs.pop(DEVICE_WORKER)
    proc.send_signal(signal.SIGTERM)    # warm shutdown: it is idle
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        yield
    finally:
        service.service._spawn(DEVICE_WORKER, device_worker_command())


# --- through the queue from a laptop ----------------------------------------------------------


def test_devices_are_listed_with_their_status(client: Client) -> None:
    backends = client.backends()
    names = [b.name for b in backends]
    assert {SHARED, "aer_statevector", "aer_density_matrix", "aer_mps", "aer_stabilizer", HELD,
            "generic_heavy_hex_127"} <= set(names)
    held = client.backend(HELD)
    assert isinstance(held, QhybridBackend) and held.num_qubits == 27
    assert held.coupling_map is not None and len(held.coupling_map.get_edges()) == 56
    status = held.device["status"]
    assert status["online"] is True and status["workers"] >= 1
    assert set(status["queue_depth"]) == {"priority", "normal"}
    assert held.device["shared"] is False and client.backend(SHARED).device["shared"] is True
    assert set(held.device["basis_gates"]) == {"cx", "id", "rz", "sx", "x"}
    with pytest.raises(NotFound, match="aer_simulator"):
        client.backend("ibm_nowhere")


def test_bell_counts_and_expectation_values_from_a_laptop(client: Client) -> None:
    ideal = client.backend(SHARED)
    job = ideal.run(bell(), shots=4000, seed_simulator=11, memory=True)
    result = job.result(timeout=60)
    counts = result.get_counts()
    assert set(counts) == {"00", "11"} and abs(counts["00"] / 4000 - 0.5) < 0.05
    assert len(result.get_memory()) == 4000 and job.status() == JobStatus.DONE
    assert result.backend_name == SHARED and result.job_id == job.job_id()

    sampler = BackendSamplerV2(backend=ideal, options={"seed_simulator": 5})
    counts = sampler.run([bell()], shots=2000).result()[0].data.meas.get_counts()
    assert set(counts) == {"00", "11"} and abs(counts["00"] / 2000 - 0.5) < 0.05

    estimator = BackendEstimatorV2(backend=ideal, options={"seed_simulator": 7})
    pubs = [(bell(measure=False), [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("ZI")])]
    zz, xx, zi = estimator.run(pubs, precision=0.02).result()[0].data.evs
    assert zz == pytest.approx(1, abs=0.06) and xx == pytest.approx(1, abs=0.06)
    assert zi == pytest.approx(0, abs=0.08)

    noisy = client.backend(HELD)
    isa = transpile(bell(), noisy, seed_transpiler=3)
    counts = BackendSamplerV2(backend=noisy).run([isa], shots=1000).result()[0].data.meas.get_counts()
    assert (counts.get("00", 0) + counts.get("11", 0)) / 1000 > 0.85

    # the task as the API shows it
    task = client._json("GET", f"/quantum-tasks/{job.job_id()}")
    assert task["status"] == "DONE" and task["device"] == SHARED and task["priority"] == "normal"
    assert task["num_circuits"] == 1 and task["shots"] == 4000 and task["job_id"] is None
    assert task["started"] <= task["ended"]
    listed = client._json("GET", "/quantum-tasks", params={"limit": 100})
    assert job.job_id() in {t["task_id"] for t in listed["quantum_tasks"]}


def test_refusals_answer_4xx_naming_the_reason(client: Client, tmp_path: Path) -> None:
    wide = QuantumCircuit(28)
    wide.measure_all()
    resp = post_task(client, {"device": HELD, "circuits": encode_circuits([wide])})
    assert resp.status_code == 400 and resp.headers["Content-Type"] == "application/problem+json"
    assert "28 qubits; device generic_heavy_hex_27 has 27" in resp.json()["detail"]
    assert resp.json()["field"] == "circuits[0]"

    resp = post_task(client, {"device": "ibm_nowhere", "circuits": encode_circuits([bell()])})
    assert resp.status_code == 400 and resp.json()["field"] == "device"
    assert HELD in resp.json()["devices"] and "aer_simulator" in resp.json()["detail"]

    big = QuantumCircuit(127, 40)   # 40 active qubits of state: about 16 TiB
    for q in range(40):
        big.sx(q)
    big.measure(range(40), range(40))
    resp = post_task(client, {"device": "generic_heavy_hex_127", "circuits": encode_circuits(big)})
    assert resp.status_code == 400 and "needs about 1.64e+04 GiB" in resp.json()["detail"]

    for body, field in [({"device": SHARED, "circuits": "not qpy"}, "circuits"),
                        ({"device": SHARED, "circuits": encode_circuits(bell()),
                          "options": {"shots": 0}}, "shots"),
                        ({"device": SHARED, "circuits": encode_circuits(bell()),
                          "options": {"meas_level": 1}}, "options"),
                        ({"device": SHARED, "circuits": encode_circuits(bell()), "x": 1}, "x")]:
        resp = post_task(client, body)
        assert resp.status_code == 400 and resp.json()["field"] == field, resp.json()

    # a job naming an unknown device is refused before anything is written
    with pytest.raises(InvalidInput, match="unknown device 'ibm_nowhere'"):
        run(client, tmp_path, "print('never')", device="ibm_nowhere")
    assert client.jobs() == []
    assert client._json("GET", "/quantum-tasks")["total"] == 0


def test_other_users_tasks_are_not_found(service: RunningService) -> None:
    alice, bob = service.client(), service.client()
    job = alice.backend(SHARED).run(bell(), shots=10)
    job.result(timeout=60)
    for method, path in [("GET", f"/quantum-tasks/{job.job_id()}"),
                         ("GET", f"/quantum-tasks/{job.job_id()}/result"),
                         ("POST", f"/quantum-tasks/{job.job_id()}/cancel")]:
        with pytest.raises(NotFound):
            bob._json(method, path)
    assert bob._json("GET", "/quantum-tasks")["total"] == 0
    with pytest.raises(NotFound):
        bob._json("GET", "/jobs/0123456789abcdef/quantum-tasks")


# --- inside a job -----------------------------------------------------------------------------

IN_JOB = """
from qiskit import QuantumCircuit
from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qhybrid import get_backend, get_job_device, save_result

bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
measured = bell.measure_all(inplace=False)
device = get_backend()                      # the job's device, through the supervisor
pm = generate_preset_pass_manager(backend=device, optimization_level=1, seed_transpiler=1)
counts = BackendSamplerV2(backend=device).run([pm.run(measured)], shots=2000).result()[0] \\
    .data.meas.get_counts()
isa = pm.run(bell)
noisy_zz = BackendEstimatorV2(backend=device).run(
    [(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))], precision=0.02).result()[0].data.evs
ideal = get_backend("aer_simulator")
evs = BackendEstimatorV2(backend=ideal, options={"seed_simulator": 3}).run(
    [(bell, [SparsePauliOp("ZZ"), SparsePauliOp("XX")])], precision=0.02).result()[0].data.evs
save_result({"device": get_job_device(), "name": device.name, "counts": counts,
             "noisy_zz": float(noisy_zz), "evs": [float(v) for v in evs]})
"""


def test_primitives_inside_a_job_through_the_supervisor(client: Client, tmp_path: Path) -> None:
    job = run(client, tmp_path, IN_JOB, device=HELD)
    result = job.result(timeout=120)
    assert result["device"] == HELD and result["name"] == HELD
    counts = result["counts"]
    assert (counts.get("00", 0) + counts.get("11", 0)) / 2000 > 0.85
    assert 0.75 < result["noisy_zz"] <= 1.0
    assert result["evs"] == pytest.approx([1, 1], abs=0.06)
    tasks = job.quantum_tasks()
    assert [t["device"] for t in tasks] == [HELD, HELD, SHARED]
    assert [t["priority"] for t in tasks] == ["priority", "priority", "normal"]
    assert all(t["status"] == "DONE" and t["job_id"] == job.job_id for t in tasks)
    assert job.queue_position() is None


# --- priority and cancel (the device worker is stopped while the queue fills) -----------------

HOLDER = """
from qiskit import QuantumCircuit, transpile
from qhybrid import get_backend, save_result

device = get_backend()
qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
isa = transpile(qc, device, seed_transpiler=1)
runs = [device.run(isa, shots=100, seed_simulator=i) for i in range(3)]   # all queued at once
save_result({"ids": [r.job_id() for r in runs],
             "counts": [dict(r.result().get_counts()) for r in runs]})
"""

WAITER = """
from qhybrid import get_backend
from qiskit import QuantumCircuit

qc = QuantumCircuit(1)
qc.h(0)
qc.measure_all()
runs = [get_backend("aer_simulator").run(qc, shots=10) for _ in range(2)]
for r in runs:
    r.result()
"""


def test_holding_job_goes_first_and_cancel(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    tasks = QuantumTasks(service.registry.r)
    noisy = client.backend(HELD)
    isa = transpile(bell(), noisy, seed_transpiler=1)
    with device_worker_stopped(service):
        # given standalone tasks queued first, and one canceled while queued
        standalone = [noisy.run(isa, shots=50) for _ in range(3)]
        doomed = noisy.run(isa, shots=50)
        doomed.cancel()
        assert doomed.status() == JobStatus.CANCELLED
        with pytest.raises(Conflict, match="canceled"):
            doomed.result(timeout=5)
        # when the job holding the device queues its tasks after them
        holder = run(client, tmp_path, HOLDER, device=HELD, title="holder")
        # and a job with queued tasks on a shared device is canceled
        waiter = run(client, tmp_path, WAITER, device=SHARED, title="waiter")
        mine = wait_until(lambda: len(holder.quantum_tasks()) == 3 and holder.quantum_tasks(),
                          timeout=60)
        assert all(t["status"] == "QUEUED" and t["priority"] == "priority" for t in mine)
        # the device's queues: the holder's tasks, then the others, each oldest first
        r = service.registry.r
        assert r.zrange(queued_key(HELD, PRIORITY), 0, -1) == [t["task_id"] for t in mine]
        assert r.zrange(queued_key(HELD, NORMAL), 0, -1) == [j.job_id() for j in standalone]
        status = client._json("GET", f"/devices/{HELD}")["status"]
        assert status["queue_depth"] == {"priority": 3, "normal": 3}
        assert status["held"] and status["holding_job"] == holder.job_id
        other = service.client()._json("GET", f"/devices/{HELD}")["status"]
        assert other["held"] and other["holding_job"] is None      # not theirs to see
        wait_until(lambda: len(waiter.quantum_tasks()) == 2, timeout=60)
        assert waiter.cancel()
        wait_until(lambda: waiter.status() == "CANCELED", timeout=30)
        assert [t["status"] for t in waiter.quantum_tasks()] == ["CANCELED", "CANCELED"]
    # then the device worker runs the holder's tasks first, standalone ones in their order
    result = holder.result(timeout=120)
    assert len(result["counts"]) == 3
    for job in standalone:
        assert sum(job.result(timeout=60).get_counts().values()) == 50
    ours = set(result["ids"]) | {j.job_id() for j in standalone} | {doomed.job_id()} | {
        t["task_id"] for t in waiter.quantum_tasks()}
    order = [t for t in tasks.run_order(HELD) + tasks.run_order(SHARED) if t in ours]
    assert order == result["ids"] + [j.job_id() for j in standalone]
    starts = [tasks.get(t)["started"] for t in order]
    assert starts == sorted(starts)


# --- one job per device -----------------------------------------------------------------------

HOLD_A_WHILE = """
import time
from qhybrid import get_arguments

args = get_arguments()
time.sleep(args["sleep"])
if args.get("fail"):
    raise RuntimeError("failing on purpose")
"""


def test_one_job_holds_a_device_at_a_time(client: Client, tmp_path: Path) -> None:
    # given three jobs for one device, the first failing (a holder can end any way)
    first = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="a", sleep=2.0, fail=True)
    second = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="b", sleep=0.5)
    third = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="c", sleep=0.5)
    # then the others wait QUEUED with their place in line
    assert second.queue_position() == 1 and third.queue_position() == 2
    assert second.raw["waiting_for"].startswith(f"device {HELD}")
    # and a job on a shared simulator starts at once, beside the holder
    shared = run(client, tmp_path, HOLD_A_WHILE, device=SHARED, title="d", sleep=0.1)
    assert shared.queue_position() is None
    for job in (first, second, third, shared):
        job.wait(timeout=120)
    assert shared.status() == "DONE" and shared.raw["started"] < first.raw["ended"]
    assert [j.status() for j in (first, second, third)] == ["ERROR", "DONE", "DONE"]
    spans = sorted((j.raw["started"], j.raw["ended"]) for j in (first, second, third))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert [s[0] for s in spans] == [j.raw["started"] for j in (first, second, third)]


def test_canceling_a_waiting_job_or_the_holder_moves_the_line(client: Client,
                                                              tmp_path: Path) -> None:
    holder = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="a", sleep=60.0)
    skipped = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="b", sleep=0.1)
    last = run(client, tmp_path, HOLD_A_WHILE, device=HELD, title="c", sleep=0.1)
    assert last.queue_position() == 2
    skipped.cancel()
    assert skipped.status() == "CANCELED" and last.queue_position() == 1
    wait_until(lambda: holder.status() == "RUNNING", timeout=60)
    holder.cancel()
    last.wait(timeout=60)
    assert holder.status() == "CANCELED" and last.status() == "DONE"
    assert skipped.raw["started"] is None


def test_job_workers_load_no_qiskit_when_jobs_use_devices(service: RunningService,
                                                          tmp_path: Path) -> None:
    # qiskit's compiled extension crashed a long-running job worker once; the job workers
    # leave circuits to user code and device workers, and never load it
    client = service.client()
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text(
        "from qhybrid import get_backend, save_result\n"
        "from qiskit import QuantumCircuit, transpile\n"
        "b = get_backend('aer_simulator')\n"
        "qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()\n"
        "save_result(dict(b.run(transpile(qc, b), shots=64).result().get_counts()))\n")
    counts = client.upload(Program(title="bell", entrypoint="main.py", working_dir=src)).run()
    assert set(counts.result(timeout=120)) <= {"00", "11"}
    for name in ("worker-small", "worker-medium"):
        maps = Path(f"/proc/{service.service.procs[name].pid}/maps").read_text()
        assert "_accelerate" not in maps, f"{name} loaded qiskit"
