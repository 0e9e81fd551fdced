"""Distributed tasks end to end: real Redis, real job and task workers for two classes.

The programs run as jobs through the client; what the tasks did is checked through the API,
the task records in Redis and the processes on this machine (the workers' side).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from qiskit import QuantumCircuit
from qiskit.circuit.random import random_circuit

from qhybrid import Client, Job, Program
from tasks.core import defaults as d
from tests.conftest import SHARED, RunningService, job_processes, wait_until, write_program


def run_program(client: Client, tmp: Path, source: str, files: dict[str, str] | None = None,
                **arguments: Any) -> Job:
    src = write_program(tmp / "src", source)
    for name, text in (files or {}).items():
        (src / name).write_text(text)
    program = client.upload(Program(title="dist", entrypoint="main.py", working_dir=src))
    return program.run(**arguments)


def result_of(job: Job, timeout: float = 90) -> Any:
    try:
        return job.result(timeout=timeout)
    except Exception:
        print(job.logs(), job.error_message())
        raise


def api(service: RunningService, client: Client, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{service.url}/api/v1{path}", params=params, timeout=30,
                        headers={"Authorization": f"Bearer {client.token}"})




def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


ORDER = """
import random, time
from qhybrid import Timeout, distribute_task, get, save_result, wait

@distribute_task(target="small")
def square(i):
    time.sleep(random.random() / 20)      # they end in any order
    print("squaring", i)
    return i * i

@distribute_task(target="small")
def nap(seconds):
    time.sleep(seconds)
    return seconds

refs = [square(i) for i in range(40)]
squares = get(refs)
done, pending = wait([nap(0.01), nap(60), nap(60)], num_returns=1, timeout=20)
try:
    get(pending, timeout=0.2)
    timed_out = False
except Timeout:
    timed_out = True
save_result({"squares": squares, "done": get(done), "pending": len(pending),
             "again": get(refs[3]), "timed_out": timed_out})
"""


def test_results_come_back_in_call_order_and_the_api_lists_the_tasks(
        service: RunningService, tmp_path: Path) -> None:
    # given a job that fans out 40 calls whose tasks end in random order
    client = service.client()
    job = run_program(client, tmp_path, ORDER)

    # then get() returns them in call order, and wait() splits done from pending
    out = result_of(job)
    assert out["squares"] == [i * i for i in range(40)]
    assert out["done"] == [0.01] and out["pending"] == 2 and out["again"] == 9
    assert out["timed_out"] is True

    # and the API lists every task with its status, class, worker and times
    tasks = job.tasks()
    assert len(tasks) == 43
    squares = tasks[:40]
    assert {t["status"] for t in squares} == {"DONE"}
    assert {t["resource_class"] for t in squares} == {"small"}
    assert {t["queue"] for t in squares} == {"tasks.small"}
    assert all(t["worker"] and t["started"] and t["ended"] and t["cpu_time"] is not None
               for t in squares)
    assert [t["name"] for t in squares] == ["square"] * 40
    assert len({t["group"] for t in squares}) == 1      # a quick loop of calls: one Celery group
    # the two naps still running when the job ended were stopped with it
    wait_until(lambda: [t["status"] for t in job.tasks()[-2:]] == ["CANCELED"] * 2, 20)
    assert "the job ended (DONE)" in job.tasks()[-1]["error"]
    one = api(service, client, f"/jobs/{job.job_id}/tasks/{squares[5]['task_id']}").json()
    assert one["log"] == "squaring 5\n"
    page = api(service, client, f"/jobs/{job.job_id}/tasks", status="CANCELED", limit=1).json()
    assert page["total"] == 2 and len(page["tasks"]) == 1 and page["counts"]["DONE"] == 41


HELD = """
import os, time
from qhybrid import distribute_task, get, get_arguments, save_result, wait

go = os.path.join(get_arguments()["dir"], "go")

@distribute_task(target="small")
def step(i):
    while i == 60 and not os.path.exists(go):
        time.sleep(0.05)
    return i

