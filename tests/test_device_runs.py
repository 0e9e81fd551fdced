"""Devices used the way Qiskit users use simulators and IBM devices, against real device
workers: Aer's own instructions and results, copies of IBM devices, the same behaviour from a
job, a distributed task, a hybrid job and local mode, device time per stage, cancel, and what a
device worker's crash or stop leaves."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from qiskit import QuantumCircuit
from qiskit.providers import JobStatus

from app.service import DEVICE_WORKER
from qhybrid import Client, Program, hybrid_job
from qhybrid.errors import Conflict, ServiceUnavailable, TaskFailed
from tasks.devices.quantum_tasks import QuantumTasks
from tests.conftest import RunningService, bell, wait_until, write_program


def probe(device: str) -> dict[str, Any]:
    """Run what a user runs on AerSimulator() on a device; the parts of its results to compare.

    Twenty small circuits and the Aer one go in one backend.run(), so in one quantum task.
    """
    import numpy as np
    from qiskit import QuantumCircuit, transpile
    from qiskit.quantum_info import random_unitary
    from qiskit_aer import AerSimulator

    from qhybrid import get_backend

    qc = QuantumCircuit(4, 4)
    qc.initialize([0, 1], 0)
    qc.h(1)
    qc.u(0.3, 0.2, 0.1, 3)
    qc.unitary(random_unitary(4, seed=1), [2, 1])
    qc.mcx([0, 1, 2], 3)
    qc.save_statevector()
    qc.measure(range(4), range(4))
    isa = transpile(qc, AerSimulator(), optimization_level=0)
    small = []
    for i in range(20):
        c = QuantumCircuit(2)
        c.rx(0.1 * i, 0)
        c.cx(0, 1)
        c.measure_all()
        small.append(c)
    backend = get_backend(device)
    job = backend.run([isa, *small], shots=200, seed_simulator=7, memory=True)
    result = job.result(timeout=300)
    state = np.asarray(result.get_statevector(0))
    return {"ops": sorted(isa.count_ops()), "counts": dict(result.get_counts(0)),
            "memory": result.get_memory(0)[:5], "state": [[z.real, z.imag] for z in state],
            "experiments": len(result.results), "method": result.results[0].metadata["method"],
            "task": job.job_id()}


PROGRAM = "from typing import Any\n" + inspect.getsource(probe) + """
from qhybrid import distribute_task, get, save_result, update_status

@distribute_task(target="small")
def in_a_task(device):
    return probe(device)

