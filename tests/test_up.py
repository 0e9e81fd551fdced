"""`qhybrid up`: one command runs the service; Ctrl-C stops it; a restart keeps everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from app.service import free_port
from qhybrid import Client, Program
from tests.conftest import UP_MARKS, Start, alive, processes_of, write_program


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """Send `sig`; then `qhybrid up` exits cleanly and no process it started is left."""
    marker = UP_MARKS[proc.pid]
    children = processes_of(proc, marker)
    assert len(children) >= 3          # redis, web, worker (and their own children)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert not [p for p in children if alive(p)]
    assert not processes_of(proc, marker)


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
                      if "tasks.worker jobs small" in " ".join(p.cmdline()))
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
