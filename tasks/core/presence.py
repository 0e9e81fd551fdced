"""How a worker process is named where presence and ownership are recorded."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    """`<host>:<pid>`: the name a job's or task's record gives the process running it."""
    return f"{socket.gethostname()}:{os.getpid()}"


__all__ = ["worker_name"]
