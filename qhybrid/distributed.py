"""Parallel workflows: `distribute_task`, `get`, `put`, `wait`, `map_reduce`.

Inside a job (or a task) the calls go to the job's supervisor over the local channel, which
stores the pickled function and arguments and sends Celery messages carrying ids only; calls
made in quick succession travel as one batch and become one Celery group. Outside a job
(local mode) the same code runs on a pool of local processes, with the same references,
errors and results.

Functions and arguments are pickled with cloudpickle, by value for code defined in the
entrypoint script (closures and lambdas included), their code with its file name and source
text (`qhybrid._source`). A function is pickled once, at its first
call in a process, like Ray's remote functions: later changes to the globals it reads are
not seen by its tasks.

Longer than 500 lines: the public calls and the three backends behind them (the job's
channel, the local pool, inline) share `TaskRef`'s private state, which stays in this module.
"""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

import cloudpickle

from qhybrid import _channel, _executor
from qhybrid._executor import (
    LOCAL_WORKER_ENV,
    dumps,
    format_remote_error,
    recv_frame,
    send_frame,
)
from qhybrid.errors import InvalidInput, QhybridError, TaskFailed, Timeout

__all__ = ["distribute_task", "get", "put", "wait", "map_reduce", "TaskRef", "ObjectRef",
           "DistributedTask", "flush"]

T = TypeVar("T")
Target = str | dict[str, Any] | None

BATCH_S = 0.005                 # calls this close together go as one batch (one Celery group)
BATCH_MAX_AGE_S = 0.05          # ... but the first call of a batch waits at most this long
BATCH_MAX = 1000                # ... of at most this many calls
BATCH_MAX_BYTES = 16 * 1024**2
INLINE_BYTES = 256 * 1024       # bigger blobs cross the channel as files in the spool directory
COLLECT_WAIT_S = 0.5            # one channel call waits at most this long
LINGER_S = 0.05                 # ... and once a result came, this long for more

_PENDING, _DONE, _FINISHED, _FAILED = "pending", "done", "finished", "failed"


# --- references ----------------------------------------------------------------------------
class TaskRef:
    """A reference to a task's result; `get(ref)` waits for it. Pass it to other tasks freely."""

    def __init__(self, task_id: str, name: str, backend: _Backend | None = None) -> None:
        self.task_id = task_id
        self.name = name
        self._backend = backend
        self._state = _PENDING
        self._value: Any = None
        self._error = ""
        self._error_type = ""
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return f"<TaskRef {self.name} {self.task_id[:8]} {self._state}>"

    def done(self) -> bool:
        """True once the task ended (without waiting)."""
        if self._state == _PENDING and self._backend is not None:
            self._backend.collect([self], values=False, min_done=1, timeout=0)
        return self._state != _PENDING

    def _set(self, state: str, value: Any = None, error: str = "", error_type: str = "") -> None:
        with self._cond:
            if self._state in (_DONE, _FAILED):
                return
            self._state, self._value = state, value
            self._error, self._error_type = error, error_type
            self._cond.notify_all()

    def _raise(self) -> None:
        raise TaskFailed(f"task {self.name} [{self.task_id[:8]}] failed:\n{self._error}",
                         task_id=self.task_id, remote_type=self._error_type or None)

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self._backend, (_LocalBackend, _InlineBackend)):
            return (_identity, (get(self),))        # local workers cannot ask anyone: send the value
        return (_resolve_task, (self.task_id, self.name))


class ObjectRef:
    """A reference to an object stored once by `put`; tasks that take it as an argument get
    the object itself, fetched once per worker process."""

    def __init__(self, ref_id: str, value: Any = None, path: str | None = None,
                 has_value: bool = False) -> None:
        self.ref_id = ref_id
        self._path = path
        self._value = value
        self._has_value = has_value

    def __repr__(self) -> str:
        return f"<ObjectRef {self.ref_id[:8]}>"

    def value(self) -> Any:
        if not self._has_value:
            self._value = _load_object(self.ref_id, self._path)
            self._has_value = True
        return self._value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_object, (self.ref_id, self._path))


def _identity(value: T) -> T:
    return value