refs = [step(i) for i in range(300)]
others = refs[:60] + refs[61:]
done, _ = wait(others, num_returns=len(others), timeout=8)   # < a lost worker's 10 s
ended_first = len(done)
open(go, "w").close()
save_result({"ended_first": ended_first, "values": get(refs)})
"""


def test_a_long_task_holds_none_of_the_tasks_claimed_after_it(
        service: RunningService, tmp_path: Path, shared_dir: Path) -> None:
    # given 300 quick tasks, which workers claim several at a time, and among them one that
    # runs until the job has seen every other task end
    client = service.client()
    job = run_program(client, tmp_path, HELD, dir=str(shared_dir))
    # then the tasks claimed after the long one were run meanwhile, by whichever worker,
    # once each (not rescued as the tasks of a lost worker)
    out = result_of(job)
    assert out["ended_first"] == 299 and out["values"] == list(range(300))
    tasks = job.tasks()
    assert {t["status"] for t in tasks} == {"DONE"} and len(tasks) == 300
    tries = service.registry.r.pipeline(transaction=False)
    for t in tasks:
        tries.hget(d.TASK_KEY.format(task_id=t["task_id"]), "tries")
    assert set(tries.execute()) == {None}
    # and each record says when its own run started and ended, in the executor's clock
    long = tasks[60]
    assert long["duration"] > 0.05
    assert all(t["started"] <= t["ended"] and t["duration"] < 5 for t in tasks[61:])


def test_task_api_checks_its_input_and_owner(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    job = run_program(client, tmp_path, "from qhybrid import save_result\nsave_result(1)\n")
    job.wait(60)
    bad = api(service, client, f"/jobs/{job.job_id}/tasks", status="SLEEPING")
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    assert bad.headers["Content-Type"] == "application/problem+json"
    other = service.client()
    assert api(service, other, f"/jobs/{job.job_id}/tasks").status_code == 404
    assert api(service, client, f"/jobs/{job.job_id}/tasks/{'0' * 32}").status_code == 404
    assert job.tasks() == []


FAILING = """
from qhybrid import TaskFailed, distribute_task, get, get_arguments, save_result

def check(x):
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x

@distribute_task
def work(x):
    return check(x)

refs = [work(x) for x in range(5)]
if get_arguments()["catch"]:
    try:
        get(refs)
    except TaskFailed as exc:
        save_result({"message": str(exc), "remote_type": exc.extra["remote_type"],
                     "task_id": exc.extra["task_id"], "fine": get(refs[:3])})
else:
    get(refs)
"""


def test_a_task_exception_reraises_in_get_with_the_remote_traceback(
        service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    # when a task raises and the job catches TaskFailed
    caught = result_of(run_program(client, tmp_path / "a", FAILING, catch=True))
    # then it carries the remote traceback, down to the user's own frames
    message = caught["message"]
    assert "ValueError: bad value 3" in message
    assert 'main.py", line 6, in check' in message and "return check(x)" in message
    assert "qhybrid/_executor.py" not in message
    assert caught["remote_type"] == "ValueError" and caught["fine"] == [0, 1, 2]
    # and uncaught, it fails the job with that traceback
    job = run_program(client, tmp_path / "b", FAILING, catch=False)
    job.wait(60)
    assert job.status() == "ERROR"
    assert "TaskFailed" in job.error_message() and "ValueError: bad value 3" in job.error_message()
    failed = [t for t in job.tasks() if t["status"] == "ERROR"]
    assert len(failed) == 1 and "raise ValueError" in failed[0]["error"]


NESTED = """
from qhybrid import distribute_task, get, save_result

@distribute_task(target="small")
def leaf(x):
    return x + 1

@distribute_task(target="small")
def middle(n):
    return sum(get([leaf(i) for i in range(n)]))

@distribute_task(target="medium")
def top(n):
    return get([middle(n) for _ in range(3)])

save_result(get(top(4)))
"""


def test_tasks_call_distributed_tasks_themselves(service: RunningService,
                                                 tmp_path: Path) -> None:
    # given a task (medium) that fans out to tasks (small) that fan out again (small)
    client = service.client()
    job = run_program(client, tmp_path, NESTED)
    # then every level gets its children's results
    assert result_of(job) == [10, 10, 10]
    tasks = {t["task_id"]: t for t in job.tasks()}
    top = [t for t in tasks.values() if t["name"] == "top"]
    middles = [t for t in tasks.values() if t["name"] == "middle"]
    leaves = [t for t in tasks.values() if t["name"] == "leaf"]
    assert len(top) == 1 and len(middles) == 3 and len(leaves) == 12
    assert top[0]["parent_task"] is None and top[0]["resource_class"] == "medium"
    assert {m["parent_task"] for m in middles} == {top[0]["task_id"]}
    assert {tasks[leaf["parent_task"]]["name"] for leaf in leaves} == {"middle"}
    assert {t["status"] for t in tasks.values()} == {"DONE"}


PUT = """
import os
import numpy as np
from qhybrid import distribute_task, get, put, save_result

