"""The loop that runs distributed tasks inside a child process, one after another.

On a task worker the child is forked from the warm parent with its class's limits and serves
one job: the worker sends it (function, arguments) as pickled bytes and gets back the pickled
return value or the remote traceback. In local mode the same loop runs in the processes of the
local pool. The worker side never unpickles what user code produced: only this loop does.

Frames on the socket: `!II` (header length, blob count), the JSON header, then each blob as
`!Q` length + bytes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from qhybrid._source import SourcePickler

LOCAL_WORKER_ENV = "QHYBRID_LOCAL_WORKER"    # set in local-pool processes: nested calls run inline
TASK_ID_ENV = "QHYBRID_TASK_ID"              # the task running now, for user code that asks
ERROR_LINES = 40                             # remote traceback lines sent back

# Run after each task, while it is still the running one: qhybrid.distributed adds its flush
# of the calls the task made but did not wait for (when the task imported it).
AFTER_TASK: list[Callable[[], None]] = []

_HEAD = struct.Struct("!II")
_LEN = struct.Struct("!Q")


# --- pickling: cloudpickle, with plain circuits as QPY -----------------------------------
class _Pickler(SourcePickler):
    """cloudpickle (code with its source), except that a QuantumCircuit of standard
    instructions travels as QPY.

    Pickling a transpiled 127-qubit circuit instruction by instruction takes ~10x longer
    than QPY both ways, and results and arguments of transpilation tasks are mostly that.
    Circuits QPY would not give back identical (subclasses, custom gate classes, metadata
    JSON cannot hold) are pickled as usual.
    """

    def reducer_override(self, obj: Any) -> Any:
        circuit_type = _circuit_type()
        if circuit_type is not None and type(obj) is circuit_type:
            data = _qpy_bytes(obj)
            if data is not None:
                return _circuit_from_qpy, (data,)
        return super().reducer_override(obj)


def dumps(value: Any) -> bytes:
    """Pickle `value` (functions by value where cloudpickle does, plain circuits as QPY).

    Plain data (numbers, strings, bytes, None, and small tuples, lists and dicts of them)
    pickles the same with the standard pickler, ~20x sooner: most tasks' arguments and
    results are that.
    """
    if _plain(value, 3):
        return pickle.dumps(value, protocol=5)
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(value)
    return buf.getvalue()


_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})
_CONTAINERS = frozenset({tuple, list, dict})


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth == 0 or len(value) > 32 if kind in _CONTAINERS else True:
        return False
    if kind is dict:
        for k, v in value.items():
            if type(k) not in _SCALARS or not _plain(v, depth - 1):
                return False
        return True
    for v in value:
        if not _plain(v, depth - 1):
            return False
    return True


def _circuit_type() -> type | None:
    module = sys.modules.get("qiskit.circuit.quantumcircuit")   # only once qiskit is loaded
    return getattr(module, "QuantumCircuit", None) if module is not None else None


def _qiskit_only(circuit: Any) -> bool:
    """True if every instruction (control-flow bodies too) is one of Qiskit's own classes."""
    ok = True

    def visit(op: Any) -> Any:
        nonlocal ok
        # standard gates defined in Rust have no module
        if not (type(op).__module__ or "qiskit.").startswith("qiskit."):
            ok = False
        for block in getattr(op, "blocks", None) or ():
            ok = ok and _qiskit_only(block)
        return op

    walk = getattr(getattr(circuit, "_data", None), "map_nonstandard_ops", None)
    if walk is not None:            # visits only the ops that are Python objects (fast)
        walk(visit)
    else:
        for inst in circuit.data:
            visit(inst.operation)
    return ok


def _qpy_bytes(circuit: Any) -> bytes | None:
    try:
        if not _qiskit_only(circuit):
            return None                 # a custom gate class would come back as a plain Gate
        from qiskit import qpy

        buf = io.BytesIO()
        qpy.dump(circuit, buf)
        return buf.getvalue()
    except Exception:       # metadata JSON cannot hold, an instruction QPY does not know ...
        return None


def _circuit_from_qpy(data: bytes) -> Any:
    from qiskit import qpy

    return qpy.load(io.BytesIO(data))[0]


