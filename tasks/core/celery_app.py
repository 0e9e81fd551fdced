"""The Celery app: JSON only, late acks, one message per job carrying only its id."""

from __future__ import annotations

import os
import warnings

from celery import Celery

from tasks.core import defaults
from tasks.core.settings import Settings

# Celery warns a worker running as root because a root worker that accepted pickle would run
# any code a message carries. Ours accept JSON only (below; make_celery refuses anything else),
# and they run as root on purpose: the supervisor needs it to start each job's code as the
# unprivileged QHYBRID_JOB_USER. `tasks.sandbox.isolation.root_notice` says in one line what still holds.
ROOT_WARNING = r"You're running the worker with superuser privileges"


def make_celery(settings: Settings) -> Celery:
    app = Celery("qhybrid", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A job is acknowledged only when it ended, so a worker that dies mid-job does not
        # lose it; one message at a time per slot, so no job waits behind a long one.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # Celery's Redis transport redelivers an unacked message after this long: it must
        # exceed the longest job or a running job would start on a second worker.
        broker_transport_options={"visibility_timeout": defaults.VISIBILITY_TIMEOUT_S},
        result_backend_transport_options={"visibility_timeout": defaults.VISIBILITY_TIMEOUT_S},
        result_expires=24 * 3600,
        task_default_queue="jobs.small",
        worker_hijack_root_logger=False,
        # Redis may restart under a running service (`qhybrid up` restarts it): workers
        # reconnect by themselves, for as long as it takes, and keep their running jobs.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        result_backend_always_retry=True,
        # Task events (and, on the worker command line, heartbeats) let Flower and
        # `celery events` see workers and tasks; QHYBRID_TASK_EVENTS=0 turns them off.
        # benchmarks/job_latency.py --events measures what they cost a job's latency.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        task_track_started=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if os.geteuid() == 0:
        if set(app.conf.accept_content) != {"json"}:
            raise RuntimeError("workers run as root accept JSON messages only")
        warnings.filterwarnings("ignore", message=ROOT_WARNING)
    # the modules that define the job and distributed-task tasks (device workers are not
    # Celery workers: tasks.devices.worker)
    app.autodiscover_tasks(["tasks.jobs"], related_name="run", force=True)
    app.autodiscover_tasks(["tasks.distributed"], related_name="tasks", force=True)
    return app


app = make_celery(Settings.from_env())
