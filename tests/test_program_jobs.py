"""Program jobs end to end (the Qiskit Serverless model) through the client and real workers."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhybrid import Client, JobFailed, Program
from qhybrid.errors import Conflict, InvalidInput, NoResourceClass, NotFound, Unauthorized
from tests.conftest import (
    RunningService,
    bell,
    innermost_pid,
    job_processes,
    wait_until,
    write_program,
)

STAGES = """
import time
from qhybrid import Job, get_arguments, save_result, update_status
from qiskit import transpile
from qiskit.providers.fake_provider import GenericBackendV2

args = get_arguments()
print("arguments:", sorted(args), flush=True)
for stage in (Job.MAPPING, Job.OPTIMIZING_HARDWARE, Job.WAITING_QPU, Job.EXECUTING_QPU,
              Job.POST_PROCESSING, "polishing the answer"):
    update_status(stage)
    time.sleep(args.get("pause", 0))
isa = transpile(args["circuit"], GenericBackendV2(5, seed=7), optimization_level=args["optimization_level"])
open("note.txt", "w").write("written by the job")
save_result({"isa": isa, "vector": args["vector"] * 2, "phase": args["phase"] * 1j,
             "op": args["op"], "n": len(args["vector"])})
"""


def test_user_flow_every_status_typed_result_and_model(any_service: RunningService,
                                                       tmp_path: Path) -> None:
    # given a program uploaded from a working directory
    client = any_service.client()
    program = client.upload(Program(title="transpile-demo", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "src", STAGES)))
    assert client.program("transpile-demo").entrypoint == "main.py"
    assert [p.title for p in client.programs()] == ["transpile-demo"]

    # when it runs with typed arguments
    job = program.run(circuit=bell(), optimization_level=1, vector=np.arange(4.0), phase=0.5,
                      op=SparsePauliOp(["ZZ", "XI"], [1.0, 0.5]), pause=0.3)
    seen = set()
    while not job.in_terminal_state():
        seen.add(job.status())
        time.sleep(0.05)

    # then the result comes back typed, and every status was observed
    result = job.result()
    assert isinstance(result["isa"], QuantumCircuit)
    np.testing.assert_array_equal(result["vector"], np.arange(4.0) * 2)
    assert result["phase"] == 0.5j and result["n"] == 4
    assert result["op"] == SparsePauliOp(["ZZ", "XI"], [1.0, 0.5])
    assert job.status() == "DONE"
    for sub in ("MAPPING", "OPTIMIZING_FOR_HARDWARE", "WAITING_FOR_QPU", "EXECUTING_QPU",
                "POST_PROCESSING", "polishing the answer"):
        assert f"RUNNING: {sub}" in seen
    events = job.events()
    assert [e["status"] for e in events][:3] == ["QUEUED", "INITIALIZING", "RUNNING"]
    assert events[-1]["status"] == "DONE" and all(e["at"].endswith("Z") for e in events)
    assert "arguments: ['circuit', 'op', 'optimization_level', 'pause', 'phase', 'vector']" in job.logs()
    assert job.error_message() == ""
    assert [j.job_id for j in client.jobs(status="DONE")] == [job.job_id]
    assert client.job(job.job_id).status() == "DONE"

    archive = job.download_result(tmp_path / "model.tar.gz")
    import tarfile

    with tarfile.open(archive) as tar:
        assert tar.extractfile("note.txt").read() == b"written by the job"  # type: ignore[union-attr]


def test_a_status_set_by_the_first_line_is_kept(client: Client, tmp_path: Path) -> None:
    # given a program whose very first line sets a sub-status (a sandbox made ready before
    # the job starts it at once)
    src = "from qhybrid import update_status, save_result\nsave_result(update_status('MAPPING'))\n"
    program = client.upload(Program(title="first-line", entrypoint="main.py",
                                    working_dir=write_program(tmp_path, src)))
    for _ in range(5):
        # when it runs, then the status is taken, every time, and shows in its events
        job = program.run()
        assert job.result(timeout=60) is True
        assert ("RUNNING", "MAPPING") in [(e["status"], e.get("sub_status"))
                                          for e in job.events()]


def test_failing_program_reports_exception_and_traceback(client: Client, tmp_path: Path) -> None:
    src = "def inner():\n    raise ValueError('bad input value 42')\n\ninner()\n"
    job = client.upload(Program(title="fails", entrypoint="main.py",
                                working_dir=write_program(tmp_path, src))).run()
    with pytest.raises(JobFailed) as err:
        job.result(timeout=60)
    message = str(err.value)
    assert message.startswith("ValueError: bad input value 42")
    assert "main.py\", line 2, in inner" in message and "child.py" not in message
    assert job.status() == "ERROR"
    assert job.error_message() == message
    assert "ValueError: bad input value 42" in job.logs()


def test_logs_are_live_while_the_job_runs(client: Client, tmp_path: Path) -> None:
    src = "import time\nprint('first line', flush=True)\ntime.sleep(30)\nprint('never')\n"
    job = client.upload(Program(title="live", entrypoint="main.py",
                                working_dir=write_program(tmp_path, src))).run()
    wait_until(lambda: "first line" in job.logs(), timeout=30)
    assert job.status() == "RUNNING"
    job.cancel()
    job.wait(timeout=10)
    assert job.status() == "CANCELED"


def test_follow_logs_streams_until_the_end(client: Client, tmp_path: Path) -> None:
    src = "import time\nfor i in range(5):\n    print('line', i, 'ünïcode', flush=True)\n    time.sleep(0.1)\n"
    job = client.upload(Program(title="follow", entrypoint="main.py",
                                working_dir=write_program(tmp_path, src))).run()
    text = "".join(job.follow_logs())
    assert [f"line {i} ünïcode" for i in range(5)] == text.splitlines()
    assert job.logs(offset=len("line 0 ünïcode\n".encode())).startswith("line 1")


def test_cancel_while_running_kills_the_process_tree(service: RunningService, client: Client,
                                                     tmp_path: Path) -> None:
    src = ("import os, subprocess, time\n"
           "child = subprocess.Popen(['sleep', '300'])\n"
           "print('started', flush=True)\ntime.sleep(300)\n")
    job = client.upload(Program(title="tree", entrypoint="main.py",
                                working_dir=write_program(tmp_path / "src", src))).run()
    # the job's own line is out, so its child runs too (a sandbox made ready before the job
    # has processes in the job's cgroup before the job's code starts)
    wait_until(lambda: "started" in job.logs(), timeout=30)
    pids = job_processes(job.job_id)
    assert len(pids) >= 2
    started = time.monotonic()
    job.cancel()
    wait_until(lambda: not any(_alive(p) for p in pids), timeout=5)
    assert time.monotonic() - started < 2.0
    job.wait(timeout=10)
    assert job.status() == "CANCELED"
    assert "started" in job.logs()
    with pytest.raises(Exception, match="canceled"):
        job.result(timeout=5)


def test_cancel_while_queued_never_starts(service: RunningService, tmp_path: Path,
                                         shared_dir: Path) -> None:
    # `large` has no worker, so the job stays queued, visibly
    client = service.client()
    flag = shared_dir / "ran"
    program = client.upload(Program(title="never", entrypoint="main.py", resources="large",
                                    working_dir=write_program(tmp_path / "src",
                                                              f"open({str(flag)!r}, 'w')\n")))
    job = program.run()
    assert job.status() == "QUEUED"
    assert job.raw["waiting_for"] == "no worker consumes jobs.large"
    assert job.cancel()
    assert job.status() == "CANCELED"
    time.sleep(0.5)
    assert not flag.exists()
    assert job.cancel()            # cancelling again is harmless


def test_cancel_of_an_ended_job_is_a_conflict(client: Client, tmp_path: Path) -> None:
    job = client.upload(Program(title="quick", entrypoint="main.py",
                                working_dir=write_program(tmp_path, "print(1)\n"))).run()
    job.wait(timeout=60)
    with pytest.raises(Conflict, match="already ended"):
        job.cancel()
    assert job.status() == "DONE"


def test_max_runtime_ends_the_job_in_error(client: Client, tmp_path: Path) -> None:
    client.upload(Program(title="slowpoke", entrypoint="main.py",
                          working_dir=write_program(tmp_path, "import time\ntime.sleep(60)\n")))
    job = client.run("slowpoke", max_runtime=1)
    with pytest.raises(JobFailed, match="maximum run time of 1 s"):
        job.result(timeout=30)


def test_memory_limit_of_the_class_applies(client: Client, tmp_path: Path) -> None:
    src = "block = bytearray(3 * 1024**3)\n"     # small is 2 GiB
    job = client.upload(Program(title="hog", entrypoint="main.py",
                                working_dir=write_program(tmp_path, src))).run()
    with pytest.raises(JobFailed, match="MemoryError"):
        job.result(timeout=60)


def test_user_code_gets_no_credentials(service: RunningService, client: Client,
                                       tmp_path: Path) -> None:
    src = ("import os\nfrom qhybrid import save_result\n"
           "save_result({k: v for k, v in os.environ.items()})\n")
    env = client.upload(Program(title="env", entrypoint="main.py",
                                working_dir=write_program(tmp_path, src))).run().result(timeout=60)
    assert not [k for k in env if k.startswith(("QHYBRID_REDIS", "QHYBRID_STORAGE", "AWS_"))]
    assert env["QISKIT_PARALLEL"] == "FALSE" and env["OMP_NUM_THREADS"] == "1"
    assert service.env["QHYBRID_REDIS_URL"] not in " ".join(env.values())


def test_worker_killed_mid_job_runs_it_again(service: RunningService, tmp_path: Path,
                                             shared_dir: Path) -> None:
    client = service.client()
    counter = shared_dir / "attempts"
    pid_file = shared_dir / "pid"
    src = (f"import os, time\nfrom qhybrid import save_result\n"
           f"with open({str(counter)!r}, 'a') as fh: fh.write('x')\n"
           f"n = len(open({str(counter)!r}).read())\n"
           f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
           f"print('attempt', n, 'started', flush=True)\n"
           f"time.sleep(60 if n == 1 else 0)\nsave_result({{'attempt': n}})\n")
    job = client.upload(Program(title="survivor", entrypoint="main.py", resources="medium",
                                working_dir=write_program(tmp_path / "src", src))).run()
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    wait_until(lambda: "attempt 1 started" in job.logs(), timeout=30)
    inner = int(pid_file.read_text())               # its pid inside its sandbox
    [first_pid] = [p for p in job_processes(job.job_id) if innermost_pid(p) == inner]
    worker = service.service.procs["worker-medium"]
    os.kill(worker.pid, signal.SIGKILL)            # the worker only: its user code must die too
    worker.wait()
    wait_until(lambda: not _alive(first_pid), timeout=10)
    service.restart_worker("medium")
    assert job.result(timeout=90) == {"attempt": 2}
    events = [e for e in job.events() if e.get("detail")]
    assert any("worker lost" in e["detail"] for e in events)
    assert job.raw.get("attempt") == 2 or client.job(job.job_id).raw["attempt"] == 2
    # and the log it keeps has both attempts, with the marker where the second one starts
    from storage import keys
    from storage.store import open_store

    prefix = service.registry.get_job(job.job_id)["prefix"]
    stored = open_store(service.env["QHYBRID_STORAGE_URL"]).get_bytes(keys.job_logs(prefix))
    assert re.search(rb"attempt 1 started\n.*----- attempt 2 \(worker lost.*-----\n"
                     rb"attempt 2 started\n", stored, re.S), stored


def test_auth_and_isolation(service: RunningService, client: Client, tmp_path: Path) -> None:
    job = client.upload(Program(title="mine", entrypoint="main.py",
                                working_dir=write_program(tmp_path, "print(1)\n"))).run()
    api = f"{service.url}/api/v1/jobs/{job.job_id}"
    for headers in ({}, {"Authorization": "Bearer qh_wrong"}, {"Authorization": "Basic x"}):
        resp = requests.get(api, headers=headers, timeout=10)
        assert resp.status_code == 401
        assert resp.headers["Content-Type"] == "application/problem+json"
    other = service.client()
    with pytest.raises(NotFound):
        other.job(job.job_id)
    with pytest.raises(NotFound):
        other.program("mine")
    with pytest.raises(NotFound):
        other.run("mine")
    assert other.jobs() == []
    with pytest.raises(Unauthorized):
        Client(url=service.url, token="qh_nope").jobs()


def test_bad_input_answers_4xx_and_writes_nothing(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    src = write_program(tmp_path / "src", "print(1)\n")
    client.upload(Program(title="ok", entrypoint="main.py", working_dir=src))
    cases = [
        (lambda: client.upload(Program(title="bad title!", entrypoint="main.py", working_dir=src)), InvalidInput, "title"),
        (lambda: client.upload(Program(title="x", entrypoint="../main.py", working_dir=src)), InvalidInput, "entrypoint"),
        (lambda: client.upload(Program(title="x", entrypoint="other.py", working_dir=src)), InvalidInput, "entrypoint"),
        (lambda: client.run("ok", resources={"cpu": 64}), NoResourceClass, "resources"),
        (lambda: client.run("ok", resources="huge"), NoResourceClass, "resources"),
        (lambda: client.run("ok", resources={"cpu": 1, "disk": 3}), InvalidInput, "resources"),
        (lambda: client.run("ok", max_runtime=0), InvalidInput, "max_runtime"),
        (lambda: client.run("missing"), NotFound, None),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as info:
            call()
        if field:
            assert (info.value.field or "").startswith(field), (info.value, info.value.field)
    resp = requests.post(f"{service.url}/api/v1/programs/ok/run", data="not json",
                         headers={"Authorization": f"Bearer {client.token}",
                                  "Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["field"] == "body"
    resp = client.request("POST", "/programs/ok/run", ok=(400,),
                          json={"arguments": {"x": {"__type__": "Mystery", "__value__": 1}}})
    assert resp.json()["field"] == 'arguments["x"]' and "Mystery" in resp.json()["detail"]
    assert resp.headers["Content-Type"] == "application/problem+json"
    resp = requests.get(f"{service.url}/api/v1/jobs", params={"limit": "lots"},
                        headers={"Authorization": f"Bearer {client.token}"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["field"] == "limit"
    assert "no resource class fits" in str(pytest.raises(NoResourceClass, client.run, "ok",
                                                         resources={"cpu": 64}).value)
    assert [p.title for p in client.programs()] == ["ok"]
    assert client.jobs() == []
    prefix = service.data_dir.parent / "storage" / "users"
    if service.backend == "file":
        stored = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file()
                        and p.relative_to(prefix).parts[0] == _user_of(client, service))
        assert stored == [f"{_user_of(client, service)}/programs/ok/source.tar.gz"]


def test_program_too_large_is_refused(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    src = write_program(tmp_path, "print(1)\n")
    (src / "blob.bin").write_bytes(os.urandom(51 * 1024**2))
    with pytest.raises(Exception) as info:
        client.upload(Program(title="big", entrypoint="main.py", working_dir=src))
    assert getattr(info.value, "status", None) == 413
    assert client.programs() == []


def test_single_py_upload_and_list_filters(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    script = tmp_path / "hello.py"
    script.write_text("from qhybrid import save_result\nsave_result({'hi': 1})\n")
    with open(script, "rb") as fh:
        resp = client.request("POST", "/programs", data={"title": "hello"},
                              files={"source": ("hello.py", fh)})
    assert resp.json()["entrypoint"] == "hello.py"
    first = client.run("hello")
    first.result(timeout=60)
    marker = time.time()
    second = client.run("hello")
    second.result(timeout=60)
    assert [j.job_id for j in client.jobs(created_after=marker)] == [second.job_id]
    assert [j.job_id for j in client.jobs(limit=1, offset=1)] == [first.job_id]
    assert {j.job_id for j in client.jobs(program="hello")} == {first.job_id, second.job_id}
    assert client.jobs(program="other") == []


def test_healthz_reports_parts_and_queues(service: RunningService) -> None:
    body = requests.get(f"{service.url}/healthz", timeout=10).json()
    assert body["redis"] == "ok" and body["storage"] == "ok"
    for queue in ("jobs.small", "jobs.medium", "tasks.small", "tasks.medium",
                  "device.aer_simulator", "device.generic_heavy_hex_27"):
        assert body["queues"][queue], queue
    assert {"jobs.large", "tasks.large"} <= set(body["queues_without_worker"])
    assert not body["ok"]           # the test service leaves large and gpu without workers


def _user_of(client: Client, service: RunningService) -> str:
    return service.registry.user_for_token(client.token) or ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
