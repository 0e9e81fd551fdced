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
from tests.conftest import write_program


def _start(env: dict[str, str], data_dir: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qhybrid.cli", "up", "--port", str(port), "--data-dir",
         str(data_dir), "--classes", "small"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops it" in line:
            return proc
    proc.kill()
    raise AssertionError("qhybrid up did not come up:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> list[int]:
    children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(children) >= 3          # redis, web, worker (and their own children)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    return children


def test_up_serves_stops_and_restarts_with_everything_kept(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QHYBRID_", "AWS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")      # where Client() looks
    (tmp_path / "shared").mkdir()
    env["QHYBRID_SANDBOX_BIND"] = str(tmp_path / "shared")  # the one place jobs write markers
    data_dir = tmp_path / "data"
    port = free_port()

    # given the service started by its one command
    up = _start(env, data_dir, port)
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
        children = _stop(up)
    assert not [pid for pid in children if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

    # then, started again, it finds the earlier job, program, result and users
    up = _start(env, data_dir, port)
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


def test_procfile_is_what_qhybrid_up_runs() -> None:
    made = subprocess.run([sys.executable, "-m", "qhybrid.cli", "procfile"], capture_output=True,
                          text=True, timeout=60, check=True)
    committed = (Path(__file__).resolve().parent.parent / "Procfile").read_text()
    assert made.stdout == committed, "regenerate it: qhybrid procfile > Procfile"
    names = [line.split(":")[0] for line in committed.splitlines() if line and line[0] != "#"]
    assert names[:3] == ["web", "jobs-small", "tasks-small"] and names[-1] == "devices"
