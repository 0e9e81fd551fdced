"""The job sandbox: where every job attempt and every task executor runs user code.

Two standard parts make it:

- **bubblewrap** (`bwrap`) builds the namespaces: a new mount namespace that holds the
  system read-only (`/usr`, `/etc`, the Python installation), private size-limited `/tmp`
  and `/dev/shm`, the job's own directories and its supervisor socket directory and nothing
  else of ours; new PID, IPC and UTS namespaces. The network is shared.
- a **cgroup** per sandbox (tasks.sandbox.cgroups) limits memory, processes and CPU for the whole tree
  and kills it at the end.

User code does not pay for a fresh Python and qiskit import: the worker's zygote
(tasks.sandbox.zygote), a warm Python started with an explicit clean environment, forks a process
that moves itself into the cgroup and joins the namespaces bubblewrap made (as `nsenter`
does), then forks the job's process there. That intermediate waits for the job's process
alone and sends its exit status back over the connection the supervisor opened: no process
shares its children with another thread's, so exit codes are read reliably.

When the sandbox closes, the namespace's first process ends (which makes the kernel kill
everything in the PID namespace) and the cgroup is killed (frozen, then killed, on v1); its
/tmp and /dev/shm go with the mount namespace. `QHYBRID_SANDBOX=off` runs user code without
it (a single-user laptop); nothing falls back to that silently.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.core import defaults as d
from tasks.sandbox.bwrap import (
    SANDBOX_ENV,
    SandboxUnavailable,
    bwrap_argv,
    enabled,
    extra_binds,
    hidden_paths,
    hint,
)
from tasks.sandbox.cgroups import CgroupTree, CgroupUnavailable, JobCgroup
from tasks.sandbox.child import ChildSpec

# --- the process-wide parts: cgroup tree, the thread that starts bwrap --------------------
_tree: CgroupTree | None = None
_tree_lock = threading.Lock()


def cgroup_tree() -> CgroupTree:
    global _tree
    with _tree_lock:
        if _tree is None:
            try:
                _tree = CgroupTree()
            except CgroupUnavailable as exc:
                raise SandboxUnavailable(f"{exc}{hint()}") from None
        return _tree


class _Starter:
    """One long-lived thread starts every bwrap process of this worker.

    bwrap --die-with-parent ends the sandbox when the thread that started it ends (the
    parent-death signal follows the thread, not the process); this thread lives as long as
    the worker, so sandboxes die with the worker and only with it.
    """

    def __init__(self) -> None:
        self._q: queue.Queue[tuple[Future[subprocess.Popen[bytes]], dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._run, name="sandbox-starter", daemon=True).start()

    def _run(self) -> None:
        while True:
            fut, kwargs = self._q.get()
            try:
                fut.set_result(subprocess.Popen(**kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        fut: Future[subprocess.Popen[bytes]] = Future()
        self._q.put((fut, kwargs))
        return fut.result()


_starter: _Starter | None = None


def _popen(**kwargs: Any) -> subprocess.Popen[bytes]:
    global _starter
    with _tree_lock:
        if _starter is None:
            _starter = _Starter()
    return _starter.popen(**kwargs)


class JobProcess:
    """The job's process as the supervisor sees it: its pid, liveness and exit code."""

    def __init__(self, conn: socket.socket, timeout: float) -> None:
        self._conn = conn
        self._buf = b""
        self.exitcode: int | None = None
        self._closed = False
        msg = self._read_message(timeout)
        if msg is None or "pid" not in msg:
            conn.close()
            raise SandboxUnavailable(f"the job's process did not start: {msg}")
        self.pid: int = int(msg["pid"])

    def _read_message(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._conn], [], [], wait)
            if not ready:
                raise TimeoutError
            chunk = self._conn.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        value: dict[str, Any] = json.loads(line)
        return value

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is not None or self._closed:
            return
        try:
            msg = self._read_message(timeout)
        except TimeoutError:
            return
        except OSError:
            msg = None
        if msg is None:         # the intermediate was killed with the sandbox
            self.exitcode = -signal.SIGKILL
        else:
            self.exitcode = int(msg.get("status", -signal.SIGKILL))
        self._conn.close()
        self._closed = True

    def is_alive(self) -> bool:
        self.join(0)
        return self.exitcode is None

    def close(self) -> None:
        if not self._closed:
            self._conn.close()
            self._closed = True
            if self.exitcode is None:
                self.exitcode = -signal.SIGKILL

    def start(self, spec: ChildSpec) -> None:
        """Hand a process made ready ahead (Zygote.spawn without a spec) the spec to run."""
        self._conn.sendall(json.dumps(asdict(spec)).encode() + b"\n")