update_status("EXECUTING_QPU")
main = probe("aer_statevector")
update_status("POST_PROCESSING")
save_result({"main": main, "task": get(in_a_task("aer_statevector"))})
"""


@pytest.mark.timeout(900)
def test_a_device_works_the_same_from_a_job_a_task_a_hybrid_job_and_local_mode(
        client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given what a user runs on AerSimulator() (u3, unitary, initialize, mcx, save_statevector)
    expected = _direct()
    # when it runs on the device from a job's main code and from one of its distributed tasks
    program = client.upload(Program(title="probe", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "p", PROGRAM)))
    job = client.run(program.title)
    result = job.result(timeout=300)
    # from a hybrid job, and from a hybrid job in local mode (no service)
    hybrid = hybrid_job(device="aer_statevector", client=client)(probe)("aer_statevector")
    from_hybrid = hybrid.result(timeout=300)
    monkeypatch.setenv("QHYBRID_URL", "http://127.0.0.1:9")       # nothing listens there
    monkeypatch.chdir(tmp_path)
    local = hybrid_job(device="aer_statevector", local=True)(probe)("aer_statevector")
    from_local = local.result()
    # then each got what AerSimulator().run returns: counts, memory, the saved state, metadata
    for got in (result["main"], result["task"], from_hybrid, from_local):
        assert {"u", "unitary", "initialize", "mcx", "save_statevector"} <= set(got["ops"])
        assert {k: got[k] for k in ("counts", "memory", "method")} == {
            k: expected[k] for k in ("counts", "memory", "method")}
        assert np.allclose(got["state"], expected["state"], atol=1e-9)
        assert got["experiments"] == 21
    # and the 21 circuits of each backend.run() went as one quantum task
    tasks = job.quantum_tasks()
    assert len(tasks) == 2 and {t["task_id"] for t in tasks} == {
        result["main"]["task"], result["task"]["task"]}
    assert all(t["status"] == "DONE" and t["num_circuits"] is None for t in tasks)
    # and the device time is charged to the stage the job was in when it sent them
    usage = job.resource_usage()
    assert usage["RUNNING: EXECUTING_QPU"]["QPU_TIME"] > 0
    assert usage.get("RUNNING", {}).get("QPU_TIME", 0) == 0
    assert usage["RUNNING: POST_PROCESSING"]["QPU_TIME"] > 0   # the task's, sent from there


def _direct() -> dict[str, Any]:
    """The same as `probe`, on AerSimulator() in this process."""
    import numpy as np
    from qiskit import QuantumCircuit, transpile
    from qiskit.quantum_info import random_unitary
    from qiskit_aer import AerSimulator

    qc = QuantumCircuit(4, 4)
    qc.initialize([0, 1], 0)
    qc.h(1)
    qc.u(0.3, 0.2, 0.1, 3)
    qc.unitary(random_unitary(4, seed=1), [2, 1])
    qc.mcx([0, 1, 2], 3)
    qc.save_statevector()
    qc.measure(range(4), range(4))
    isa = transpile(qc, AerSimulator(), optimization_level=0)
    small = []
    for i in range(20):
        c = QuantumCircuit(2)
        c.rx(0.1 * i, 0)
        c.cx(0, 1)
        c.measure_all()
        small.append(c)
    result = AerSimulator(method="statevector").run([isa, *small], shots=200, seed_simulator=7,
                                                    memory=True).result()
    state = np.asarray(result.get_statevector(0))
    return {"counts": dict(result.get_counts(0)), "memory": result.get_memory(0)[:5],
            "state": [[z.real, z.imag] for z in state],
            "method": result.results[0].metadata["method"]}


TORINO = """
from qiskit import QuantumCircuit, transpile
from qiskit_ibm_runtime.fake_provider import FakeTorino
from qhybrid import get_backend, save_result

fake = FakeTorino()
qc = QuantumCircuit(3)
qc.h(0)
qc.cx(0, 1)
qc.cx(1, 2)
qc.measure_all()
isa = transpile(qc, fake, seed_transpiler=1)
device = get_backend("ibm_torino")                 # the copy of ibm_torino
assert device.num_qubits == fake.num_qubits
save_result({"name": device.name,
             "same_target": set(device.target.operation_names) == set(fake.target.operation_names),
             "ours": dict(device.run(isa, shots=2000, seed_simulator=5).result().get_counts()),
             "theirs": dict(fake.run(isa, shots=2000, seed_simulator=5).result().get_counts())})
"""


@pytest.mark.timeout(900)
def test_a_program_written_for_fake_torino_runs_on_the_torino_device(
        client: Client, tmp_path: Path) -> None:
    assert client.backend("ibm_torino").name == "fake_torino"
    program = client.upload(Program(title="torino", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "t", TORINO)))
    result = client.run(program.title).result(timeout=600)
    assert result["name"] == "fake_torino" and result["same_target"]
    ours, theirs = result["ours"], result["theirs"]
    assert ours == theirs                     # same noise model, same seed: same counts
    assert len(ours) > 2 and ours["000"] + ours["111"] > 1200     # noisy, mostly GHZ


def long_circuit() -> QuantumCircuit:
    """A circuit aer takes minutes on: a mid-circuit measurement means no shot sampling."""
    qc = QuantumCircuit(16, 1)
    for _ in range(40):
        for q in range(16):
            qc.rx(0.3, q)
        for q in range(15):
            qc.cx(q, q + 1)
    qc.measure(0, 0)
    qc.h(0)
    return qc.measure_all(inplace=False)


WAITS_ON_A_LONG_TASK = "from qiskit import QuantumCircuit, transpile\n" + inspect.getsource(
    long_circuit) + """
from qhybrid import get_backend