data = put(np.arange(1_000_000, dtype=np.float64))    # 8 MB: stored once, in storage

@distribute_task(target="small")
def use(arr, i):
    # a process: its pid within its sandbox's own PID namespace
    me = (os.getpid(), os.stat("/proc/self/ns/pid").st_ino)
    return float(arr.sum()) + i, me, id(arr)

out = get([use(data, i) for i in range(100)])
save_result({"sums": [o[0] for o in out], "loads": len({(*o[1], o[2]) for o in out}),
             "processes": len({tuple(o[1]) for o in out}), "same": bool(get(data)[5] == 5.0)})
"""


def test_put_stores_an_object_once_for_a_hundred_tasks(any_service: RunningService,
                                                       tmp_path: Path) -> None:
    client = any_service.client()
    out = result_of(run_program(client, tmp_path, PUT))
    total = float(sum(range(1_000_000)))
    assert out["sums"] == [total + i for i in range(100)]
    # each executor process fetched and unpickled the object once, whatever number of tasks
    assert out["loads"] == out["processes"] and out["processes"] <= 4
    assert out["same"] is True


MAP_REDUCE = """
from qhybrid import map_reduce, save_result

total = map_reduce(lambda x: x * x, range(200), reduce=sum, target="small")
save_result(total)
"""


def test_map_reduce_of_200_items_is_one_chord_reduced_on_a_worker(
        service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    job = run_program(client, tmp_path, MAP_REDUCE)
    assert result_of(job) == sum(i * i for i in range(200))
    tasks = job.tasks()
    kinds = [t["kind"] for t in tasks]
    assert kinds.count("map") == 200 and kinds[-1] == "reduce"
    assert {t["group"] for t in tasks} == {tasks[-1]["task_id"]}   # one chord
    reduce = tasks[-1]
    assert reduce["status"] == "DONE" and reduce["worker"]
    assert reduce["started"] >= max(t["ended"] for t in tasks[:-1])


CANCEL = """
import os, time
from qhybrid import distribute_task, get, get_arguments

piddir = get_arguments()["piddir"]

@distribute_task(target="small")
def sleeper(i):
    with open(os.path.join(piddir, str(i)), "w") as fh:   # pids repeat: a namespace each
        fh.write(str(os.getpid()))
    time.sleep(300)

get([sleeper(i) for i in range(20)])
"""


def test_cancel_mid_fan_out_leaves_nothing_running(service: RunningService,
                                                   tmp_path: Path, shared_dir: Path) -> None:
    # given a job whose 20 tasks are fanning out, some running
    client = service.client()
    piddir = shared_dir
    job = run_program(client, tmp_path, CANCEL, piddir=str(piddir))
    wait_until(lambda: sum(t["status"] == "RUNNING" for t in job.tasks()) >= 2, 60)
    wait_until(lambda: len(list(piddir.iterdir())) >= 2, 30)

    # when the job is canceled
    job.cancel()
    job.wait(30)
    assert job.status() == "CANCELED"

    # then no task is queued or running, in the registry ...
    tasks = job.tasks()
    assert len(tasks) == 20 and {t["status"] for t in tasks} == {"CANCELED"}
    reg = service.registry
    for t in tasks:
        assert reg.r.hget(d.TASK_KEY.format(task_id=t["task_id"]), "status") == "CANCELED"
    # ... and on the workers' side: the processes that ran them are gone, and soon nothing
    # of the job's runs anywhere (idle executors of an ended job are stopped)
    assert len(list(piddir.iterdir())) >= 2
    wait_until(lambda: not [p for p in job_processes(job.job_id) if alive(p)], 15)


NO_WORKER = """
from qhybrid import distribute_task, get, save_result

@distribute_task(target={"cpu": 16})       # the `large` class: no worker consumes it here
def big(x):
    return x

