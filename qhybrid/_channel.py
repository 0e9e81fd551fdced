"""The user side of the local channel to the job's supervisor (see tasks/core/channel.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

from qhybrid.errors import error_from_problem

SOCKET_ENV = "QHYBRID_SUPERVISOR_SOCKET"

_lock = threading.Lock()
_conn: tuple[int, socket.socket, Any] | None = None


def in_job() -> bool:
    return bool(os.environ.get(SOCKET_ENV))


def call(op: str, **args: Any) -> Any:
    """Ask the supervisor to do `op`; raises the error it answers with."""
    global _conn
    path = os.environ.get(SOCKET_ENV)
    if not path:
        raise RuntimeError(f"{op}: not running inside a qhybrid job")
    line = json.dumps({"op": op, "args": args}).encode() + b"\n"
    with _lock:
        if _conn is None or _conn[0] != os.getpid():   # a fork needs its own connection
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            _conn = (os.getpid(), sock, sock.makefile("rb"))
        _, sock, reader = _conn
        sock.sendall(line)
        raw = reader.readline()
    if not raw:
        raise ConnectionError("the job's supervisor closed the channel")
    reply = json.loads(raw)
    if not reply.get("ok"):
        problem = reply.get("error") or {}
        raise error_from_problem(problem, int(problem.get("status") or 500))
    return reply.get("value")
