"""Faults the service survives by itself: Redis killed under queued jobs, the web's master killed.

Each test runs its own processes (never the session's Redis, which other tests share).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import requests

from app.service import Service, free_port
from qhybrid import Client, Program
from tests.conftest import ROOT, Start, wait_until, write_program

JOBS = 20


def _child(up: psutil.Process, name: str) -> psutil.Process:
    return next(p for p in up.children(recursive=True) if p.name() == name
                or name in " ".join(p.cmdline()))


def test_redis_killed_under_queued_jobs_comes_back_and_loses_none(start_up: Start,
                                                                  tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QHYBRID_", "AWS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    up = start_up(env, tmp_path / "data", free_port())
    try:
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        client = Client()
        program = client.upload(Program(title="t", entrypoint="main.py", working_dir=write_program(
            tmp_path / "src", "import time\nfrom qhybrid import get_arguments, save_result\n"
            "time.sleep(0.05)\nsave_result(get_arguments())\n")))
        # given jobs queued and running
        jobs = [program.run(n=i) for i in range(JOBS)]
        ups = psutil.Process(up.pid)
        redis = _child(ups, "redis-server")

        # when Redis is killed, and kept down a while (`qhybrid up` paused, so it cannot
        # restart it yet)
        up.send_signal(signal.SIGSTOP)
        redis.kill()
        wait_until(lambda: not redis.is_running() or redis.status() == psutil.STATUS_ZOMBIE)
        headers = {"Authorization": f"Bearer {client.token}"}
        seen: dict[str, requests.Response] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            for name, url in [("job", f"/api/v1/jobs/{jobs[0].job_id}"), ("list", "/api/v1/jobs"),
                              ("healthz", "/healthz")]:
                resp = requests.get(client.url + url, headers=headers, timeout=30)
                assert resp.status_code != 500, resp.text
                if resp.status_code == 503:
                    seen[name] = resp
            run = requests.post(client.url + "/api/v1/programs/t/run", json={}, headers=headers,
                                timeout=30)
            assert run.status_code == 503, run.text      # refused, not half-submitted
        # then the API answers 503 with Retry-After, as problem+json; /healthz says why
        for name in ("job", "list"):
            assert seen[name].headers["Content-Type"] == "application/problem+json"
            assert int(seen[name].headers["Retry-After"]) > 0
        assert "unreachable" in seen["healthz"].json()["redis"]

        # and once `qhybrid up` runs again, it restarts Redis on the same port and AOF, the
        # web and every worker reconnect by themselves, and every queued job completes
        up.send_signal(signal.SIGCONT)
        wait_until(lambda: _redis_ok(client.url), timeout=60, interval=0.2)
        results = [job.result(timeout=120) for job in jobs]
        assert results == [{"n": i} for i in range(JOBS)]
        assert [j.status() for j in client.jobs(limit=1000)].count("DONE") == JOBS
        assert program.run(n="after").result(timeout=60) == {"n": "after"}
    finally:
        os.environ.pop("XDG_CONFIG_HOME", None)
        try:
            up.send_signal(signal.SIGCONT)
        except ProcessLookupError:
            pass
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    # and `qhybrid up` said what it did
    assert "redis-server exited (-9); starting it again on port" in out, out
    assert "redis-server is back" in out, out


def test_the_web_comes_back_after_its_master_is_killed(tmp_path: Path, redis_server: str) -> None:
    """The restarted web binds beside an orphaned worker (SO_REUSEPORT), and an orphaned
    worker does not outlive its master (PR_SET_PDEATHSIG)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    env.update({"QHYBRID_REDIS_URL": f"{redis_server}/6", "QHYBRID_DATA_DIR": str(tmp_path),
                "QHYBRID_STORAGE_URL": f"file://{tmp_path / 'storage'}",
                "QHYBRID_SECRET_KEY": "test", "PYTHONPATH": str(ROOT)})
    service = Service(host="127.0.0.1", port=free_port(), env=env, classes=[],
                      log_dir=tmp_path / "logs")
    service.start_web()
    try:
        wait_until(lambda: _healthy(service.url), timeout=60, interval=0.1)
        master = psutil.Process(service.procs["web"].pid)
        [worker] = master.children()
        # given an old worker that cannot exit yet (stopped), when its master is killed
        worker.suspend()
        master.kill()
        service.procs["web"].wait(10)
        # then the web started again serves, though the old worker still holds the port
        assert service.respawn_exited(lambda _: None) == ["web"]
        wait_until(lambda: _healthy(service.url), timeout=60, interval=0.1)
        assert worker.is_running() and worker.status() == psutil.STATUS_STOPPED
        worker.kill()
        worker.wait(10)
        # and a running worker whose master dies exits by itself, at once
        master = psutil.Process(service.procs["web"].pid)
        [worker] = wait_until(lambda: master.children(), timeout=30)
        master.kill()
        service.procs["web"].wait(10)
        worker.wait(15)
    finally:
        service.stop()


def _redis_ok(url: str) -> bool:
    """/healthz finds Redis and a worker on jobs.small (only `small` runs here)."""
    body = requests.get(url + "/healthz", timeout=5).json()
    return bool(body["redis"] == "ok" and body["queues"].get("jobs.small"))


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False