save_result(get(big(1)))
"""

NO_CLASS = """
from qhybrid import distribute_task, save_result
from qhybrid.errors import NoResourceClass

@distribute_task(target={"cpu": 64, "mem": 2 * 1024**3})
def huge(x):
    return x

try:
    huge(1)
except NoResourceClass as exc:
    save_result(str(exc))
"""


def test_a_task_whose_class_has_no_worker_waits_visibly(service: RunningService,
                                                        tmp_path: Path) -> None:
    client = service.client()
    job = run_program(client, tmp_path, NO_WORKER)
    wait_until(lambda: job.tasks() and job.tasks()[0]["status"] == "QUEUED", 60)
    body = job.refresh()
    assert body["state"] == "RUNNING"
    assert body["waiting_for"] == "no worker consumes tasks.large"
    listing = api(service, client, f"/jobs/{job.job_id}/tasks").json()
    assert listing["waiting_for"] == "no worker consumes tasks.large"
    assert listing["tasks"][0]["waiting_for"] == "no worker consumes tasks.large"
    assert listing["tasks"][0]["resource_class"] == "large"
    wait_until(lambda: "[qhybrid] tasks are waiting: no worker consumes tasks.large"
               in job.logs(), 10)
    job.cancel()
    job.wait(30)
    assert [t["status"] for t in job.tasks()] == ["CANCELED"]
    assert "waiting_for" not in job.refresh()


def test_a_target_no_class_fits_raises_at_the_call(service: RunningService,
                                                   tmp_path: Path) -> None:
    message = result_of(run_program(service.client(), tmp_path, NO_CLASS))
    assert "no resource class fits cpu=64" in message
    assert "small = 1 CPU" in message and "large = 16 CPU" in message


# The Qiskit Serverless guide's transpile_remote.py, with only its imports changed: the
# runtime service's backends are heavy-hex GenericBackendV2 devices (heavy_hex_runtime.py).
HEAVY_HEX_RUNTIME = """
from qiskit.providers.fake_provider import GenericBackendV2

from backends.registry import falcon_27_edges


class QiskitRuntimeService:
    \"\"\"Stands in for qiskit_ibm_runtime's: every backend is a heavy-hex Falcon.\"\"\"

    def backend(self, name):
        return GenericBackendV2(27, basis_gates=["cx", "id", "rz", "sx", "x"],
                                coupling_map=falcon_27_edges(), seed=11)
"""

TRANSPILE_REMOTE = """
from qiskit.transpiler import generate_preset_pass_manager
from heavy_hex_runtime import QiskitRuntimeService
from qhybrid import distribute_task

service = QiskitRuntimeService()

@distribute_task(target={"cpu": 1})
def transpile_remote(circuit, optimization_level, backend):
    \"\"\"Transpiles an abstract circuit (or list of circuits) into an ISA circuit for a given backend.\"\"\"
    pass_manager = generate_preset_pass_manager(
        optimization_level=optimization_level,
        backend=service.backend(backend)
    )
    isa_circuit = pass_manager.run(circuit)
    return isa_circuit
from time import time
from qhybrid import get, get_arguments, save_result, update_status, Job

