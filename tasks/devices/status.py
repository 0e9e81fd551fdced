"""What a device is doing: online, queue depth, who holds it, who waits."""

from __future__ import annotations

from typing import Any

from backends.registry import DeviceSpec
from tasks.core import defaults as d
from tasks.core.queues import device_queue
from tasks.devices.line import holder, waiting
from tasks.devices.quantum_tasks import QuantumTasks


def device_status(r: Any, spec: DeviceSpec, live_queues: dict[str, list[str]],
                  user: str | None = None) -> dict[str, Any]:
    """What a device is doing: online, queue depth by priority, who holds it, who waits.

    The holding job's id is shown to its own user only.
    """
    workers = live_queues.get(device_queue(spec.name), [])
    holding = holder(r, spec.name)
    owner = r.hget(d.JOB_KEY.format(job_id=holding), "user") if holding else None
    return {
        "online": bool(workers),
        "workers": len(workers),
        "queue_depth": QuantumTasks(r).queue_depth(spec.name),
        "held": holding is not None,
        "holding_job": holding if holding and user is not None and owner == user else None,
        "jobs_waiting": len(waiting(r, spec.name)),
    }
