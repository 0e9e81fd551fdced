"""gunicorn server hooks of the web process (`gunicorn -c python:app.gunicorn_hooks`).

A web worker dies with its master: if the master is killed (SIGKILL), the orphaned worker
gets SIGTERM at once instead of holding the port until it notices. The restarted web binds
with SO_REUSEPORT (`--reuse-port`), so it never waits for the old worker either.

What gunicorn refuses before the app sees it (a request line over its 8190-byte maximum, a
malformed request) it answers itself, in HTML: its workers write that answer with
`gunicorn.util.write_error(sock, status, reason, message)`, which `post_fork` replaces with
`problem_error`, so those answers are `application/problem+json` like every other error.
This is the one place that relies on that gunicorn function; tests/test_hostile.py sends
such requests to the real web and fails if it changes.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from typing import Any

PR_SET_PDEATHSIG = 1


def problem_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error answer, as problem+json (same arguments as gunicorn.util.write_error)."""
    from gunicorn import util

    body = json.dumps({"type": "about:blank", "title": reason, "status": status_int,
                       "detail": mesg}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


def post_fork(server: Any, worker: Any) -> None:
    from gunicorn import util

    util.write_error = problem_error
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != server.pid:     # the master died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
