"""Queue names, defined once: whole jobs, distributed tasks and quantum tasks never share a queue.

Quantum tasks are not Celery messages: `device.<name>` names a device's queue in Redis
(tasks.devices.device_queue) and is what a device worker's presence says it serves."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tasks.core import defaults as d

if TYPE_CHECKING:
    from celery import Celery

    from tasks.core.registry import Registry

RUN_JOB_TASK = "qhybrid.run_job"
RUN_TASK = "qhybrid.run_task"              # one distributed task (sent again after a loss)
RUN_TASKS = "qhybrid.run_tasks"            # many: a batch's group of messages, each naming a chunk
RUN_MAP_TASK = "qhybrid.run_map_task"      # a map task of a map_reduce chord (result kept)
REDUCE_TASK = "qhybrid.reduce_task"        # the chord body: the reduce of a map_reduce


def jobs_queue(resource_class: str) -> str:
    return f"jobs.{resource_class}"


def tasks_queue(resource_class: str) -> str:
    return f"tasks.{resource_class}"


def device_queue(device: str) -> str:
    return f"device.{device}"


def enqueue_job(celery: Celery, registry: Registry, job_id: str, attempt: int,
                resource_class: str) -> None:
    """Send the one message that starts a job: its id and attempt, nothing else.

    The job is noted as sent, so that a message lost with a dying worker is sent again.
    """
    registry.r.zadd(d.SENT_JOBS_KEY, {job_id: time.time()})
    celery.send_task(RUN_JOB_TASK, args=[job_id, attempt], queue=jobs_queue(resource_class))
