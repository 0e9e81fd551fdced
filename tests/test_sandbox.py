"""The job sandbox holds against a hostile program, submitted as a user would submit it."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

from app.service import free_port
from qhybrid import Client, Program
from tests.conftest import RunningService, job_processes, run_cli, wait_until, write_program


def _run(client: Client, tmp_path: Path, title: str, source: str, **args: object):  # type: ignore[no-untyped-def]
    program = client.upload(Program(title=title, entrypoint="main.py",
                                    working_dir=write_program(tmp_path / title, source)))
    return program.run(**args)


SPY = r'''
import glob, json, os, socket
from qhybrid import get_arguments, save_result

args = get_arguments()
seen = {}
for path in args["paths"]:
    try:
        seen[path] = sorted(os.listdir(path))[:5] if os.path.isdir(path) else open(path).read(50)
    except OSError as exc:
        seen[path] = type(exc).__name__
sockets = {}
own = os.environ["QHYBRID_SUPERVISOR_SOCKET"]
for path in set(args["sockets"] + glob.glob("/tmp/qh-*/s")) - {own}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(json.dumps({"op": "job_info"}).encode() + b"\n")
        sockets[path] = s.recv(500).decode()
    except OSError as exc:
        sockets[path] = type(exc).__name__
mine = os.path.dirname(os.environ["QHYBRID_RESULTS_DIR"])
save_result({"seen": seen, "sockets": sockets, "root": sorted(os.listdir("/")),
             "tmp": os.listdir("/tmp"), "procs": [p for p in os.listdir("/proc") if p.isdigit()],
             "own_dir": sorted(os.listdir(mine)), "mine": os.path.basename(mine)})
'''

SLEEPER = ("import os, time\nprint(os.environ['QHYBRID_SUPERVISOR_SOCKET'], flush=True)\n"
           "time.sleep(120)\n")


def test_a_job_sees_nothing_of_the_service_nor_of_other_jobs(service: RunningService,
                                                             tmp_path: Path) -> None:
    # given another user's job running beside it, with its supervisor socket
    other = _run(service.client(), tmp_path, "victim", SLEEPER)
    victim_socket = wait_until(lambda: other.logs().strip(), timeout=60)
    assert job_processes(other.job_id)
    data = service.data_dir
    config = Path.home() / ".config" / "qhybrid" / "config.json"
    paths = [str(data), str(data / "redis" / "url"), str(data / "redis" / "password"),
             str(data / "storage"), str(data / "work"), str(config), str(config.parent.parent),
             "/home", "/var",
             str(Path(victim_socket).parent)]
    # when a hostile program looks for them
    spy = _run(service.client(), tmp_path, "spy", SPY, paths=paths, sockets=[victim_socket])
    seen = spy.result(timeout=120)
    other.cancel()
    # then the Redis URL and password, the storage, the config file, the other job's
    # directory and socket are not there at all: of the data dir, only the path to its own
    # directory exists, and only its own processes
    seen_paths = seen["seen"]
    assert seen_paths.pop(str(data)) == ["work"]
    assert seen_paths.pop(str(data / "work")) == [seen["mine"]]
    assert {str(v) for v in seen_paths.values()} == {"FileNotFoundError"}, seen_paths
    assert set(seen["sockets"].values()) <= {"FileNotFoundError", "ConnectionRefusedError"}, \
        seen["sockets"]
    assert victim_socket in seen["sockets"]
    assert len([p for p in seen["tmp"] if p.startswith("qh-") and "shared" not in p]) == 1  # its own
    assert len(seen["procs"]) <= 4, seen["procs"]     # bwrap, its shell, the job
    assert "results" in seen["own_dir"] and "src" in seen["own_dir"]


def test_a_job_run_as_root_reads_nothing_an_unprivileged_account_could_not(
        service: RunningService, tmp_path: Path) -> None:
    # given a worker running as root, without a job account (the default `qhybrid up`)
    private = ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private"]
    private = [p for p in private if os.path.exists(p)]
    assert private
    # when a program reads what only root may read
    spy = _run(service.client(), tmp_path, "root-spy", SPY, paths=private + ["/etc/passwd"],
               sockets=[])
    seen = spy.result(timeout=120)["seen"]
    # then files cannot be opened (an empty device node covers them) and directories list
    # nothing, while the rest of /etc is there
    assert all(seen[p] in ("", [], "PermissionError") for p in private), seen
    assert seen["/etc/passwd"].startswith("root:")


ESCAPES = r'''
import os, subprocess, sys, time
from qhybrid import get_arguments
# a new session, a double-fork daemon and a fork loop, each trying to outlive the job
subprocess.Popen(["sleep", "300"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
if os.fork() == 0:
    os.setsid()
    while True:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        time.sleep(0.05)
for name in ("/tmp/left-behind", "/dev/shm/left-behind"):
    with open(name, "w") as fh:
        fh.write("x" * 4096)
print("spawned", flush=True)
time.sleep(get_arguments()["sleep"])
'''

LOOK = r'''
import os
from qhybrid import save_result
save_result({"tmp": [n for n in os.listdir("/tmp") if "left" in n],
             "shm": os.listdir("/dev/shm")})
'''


def test_nothing_the_job_started_survives_its_end_or_a_cancel(service: RunningService,
                                                              tmp_path: Path) -> None:
    client = service.client()
    # given a job that leaves daemons, a fork loop and temp files behind, and ends
    ended = _run(client, tmp_path, "escape", ESCAPES, sleep=1)
    ended.wait(timeout=120)
    assert ended.status() == "DONE", ended.error_message()
    # then nothing of it runs any more
    wait_until(lambda: not job_processes(ended.job_id), timeout=10)
    # given the same job canceled while it runs
    canceled = _run(client, tmp_path, "escape2", ESCAPES, sleep=300)
    wait_until(lambda: "spawned" in canceled.logs(), timeout=60)
    assert len(job_processes(canceled.job_id)) >= 4
    canceled.cancel()
    canceled.wait(timeout=30)
    assert canceled.status() == "CANCELED"
    wait_until(lambda: not job_processes(canceled.job_id), timeout=10)
    # and the next job finds none of their /tmp and /dev/shm files
    assert _run(client, tmp_path, "look", LOOK).result(timeout=60) == {"tmp": [], "shm": []}


def _ready_sandbox_processes(worker_pid: int | None = None) -> set[int]:
    """Host pids of the processes in sandboxes made ready ahead, not yet given a job (of
    the worker process `worker_pid`'s, when given: its cgroups are named after it)."""
    found = set()
    mark = f"/qh-{worker_pid}-" if worker_pid else "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cgroup") as fh:
                if any("/box-" in line and mark in line for line in fh):
                    found.add(int(pid))
        except OSError:
            continue
    return found