# Get arguments
arguments = get_arguments()
circuit = arguments.get("circuit")
optimization_level = arguments.get("optimization_level")
backend = arguments.get("backend")
# Start distributed transpilation
update_status(Job.OPTIMIZING_HARDWARE)
start_time = time()
transpile_worker_references = [
    transpile_remote(circuit, optimization_level, backend)
    for circuit in arguments.get("circuit_list")
]
transpiled_circuits = get(transpile_worker_references)
end_time = time()
# Save result, with metadata
result = {
    "circuits": transpiled_circuits,
    "metadata": {
        "resource_usage": {
            "RUNNING: OPTIMIZING_FOR_HARDWARE": {
                "CPU_TIME": end_time - start_time,
                "QPU_TIME": 0,
            },
        }
    },
}
save_result(result)
"""


@pytest.mark.parametrize("backend_name", ["ibm_torino"])
def test_the_guides_transpile_remote_runs_end_to_end(service: RunningService, tmp_path: Path,
                                                     backend_name: str) -> None:
    from backends.registry import falcon_27_edges

    client = service.client()
    src = write_program(tmp_path / "source_files", TRANSPILE_REMOTE, "transpile_remote.py")
    (src / "heavy_hex_runtime.py").write_text(HEAVY_HEX_RUNTIME)
    program = client.upload(Program(title="transpile_remote_serverless",
                                    entrypoint="transpile_remote.py", working_dir=src))
    job = program.run(circuit=random_circuit(3, 3, seed=1),
                      circuit_list=[random_circuit(3, 3, seed=s) for s in range(3)],
                      backend=backend_name, optimization_level=1)
    seen = set()
    while not job.in_terminal_state():
        seen.add(job.status())
        time.sleep(0.02)
    result = result_of(job)

    # the circuits come back as ISA circuits of the heavy-hex device
    edges = {tuple(e) for e in falcon_27_edges()} | {tuple(reversed(e)) for e in falcon_27_edges()}
    assert len(result["circuits"]) == 3
    for isa in result["circuits"]:
        assert isinstance(isa, QuantumCircuit) and isa.num_qubits == 27
        assert set(isa.count_ops()) <= {"cx", "id", "rz", "sx", "x", "measure", "barrier"}
        for inst in isa.data:
            if len(inst.qubits) == 2:
                pair = tuple(isa.find_bit(q).index for q in inst.qubits)
                assert pair in edges
    assert result["metadata"]["resource_usage"]["RUNNING: OPTIMIZING_FOR_HARDWARE"]["QPU_TIME"] == 0
    assert "RUNNING: OPTIMIZING_FOR_HARDWARE" in seen or any(
        e.get("sub_status") == "OPTIMIZING_FOR_HARDWARE" for e in job.events())
    # and the service recorded the same per-stage usage by itself, tasks included
    usage = job.resource_usage()
    stage = usage["RUNNING: OPTIMIZING_FOR_HARDWARE"]
    assert stage["CPU_TIME"] > 0 and stage["QPU_TIME"] == 0
    tasks = job.tasks()
    assert len(tasks) == 3 and {t["stage"] for t in tasks} == {"RUNNING: OPTIMIZING_FOR_HARDWARE"}
    assert stage["CPU_TIME"] >= sum(t["cpu_time"] for t in tasks) - 1e-6


def test_the_job_page_lists_tasks_and_resource_usage(service: RunningService,
                                                     tmp_path: Path) -> None:
    from app import create_app
    from tasks.core.registry import hash_token
    from tasks.core.settings import Settings

    client = service.client()
    job = run_program(client, tmp_path, MAP_REDUCE)
    result_of(job)
    app = create_app({"SETTINGS": Settings.from_env(service.env), "TESTING": True})
    with app.test_client() as browser:
        with browser.session_transaction() as sess:
            sess["token_hash"] = hash_token(client.token)
        page = browser.get(f"/jobs/{job.job_id}").get_data(as_text=True)
    assert "Resource usage" in page and "<td>RUNNING</td>" in page
    assert 'id="tasks"' in page and "201 · 201 DONE" in page
    assert page.count("<code title=") == 200        # the first 200 rows; the API has them all


ISOLATED = """
import os
from qhybrid import distribute_task, get, get_arguments, put, save_result

big = put(bytes(3 * 1024**2))                 # crosses the channel as a spool file

@distribute_task(target="small")
def probe(blob, private):
    try:
        os.listdir(private)
        refused = False
    except (PermissionError, FileNotFoundError):    # not there at all, in the sandbox
        refused = True
    return {"uid": os.getuid(), "size": len(blob), "refused": refused,
            "echo": bytes(1024**2)}           # a result that comes back as a spool file

@distribute_task(target="small")
def outer(private):
    return get(probe(big, private))

out = get([probe(big, get_arguments()["private"]), outer(get_arguments()["private"])])
save_result([{k: v for k, v in o.items() if k != "echo"} | {"echo": len(o["echo"])}
             for o in out] + [os.getuid()])