# --- frames --------------------------------------------------------------------------------
def send_frame(sock: socket.socket, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    head = json.dumps(header).encode()
    parts: list[bytes] = [_HEAD.pack(len(head), len(blobs)), head]
    small = sum(len(b) for b in blobs) < 1024 * 1024
    for blob in blobs:
        parts.append(_LEN.pack(len(blob)))
        if small:
            parts.append(blob)
        else:                       # big blobs are sent as they are, not copied into one buffer
            sock.sendall(b"".join(parts))
            parts = []
            sock.sendall(blob)
    if parts:
        sock.sendall(b"".join(parts))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other end closed the socket")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    head_len, count = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
    header = json.loads(_recv_exact(sock, head_len))
    blobs = []
    for _ in range(count):
        (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        blobs.append(_recv_exact(sock, length))
    return header, blobs


# --- running one task ----------------------------------------------------------------------
def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


_pinned: list[list[int]] = [[]]      # the cores of the last pinning


def _pin(cpus: list[int]) -> None:
    """Pin every thread of this process (sched_setaffinity(0) would pin only the caller).

    Not again for the same cores as the last task's: a thread started since then inherited
    the cores of the thread that started it.
    """
    if not cpus or not hasattr(os, "sched_setaffinity") or cpus == _pinned[0]:
        return
    _pinned[0] = list(cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def format_remote_error(exc: BaseException, lines: int = ERROR_LINES) -> str:
    """The user's traceback without this module's frames, cut to its last `lines` lines."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
    kept = text.splitlines()
    if len(kept) > lines:
        kept = [f"[... {len(kept) - lines} earlier lines left out ...]", *kept[-lines:]]
    return "\n".join(kept)


def run_one(header: dict[str, Any], blobs: list[bytes],
            functions: dict[str, Callable[..., Any]]) -> tuple[dict[str, Any], list[bytes]]:
    """Run the task a request describes; (reply header, [pickled value]) whatever happens."""
    os.environ[TASK_ID_ENV] = str(header.get("task_id", ""))
    _pin(list(header.get("cpus") or []))
    started = time.time()
    start = _cpu_seconds()
    reply: dict[str, Any]
    out: list[bytes] = []
    try:
        digest = header["fn"]
        fn = functions.get(digest)
        if fn is None:
            fn = cloudpickle.loads(blobs[0])
            functions[digest] = fn
        if header.get("mode") == "reduce":
            value = fn([cloudpickle.loads(b) for b in blobs[1:]])
        else:
            args, kwargs = cloudpickle.loads(blobs[1])
            value = fn(*args, **kwargs)
        out = [dumps(value)]
        reply = {"ok": True}
    except BaseException as exc:    # SystemExit and KeyboardInterrupt fail the task, not the loop
        reply = {"ok": False, "type": type(exc).__name__,
                 "error": format_remote_error(exc, int(header.get("error_lines") or ERROR_LINES))}
    finally:
        _flush_user_side()
    reply["cpu"] = max(0.0, _cpu_seconds() - start)
    reply["started"] = started
    return reply, out


def _flush_user_side() -> None:
    """Send the calls the task made but did not wait for, while it is still the running task."""
    for hook in AFTER_TASK:
        try:
            hook()
        except Exception as exc:     # the task's own result still goes back
            print(f"[qhybrid] sending the task's own distributed calls failed: {exc}",
                  file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def serve_socket(sock: socket.socket) -> None:
    """Answer requests on `sock` until the other end closes it."""
    functions: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            header, blobs = recv_frame(sock)
        except EOFError:
            return
        if header.get("op") == "stop":
            return
        reply, out = run_one(header, blobs, functions)
        send_frame(sock, reply, out)


def serve(address: str) -> None:
    """A task worker's executor: connect to the worker's Unix socket and serve it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    try:
        serve_socket(sock)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """A local-pool process: serves the socket whose descriptor it inherited (argv[0])."""
    args = sys.argv[1:] if argv is None else argv
    os.environ[LOCAL_WORKER_ENV] = "1"
    sock = socket.socket(fileno=int(args[0]))
    try:
        serve_socket(sock)
    finally:
        sock.close()

