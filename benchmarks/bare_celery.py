"""A bare Celery app with a no-op task: the baseline our own queueing is compared with.

Start a worker for it with `celery -A benchmarks.bare_celery worker -Q bare` against the same
Redis (BARE_REDIS_URL), using the same serializer and ack settings as qhybrid.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare", broker=os.environ.get("BARE_REDIS_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BARE_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue="bare",
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="bare.noop")
def noop(*_: object) -> None:
    """Does nothing: what is left is the queue's own cost."""
