"""Device reservations: one hybrid job at a time holds a non-shared device, the rest wait.

A job that names such a device is not sent to a job queue at submission unless it gets the
device at once; otherwise it waits QUEUED in the device's line (a sorted set, first come first
served) and takes no worker slot. When the holder ends, however it ends (DONE, ERROR, CANCELED,
worker lost, canceled while queued), `job_ended` gives the device to the next job still
QUEUED and sends that job's message. `Registry.transition` calls it on every move into a
terminal status; `repair` (run by the workers' housekeeping) mends what a crash between two
steps may leave behind. Holding and handing over are each one atomic Lua call.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tasks import defaults as d

if TYPE_CHECKING:
    from celery import Celery

    from tasks.registry import Registry
    from tasks.services import Services

log = logging.getLogger("qhybrid.reservations")

# Hands the device to the first waiting job still QUEUED, if nobody holds it.
# KEYS: holder, waiting ; ARGV[1]: job key prefix, ARGV[2]: now
_PROMOTE = """
local function promote()
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end
  while true do
    local first = redis.call('ZRANGE', KEYS[2], 0, 0)
    if #first == 0 then return false end
    local id = first[1]
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HGET', ARGV[1] .. id, 'status') == 'QUEUED' then
      redis.call('SET', KEYS[1], id)
      redis.call('HSET', ARGV[1] .. id, 'device_granted', ARGV[2])
      return id
    end
  end
end
"""

# Join the line (unless holding already), then promote: returns the job to send, if any.
# KEYS: holder, waiting, arrivals ; ARGV: job key prefix, now, job id
_RESERVE = _PROMOTE + """
if redis.call('GET', KEYS[1]) == ARGV[3] then return false end
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[3])
end
return promote()
"""

# Leave the line or give up the device, then promote: returns the job to send, if any.
# KEYS: holder, waiting ; ARGV: job key prefix, now, job id ('' only promotes)
_RELEASE = _PROMOTE + """
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  if redis.call('GET', KEYS[1]) == ARGV[3] then redis.call('DEL', KEYS[1]) end
end
return promote()
"""

_JOB_PREFIX = d.JOB_KEY.format(job_id="")


def _keys(device: str) -> list[str]:
    return [d.DEVICE_HOLDER_KEY.format(device=device), d.DEVICE_WAITING_KEY.format(device=device)]


def holder(r: Any, device: str) -> str | None:
    """The id of the job holding the device, if any."""
    value = r.get(d.DEVICE_HOLDER_KEY.format(device=device))
    return str(value) if value else None


def waiting(r: Any, device: str) -> list[str]:
    """Ids of the jobs waiting for the device, next first."""
    return list(r.zrange(d.DEVICE_WAITING_KEY.format(device=device), 0, -1))


def reserve(r: Any, device: str, job_id: str) -> str | None:
    """Put the job in the device's line; the job that now holds it and must be sent, if any."""
    moved = r.register_script(_RESERVE)(
        keys=[*_keys(device), d.DEVICE_ARRIVALS_KEY], args=[_JOB_PREFIX, time.time(), job_id])
    return str(moved) if moved else None


def release(r: Any, device: str, job_id: str) -> str | None:
    """Take the job off the device (holder or waiting); the job that now holds it, if any."""
    moved = r.register_script(_RELEASE)(keys=_keys(device),
                                        args=[_JOB_PREFIX, time.time(), job_id])
    return str(moved) if moved else None


def queue_position(r: Any, job: dict[str, Any]) -> int | None:
    """How many jobs go before a job waiting for its device (1: it is next); else None."""
    device = job.get("device")
    if not device or job.get("status") != d.QUEUED:
        return None
    rank = r.zrank(d.DEVICE_WAITING_KEY.format(device=device), job["id"])
    return None if rank is None else int(rank) + 1


def _celery() -> Celery:
    from tasks.celery_app import app

    return app


def dispatch(registry: Registry, job_id: str, celery: Celery | None = None) -> bool:
    """Send the message that starts a job that was given its device; False if it moved on."""
    from tasks.jobs import enqueue_job

    job = registry.get_job(job_id)
    if job["status"] != d.QUEUED:
        return False
    enqueue_job(celery or _celery(), registry, job_id, int(job.get("attempt") or 1),
                job["resource_class"])
    registry.set_fields(job_id, dispatched=time.time())
    return True


def start_job(registry: Registry, celery: Celery, job: dict[str, Any], hold: bool) -> None:
    """Send a new job to its queue, or to its device's line when it must hold the device."""
    if not hold:
        from tasks.jobs import enqueue_job

        enqueue_job(celery, registry, job["id"], int(job.get("attempt") or 1),
                    job["resource_class"])
        return
    granted = reserve(registry.r, job["device"], job["id"])
    if granted:
        dispatch(registry, granted, celery)


def job_ended(registry: Registry, job_id: str) -> None:
    """A job reached a terminal status: cancel its queued quantum tasks, free its device.

    Called by `Registry.transition`; it never raises (`repair` finishes what it could not).
    """
    try:
        from tasks.quantum_tasks import QuantumTasks

        QuantumTasks(registry.r).cancel_queued_for_job(None, job_id)
        device = registry.job_field(job_id, "device")
        if device:
            granted = release(registry.r, device, job_id)
            if granted:
                dispatch(registry, granted)
    except Exception:
        log.exception("releasing the device of job %s failed; repair will retry", job_id)


def repair(services: Services, celery: Celery) -> None:
    """Mend what a crash between two steps can leave: run by one worker every few seconds.

    A holder that ended (or vanished) gives the device up; a device nobody holds goes to its
    next waiting job; a job given its device but never sent is sent; a quantum task whose
    device worker is gone ends in ERROR.
    """
    from tasks.devices import device_registry

    registry = services.registry
    r = registry.r
    now = time.time()
    for name in device_registry(services.settings).names():
        current = holder(r, name)
        if current is None:
            granted = release(r, name, "")
            if granted:
                dispatch(registry, granted, celery)
            continue
        status = registry.job_field(current, "status")
        if status is None or status in d.TERMINAL_STATUSES:
            granted = release(r, name, current)
            if granted:
                dispatch(registry, granted, celery)
        elif status == d.QUEUED and not registry.job_field(current, "dispatched"):
            since = float(registry.job_field(current, "device_granted") or 0)
            if now - since > d.DEVICE_DISPATCH_GRACE_S:
                dispatch(registry, current, celery)
    _end_lost_quantum_tasks(services, now)


def _end_lost_quantum_tasks(services: Services, now: float) -> None:
    from qhybrid.errors import TaskFailed
    from tasks.quantum_tasks import QuantumTasks

    tasks = QuantumTasks(services.registry.r)
    for task_id in services.registry.r.smembers(d.RUNNING_QTASKS_KEY):
        try:
            rec = tasks.get(task_id)
        except Exception:
            services.registry.r.srem(d.RUNNING_QTASKS_KEY, task_id)
            continue
        worker = rec.get("worker") or ""
        if now - (rec.get("started") or now) < d.WORKER_TTL_S:
            continue
        if services.registry.r.exists(d.WORKER_KEY.format(name=worker)):
            continue
        error = TaskFailed(f"the device worker running it ({worker}) stopped")
        if tasks.transition(rec, d.ERROR, [d.RUNNING], ended=now, error=error.to_problem()):
            tasks.drop_circuits(services.store, rec)
