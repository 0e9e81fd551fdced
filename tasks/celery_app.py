"""The Celery app: JSON only, late acks, one message per job carrying only its id."""

from __future__ import annotations

from celery import Celery

from tasks import defaults
from tasks.settings import Settings


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
        worker_send_task_events=False,
        task_track_started=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.autodiscover_tasks(["tasks"], related_name="jobs", force=True)
    app.autodiscover_tasks(["tasks"], related_name="distributed", force=True)
    return app


app = make_celery(Settings.from_env())