def _resolve_task(task_id: str, name: str) -> Any:
    """A TaskRef unpickled inside a job or task: its result (waits for it)."""
    return get(TaskRef(task_id, name, _backend()))


_objects: dict[str, Any] = {}
_objects_lock = threading.Lock()


def _load_object(ref_id: str, path: str | None) -> Any:
    """A put() object, loaded once per process."""
    with _objects_lock:
        if ref_id in _objects:
            return _objects[ref_id]
    if path:
        with open(path, "rb") as fh:
            value = cloudpickle.load(fh)
    else:
        value = cloudpickle.loads(_remote().fetch_object(ref_id))
    with _objects_lock:
        _objects.setdefault(ref_id, value)
        return _objects[ref_id]


# --- the decorator -------------------------------------------------------------------------
class DistributedTask:
    """A function whose calls run as distributed tasks and return `TaskRef`s at once."""

    def __init__(self, fn: Callable[..., Any], target: Target = None) -> None:
        if not callable(fn):
            raise InvalidInput("distribute_task decorates a function", field="fn")
        _check_target(target)
        self._fn = fn
        self._target = target
        self._cache: dict[tuple[int, int], Any] = {}
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return str(getattr(self._fn, "__qualname__", None) or getattr(self._fn, "__name__", "task"))

    @property
    def target(self) -> Target:
        return self._target

    def __repr__(self) -> str:
        return f"<distributed task {self.name} target={self._target!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> TaskRef:
        return _backend().submit(self, args, kwargs)

    def _pickled(self) -> tuple[str, bytes]:
        """(digest, pickled function), made once per process."""
        key = (os.getpid(), 0)
        if key not in self._cache:
            blob = dumps(self._fn)
            self._cache[key] = (hashlib.sha1(blob).hexdigest(), blob)
        return self._cache[key]  # type: ignore[no-any-return]

    def _resource_class(self, backend: _Backend) -> str:
        key = (os.getpid(), id(backend))
        if key not in self._cache:
            self._cache[key] = backend.resolve_target(self._target)
        return str(self._cache[key])

    def __getstate__(self) -> dict[str, Any]:
        return {"fn": self._fn, "target": self._target}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fn"], state["target"])  # type: ignore[misc]


@overload
def distribute_task(fn: Callable[..., Any], *, target: Target = None) -> DistributedTask: ...
@overload
def distribute_task(fn: None = None, *,
                    target: Target = None) -> Callable[[Callable[..., Any]], DistributedTask]: ...
def distribute_task(fn: Callable[..., Any] | None = None, *, target: Target = None) -> Any:
    """Make calls of `fn` run as parallel tasks on a worker of the class that fits `target`.

    `target` is a resource class name or `{"cpu": .., "mem": <bytes>, "gpu": ..}`; the
    smallest class that fits runs the task. A target no class fits raises at the call.
    """
    if fn is not None:
        return DistributedTask(fn, target)
    return lambda f: DistributedTask(f, target)


def _check_target(target: Target) -> None:
    if target is None or isinstance(target, str):
        return
    if not isinstance(target, dict):
        raise InvalidInput("target is a resource class name or a dict with cpu, mem, gpu",
                           field="target")


def _as_task(fn: Callable[..., Any] | DistributedTask, target: Target) -> DistributedTask:
    if isinstance(fn, DistributedTask):
        return fn if target is None else DistributedTask(fn._fn, target)
    return DistributedTask(fn, target)


# --- the public calls ----------------------------------------------------------------------
def get(refs: Any, timeout: float | None = None) -> Any:
    """The result of a reference, or the results of a list of them in order.

    Raises TaskFailed (with the remote traceback) if a task failed, Timeout after `timeout`.
    """
    single = isinstance(refs, (TaskRef, ObjectRef))
    items = [refs] if single else list(refs)
    for r in items:
        if not isinstance(r, (TaskRef, ObjectRef)):
            raise InvalidInput(f"get() takes references from distributed calls or put(), "
                               f"got {type(r).__name__}", field="refs")
    tasks = [r for r in items if isinstance(r, TaskRef)]
    for backend, group in _by_backend(tasks).items():
        backend.collect(group, values=True, min_done=len(group), timeout=timeout)
    for r in tasks:
        if r._state == _FAILED:
            r._raise()
    if any(r._state != _DONE for r in tasks):
        raise Timeout(f"tasks still running after {timeout} s")
    values = [r._value if isinstance(r, TaskRef) else r.value() for r in items]
    return values[0] if single else values