class Zygote:
    """The warm parent of this worker's job processes (tasks.sandbox.zygote), started on demand.

    It gets an explicit environment: nothing that leads to credentials, and nothing of this
    (multithreaded) process's environment is changed to start it.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._dir = Path(tempfile.mkdtemp(prefix="qh-z"))   # 0700: only the service's account
        self.path = self._dir / "z"

    def ensure(self, wait: bool = True) -> None:
        """Start it unless it runs; with `wait`, until it has imported qiskit and listens."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self.path.unlink(missing_ok=True)
                self._ready = False
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "tasks.sandbox.zygote", str(self.path)], env=self.env,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            if not wait or self._ready:
                return
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if line.strip() != b"ready":
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                raise RuntimeError(f"the job process zygote did not start: {line[-500:]!r}")
            self._ready = True

    def spawn(self, spec: ChildSpec | None, ns_pid: int, cgroup_procs: list[str]) -> JobProcess:
        """The job's process in the sandbox; without `spec` it waits for JobProcess.start."""
        self.ensure()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.path))
            msg: dict[str, Any] = {"ns_pid": ns_pid, "cgroup_procs": cgroup_procs}
            if spec is not None:
                msg["spec"] = asdict(spec)
            conn.sendall(json.dumps(msg).encode() + b"\n")
            return JobProcess(conn, d.EXECUTOR_START_TIMEOUT_S)
        except BaseException:
            conn.close()
            raise

    def stop(self) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.stdin:
                    self._proc.stdin.close()    # EOF: it exits
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


_zygote: Zygote | None = None


def zygote(env: dict[str, str] | None = None) -> Zygote:
    """This worker's zygote; `env` (the first call's) is its environment."""
    global _zygote
    with _tree_lock:
        if _zygote is None:
            if env is None:
                raise RuntimeError("the zygote's environment is not set")
            _zygote = Zygote(env)
    return _zygote