"""


@pytest.mark.parametrize("where", ["service", "isolated_service"])
def test_tasks_run_as_the_job_account_and_move_big_values_through_spool_files(
        where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    svc: RunningService = request.getfixturevalue(where)
    client = svc.client()
    private = str(svc.data_dir)      # 0711 under isolation: not listable by the job account
    out = result_of(run_program(client, tmp_path, ISOLATED, private=private))
    direct, nested, job_uid = out
    for task in (direct, nested):
        assert task["uid"] == job_uid
        assert task["size"] == 3 * 1024**2 and task["echo"] == 1024**2
        # as root (the tests' own service runs user code as root) nothing is refused
        assert task["refused"] is (job_uid != 0)
    if where == "isolated_service":
        assert job_uid != 0


def test_a_jobs_functions_and_objects_go_with_it_without_a_keyspace_scan(
        service: RunningService, tmp_path: Path) -> None:
    from tasks.core import defaults as d

    # given a job that ships a task function and put()s an object
    client = service.client()
    job = run_program(client, tmp_path, """
from qhybrid import distribute_task, get, put, save_result

@distribute_task(target="small")
def twice(x):
    return 2 * len(x)

ref = put("abc")
save_result(get([twice("ab"), twice("abcd")]))
""")
    assert result_of(job) == [4, 8]
    r = service.registry.r
    # then once it ended, neither is left in Redis, nor the set that named them
    wait_until(lambda: not r.keys(f"qh:job:{job.job_id}:fn:*") and
               not r.keys(f"qh:job:{job.job_id}:obj:*"), 20)
    assert not r.exists(d.JOB_BLOBS_KEY.format(job_id=job.job_id))


MAP_LOST = """
import time
from qhybrid import map_reduce, save_result

def slow(x):
    if x == 0:
        with open(MARKER, "a") as fh:     # one line per run of this map
            fh.write("run\\n")
        if len(open(MARKER).readlines()) == 1:
            time.sleep(120)               # the first run is killed with its worker
    return x + 1

save_result(map_reduce(slow, range(4), sum))
"""


def test_a_map_whose_worker_is_lost_runs_again_and_its_reduce_follows(
        tmp_path: Path, redis_server: str) -> None:
    import os
    import signal

    from tests.conftest import start_service

    running = start_service(tmp_path / "svc", redis_server, "file", None, db=14,
                            classes=["small"])
    try:
        # given a map_reduce whose one slow map is running, the others done
        marker = SHARED / f"map-lost-{uuid.uuid4().hex}"
        job = run_program(running.client(), tmp_path,
                          f"MARKER = {str(marker)!r}\n" + MAP_LOST)

        def slow_map_running() -> bool:
            maps = [t for t in job.tasks() if t.get("kind") == "map"]
            return len(maps) == 4 and sorted(t["status"] for t in maps) == \
                ["DONE", "DONE", "DONE", "RUNNING"]
        wait_until(slow_map_running, timeout=90)
        # when every process of the task worker running it dies
        name = next(n for n in running.service.procs if "tasks" in n)
        proc = running.service.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        running.service.respawn_exited(log=print)
        # then the map runs again on the new worker, and the reduce after it: the job is DONE
        assert result_of(job, timeout=150) == 1 + 2 + 3 + 4
        maps = [t for t in job.tasks() if t.get("kind") == "map"]
        assert all(t["status"] == "DONE" for t in maps)
        assert marker.read_text() == "run\nrun\n"       # the lost run, then the one that ended
    finally:
        running.service.stop()


PRINTS = """
from qhybrid import distribute_task, get

@distribute_task(target="small")
def shout(i):
    print("hello from task", i)
    print("no newline at the end", end="")
    return i

print("the job got", get([shout(i) for i in range(3)]))
"""


def test_what_tasks_print_is_in_the_jobs_log(client: Client, tmp_path: Path) -> None:
    import re

    job = run_program(client, tmp_path, PRINTS)
    job.wait(timeout=120)
    assert job.status() == "DONE", job.error_message()
    log = job.logs()
    for i in range(3):
        assert re.search(rf"^\(shout task=[0-9a-f]{{8}}\) hello from task {i}$", log, re.M), log
    assert len(re.findall(r"^\(shout task=[0-9a-f]{8}\) no newline at the end$", log, re.M)) == 3
    assert "the job got [0, 1, 2]" in log
    # each task's own log still has its output alone
    task = job.tasks()[0]
    own = client._json("GET", f"/jobs/{job.job_id}/tasks/{task['task_id']}")["log"]
    assert own == "hello from task 0\nno newline at the end"
