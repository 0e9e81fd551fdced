"""The Celery task that runs a job, and the worker's own housekeeping.

A message carries only (job_id, attempt). The registry decides whether it still runs: a
cancelled job, or a duplicate delivery of an attempt that already ran, is dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from typing import Any

from celery import Celery, shared_task
from celery.exceptions import Reject
from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from tasks.core import broker
from tasks.core import defaults as d
from tasks.core.presence import worker_name
from tasks.core.queues import RUN_JOB_TASK, enqueue_job, jobs_queue
from tasks.core.services import Services, from_env
from tasks.core.settings import MissingSharedSettings, require_shared
from tasks.devices.holders import repair as repair_reservations
from tasks.devices.quantum_tasks import DevicesExtension
from tasks.distributed.job import JobTasks, stop_job_tasks
from tasks.files.data_files import FilesExtension
from tasks.jobs.helpers import HelpersExtension
from tasks.jobs.hybrid import supervisor_class
from tasks.jobs.serverless import ServerlessExtension
from tasks.sandbox import box as sandbox
from tasks.sandbox.bwrap import SandboxUnavailable
from tasks.sandbox.environment import warm_parent
from tasks.sandbox.isolation import make_undumpable
from tasks.sandbox.ready import ReadyPlaces
from tasks.supervisor.extension import JobExtension

log = logging.getLogger("qhybrid.worker")
_slot = itertools.count()
_stop = threading.Event()
_ready: ReadyPlaces | None = None      # sandboxes made ready ahead, for the classes served


# What a job's code can do besides the supervisor's own calls, in this order (their hooks
# run in it too): data files, the hybrid-job helpers, devices, the Serverless contract, and
# distributed tasks (tasks.supervisor.extension).
EXTENSIONS: tuple[type[JobExtension], ...] = (FilesExtension, HelpersExtension, DevicesExtension,
                                              ServerlessExtension, JobTasks)


def resend_lost_messages(services: Services, celery: Celery) -> list[str]:
    """Jobs whose message vanished (popped by a worker that died): send it again.

    A second message is harmless: only the first to claim the job (QUEUED, same attempt) runs.
    """
    reg = services.registry
    stale = reg.r.zrangebyscore(d.SENT_JOBS_KEY, "-inf", time.time() - d.LOST_MESSAGE_AFTER_S)
    if not stale:
        return []
    live = reg.workers_by_queue()
    unacked = broker.unacked_bodies(reg.r)     # the messages workers hold now
    resent = []
    for job_id in stale:
        try:
            job = reg.get_job(job_id)
        except Exception:
            reg.r.zrem(d.SENT_JOBS_KEY, job_id)
            continue
        queue = job.get("queue") or ""
        if job["status"] != d.QUEUED:
            reg.r.zrem(d.SENT_JOBS_KEY, job_id)
        elif live.get(queue) and job_id not in unacked and not broker.queued_messages(reg.r, queue):
            enqueue_job(celery, reg, job_id, int(job.get("attempt") or 1), job["resource_class"])
            resent.append(job_id)
    return resent


def _cpus_for(threads: int) -> list[int]:
    available = sorted(os.sched_getaffinity(0))
    n = min(threads, len(available))
    start = (next(_slot) * n) % len(available)
    return [available[(start + i) % len(available)] for i in range(n)]


@shared_task(name=RUN_JOB_TASK, ignore_result=True, acks_late=True)
def run_job(job_id: str, attempt: int) -> None:
    if _stop.is_set():
        # a stopping worker may still be handed a prefetched message: give it back untouched
        raise Reject("worker is stopping", requeue=True)
    services = from_env()
    reg = services.registry
    worker = worker_name()
    job = reg.claim(job_id, attempt, worker)
    if job is None:
        return
    rc = services.classes.get(job.get("resource_class") or "")
    if rc is None:
        reg.transition(job_id, d.ERROR, allowed=[d.INITIALIZING], ended=time.time(),
                       error=f"resource class {job.get('resource_class')!r} is not configured here")
        return
    celery = run_job.app
    # a sandbox made ready ahead shows what every job's does; one that also shows the job's
    # dependencies is made for it
    place = _ready.take(rc) if _ready is not None and not job.get("dependencies") else None
    supervisor_class(job)(job, reg, services.store, services.settings, rc, worker,
                          cpus=_cpus_for(rc.threads()), stopping=_stop,
                          requeue=lambda reason: requeue_job(services, celery, job_id, reason,
                                                             attempt),
                          extensions=EXTENSIONS, place=place,
                          tidy=_ready.later if _ready is not None else None).run()


def requeue_job(services: Services, celery: Celery, job_id: str, reason: str,
                attempt: int, fenced: bool = False) -> str | None:
    """A job whose worker went away runs again once; the second time it ends in ERROR.

    Only the `attempt` that went away is moved: each move checks, in the same atomic call,
    that the job still stands at that attempt (and, when `fenced`, that no supervisor beats
    for it), so a reaper acting on a stale view never touches a newer attempt. Returns the
    status the job was moved to, or None when another process got there first.
    """
    reg = services.registry
    job = reg.get_job(job_id)
    require = ("attempt", str(attempt))
    if job["status"] == d.CANCELING:
        if reg.transition(job_id, d.CANCELED, allowed=[d.CANCELING], require=require,
                          unless_beating=fenced, ended=time.time()):
            return d.CANCELED
    elif attempt < d.MAX_ATTEMPTS:
        if reg.transition(job_id, d.QUEUED, allowed=list(d.ACTIVE_STATUSES), require=require,
                          unless_beating=fenced, attempt=attempt + 1,
                          detail=f"{reason}; running the job again"):
            # the next attempt writes to the same log: mark where it starts
            reg.append_log(job_id, f"\n----- attempt {attempt + 1} ({reason}; the job runs "
                                   f"again from the start) -----\n")
            enqueue_job(celery, reg, job_id, attempt + 1, job["resource_class"])
            return d.QUEUED
    elif reg.transition(job_id, d.ERROR, allowed=list(d.ACTIVE_STATUSES), require=require,
                        unless_beating=fenced, ended=time.time(),
                        error=f"{reason} ({attempt} times); the job was not run again",
                        detail=reason):
        return d.ERROR
    return None


def reap_lost_jobs(services: Services, celery: Celery) -> list[str]:
    """Jobs whose supervisor stopped beating: run again once, else end them in ERROR.

    The move comes first and is fenced by the attempt judged lost; only the process that
    made it then ends that attempt's tasks (a newer attempt's tasks are left alone).
    """
    reg = services.registry
    handled = []
    for job_id in reg.active_jobs():
        if reg.has_heartbeat(job_id):
            continue
        try:
            job = reg.get_job(job_id)
        except Exception:
            continue
        if job["status"] not in d.ACTIVE_STATUSES:
            continue
        if time.time() - (job.get("updated") or 0) < d.HEARTBEAT_TTL_S:
            continue  # just claimed; its first heartbeat is on the way
        attempt = int(job.get("attempt") or 1)
        moved = requeue_job(services, celery, job_id, "worker lost", attempt, fenced=True)
        if moved is None:
            continue
        # none of the lost attempt's tasks is left queued or running; a rerun's are its own
        stop_job_tasks(services, job, "the job's worker was lost", attempt=str(attempt),
                       expire=moved in d.TERMINAL_STATUSES)
        handled.append(job_id)
    return handled


def _housekeeping(celery: Celery, queues: list[str]) -> None:
    services = from_env()
    name = worker_name()
    info = {"name": name, "queues": queues, "pid": os.getpid(), "started": time.time()}
    while not _stop.is_set():
        try:
            services.registry.announce_worker(name, info)
            # One reaper at a time over every host: the lock is renewed while the turn lasts
            # (ending a lost job's tasks may wait for their workers) and expires after it.
            with services.registry.held_lock(d.REAPER_LOCK_KEY, d.REAPER_INTERVAL_S * 0.9) as mine:
                if mine:
                    reap_lost_jobs(services, celery)
                    resend_lost_messages(services, celery)
                    repair_reservations(services, celery)
        except Exception:
            log.exception("housekeeping failed")
        _stop.wait(d.REAPER_INTERVAL_S)
    services.registry.retire_worker(name)


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    try:
        require_shared(role="worker")
    except MissingSharedSettings as exc:
        raise SystemExit(str(exc)) from None   # loud: Celery goes on after an Exception
    make_undumpable()   # our environment holds credentials: not for user code to read
    try:
        sandbox.check_host()    # a worker that cannot sandbox user code takes no job
    except SandboxUnavailable as exc:
        print(f"qhybrid worker: cannot run user code safely: {exc}", file=sys.stderr, flush=True)
        os._exit(78)
    warm_parent(wait=False)   # pay qiskit's import once, before the first job


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _ready
    app = sender.app
    queues = sorted(app.amqp.queues.consume_from or app.amqp.queues)
    services = from_env()
    served = [rc for name, rc in services.classes.items() if jobs_queue(name) in queues]
    if served:
        _ready = ReadyPlaces(services.settings.work_dir)
        for rc in served:
            _ready.keep(rc, rc.slots())
    threading.Thread(target=_housekeeping, args=(app, queues), name="housekeeping",
                     daemon=True).start()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    _stop.set()     # supervisors hand their jobs back to the queue; housekeeping ends


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _stop.set()
    if _ready is not None:
        _ready.close()
    sandbox.shutdown()