class Sandbox:
    """One sandbox: namespaces from bwrap, a cgroup with the limits, the job's directories.

    Made (and bwrap started) when created; `spawn` runs user code in it; `close` ends
    everything that runs in it.
    """

    def __init__(self, rw: list[Path], mem: int, cpu: float, pids: int = d.JOB_MAX_PIDS,
                 disk: int = d.JOB_DISK_BYTES, on: bool | None = None, label: str = "",
                 ro_at: list[tuple[Path, Path]] | None = None,
                 rw_at: list[tuple[Path, Path]] | None = None) -> None:
        self.on = enabled() if on is None else on
        self.rw = rw
        self.ro_at = ro_at or []    # (directory, where the sandbox sees it), read-only
        self.rw_at = rw_at or []    # the same, writable
        self.mem, self.pids, self.disk = mem, pids, disk
        self.cgroup: JobCgroup | None = None
        self.bwrap: subprocess.Popen[bytes] | None = None
        self._hold: int | None = None
        self._info: int | None = None
        self.ns_pid = 0
        self.proc: JobProcess | None = None
        self._waiting: JobProcess | None = None     # made ready ahead (make_ready)
        self._disk_checked = 0.0
        self.closed = False
        if not self.on:
            return
        self.cgroup = cgroup_tree().create(mem, pids, cpu, label)
        try:
            self._start_bwrap()
        except BaseException:
            self.close()
            raise

    def _start_bwrap(self) -> None:
        """Start bwrap; `_await_ready` waits for it (the supervisor fetches the job meanwhile)."""
        info_r, info_w = os.pipe()
        hold_r, hold_w = os.pipe()
        self._hold, self._info = hold_w, info_r
        try:
            argv = bwrap_argv(self.rw + extra_binds(), self.mem, user_ns=os.geteuid() != 0,
                              hide=hidden_paths(), ro_at=self.ro_at, rw_at=self.rw_at)
            argv[1:1] = ["--info-fd", str(info_w)]
            # bwrap and its shell are processes in the sandbox: they get no environment of ours
            self.bwrap = _popen(args=argv, stdin=hold_r, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=(info_w,), close_fds=True,
                                env={"PATH": "/usr/bin:/bin"})
        finally:
            os.close(info_w)
            os.close(hold_r)

    def _await_ready(self) -> None:
        if self.ns_pid or not self.on:
            return
        assert self.bwrap is not None and self.bwrap.stdout is not None
        assert self.bwrap.stderr is not None and self._info is not None
        # bwrap writes its info in several writes: read it whole, and keep the pipe open
        # until the sandbox is up (a closed pipe would kill bwrap half-way with SIGPIPE)
        deadline = time.monotonic() + d.SANDBOX_START_TIMEOUT_S
        stdout = self.bwrap.stdout

        def wait_for(fd: int) -> bool:
            left = deadline - time.monotonic()
            return bool(left > 0 and select.select([fd], [], [], left)[0])

        info, ready, late = b"", b"", False
        try:
            while b"}" not in info:
                if not wait_for(self._info):
                    late = True
                    break
                chunk = os.read(self._info, 65536)
                if not chunk:
                    break
                info += chunk
            if not late and b"}" in info:
                if wait_for(stdout.fileno()):
                    ready = stdout.readline()
                else:
                    late = True
        finally:
            os.close(self._info)
            self._info = None
        if late:
            self.bwrap.kill()      # a hung bwrap: its stderr says why, once it is gone
            self.bwrap.wait()
        if ready.strip() != b"ready" or b"}" not in info:
            err = self.bwrap.stderr.read(4000).decode(errors="replace").strip()
            if late:
                raise SandboxUnavailable(f"bubblewrap did not make the sandbox within "
                                         f"{d.SANDBOX_START_TIMEOUT_S:g} s: {err}" + hint())
            raise SandboxUnavailable(f"bubblewrap could not make the sandbox: {err}" + hint())
        self.ns_pid = int(json.loads(info[:info.index(b"}") + 1])["child-pid"])

    def make_ready(self) -> None:
        """Have the job's process forked in the sandbox now, waiting for its spec: `spawn`
        then only hands it over (a sandbox made ready before its job, tasks.sandbox.ready)."""
        self._await_ready()
        procs = self.cgroup.procs_files() if self.cgroup else []
        self._waiting = zygote().spawn(None, self.ns_pid, procs)

    def relabel(self, label: str) -> None:
        """Its cgroup is named after `label` (the job attempt) from now on."""
        if self.cgroup is not None:
            self.cgroup.rename(label)

    @property
    def ready(self) -> bool:
        """Made ready ahead and still waiting for its job."""
        return self._waiting is not None and self._waiting.is_alive()

    def spawn(self, spec: ChildSpec) -> JobProcess:
        self._await_ready()
        if self.on:
            # The cgroup limits the whole tree; RLIMIT_DATA stays on each process, so one
            # allocation past the class's memory is a MemoryError the user's code can see.
            spec.env["TMPDIR"] = "/tmp"
        spec.file_bytes = self.disk
        if self._waiting is not None:
            self.proc, self._waiting = self._waiting, None
            self.proc.start(spec)
            return self.proc
        procs = self.cgroup.procs_files() if self.cgroup else []
        self.proc = zygote().spawn(spec, self.ns_pid, procs)
        return self.proc

    def disk_message(self) -> str:
        return f"the job reached its disk quota of {_size(self.disk)} in its directory"

    def limit_hit(self, final: bool = False) -> str | None:
        """The limit the sandbox's processes ran into, worded for the job's error, or None.

        Memory and processes are read from the cgroup's counters; the disk used in the job's
        directories is checked every JOB_DISK_CHECK_S (and at the end, `final`).
        """
        if self.cgroup is not None:
            if self.cgroup.oom_kills():
                return f"the job reached its memory limit of {_size(self.mem)}"
            if self.cgroup.pids_refused():
                return f"the job reached its limit of {self.pids} processes"
        now = time.monotonic()
        if final or now - self._disk_checked >= d.JOB_DISK_CHECK_S:
            self._disk_checked = now
            if sum(_du(p) for p in self.rw) > self.disk:
                return self.disk_message()
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def kill(self) -> None:
        """End every process of the sandbox (the namespace, the cgroup); keep the cgroup."""
        if self._hold is not None:
            os.close(self._hold)         # the namespace's shell ends: the kernel kills the rest
            self._hold = None
        if self._info is not None:
            os.close(self._info)
            self._info = None
        if self.bwrap is not None and self.bwrap.poll() is None:
            self.bwrap.kill()
        if self.cgroup is not None:
            self.cgroup.kill()
        elif self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # QHYBRID_SANDBOX=off: its group
            except (ProcessLookupError, PermissionError):
                pass
        if self._waiting is not None:
            self._waiting.close()   # no job came: its process reads the end and exits
        for proc in (self.proc, self._waiting):
            if proc is not None:
                proc.join(5)
        if self.bwrap is not None:
            self.bwrap.wait()
            for stream in (self.bwrap.stdout, self.bwrap.stderr):
                if stream:
                    stream.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.kill()
        if self.cgroup is not None:
            self.cgroup.remove()


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def _du(root: Path) -> int:
    """Bytes allocated to the files below `root` (links not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def shutdown() -> None:
    """Stop the zygote and remove this process's cgroups (at the worker's end)."""
    global _zygote, _tree
    with _tree_lock:
        z, tree, _zygote, _tree = _zygote, _tree, None, None
    if z is not None:
        z.stop()
    if tree is not None:
        tree.close()


def check_host(env: Mapping[str, str] | None = None) -> str:
    """Raise SandboxUnavailable unless user code can be sandboxed here; say what is used."""
    if not enabled(env):
        return f"off ({SANDBOX_ENV}=off): user code runs without a sandbox"
    tree = cgroup_tree()
    box_dir = Path(tempfile.mkdtemp(prefix="qh-check-"))
    try:
        box = Sandbox([box_dir], mem=64 * 1024**2, cpu=1, on=True)
        try:
            box._await_ready()
        finally:
            box.close()
    finally:
        shutil.rmtree(box_dir, ignore_errors=True)
    return f"bubblewrap namespaces, cgroup v{tree.version}"


__all__ = ["JobProcess", "Sandbox", "Zygote", "check_host", "shutdown", "zygote"]
