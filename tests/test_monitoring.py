"""Operators' views: Prometheus /metrics and Flower, against the live service and workers."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qhybrid import Program
from tests.conftest import RunningService, free_port, wait_until, write_program

FLOWER_AUTH = ("ops", "flower-test")


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from /metrics, through Prometheus' own parser."""
    resp = requests.get(url + "/metrics", timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_count_jobs_queues_devices_and_workers(service: RunningService,
                                                       tmp_path: Path) -> None:
    client = service.client()
    before = scrape(service.url)
    done_key = (("resource_class", "small"), ("status", "DONE"))
    done_before = before.get("qhybrid_jobs_entered_total", {}).get(done_key, 0.0)
    runs_before = before.get("qhybrid_job_run_seconds_count", {}).get(
        (("resource_class", "small"),), 0.0)

    # when a job runs to its end (and sends a quantum task)
    program = client.upload(Program(title="metered", entrypoint="main.py", working_dir=write_program(
        tmp_path, "from qiskit import QuantumCircuit\nfrom qhybrid import save_result\n"
        "from qhybrid import get_backend\nqc = QuantumCircuit(1)\nqc.h(0)\nqc.measure_all()\n"
        "save_result(get_backend('aer_simulator').run(qc, shots=10).result().get_counts())\n")))
    assert sum(program.run().result(timeout=90).values()) == 10

    # then /metrics shows it, parsed by prometheus_client's parser
    after = scrape(service.url)
    assert after["qhybrid_jobs_entered_total"][done_key] == done_before + 1
    assert after["qhybrid_job_run_seconds_count"][(("resource_class", "small"),)] == runs_before + 1
    start = after["qhybrid_job_start_latency_seconds_bucket"]
    assert start[(("le", "+Inf"), ("resource_class", "small"))] >= 1
    assert after["qhybrid_quantum_tasks_total"][(("device", "aer_simulator"), ("status", "DONE"))] >= 1
    assert after["qhybrid_queue_depth"][(("queue", "jobs.small"),)] >= 0
    assert after["qhybrid_workers"][(("queue", "jobs.small"),)] >= 1
    assert after["qhybrid_workers"][(("queue", "jobs.large"),)] == 0     # no worker on purpose
    assert (("device", "aer_simulator"), ("priority", "normal")) in after["qhybrid_device_queue_depth"]
    assert (("resource_class", "small"), ("status", "QUEUED")) in after["qhybrid_jobs"]
    assert "qhybrid_storage_errors_total" not in after or all(
        v >= 0 for v in after["qhybrid_storage_errors_total"].values())


def test_storage_errors_are_counted(tmp_path: Path) -> None:
    from qhybrid.errors import Conflict, NotFound
    from storage.counting import ErrorCountingStore
    from storage.store import LocalStore

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            raise OSError("disk gone")

    failed: list[str] = []
    store = ErrorCountingStore(LocalStore(tmp_path / "s"), failed.append)
    store.put_bytes("a/b", b"x")
    with pytest.raises(Conflict):
        store.put_bytes("a/b/c", b"y")     # the caller's mistake, not a storage failure
    with pytest.raises(NotFound):
        store.get_bytes("nothing")
    assert failed == [] and [o.key for o in store.list("a/")] == ["a/b"]
    with pytest.raises(OSError, match="disk gone"):
        store.put_stream("a/c", Broken())
    assert failed == ["put_stream"]


@pytest.fixture
def flower(service: RunningService) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qhybrid.cli", "flower", "--port", str(port),
                             f"--basic-auth={FLOWER_AUTH[0]}:{FLOWER_AUTH[1]}"],
                            env=service.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/healthcheck", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def test_flower_lists_our_workers_and_a_finished_job(service: RunningService, flower: str,
                                                     tmp_path: Path) -> None:
    def workers() -> set[str]:
        resp = requests.get(flower + "/api/workers", params={"refresh": "1"}, auth=FLOWER_AUTH,
                            timeout=30)
        return set(resp.json()) if resp.ok else set()

    names: set[str] = set()

    def all_listed() -> bool:
        names.update(workers())
        return {"small", "tasks-small", "medium"} <= {n.split("@")[0] for n in names}

    wait_until(all_listed, timeout=60, interval=1)
    assert requests.get(flower + "/api/workers", timeout=10).status_code == 401   # needs the login

    client = service.client()
    program = client.upload(Program(title="flowered", entrypoint="main.py", working_dir=write_program(
        tmp_path, "from qhybrid import save_result\nsave_result(1)\n")))
    job = program.run()
    assert job.result(timeout=60) == 1

    def finished() -> dict | None:
        tasks = requests.get(flower + "/api/tasks", params={"taskname": "qhybrid.run_job"},
                             auth=FLOWER_AUTH, timeout=10).json()
        return next((t for t in tasks.values() if job.job_id in (t.get("args") or "")
                     and t.get("state") == "SUCCESS"), None)

    task = wait_until(finished, timeout=30, interval=0.5)
    assert task["worker"].startswith("small@") and task["routing_key"] == "jobs.small"
    assert task["sent"] and task["started"] and task["succeeded"]