backend = get_backend("aer_simulator")
backend.run(transpile(long_circuit(), backend), shots=10**6).result()
"""


def test_canceling_a_running_task_or_its_job_stops_the_simulation(
        service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    backend = client.backend("aer_simulator")
    # given a task that runs for minutes
    long = backend.run(long_circuit(), shots=10**6)
    wait_until(lambda: long.status() == JobStatus.RUNNING, timeout=120)
    # when it is canceled while running
    long.cancel()
    # then it ends CANCELED and the device worker is free at once for the next task
    assert long.status() == JobStatus.CANCELLED
    with pytest.raises(Conflict, match="canceled"):
        long.result(timeout=5)
    quick = backend.run(bell(), shots=10)
    assert sum(quick.result(timeout=120).get_counts().values()) == 10
    # given a job waiting on such a task, when the job is canceled
    program = client.upload(Program(title="long", entrypoint="main.py", working_dir=write_program(
        tmp_path / "long", WAITS_ON_A_LONG_TASK)))
    job = client.run(program.title)
    wait_until(lambda: [t["status"] for t in job.quantum_tasks()] == ["RUNNING"], timeout=120)
    job.cancel()
    # then its task is canceled too, and the simulation stopped
    wait_until(lambda: [t["status"] for t in job.quantum_tasks()] == ["CANCELED"], timeout=60)
    started = time.monotonic()
    assert sum(backend.run(bell(), shots=10).result(timeout=120).get_counts().values()) == 10
    assert time.monotonic() - started < 120


def _runner_of(service: RunningService, task: dict[str, Any]) -> psutil.Process:
    """The device worker's runner process simulating a task (named in its record)."""
    rec = QuantumTasks(service.registry.r).get(task["task_id"])
    worker = psutil.Process(service.service.procs[DEVICE_WORKER].pid)
    assert rec["worker"].endswith(f":{worker.pid}") and rec["runner"].startswith(rec["worker"])
    runners = worker.children()
    assert len(runners) == 1
    return runners[0]


def test_a_runner_that_dies_ends_its_task_in_error_and_is_replaced(
        service: RunningService) -> None:
    backend = service.client().backend("aer_simulator")
    # given a task that runs for minutes
    long = backend.run(long_circuit(), shots=10**6)
    wait_until(lambda: long.status() == JobStatus.RUNNING, timeout=120)
    # when the process simulating it dies (killed, out of memory)
    _runner_of(service, {"task_id": long.job_id()}).kill()
    # then the task ends in ERROR saying so, and a fresh runner takes the next task
    wait_until(lambda: long.status() == JobStatus.ERROR, timeout=30)
    with pytest.raises(TaskFailed, match=r"process running it stopped \(signal 9\)"):
        long.result(timeout=5)
    assert sum(backend.run(bell(), shots=10).result(timeout=120).get_counts().values()) == 10


def test_a_task_running_when_its_device_worker_stops_runs_again(
        service: RunningService) -> None:
    from tests.test_devices import device_worker_stopped

    client = service.client()
    backend = client.backend("aer_simulator")
    # given a task running on the device worker
    long = backend.run(long_circuit(), shots=10**6)
    wait_until(lambda: long.status() == JobStatus.RUNNING, timeout=120)
    first = client._json("GET", f"/quantum-tasks/{long.job_id()}")
    runner = _runner_of(service, first)
    # when the worker stops (SIGTERM: a scale-down, `qhybrid up` stopping)
    with device_worker_stopped(service):
        # then its simulation stopped and the task waits in its queue again, not lost
        assert not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
        assert long.status() == JobStatus.QUEUED
        assert QuantumTasks(service.registry.r).queue_depth("aer_simulator")["normal"] == 1
    # and the next device worker takes it again
    wait_until(lambda: long.status() == JobStatus.RUNNING, timeout=120)
    again = client._json("GET", f"/quantum-tasks/{long.job_id()}")
    assert again["started"] >= first["started"]
    long.cancel()
    assert long.status() == JobStatus.CANCELLED


def test_a_gpu_device_without_a_gpu_worker_is_refused(client: Client) -> None:
    from backends.execute import host_devices

    if "GPU" in host_devices():
        pytest.skip("this host has a GPU: see the README's GPU check")
    gpu = client.backend("aer_statevector_gpu")
    assert gpu.device["device"] == "GPU" and gpu.device["status"]["online"] is False
    with pytest.raises(ServiceUnavailable, match="NVIDIA GPU and no device worker"):
        gpu.run(bell(), shots=10)
