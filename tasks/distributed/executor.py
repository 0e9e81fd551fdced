"""Warm executor processes on a task worker: each runs one job's tasks, one after another.

Forking a child per task would cost more than a short task itself, so a worker keeps, per job
and resource class, child processes forked once from the zygote (qiskit loaded), each in its
own sandbox (tasks.sandbox.box) with the class's limits and a scrubbed environment, in the job's
working directory. The worker
sends a task's pickled function and arguments over a Unix socket and reads back the pickled
value; it never unpickles them. A cancel kills the executor's whole sandbox; an
executor idle for a while, or whose job ended, is stopped.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from qhybrid import _executor
from qhybrid.errors import Conflict
from qhybrid.resources import ResourceClass
from storage import keys
from storage.store import ObjectStore
from storage.tarsafe import safe_extract
from tasks.core import defaults as d
from tasks.core.channel import ChannelServer, Handler
from tasks.core.settings import Settings
from tasks.sandbox import dependencies
from tasks.sandbox.box import JobProcess, Sandbox
from tasks.sandbox.child import ChildSpec
from tasks.sandbox.environment import THREAD_ENV, clean_env, warm_parent
from tasks.sandbox.isolation import hand_over, job_account


class ExecutorLost(Exception):
    """The executor process died or stopped answering; the message says how."""


class Executor:
    """One warm child process serving one job's tasks."""

    def __init__(self, job: dict[str, Any], rc: ResourceClass, src: Path, root: Path,
                 op_names: tuple[str, ...], job_src: Path | None = None,
                 environment: dependencies.Environment | None = None) -> None:
        self.job_id: str = job["id"]
        self.environment = environment      # the job's dependencies, held while this lives
        self.key = executor_key(job, rc)
        self.rc = rc
        self.dir = root / f"exec-{uuid.uuid4().hex[:12]}"
        self.spool = self.dir / "spool"
        self.spool.mkdir(parents=True)
        self.log_path = self.dir / "output.log"
        self.log_path.touch()
        # Read through a descriptor opened now: the directory becomes the user's, who could
        # swap the file for a link to something only the worker may read.
        self._log_fd = os.open(self.log_path, os.O_RDONLY | os.O_NOFOLLOW)
        self._log_pos = 0
        self.partial_line = b""      # output of the running task after its last newline
        # Unix socket paths are short (107 bytes): they live in a private temporary directory.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="qh-x"))
        # The channel serves the running task's calls (nested tasks, put, get ...) through
        # `session`, made at the task's first call from what the worker set for the time the
        # task runs (most tasks make none: a session per task would cost more than they do).
        self.session: Any = None
        self._session_factory: Callable[[], Any] | None = None
        self._session_lock = threading.Lock()
        ops: dict[str, Handler] = {name: functools.partial(self._dispatch, name)
                                   for name in op_names}
        self.channel = ChannelServer(self._sock_dir / "s", ops).start()
        self.box: Sandbox | None = None
        self.proc: JobProcess | None = None
        self.known_fns: set[str] = set()
        self.last_used = time.monotonic()
        self.tasks_run = 0
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self._sock_dir / "x"))
        listener.listen(1)
        call = self.dir / "call.pkl"
        call.write_bytes(cloudpickle.dumps((_executor.serve, (str(self._sock_dir / "x"),), {})))
        threads = str(rc.threads())
        env = clean_env({
            "QHYBRID_JOB_ID": self.job_id,
            "QHYBRID_JOB_NAME": job.get("job_name") or "",
            "QHYBRID_SUPERVISOR_SOCKET": str(self._sock_dir / "s"),
            "PYTHONUNBUFFERED": "1",
            "QISKIT_PARALLEL": "FALSE",
            **{k: threads for k in THREAD_ENV},
        })
        spec = ChildSpec(cwd=str(src), argv=["qhybrid-task-executor"], env=env,
                         log_path=str(self.log_path), error_path=str(self.dir / "error.txt"),
                         sys_path=[str(src)], mem_bytes=rc.mem, call_path=str(call),
                         return_path=str(self.dir / "return.pkl"), return_format="pickle")
        account = job_account()
        if account is not None:     # workers run as root: user code runs as the job account
            hand_over(account, self.dir, self._sock_dir)
            spec.run_as = (account.uid, account.gid)
            spec.env["HOME"] = str(self.dir)
        try:
            # the job's code also where the job's own process has it, so that tracebacks of
            # functions it defined show their source lines
            ro_at = [(src, job_src)] if job_src and job_src != src else []
            if environment is not None:
                ro_at += environment.mount()
            self.box = Sandbox([self.dir, self._sock_dir, src], mem=rc.mem, cpu=rc.cpu,
                               label=f"{self.job_id}-{self.dir.name}", ro_at=ro_at)
            if environment is not None:
                environment.apply(spec, sandboxed=self.box.on)
            warm_parent()
            self.proc = self.box.spawn(spec)
            self.sock = self._accept(listener)
        except BaseException:
            self.kill()
            raise
        finally:
            listener.close()

    def _accept(self, listener: socket.socket) -> socket.socket:
        deadline = time.monotonic() + d.EXECUTOR_START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([listener], [], [], 0.1)
            if ready:
                conn, _ = listener.accept()
                return conn
            if not self.alive():
                raise ExecutorLost(f"the task executor exited at start ({self.exit_text()}): "
                                   f"{self.read_output().decode(errors='replace')[-2000:]}")
        raise ExecutorLost("the task executor did not start in time")

    def _dispatch(self, _op: str, **args: Any) -> Any:
        # `_op`, not `name`: an operation's own arguments may be called name (device_info)
        with self._session_lock:
            if self.session is None and self._session_factory is not None:
                self.session = self._session_factory()
            session = self.session
        if session is None:
            raise Conflict(f"{_op}: no task of this job is running in this process now")
        return session.ops()[_op](**args)

    def serve_task(self, session: Callable[[], Any]) -> None:
        """The calls of the task about to run go to the session `session()` makes."""
        with self._session_lock:
            self.session, self._session_factory = None, session

    def end_task(self) -> Any:
        """The task ended: its calls are refused from now on. Its session, if it made one."""
        with self._session_lock:
            session, self.session, self._session_factory = self.session, None, None
        return session

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def run(self, header: dict[str, Any], blobs: list[bytes],
            tick: Callable[[], bool]) -> tuple[dict[str, Any], list[bytes]] | None:
        """Send one task and wait for its reply; None when `tick()` asked to stop it (killed).

        `tick` runs every TASK_TICK_S while the task runs; it returns True to cancel.
        """
        self.last_used = time.monotonic()
        self.tasks_run += 1
        try:
            _executor.send_frame(self.sock, header, blobs)
            while True:
                ready, _, _ = select.select([self.sock], [], [], d.TASK_TICK_S)
                if ready:
                    return _executor.recv_frame(self.sock)
                if tick():
                    self.kill()
                    return None
                hit = self.box.limit_hit() if self.box is not None else None
                if hit is not None:
                    self.kill()
                    raise ExecutorLost(hit.replace("the job", "the task"))
        except (OSError, EOFError):
            if self.proc is not None:
                self.proc.join(1.0)
            hit = self.box.limit_hit(final=True) if self.box is not None else None
            raise ExecutorLost(hit.replace("the job", "the task") if hit else self.exit_text()) from None
        finally:
            self.last_used = time.monotonic()

    def exit_text(self) -> str:
        code = self.proc.exitcode if self.proc is not None else None
        if code is None:
            return "the task's process stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the task's process was killed by {name}{hint}"
        return f"the task's process exited with code {code}"

    def read_output(self) -> bytes:
        """What the executor wrote since the last call."""
        try:
            chunk = os.pread(self._log_fd, d.TASK_LOG_MAX_BYTES * 4, self._log_pos)
        except OSError:
            return b""
        self._log_pos += len(chunk)
        return chunk

    def kill(self) -> None:
        """Stop the executor and everything it started (its whole sandbox)."""
        if self.box is not None:
            self.box.close()
        try:
            self.sock.close()
        except AttributeError:
            pass
        self.channel.close()
        if self.environment is not None:
            self.environment.release()
        try:
            os.close(self._log_fd)
        except OSError:
            pass
        shutil.rmtree(self._sock_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def executor_key(job: dict[str, Any], rc: ResourceClass) -> tuple[str, str, str]:
    return (job["id"], str(job.get("attempt") or 1), rc.name)


class ExecutorPool:
    """The executors of one worker process, by (job, attempt, class); idle ones are reused."""

    def __init__(self, settings: Settings, store: ObjectStore, op_names: tuple[str, ...]) -> None:
        self.settings = settings
        self.op_names = op_names
        self.store = store
        self.root = settings.work_dir / f"tasks-{os.getpid()}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)        # the job account may pass through, not list
        self._idle: dict[tuple[str, str, str], list[Executor]] = {}
        self._busy: set[Executor] = set()
        self._sources: dict[tuple[str, str], Path] = {}
        self._lock = threading.Lock()
        self._source_locks: dict[tuple[str, str], threading.Lock] = {}
        self.max_idle = max(4, 2 * (os.cpu_count() or 1))

    def acquire(self, job: dict[str, Any], rc: ResourceClass,
                tick: Callable[[], bool] = lambda: False) -> Executor:
        """An idle executor of the job and class, else a new one (with the job's
        dependencies installed on this host first; `tick` returning True cancels that)."""
        key = executor_key(job, rc)
        with self._lock:
            idle = self._idle.get(key) or []
            while idle:
                ex = idle.pop()
                if ex.alive():
                    self._busy.add(ex)
                    return ex
                ex.kill()
        src = self.source(job)
        # where the job's own sandbox shows its code (a link, when its sandbox was made
        # ready ahead: tasks.sandbox.ready)
        attempt_dir = self.settings.work_dir / f"{job['id']}-{job.get('attempt') or 1}"
        job_src = attempt_dir.resolve() / "src"
        environment = self.environment(job, tick)
        try:
            ex = Executor(job, rc, src, self.root, self.op_names, job_src=job_src,
                          environment=environment)
        except BaseException:
            if environment is not None:
                environment.release()
            raise
        with self._lock:
            self._busy.add(ex)
        self._trim()
        return ex

    def environment(self, job: dict[str, Any],
                    tick: Callable[[], bool]) -> dependencies.Environment | None:
        requirements = list(job.get("dependencies") or [])
        if not requirements:
            return None
        with tempfile.TemporaryFile() as log:
            return dependencies.ensure(requirements, self.settings, log, tick)

    def release(self, ex: Executor, healthy: bool = True) -> None:
        with self._lock:
            self._busy.discard(ex)
            if healthy and ex.alive():
                self._idle.setdefault(ex.key, []).append(ex)
                return
        ex.kill()

    def _trim(self) -> None:
        """Keep at most max_idle idle executors: the least recently used go first."""
        with self._lock:
            idle = sorted((ex for lst in self._idle.values() for ex in lst),
                          key=lambda e: e.last_used)
            extra = idle[:max(0, len(idle) - self.max_idle)]
            for ex in extra:
                self._idle[ex.key].remove(ex)
        for ex in extra:
            ex.kill()

    def reap(self, job_active: Callable[[str, str], bool]) -> int:
        """Stop idle executors that idled too long or whose job attempt is over; drop the
        code of job attempts that are over."""
        now = time.monotonic()
        doomed: list[Executor] = []
        with self._lock:
            attempts = {(k[0], k[1]) for k in self._idle} | set(self._sources)
        verdict = {jk: job_active(*jk) for jk in attempts}
        with self._lock:
            for key, lst in self._idle.items():
                for ex in list(lst):
                    if not verdict.get((key[0], key[1]), True) or \
                            now - ex.last_used > d.EXECUTOR_IDLE_S or not ex.alive():
                        lst.remove(ex)
                        doomed.append(ex)
            busy = {(ex.key[0], ex.key[1]) for ex in self._busy}
            gone = [jk for jk in self._sources if verdict.get(jk) is False and jk not in busy]
            for jk in gone:
                shutil.rmtree(self._sources.pop(jk), ignore_errors=True)
        for ex in doomed:
            ex.kill()
        return len(doomed)

    def kill_job(self, job_id: str) -> None:
        """Stop this job's idle executors now (busy ones are stopped by their task's cancel)."""
        with self._lock:
            doomed = [ex for k, lst in self._idle.items() if k[0] == job_id for ex in lst]
            for k in list(self._idle):
                if k[0] == job_id:
                    self._idle[k] = []
        for ex in doomed:
            ex.kill()

    def source(self, job: dict[str, Any]) -> Path:
        """The job's code, unpacked once per worker process: the tasks' working directory."""
        jk = (job["id"], str(job.get("attempt") or 1))
        with self._lock:
            lock = self._source_locks.setdefault(jk, threading.Lock())
        with lock:
            path = self._sources.get(jk)
            if path is not None and path.is_dir():
                return path
            path = self.root / f"src-{jk[0]}-{jk[1]}"
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            try:
                with self.store.open(keys.job_script(job["prefix"])) as fh:
                    safe_extract(fh, path, max_bytes=self.settings.tar_max_bytes,
                                 max_members=self.settings.tar_max_members)
            except Exception:        # no tar (a hybrid job ships a pickled function): empty
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
            hand_over(job_account(), path)
            with self._lock:
                self._sources[jk] = path
            return path

    def shutdown(self) -> None:
        with self._lock:
            everyone = [ex for lst in self._idle.values() for ex in lst] + list(self._busy)
            self._idle.clear()
            self._busy.clear()
        for ex in everyone:
            ex.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class CpuSlots:
    """Host-wide CPU assignment for task children: one lock file per core.

    Several task worker processes share a machine; a task takes free cores (non-blocking
    `flock`), so two small tasks are not pinned to the same core. When none is free (more
    slots than cores) the task shares cores, round robin.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self, n: int) -> tuple[list[int], list[int]]:
        """(cores, lock fds to release) for a task that wants `n` cores."""
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not available:
            return [], []
        n = max(1, min(n, len(available)))
        got: list[int] = []
        fds: list[int] = []
        for cpu in available:
            if len(got) == n:
                break
            fd = os.open(self.dir / f"cpu{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            got.append(cpu)
            fds.append(fd)
        if len(got) < n:
            with self._lock:
                start = self._next
                self._next += n
            extra = [available[(start + i) % len(available)] for i in range(n)]
            got = sorted(set(got) | set(extra))[:max(n, len(got))]
        return got, fds

    @staticmethod
    def release(fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)        # closing the descriptor drops its flock
            except OSError:
                pass