def wait(refs: Sequence[TaskRef], num_returns: int = 1,
         timeout: float | None = None) -> tuple[list[TaskRef], list[TaskRef]]:
    """(done, pending): the first `num_returns` refs that ended, and the rest, in input order.

    Returns early with fewer done when `timeout` passes. A failed task counts as done.
    """
    items = list(refs)
    if not all(isinstance(r, TaskRef) for r in items):
        raise InvalidInput("wait() takes TaskRefs", field="refs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) \
            or not 0 <= num_returns <= len(items):
        raise InvalidInput(f"num_returns must be from 0 to {len(items)}", field="num_returns")
    for backend, group in _by_backend(items).items():
        elsewhere = sum(r._state != _PENDING for r in items) - sum(
            r._state != _PENDING for r in group)
        if elsewhere >= num_returns:
            break
        backend.collect(group, values=False, min_done=min(len(group), num_returns - elsewhere),
                        timeout=timeout)
    done: list[TaskRef] = []
    pending: list[TaskRef] = []
    for r in items:
        (done if r._state != _PENDING and len(done) < num_returns else pending).append(r)
    return done, pending


def put(value: Any) -> ObjectRef:
    """Store `value` once; the reference can be passed to any number of tasks."""
    return _backend().put(value)


def map_reduce(fn: Callable[..., Any] | DistributedTask, items: Iterable[Any],
               reduce: Callable[[list[Any]], Any] | None = None, *, target: Target = None,
               timeout: float | None = None) -> Any:
    """`reduce([fn(item) for item in items])`, the calls in parallel, the reduce on a worker.

    On a service this is one Celery chord: the reduce runs when the last map task ended and
    records its result even if the caller is gone. Without `reduce` the list is returned.
    """
    task = _as_task(fn, target)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((item,), {}) for item in items]
    reducer = _as_task(reduce if reduce is not None else _as_list, task.target)
    ref = _backend().chord(task, calls, reducer)
    return get(ref, timeout=timeout)


def _as_list(values: list[Any]) -> list[Any]:
    return values


def flush() -> None:
    """Send the calls made so far now rather than after the short batching delay."""
    backend = _current.get(os.getpid())
    if backend is not None:
        backend.flush()


_executor.AFTER_TASK.append(flush)


def _by_backend(refs: list[TaskRef]) -> dict[_Backend, list[TaskRef]]:
    out: dict[_Backend, list[TaskRef]] = {}
    for r in refs:
        out.setdefault(r._backend or _backend(), []).append(r)
    return out