def test_a_job_starts_in_a_sandbox_made_ready_for_it_and_the_next_one_is_fresh(
        service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    program = client.upload(Program(title="ready", entrypoint="main.py", working_dir=write_program(
        tmp_path / "ready", "import os\nfrom qhybrid import save_result\n"
        "seen = [n for n in os.listdir('/tmp') if n.startswith('mark')]\n"
        "open('/tmp/mark-' + os.environ['QHYBRID_JOB_ID'], 'w').write('x')\n"
        "save_result(seen)\n")))
    # given an idle worker: its sandboxes are made, with their processes waiting for a job
    waiting = wait_until(_ready_sandbox_processes, timeout=60)
    # when a job comes
    job = program.run()
    assert job.result(timeout=60) == []
    # then its process is one of those that were waiting: nothing was forked for it
    assert int(service.registry.job_field(job.job_id, "pid") or 0) in waiting
    # and once it ended, nothing of it runs; the next job gets a sandbox of its own, which
    # holds none of the files the last one left in /tmp
    wait_until(lambda: not job_processes(job.job_id), timeout=10)
    wait_until(lambda: _ready_sandbox_processes() - waiting, timeout=60)
    assert program.run().result(timeout=60) == []


def test_a_ready_sandbox_that_gets_no_job_leaves_nothing_running(tmp_path: Path) -> None:
    from qhybrid.resources import ResourceClass
    from tasks.sandbox import box as sandbox
    from tasks.sandbox.environment import warm_parent
    from tasks.sandbox.ready import ReadyPlaces

    warm_parent()
    places = ReadyPlaces(tmp_path / "work")
    try:
        # given two places made ready for a class
        places.keep(ResourceClass("small", cpu=1, mem=512 * 1024**2), 2)
        wait_until(lambda: places.ready_count("small") == 2, timeout=60)
        waiting = _ready_sandbox_processes(os.getpid())
        assert len(waiting) >= 2
        # when the worker ends without a job for them, then their processes are gone
        places.close()
        wait_until(lambda: not _ready_sandbox_processes(os.getpid()), timeout=10)
        assert not list((tmp_path / "work").iterdir())
    finally:
        places.close()
        sandbox.shutdown()


GREEDY = r'''
import subprocess, sys
code = "x = b'x' * (1536 * 1024**2); import time; time.sleep(60)"
children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
for child in children:
    child.wait()
'''

FORKER = r'''
import subprocess
procs = [subprocess.Popen(["sleep", "60"]) for _ in range(5000)]
'''


def test_limits_hold_for_the_whole_process_tree(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    # given three children of 1.5 GiB each in the 2 GiB `small` class
    greedy = _run(client, tmp_path, "greedy", GREEDY)
    # and a job that starts more processes than a job may have
    forker = _run(client, tmp_path, "forker", FORKER)
    # then each ends ERROR with the limit it hit, and the service runs on
    greedy.wait(timeout=120)
    assert greedy.status() == "ERROR"
    assert "memory limit of 2 GiB" in greedy.error_message()
    forker.wait(timeout=120)
    assert forker.status() == "ERROR"
    assert "limit of 1024 processes" in forker.error_message()
    wait_until(lambda: not job_processes(greedy.job_id) and not job_processes(forker.job_id), 10)
    ok = _run(client, tmp_path, "after", "from qhybrid import save_result\nsave_result(1)\n")
    assert ok.result(timeout=60) == 1


def test_many_trivial_jobs_from_many_threads_all_end_done(service: RunningService,
                                                          tmp_path: Path) -> None:
    # given 500 trivial jobs submitted from 50 threads (QHYBRID_TEST_LOAD_JOBS to change)
    total = int(os.environ.get("QHYBRID_TEST_LOAD_JOBS", "500"))
    client = service.client()
    program = client.upload(Program(title="trivial", entrypoint="main.py", working_dir=write_program(
        tmp_path / "trivial", "from qhybrid import save_result\nsave_result({'ok': True})\n")))
    started = time.monotonic()

    def submit(n: int) -> list[str]:
        return [program.run().job_id for _ in range(n)]

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        ids = [i for batch in pool.map(submit, [total // 50] * 50) for i in batch]
    # then every one ends DONE: no spurious "exited with code 255"
    reg = service.registry
    wait_until(lambda: all(reg.job_field(i, "status") in ("DONE", "ERROR") for i in ids[-50:]),
               timeout=900, interval=1.0)
    wait_until(lambda: all(reg.job_field(i, "status") in ("DONE", "ERROR") for i in ids),
               timeout=120, interval=1.0)
    failed = {i: reg.job_field(i, "error") for i in ids if reg.job_field(i, "status") != "DONE"}
    assert failed == {}
    print(f"{total} trivial jobs from 50 threads: {time.monotonic() - started:.0f} s")


def test_up_refuses_a_host_that_cannot_sandbox(tmp_path: Path) -> None:
    # given a host without bubblewrap (nothing on PATH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QHYBRID_", "AWS_"))}
    env.update(PATH=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    args = ("up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"))
    # then `qhybrid up` stops before starting anything, and names the way out
    done = run_cli(*args, env=env)
    assert done.returncode != 0
    assert "bubblewrap" in done.stderr and "QHYBRID_SANDBOX=off" in done.stderr
    assert not (tmp_path / "data" / "redis" / "url").exists()
    # and a setting it does not understand is an error, not a guess
    done = run_cli(*args, env={**env, "QHYBRID_SANDBOX": "maybe"})
    assert done.returncode != 0 and "QHYBRID_SANDBOX='maybe'" in done.stderr


def test_the_sandbox_shows_only_the_import_path_entries_the_service_imports_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import tasks
    from tasks.sandbox.bwrap import python_paths

    here = os.path.dirname(os.path.dirname(os.path.abspath(tasks.__file__)))
    # given a worker started with `python -m` in / and an unused directory on its path, its
    # own code found by an editable install's import hook (no path entry of its own)
    unused = tmp_path / "unused"
    unused.mkdir()
    rest = [p for p in sys.path if p and os.path.abspath(p) != here]
    monkeypatch.setattr(sys, "path", ["/", str(unused), *rest])
    shown = python_paths()
    # then neither is shown, while the service's own code and Python are
    assert "/" not in shown and str(unused) not in shown
    assert any(here == p or here.startswith(p + "/") for p in shown)
    assert any(sys.base_prefix == p or sys.base_prefix.startswith(p + "/") for p in shown)


def test_a_bubblewrap_that_hangs_fails_the_start_in_time(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.core import defaults as d
    from tasks.sandbox.box import Sandbox
    from tasks.sandbox.bwrap import SandboxUnavailable
    from tasks.sandbox.child import ChildSpec

    # given a bwrap that never makes its sandbox
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho stuck >&2\nexec sleep 300\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(d, "SANDBOX_START_TIMEOUT_S", 2.0)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    box = Sandbox([job_dir], mem=256 * 1024**2, cpu=1, on=True)
    spec = ChildSpec(cwd=str(job_dir), argv=["x"], env={}, log_path=str(job_dir / "log"),
                     error_path=str(job_dir / "err"), sys_path=[])
    # when a job would start in it, then it fails within the time-out, saying why
    started = time.monotonic()
    try:
        with pytest.raises(SandboxUnavailable, match="did not make the sandbox within 2 s: stuck"):
            box.spawn(spec)
        assert time.monotonic() - started < 10
        assert box.bwrap is not None and box.bwrap.poll() is not None    # and bwrap is gone
    finally:
        box.close()


def test_sandbox_off_runs_user_code_unsandboxed_and_says_so(tmp_path: Path,
                                                            redis_server: str) -> None:
    from tests.conftest import start_service

    # given a service an operator started with QHYBRID_SANDBOX=off (a single-user laptop)
    running = start_service(tmp_path / "svc", redis_server, "file", None, db=13,
                            extra_env={"QHYBRID_SANDBOX": "off"}, classes=["small"])
    try:
        # when a job looks around
        job = _run(running.client(), tmp_path, "unboxed",
                   "import os\nfrom qhybrid import save_result\n"
                   "save_result({'procs': len([p for p in os.listdir('/proc') if p.isdigit()]),"
                   " 'uid': os.getuid()})\n")
        seen = job.result(timeout=120)
        # then it ran, in the host's own PID namespace: off means off, nothing pretends
        assert job.status() == "DONE"
        assert seen["procs"] > 10
        from app.service import check_sandbox

        assert "runs without a sandbox" in check_sandbox({**os.environ, "QHYBRID_SANDBOX": "off"})
    finally:
        running.service.stop()
