"""Device holding: one hybrid job at a time holds a non-shared device, the rest wait.

A job that names such a device is not sent to a job queue at submission unless it gets the
device at once; otherwise it waits QUEUED in the device's line (a sorted set, first come first
served) and takes no worker slot. When the holder ends, however it ends (DONE, ERROR, CANCELED,
worker lost, canceled while queued), `job_ended` gives the device to the next job still
QUEUED and sends that job's message. `Registry.transition` runs it on every move into a
terminal status (tasks.core.signals.job_ended); `repair` (run by the workers' housekeeping)
mends what a crash between two steps may leave behind. Holding and handing over are each one
atomic Lua call. While a reservation's window is open (tasks.devices.reservations), only its
jobs are given the device.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tasks.core import defaults as d
from tasks.core import signals
from tasks.devices import reservations
from tasks.devices.line import holder, release, reserve, waiting

if TYPE_CHECKING:
    from celery import Celery

    from tasks.core.registry import Registry
    from tasks.core.services import Services

log = logging.getLogger("qhybrid.reservations")

def _celery() -> Celery:
    from tasks.core.celery_app import app

    return app


def dispatch(registry: Registry, job_id: str, celery: Celery | None = None) -> bool:
    """Send the message that starts a job that was given its device; False if it moved on."""
    from tasks.core.queues import enqueue_job

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
        from tasks.core.queues import enqueue_job

        enqueue_job(celery, registry, job["id"], int(job.get("attempt") or 1),
                    job["resource_class"])
        return
    granted = reserve(registry.r, job["device"], job["id"])
    if granted:
        dispatch(registry, granted, celery)


@signals.job_ended.connect(dispatch_uid="qhybrid.devices.job_ended")
def _on_job_ended(sender: Registry, job_id: str, device: str | None = None, **_: Any) -> None:
    job_ended(sender, job_id, device)


def job_ended(registry: Registry, job_id: str, device: str | None = None) -> None:
    """A job reached a terminal status: cancel its queued quantum tasks, free its device.

    Run by `Registry.transition` (tasks.core.signals.job_ended); it never raises (`repair`
    finishes what it could not).
    """
    try:
        from tasks.devices.quantum_tasks import QuantumTasks

        QuantumTasks(registry.r).cancel_queued_for_job(None, job_id)
        if device is None:
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
    from tasks.devices.catalog import device_registry

    registry = services.registry
    r = registry.r
    now = time.time()
    names = device_registry(services.settings).names()
    # One read for every device first: one nobody holds and nobody waits for needs nothing,
    # and a service has many such devices (a tick must not cost a call per device).
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.exists(d.DEVICE_HOLDER_KEY.format(device=name))
        pipe.zcard(d.DEVICE_WAITING_KEY.format(device=name))
    found = pipe.execute() if names else []
    for i, name in enumerate(names):
        if not found[2 * i] and not found[2 * i + 1]:
            continue
        end_jobs_of_closed_windows(registry, name, now)
        current = holder(r, name)
        if current is not None:
            stop_holder_outside_its_window(registry, name, current, now)
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
    from tasks.devices.quantum_tasks import QuantumTasks

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


def cancel_reservation(services: Services, user: str, ref: Any) -> dict[str, Any]:
    """Cancel a reservation that has not ended; its waiting jobs end, the device is freed."""
    from qhybrid.errors import Conflict

    rec = reservations.get_reservation(services, user, ref)
    state = reservations.reservation_state(rec)
    if state == reservations.CANCELED:
        return rec
    if state == "ENDED":
        raise Conflict("the reservation has already ended", field="reservation_arn")
    r = services.registry.r
    r.hset(d.RESERVATION_KEY.format(res_id=rec["id"]),
           mapping={"status": reservations.CANCELED, "canceled": repr(time.time())})
    end_jobs_of_closed_windows(services.registry, rec["device"], time.time())
    granted = release(r, rec["device"], "")
    if granted:
        dispatch(services.registry, granted)
    return reservations.load(r, rec["id"]) or rec


def stop_holder_outside_its_window(registry: Registry, device: str, job_id: str,
                                   now: float) -> bool:
    """A reservation's window opened on the device while a job without that reservation held
    it: the job is stopped (it ends in ERROR saying why), so the reservation's jobs get the
    device. True when it was."""
    window = reservations.open_reservation(registry.r, device, now)
    if window is None:
        return False
    if registry.job_field(job_id, "reservation_id") == window["id"]:
        return False
    times = reservations.reservation_json(window)
    reason = (f"device {device} is reserved from {times['start']} to {times['end']} "
              f"(reservation {window['id']}): only that reservation's jobs hold it in its "
              "window, so this job, which held it without the reservation, was stopped when "
              "the window opened")
    registry.set_fields(job_id, stop_reason=reason)
    if registry.transition(job_id, d.ERROR, allowed=[d.QUEUED], ended=now, error=reason,
                           detail="a reservation window opened"):
        return True
    return bool(registry.transition(job_id, d.CANCELING, allowed=[d.INITIALIZING, d.RUNNING],
                                    detail="a reservation window opened"))


def end_jobs_of_closed_windows(registry: Registry, device: str, now: float) -> None:
    """Jobs still waiting for a reservation that ended or was canceled end in ERROR."""
    r = registry.r
    for job_id in waiting(r, device):
        res_id = r.hget(d.JOB_KEY.format(job_id=job_id), "reservation_id")
        if not res_id:
            continue
        rec = reservations.load(r, res_id)
        state = reservations.reservation_state(rec) if rec else reservations.CANCELED
        if state in ("ENDED", reservations.CANCELED):
            registry.transition(job_id, d.ERROR, allowed=[d.QUEUED], ended=now,
                                error=f"its reservation {res_id} {state.lower()} before the "
                                "job could start", detail="reservation closed")
