"""`qhybrid up` run by an ordinary account: the sandbox holds there as it does for root.

The whole service runs as `nobody`, in cgroups delegated to it (what `systemd-run --user -p
Delegate=yes` gives a user on cgroup v2; here, on v1, directories chowned to it), bubblewrap
using a user namespace. Only one thing differs from a user's own `qhybrid up`: this machine's
Python lives in /root, which only root may enter, so the service's processes see /root as a
tmpfs holding the Python installation alone (a private mount namespace of their own).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.service import free_port
from qhybrid import Client
from tests.conftest import job_processes, wait_until
from tests.test_sandbox import ESCAPES, GREEDY, SPY, _run

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
CONTROLLERS = ("memory", "pids", "freezer", "cpu")


def _v1_cgroup_dirs() -> dict[str, Path]:
    """This process's cgroup directory for each controller qhybrid uses (cgroup v1)."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mounts") as fh:
        for line in fh:
            _, where, kind, opts, *_ = line.split()
            if kind == "cgroup":
                for c in opts.split(","):
                    if c in CONTROLLERS:
                        mounts.setdefault(c, Path(where))
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, names, path = line.rstrip("\n").split(":", 2)
            for c in names.split(","):
                own[c] = path
    return {c: mounts[c] / own[c].lstrip("/") for c in CONTROLLERS if c in mounts and c in own}


def _hidden_home_script() -> str:
    """Shell commands: each directory the service's Python needs that lies below one only root
    may enter (/root here) stays visible, alone, on a 0755 tmpfs over that directory."""
    needed = {Path(p).resolve() for p in (sys.base_prefix, sys.prefix, ROOT)}
    by_top: dict[Path, list[Path]] = {}
    for path in sorted(needed):
        closed = [a for a in reversed(path.parents) if a != Path("/") and
                  not os.stat(a).st_mode & 0o001]
        if closed:
            by_top.setdefault(closed[0], []).append(path)
    steps, fd = [], 3
    for top, keep in by_top.items():
        opened = list(enumerate(keep, fd))
        fd += len(keep)
        steps += [f"exec {n}<{shlex.quote(str(k))}" for n, k in opened]
        steps.append(f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(top))}")
        for n, k in opened:
            steps += [f"mkdir -p {shlex.quote(str(k))}",
                      f"mount --no-canonicalize --bind /proc/self/fd/{n} {shlex.quote(str(k))}",
                      f"exec {n}<&-"]
    return " && ".join(steps) if steps else "true"


@pytest.fixture
def user_service(tmp_path: Path) -> Iterator[dict[str, object]]:
    if os.geteuid() != 0:
        pytest.skip("delegating cgroups to another account needs root")
    cgroups = _v1_cgroup_dirs()
    if Path("/sys/fs/cgroup/cgroup.controllers").exists() or set(cgroups) != set(CONTROLLERS):
        pytest.skip("this test delegates cgroup v1 directories (the host has cgroup v2)")
    # given a home of the account's own (not below the tests' base directory, which only
    # root may enter), and cgroups delegated to it
    home = Path(tempfile.mkdtemp(prefix="qh-user-home-"))
    home.chmod(0o700)
    os.chown(home, NOBODY, NOBODY)
    name = f"qh-unpriv-{uuid.uuid4().hex[:8]}"
    delegated = []
    for parent in cgroups.values():
        d = parent / name
        d.mkdir()
        for entry in [d, *d.iterdir()]:
            os.chown(entry, NOBODY, NOBODY)
        delegated.append(d)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QHYBRID_", "AWS_", "PYTEST_"))}
    env.update({"HOME": str(home), "QHYBRID_DATA_DIR": str(home / "data"),
                "PATH": "/usr/bin:/bin"})
    join = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in delegated)
    up = [sys.executable, "-m", "qhybrid.cli", "up", "--port", str(port), "--classes", "small"]
    script = (f"{_hidden_home_script()} && {join} && exec setpriv --reuid={NOBODY} "
              f"--regid={NOBODY} --clear-groups " + " ".join(shlex.quote(a) for a in up))
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                body = requests.get(url + "/healthz", timeout=2).json()
            except (requests.RequestException, ValueError):
                assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
                return False
            queues = body.get("queues") or {}
            return body.get("redis") == "ok" and all(
                queues.get(q) for q in ("jobs.small", "tasks.small", "device.aer_simulator"))
        wait_until(ready, timeout=180, interval=0.2)
        token = json.loads((home / ".config" / "qhybrid" / "config.json").read_text())["token"]
        yield {"client": Client(url=url, token=token), "home": home, "proc": proc,
               "log": tmp_path / "up.log"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for d in delegated:           # anything left in them, then the directories
            for procs in d.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(sub)
            _rmdir(d)
        shutil.rmtree(home, ignore_errors=True)


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def test_the_sandbox_holds_when_an_ordinary_account_runs_the_service(
        user_service: dict[str, object], tmp_path: Path) -> None:
    client: Client = user_service["client"]  # type: ignore[assignment]
    home: Path = user_service["home"]  # type: ignore[assignment]
    data = home / "data"
    # the service runs as that account, not as root
    up = psutil_process(user_service["proc"].pid)  # type: ignore[attr-defined]
    assert up.uids().real == NOBODY
    # when a hostile program looks for the service's secrets and files
    paths = [str(data / "redis" / "url"), str(data / "redis" / "password"),
             str(data / "storage"), str(home / ".config" / "qhybrid" / "config.json"),
             str(home), "/etc/shadow"]
    spy = _run(client, tmp_path, "spy", SPY, paths=paths, sockets=[])
    seen = spy.result(timeout=120)
    # then none of them is there (the shadow file reads empty), and only its own processes
    shadow = seen["seen"].pop("/etc/shadow")
    assert shadow in ("", "PermissionError"), shadow
    assert seen["seen"].pop(str(home)) == ["data"]      # only the way to its own directory
    assert {str(v) for v in seen["seen"].values()} == {"FileNotFoundError"}, seen["seen"]
    assert len(seen["procs"]) <= 4, seen["procs"]
    # and what a job starts does not outlive a cancel
    escaper = _run(client, tmp_path, "escaper", ESCAPES, sleep=120)
    wait_until(lambda: "spawned" in escaper.logs(), timeout=120)
    assert job_processes(escaper.job_id)
    escaper.cancel()
    escaper.wait(timeout=60)
    wait_until(lambda: not job_processes(escaper.job_id), 20)
    # and the memory limit holds for the whole tree, in the delegated cgroup
    greedy = _run(client, tmp_path, "greedy", GREEDY)
    greedy.wait(timeout=120)
    assert greedy.status() == "ERROR"
    assert "memory limit of 2 GiB" in greedy.error_message()


def psutil_process(pid: int):  # type: ignore[no-untyped-def]
    """The service's own process: `unshare` execs `sh`, which execs `setpriv`, then Python."""
    import psutil

    return psutil.Process(pid)
