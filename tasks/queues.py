"""Queue names, defined once: whole jobs, distributed tasks and quantum tasks never share a queue."""

from __future__ import annotations

RUN_JOB_TASK = "qhybrid.run_job"
RUN_QUANTUM_TASK = "qhybrid.run_quantum_task"
RUN_TASK = "qhybrid.run_task"              # a distributed task (part of a group)
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
