"""Queue names, defined once: whole jobs, distributed tasks and quantum tasks never share a queue."""

from __future__ import annotations

RUN_JOB_TASK = "qhybrid.run_job"


def jobs_queue(resource_class: str) -> str:
    return f"jobs.{resource_class}"


def tasks_queue(resource_class: str) -> str:
    return f"tasks.{resource_class}"


def device_queue(device: str) -> str:
    return f"device.{device}"
