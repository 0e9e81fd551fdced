"""Simulated hosts on one machine: each a separate set of processes with its own filesystem.

A host is a mount, UTS and PID namespace (`unshare`, as root): its own hostname, a private
tmpfs on /tmp (its data and work directories live there) and on /dev/shm, and its own process
tree, whose every process dies with one SIGKILL of the namespace's first process. Hosts
share the network namespace, so they reach the one Redis and the one S3 endpoint over
127.0.0.1 and nothing else: the way several machines share only those two services.

    python -m tests.simhosts web PORT          # inside a host: the web app
    python -m tests.simhosts worker CLASS...   # inside a host: a job and a task worker per class

The tests (tests/test_multihost.py) and benchmarks/scale_out.py start hosts with `SimHost`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
HOST_BASE = Path("/tmp/qhybrid")           # inside the host's private /tmp
CLASSES_ENV = "QH_SIMHOST_CLASSES_TOML"    # resource classes, written inside each host


def _installed_below_tmp() -> list[str]:
    """The directories right below /tmp that hold this checkout or its Python (a fresh clone
    in /tmp, say): each host keeps them, read-only, on top of its private /tmp."""
    paths = {ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return sorted({f"/tmp/{p.relative_to('/tmp').parts[0]}" for p in paths
                   if p.is_relative_to("/tmp") and p != Path("/tmp")})


def _private_tmp() -> str:
    """Shell commands: a private /tmp and /dev/shm, with `_installed_below_tmp` still seen."""
    keep = _installed_below_tmp()
    opens = "".join(f"exec {3 + i}<{shlex.quote(k)} && " for i, k in enumerate(keep))
    # mount would resolve /proc/self/fd/N to the (now hidden) path: --no-canonicalize
    binds = "".join(f" && mkdir -p {shlex.quote(k)} && mount --no-canonicalize --bind "
                    f"/proc/self/fd/{3 + i} {shlex.quote(k)} && mount -o remount,bind,ro "
                    f"{shlex.quote(k)}" for i, k in enumerate(keep))
    closes = "".join(f" && exec {3 + i}<&-" for i in range(len(keep)))
    return (f"{opens}mount -t tmpfs -o mode=1777 tmpfs /tmp{binds}{closes}"
            " && mount -t tmpfs tmpfs /dev/shm")


def can_simulate_hosts() -> str:
    """'' when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "simulated hosts need root (mount and PID namespaces)"
    if not shutil.which("unshare"):
        return "simulated hosts need util-linux's unshare"
    probe = subprocess.run(["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
                            "--propagation", "private", "sh", "-c",
                            f"{_private_tmp()} && hostname probe"],
                           capture_output=True, text=True, timeout=30)
    return "" if probe.returncode == 0 else f"unshare refused: {probe.stderr.strip()}"


@dataclass
class SimHost:
    """One simulated host seen from outside: its `unshare` process and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, role_argv: Sequence[str], env: dict[str, str], log_dir: Path,
              cpus: Sequence[int] | None = None) -> SimHost:
        """Start host `name` running `python -m tests.simhosts <role_argv>` with `env`
        (only the shared settings: each host makes its own data and work directories)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        pin = f"taskset -c {','.join(map(str, cpus))} " if cpus else ""
        agent = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "tests.simhosts",
                                                   *role_argv])
        script = f"{_private_tmp()} && hostname {shlex.quote(name)} && cd / && exec {pin}{agent}"
        host_env = {**env, "PYTHONPATH": str(ROOT)}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
                 "--propagation", "private", "--kill-child", "sh", "-c", script],
                env=host_env, stdout=log, stderr=subprocess.STDOUT)
        return cls(name=name, proc=proc, log_path=log_path)

    def processes(self) -> list[psutil.Process]:
        """Every process of the host (seen from outside)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL every process of the host at once: its PID namespace's first process
        dies, and the kernel kills the rest of the namespace with it."""
        for p in psutil.Process(self.proc.pid).children():
            p.kill()
        self.proc.wait(30)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the host gently (its workers hand running jobs back), then kill what is left."""
        if self.proc.poll() is None:
            for p in self.processes()[:1]:
                p.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return f"--- {self.name}\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"--- {self.name}: no log"


# --- inside a host ---------------------------------------------------------------------------
def _host_env() -> dict[str, str]:
    env = dict(os.environ)
    HOST_BASE.mkdir(parents=True, exist_ok=True)
    env["QHYBRID_DATA_DIR"] = str(HOST_BASE / "data")
    env["QHYBRID_WORK_DIR"] = str(HOST_BASE / "work")
    toml = env.pop(CLASSES_ENV, "")
    if toml:
        path = HOST_BASE / "resource_classes.toml"
        path.write_text(toml)
        env["QHYBRID_RESOURCE_CLASSES"] = str(path)
    from app.service import prepare_dirs
    from tasks.core.settings import Settings

    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prepare_dirs(settings, env)
    return env


def _run(argvs: list[list[str]], env: dict[str, str], out: IO[Any]) -> int:
    procs = [subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True) for argv in argvs]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)     # the first process of a PID namespace needs one
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 8
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return 0 if stopping else 1


def main(argv: Sequence[str] | None = None) -> int:
    from app.service import task_worker_command, web_command, worker_command

    args = list(sys.argv[1:] if argv is None else argv)
    env = _host_env()
    if args[0] == "web":
        argvs = [web_command("127.0.0.1", args[1])]
    elif args[0] == "worker":
        argvs = [cmd for cls in args[1:] for cmd in (worker_command(cls),
                                                       task_worker_command(cls))]
    else:
        raise SystemExit(f"unknown role {args[0]!r}")
    print(f"host {os.uname().nodename}: {' | '.join(' '.join(a[1:4]) for a in argvs)}",
          flush=True)
    return _run(argvs, env, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