# --- backends ------------------------------------------------------------------------------
class _Backend:
    def submit(self, task: DistributedTask, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> TaskRef:
        raise NotImplementedError

    def chord(self, task: DistributedTask, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
              reducer: DistributedTask) -> TaskRef:
        raise NotImplementedError

    def collect(self, refs: list[TaskRef], *, values: bool, min_done: int,
                timeout: float | None) -> None:
        raise NotImplementedError

    def put(self, value: Any) -> ObjectRef:
        raise NotImplementedError

    def resolve_target(self, target: Target) -> str:
        raise NotImplementedError

    def flush(self) -> None:
        pass


_current: dict[int, _Backend] = {}
_current_lock = threading.Lock()


def _backend() -> _Backend:
    """The backend of this process: the supervisor in a job, inline in a local worker, else local."""
    pid = os.getpid()
    backend = _current.get(pid)
    if backend is None:
        with _current_lock:
            backend = _current.get(pid)
            if backend is None:
                if _channel.in_job():
                    backend = _RemoteBackend()
                elif os.environ.get(LOCAL_WORKER_ENV):
                    backend = _InlineBackend()
                else:
                    backend = _LocalBackend()
                _current[pid] = backend
    return backend


def _remote() -> _RemoteBackend:
    backend = _backend()
    if not isinstance(backend, _RemoteBackend):
        raise QhybridError("this object reference belongs to a job; it cannot be read here")
    return backend


def _encode(blob: bytes, spool: str, name: str) -> dict[str, str]:
    """Small blobs travel in the channel message, big ones as a file in the spool directory."""
    if len(blob) <= INLINE_BYTES:
        return {"data": base64.b64encode(blob).decode()}
    path = os.path.join(spool, name)
    with open(path + ".tmp", "wb") as fh:
        fh.write(blob)
    os.replace(path + ".tmp", path)
    return {"path": path}


def _decode(entry: dict[str, Any]) -> bytes:
    if "path" in entry:
        path = str(entry["path"])
        with open(path, "rb") as fh:
            data = fh.read()
        os.unlink(path)
        return data
    return base64.b64decode(entry.get("data") or "")


class _RemoteBackend(_Backend):
    """Inside a job or task: everything goes through the supervisor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._pending_fns: dict[str, dict[str, str]] = {}
        self._pending_bytes = 0
        self._sent_fns: set[str] = set()
        self._info: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._first = self._last = 0.0       # when the pending batch's first and last call came
        self._flusher: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._noted = ""
        atexit.register(self.flush)

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = dict(_channel.call("tasks_hello"))
        return self._info

    def resolve_target(self, target: Target) -> str:
        return str(_channel.call("tasks_target", target=target))

    def _entry(self, task: DistributedTask, args: tuple[Any, ...], kwargs: dict[str, Any],
               kind: str, task_id: str) -> dict[str, Any]:
        spool = self.info()["spool_dir"]
        digest, blob = task._pickled()
        if digest not in self._sent_fns and digest not in self._pending_fns:
            self._pending_fns[digest] = _encode(blob, spool, f"fn-{digest}")
            self._pending_bytes += min(len(blob), INLINE_BYTES)
        payload = dumps((args, kwargs))
        self._pending_bytes += min(len(payload), INLINE_BYTES)
        return {"id": task_id, "name": task.name, "fn": digest, "kind": kind,
                "class": task._resource_class(self), "args": _encode(payload, spool, task_id)}

    def submit(self, task: DistributedTask, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> TaskRef:
        task._resource_class(self)      # an impossible target raises here, at the call
        ref = TaskRef(uuid.uuid4().hex, task.name, self)
        with self._lock:
            self._pending.append(self._entry(task, args, kwargs, "task", ref.task_id))
            self._last = time.monotonic()
            if len(self._pending) == 1:
                self._first = self._last
            full = len(self._pending) >= BATCH_MAX or self._pending_bytes >= BATCH_MAX_BYTES
        if full:
            self.flush()
        else:
            self._kick()
        return ref

    def chord(self, task: DistributedTask, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
              reducer: DistributedTask) -> TaskRef:
        task._resource_class(self)
        reducer._resource_class(self)
        self.flush()
        ref = TaskRef(uuid.uuid4().hex, reducer.name, self)
        with self._lock:
            maps = [self._entry(task, a, k, "map", uuid.uuid4().hex) for a, k in calls]
            rentry = self._entry(reducer, (), {}, "reduce", ref.task_id)
            rentry["maps"] = [m["id"] for m in maps]
            self._pending.extend([*maps, rentry])
        self.flush()
        return ref

    def _kick(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, name="qhybrid-tasks",
                                             daemon=True)
            self._flusher.start()
        self._wake.set()

    def _flush_loop(self) -> None:
        """Send a batch once no call came for BATCH_S, or its first call waited BATCH_MAX_AGE_S."""
        while True:
            self._wake.wait()
            while True:
                now = time.monotonic()
                due = min(self._last + BATCH_S, self._first + BATCH_MAX_AGE_S)
                if now >= due:
                    break
                time.sleep(due - now)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:    # the next get() sends again and raises there
                print(f"[qhybrid] sending distributed tasks failed: {exc}", file=sys.stderr)

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                batch, fns = self._pending, self._pending_fns
                self._pending, self._pending_fns, self._pending_bytes = [], {}, 0
            if not batch:
                return
            try:
                _channel.call("tasks_submit", tasks=batch, functions=fns)
            except BaseException:
                with self._lock:       # keep them: the next flush tries again
                    self._pending[:0] = batch
                    self._pending_fns.update(fns)
                raise
            self._sent_fns.update(fns)

    def collect(self, refs: list[TaskRef], *, values: bool, min_done: int,
                timeout: float | None) -> None:
        self.flush()
        by_id: dict[str, list[TaskRef]] = {}
        for r in refs:
            by_id.setdefault(r.task_id, []).append(r)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            open_ids = [i for i, rs in by_id.items() if _needs(rs[0], values)]
            done = len(by_id) - len(open_ids)
            failed = values and any(rs[0]._state == _FAILED for rs in by_id.values())
            if not open_ids or done >= min_done or failed:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and timeout != 0:
                return
            step = COLLECT_WAIT_S if left is None else max(0.0, min(COLLECT_WAIT_S, left))
            # for values, answer as results come (each batch decoded while others run)
            reply = _channel.call("tasks_collect", ids=open_ids, wait=step,
                                  min_done=1 if values else min_done - done, values=values,
                                  linger=LINGER_S if values else 0.0)
            for task_id, entry in (reply.get("done") or {}).items():
                _apply(by_id.get(task_id, []), entry)
            note = reply.get("waiting_for")
            if note and note != self._noted:
                self._noted = note      # once per reason, into the job's log
                print(f"[qhybrid] tasks are waiting: {note}", file=sys.stderr, flush=True)
            if timeout == 0:
                return

    def put(self, value: Any) -> ObjectRef:
        ref_id = uuid.uuid4().hex
        blob = dumps(value)
        spool = self.info()["spool_dir"]
        _channel.call("tasks_put", ref=ref_id, **_encode(blob, spool, f"obj-{ref_id}"))
        return ObjectRef(ref_id, value, has_value=True)

    def fetch_object(self, ref_id: str) -> bytes:
        return _decode(_channel.call("tasks_fetch_object", ref=ref_id))


def _needs(ref: TaskRef, values: bool) -> bool:
    if ref._state == _PENDING:
        return True
    return values and ref._state == _FINISHED


def _apply(refs: list[TaskRef], entry: dict[str, Any]) -> None:
    status = entry.get("status")
    if status == "DONE":
        if "data" in entry or "path" in entry:
            value = cloudpickle.loads(_decode(entry))
            for r in refs:
                r._set(_DONE, value)
        else:
            for r in refs:
                if r._state == _PENDING:
                    r._state = _FINISHED
    else:
        for r in refs:
            r._set(_FAILED, error=str(entry.get("error") or f"the task ended {status}"),
                   error_type=str(entry.get("type") or ""))


class _InlineBackend(_Backend):
    """Inside a local-pool process: nested calls run at once, in this process."""

    def resolve_target(self, target: Target) -> str:
        return _local_class(target)

    def submit(self, task: DistributedTask, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> TaskRef:
        task._resource_class(self)
        ref = TaskRef(uuid.uuid4().hex, task.name, self)
        try:
            ref._set(_DONE, task._fn(*args, **kwargs))
        except Exception as exc:
            ref._set(_FAILED, error=format_remote_error(exc), error_type=type(exc).__name__)
        return ref

    def chord(self, task: DistributedTask, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
              reducer: DistributedTask) -> TaskRef:
        values = get([self.submit(task, a, k) for a, k in calls])
        return self.submit(reducer, (values,), {})

    def collect(self, refs: list[TaskRef], *, values: bool, min_done: int,
                timeout: float | None) -> None:
        return

    def put(self, value: Any) -> ObjectRef:
        return ObjectRef(uuid.uuid4().hex, value, has_value=True)


def _local_class(target: Target) -> str:
    """The class a target picks from the configured classes (the server's rules)."""
    from pathlib import Path

    from qhybrid.resources import load_classes, pick_class

    path = os.environ.get("QHYBRID_RESOURCE_CLASSES")
    return pick_class(target, load_classes(Path(path) if path else None), field="target").name


class _LocalWorker:
    """One process of the local pool, fed by a thread of ours."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env[LOCAL_WORKER_ENV] = "1"
        path = os.pathsep.join([p for p in sys.path if p])
        env["PYTHONPATH"] = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from qhybrid._executor import main; "
             "main(sys.argv[1:])", str(child.fileno())],
            pass_fds=[child.fileno()], env=env, cwd=os.getcwd())
        child.close()
        self.sock = parent
        self.known: set[str] = set()

    def run(self, header: dict[str, Any], fn_blob: bytes,
            blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        digest = header["fn"]
        send_frame(self.sock, header, [b"" if digest in self.known else fn_blob, *blobs])
        self.known.add(digest)
        return recv_frame(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


class _LocalBackend(_Backend):
    """Not in a job: a pool of local processes (one per core) runs the tasks."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or int(os.environ.get("QHYBRID_LOCAL_WORKERS") or 0) or os.cpu_count() or 1
        self._queue: list[tuple[TaskRef, dict[str, Any], bytes, list[bytes]]] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._workers: list[_LocalWorker] = []
        self._spool: str | None = None
        self._closed = False
        atexit.register(self.close)

    def resolve_target(self, target: Target) -> str:
        return _local_class(target)

    def _start(self) -> None:
        while len(self._threads) < self.size:
            t = threading.Thread(target=self._serve, name="qhybrid-local", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self) -> None:
        worker: _LocalWorker | None = None
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                ref, header, fn_blob, blobs = self._queue.pop(0)
            try:
                if worker is None:
                    worker = _LocalWorker()
                    self._workers.append(worker)
                reply, out = worker.run(header, fn_blob, blobs)
            except (OSError, EOFError) as exc:
                code = worker.proc.poll() if worker else None
                ref._set(_FAILED, error=f"the local worker process died ({code}): {exc}",
                         error_type="WorkerLost")
                worker = None
                continue
            if reply.get("ok"):
                try:
                    ref._set(_DONE, cloudpickle.loads(out[0]))
                except Exception as exc:
                    ref._set(_FAILED, error=format_remote_error(exc), error_type=type(exc).__name__)
            else:
                ref._set(_FAILED, error=str(reply.get("error")), error_type=str(reply.get("type")))
        if worker is not None:
            worker.close()

    def _enqueue(self, task: DistributedTask, mode: str, blobs: list[bytes]) -> TaskRef:
        task._resource_class(self)
        ref = TaskRef(uuid.uuid4().hex, task.name, self)
        digest, fn_blob = task._pickled()
        header = {"task_id": ref.task_id, "fn": digest, "mode": mode}
        with self._cond:
            self._queue.append((ref, header, fn_blob, blobs))
            self._start()
            self._cond.notify()
        return ref

    def submit(self, task: DistributedTask, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> TaskRef:
        return self._enqueue(task, "call", [dumps((args, kwargs))])

    def chord(self, task: DistributedTask, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
              reducer: DistributedTask) -> TaskRef:
        maps = [self.submit(task, a, k) for a, k in calls]
        for r in maps:
            _wait_ref(r, None)
        failed = next((r for r in maps if r._state == _FAILED), None)
        if failed is not None:
            ref = TaskRef(uuid.uuid4().hex, reducer.name, self)
            ref._set(_FAILED, error=f"map task {failed.name} [{failed.task_id[:8]}] failed:\n"
                     f"{failed._error}", error_type=failed._error_type)
            return ref
        return self._enqueue(reducer, "reduce",
                             [dumps(r._value) for r in maps])

    def collect(self, refs: list[TaskRef], *, values: bool, min_done: int,
                timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = [r for r in refs if r._state != _PENDING]
            if len(done) >= min_done or (values and any(r._state == _FAILED for r in done)):
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            waiting = next(r for r in refs if r._state == _PENDING)
            _wait_ref(waiting, 0.05 if left is None else min(0.05, left))

    def put(self, value: Any) -> ObjectRef:
        if self._spool is None:
            self._spool = tempfile.mkdtemp(prefix="qhybrid-objects-")
        ref_id = uuid.uuid4().hex
        path = os.path.join(self._spool, ref_id)
        with open(path, "wb") as fh:
            fh.write(dumps(value))
        return ObjectRef(ref_id, value, path=path, has_value=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for w in list(self._workers):
            w.close()
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)


def _wait_ref(ref: TaskRef, timeout: float | None) -> None:
    with ref._cond:
        if ref._state == _PENDING:
            ref._cond.wait(timeout)
