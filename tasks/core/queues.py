"""Queue names, defined once: whole jobs, distributed tasks and quantum tasks never share a queue."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tasks.core import defaults as d

if TYPE_CHECKING:
    from celery import Celery

    from tasks.core.registry import Registry

RUN_JOB_TASK = "qhybrid.run_job"
RUN_QUANTUM_TASK = "qhybrid.run_quantum_task"
RUN_TASK = "qhybrid.run_task"              # one distributed task (sent again after a loss)
RUN_TASKS = "qhybrid.run_tasks"            # many: a batch's group of messages, each naming a chunk
RUN_MAP_TASK = "qhybrid.run_map_task"      # a map task of a map_reduce chord (result kept)
REDUCE_TASK = "qhybrid.reduce_task"        # the chord body: the reduce of a map_reduce

# Quantum-task message priorities. Celery's Redis transport keeps one list per priority step
# and its BRPOP names them lowest number first, so 0 is served before 9 (and a message without
# a priority counts as 0). Tasks of the job holding a device go first.
HOLDER_PRIORITY = 0
STANDALONE_PRIORITY = 9


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
