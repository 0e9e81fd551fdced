"""`qhybrid up`: one command runs the service; Ctrl-C stops it; a restart keeps everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from app.service import free_port
from qhybrid import Client, Program
from tests.conftest import write_program

MARK = "QHYBRID_TEST_UP_RUN"   # in the environment of every process a test's `qhybrid up` starts

Start = Callable[..., "subprocess.Popen[str]"]
_MARKS: dict[int, str] = {}    # pid of a started `qhybrid up`: its mark


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # inherited through exec, as nohup does


def _processes_of(proc: subprocess.Popen[str], marker: str) -> list[psutil.Process]:
    """Every process of one `qhybrid up`: its tree, and any that left it but bear its mark."""
    found: dict[int, psutil.Process] = {}
    try:
        found.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        try:
            if p.pid != proc.pid and p.environ().get(MARK) == marker:
                found[p.pid] = p
        except psutil.Error:
            continue
    return [p for p in found.values() if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(proc: subprocess.Popen[str], marker: str) -> None:
    """Whatever the test did: stop `qhybrid up` (its own stop first), then kill what is left."""
    left = _processes_of(proc, marker)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    left += _processes_of(proc, marker)
    for p in left:
        try:
            p.kill()            # psutil refuses a pid that now names another process
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)


@pytest.fixture
def start_up() -> Iterator[Start]:
    """Starts `qhybrid up`; at the end, even after a failure, no process of it is left."""
    started: list[tuple[subprocess.Popen[str], str]] = []

    def start(env: dict[str, str], data_dir: Path, port: int,
              sigint_ignored: bool = False) -> subprocess.Popen[str]:
        marker = uuid.uuid4().hex
        proc = subprocess.Popen(
            [sys.executable, "-m", "qhybrid.cli", "up", "--port", str(port), "--data-dir",
             str(data_dir), "--classes", "small"],
            env={**env, MARK: marker}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, preexec_fn=_ignore_sigint if sigint_ignored else None)
        started.append((proc, marker))
        _MARKS[proc.pid] = marker
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                return proc
        raise AssertionError("qhybrid up did not come up:\n" + "".join(lines))

    yield start
    for proc, marker in started:
        _reap(proc, marker)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """Send `sig`; then `qhybrid up` exits cleanly and no process it started is left."""
    marker = _MARKS[proc.pid]
    children = _processes_of(proc, marker)
    assert len(children) >= 3          # redis, web, worker (and their own children)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert not [p for p in children if _alive(p)]
    assert not _processes_of(proc, marker)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QHYBRID_", "AWS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")      # where Client() looks
    return env


def test_up_serves_stops_and_restarts_with_everything_kept(start_up: Start,
                                                          tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "shared").mkdir()
    env["QHYBRID_SANDBOX_BIND"] = str(tmp_path / "shared")  # the one place jobs write markers
    data_dir = tmp_path / "data"
    port = free_port()

    # given the service started by its one command
    up = start_up(env, data_dir, port)
    try:
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        client = Client()                                  # no configuration needed
        assert client.url == f"http://127.0.0.1:{port}"
        program = client.upload(Program(title="keep", entrypoint="main.py", working_dir=write_program(
            tmp_path / "src", "from qhybrid import save_result\nsave_result({'kept': [1, 2]})\n")))
        job = program.run()
        assert job.result(timeout=60) == {"kept": [1, 2]}
        made = subprocess.run([sys.executable, "-m", "qhybrid.cli", "user", "create", "bob"],
                              env={**env, "QHYBRID_DATA_DIR": str(data_dir)},
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        bob = Client(url=client.url, token=made.stdout.strip())
        assert bob.jobs() == []
        # a worker that crashes is started again, and jobs keep running
        worker = next(p for p in psutil.Process(up.pid).children(recursive=True)
                      if "jobs.small" in " ".join(p.cmdline()))
        worker.kill()
        assert program.run().result(timeout=90) == {"kept": [1, 2]}
        # a job still running when the service stops runs again after the restart
        counter = tmp_path / "shared" / "attempts"
        slow = client.upload(Program(title="slow", entrypoint="main.py", working_dir=write_program(
            tmp_path / "slow", f"import time\nfrom qhybrid import save_result\n"
            f"with open({str(counter)!r}, 'a') as fh: fh.write('x')\n"
            f"n = len(open({str(counter)!r}).read())\n"
            f"time.sleep(120 if n == 1 else 0)\nsave_result({{'attempt': n}})\n"))).run()
        deadline = time.monotonic() + 30
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        del os.environ["XDG_CONFIG_HOME"]
    # when Ctrl-C arrives, every process it started stops
    _stop(up)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

    # then, started again, it finds the earlier job, program, result and users
    up = start_up(env, data_dir, port)
    try:
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        again = Client()
        assert again.token == client.token
        assert again.job(job.job_id).status() == "DONE"
        assert again.job(job.job_id).result() == {"kept": [1, 2]}
        assert [p.title for p in again.programs()] == ["keep", "slow"]
        assert again.run("keep").result(timeout=60) == {"kept": [1, 2]}
        assert again.job(slow.job_id).result(timeout=60) == {"attempt": 2}
        details = [e.get("detail") or "" for e in again.job(slow.job_id).events()]
        assert any("worker running the job stopped" in d for d in details), details
        assert Client(url=again.url, token=bob.token).jobs() == []
    finally:
        del os.environ["XDG_CONFIG_HOME"]
    _stop(up)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_stops_on_a_signal_even_when_started_with_sigint_ignored(
        start_up: Start, tmp_path: Path, sig: int) -> None:
    # given qhybrid up started as nohup, `cmd &` in a script or a Procfile runner start it
    up = start_up(_env(tmp_path), tmp_path / "data", free_port(), sigint_ignored=True)
    # when Ctrl-C (SIGINT) or SIGTERM arrives, then it stops with every process it started
    _stop(up, sig)


def test_procfile_is_what_qhybrid_up_runs() -> None:
    made = subprocess.run([sys.executable, "-m", "qhybrid.cli", "procfile"], capture_output=True,
                          text=True, timeout=60, check=True)
    committed = (Path(__file__).resolve().parent.parent / "Procfile").read_text()
    assert made.stdout == committed, "regenerate it: qhybrid procfile > Procfile"
    names = [line.split(":")[0] for line in committed.splitlines() if line and line[0] != "#"]
    assert names[:3] == ["web", "jobs-small", "tasks-small"] and names[-1] == "devices"
