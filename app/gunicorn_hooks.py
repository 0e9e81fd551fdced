"""gunicorn server hooks of the web process (`gunicorn -c python:app.gunicorn_hooks`).

A web worker dies with its master: if the master is killed (SIGKILL), the orphaned worker
gets SIGTERM at once instead of holding the port until it notices. The restarted web binds
with SO_REUSEPORT (`--reuse-port`), so it never waits for the old worker either.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

PR_SET_PDEATHSIG = 1


def post_fork(server: Any, worker: Any) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != server.pid:     # the master died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
