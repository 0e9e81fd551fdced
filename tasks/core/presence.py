"""How a worker process is named where presence and ownership are recorded."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    """`<host>:<pid>`: the name a job's or task's record gives the process running it."""
    return f"{socket.gethostname()}:{os.getpid()}"




def note_starting(redis_url: str, queues: list[str]) -> None:
    """Say, from a worker's command before it becomes Celery, that a worker for `queues` is
    starting (Registry.note_warming). Best effort: if Redis does not answer at once, the
    worker is simply not counted until it is live."""
    from tasks.core.redis_client import connect, set_retry_window
    from tasks.core.registry import Registry

    set_retry_window(1.0)        # this process is about to become the worker: no long waits
    try:
        Registry(connect(redis_url)).note_warming(queues)
    except Exception:
        pass


__all__ = ["note_starting", "worker_name"]
