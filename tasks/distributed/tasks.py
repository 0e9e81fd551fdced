"""Task workers: the Celery tasks that run distributed tasks.

Task workers (`tasks.<class>` queues, separate from `jobs.<class>` so a parent waiting on its
tasks never takes the slot they need) claim tasks atomically in the registry, which is the
source of truth, a few at a time from the job's ready list when a message names a chunk of
a batch, and run them in a warm executor process of the job (`tasks.distributed.executor`,
`tasks.distributed.runner`) with the class's limits. A task's supervisor that waits on
nested tasks of its own class runs queued ones itself meanwhile, so nested fan-outs cannot
deadlock a full worker.

A task whose job is no longer running (ended, being canceled, or run again after a lost
worker) is canceled when claimed and killed while running.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import shared_task
from celery.signals import worker_shutdown, worker_shutting_down

from qhybrid.errors import (
    QhybridError,
)
from qhybrid.resources import ResourceClass
from tasks.core import defaults as d
from tasks.core.queues import REDUCE_TASK, RUN_MAP_TASK, RUN_TASK, RUN_TASKS, tasks_queue
from tasks.distributed.records import REDUCE, TERMINAL, TaskEnv, celery_app
from tasks.distributed.session import TASK_OPS, TaskSession

if TYPE_CHECKING:
    from tasks.core.services import Services
    from tasks.distributed.executor import Executor

log = logging.getLogger("qhybrid.tasks")


class TaskWorker:
    """Runs distributed tasks in one worker process (`tasks.<class>` queues)."""

    def __init__(self, services: Services) -> None:
        from tasks.core.presence import worker_name
        from tasks.distributed.executor import CpuSlots, ExecutorPool

        self.env = TaskEnv.from_services(services)
        self.settings = services.settings
        self.pool = ExecutorPool(services.settings, services.store, TASK_OPS)
        self.slots = CpuSlots(services.settings.data_dir / "cpus")
        self.name = worker_name()
        self._fns: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._jobs: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._reaper, name="task-executors", daemon=True).start()

    # --- one message ---------------------------------------------------------------------------
    def handle(self, task_id: str, chord: bool = False, reduce: bool = False) -> str:
        if reduce and not self._maps_ended(task_id):
            return d.QUEUED     # a duplicate kick: the waiting parent sends it again later
        run = uuid.uuid4().hex
        status, rec = self.env.tasks.claim(task_id, self.name, run)
        if status == "CLAIMED":
            return self.execute(rec, run)
        if chord:
            # run by a waiting parent meanwhile: the chord must not count it before it ends
            while status not in TERMINAL and status != "MISSING":
                time.sleep(d.TASK_TICK_S)
                status = str(self.env.tasks.fields([task_id], "status")[0][0] or "MISSING")
        return status

    def handle_many(self, ids: list[str]) -> None:
        """A message naming a chunk of a batch: its job's ready tasks of the class, claimed a
        few at a time while there are any (for TASK_DRAIN_S at most), then what is left of
        the chunk. Messages whose tasks others took end at once."""
        from tasks.distributed.runner import TaskRunner

        runner = TaskRunner(self)
        ready = ""          # the ready list: found from the named tasks; "-" named ones only
        deadline = time.monotonic() + d.TASK_DRAIN_S
        try:
            while not self._stop.is_set():
                listing = ready not in ("", "-")
                if listing and time.monotonic() >= deadline:
                    ready, listing = "-", False     # long enough: other messages take the rest
                found, more, recs = self.env.tasks.claim_many(
                    [] if listing else ids, self.name, uuid.uuid4().hex, runner.ahead(), ready)
                ready = ready or found
                if recs:
                    runner.run(recs)
                elif not more:
                    if not listing:
                        break
                    ready = "-"     # the list is empty: what is left of this message's own
        finally:
            runner.close()

    def _maps_ended(self, task_id: str) -> bool:
        maps = self.env.tasks.fields([task_id], "maps")[0][0]
        mids = json.loads(maps or "[]")
        return all(row[0] in TERMINAL for row in self.env.tasks.fields(mids, "status"))

    def execute(self, rec: dict[str, Any], run: str, cpus: list[int] | None = None) -> str:
        """Run a claimed task in an executor of its job; record how it ended."""
        from tasks.distributed.runner import TaskRunner

        runner = TaskRunner(self, cpus)
        try:
            return runner.run([{**rec, "run": run}])[0]
        finally:
            runner.close()

    def _hand_back(self, task_id: str, run: str) -> None:
        self.env.registry.r.delete(d.TASK_HEARTBEAT_KEY.format(task_id=task_id))
        if self.env.tasks.requeue(task_id, run) == 1:
            cls = self.env.tasks.fields([task_id], "class")[0][0] or ""
            celery_app().send_task(RUN_TASK, args=[task_id], queue=tasks_queue(cls))

    def _pump(self, task_id: str, ex: Executor, name: str = "task", final: bool = False) -> None:
        """The executor's new output: into the task's log, and, line by line with the task's
        name and id before each (as Ray shows a task's prints in its driver's log), into the
        job's log."""
        chunk = ex.read_output()
        if chunk:
            self.env.tasks.append_log(task_id, chunk.decode("utf-8", errors="replace"))
        lines = (ex.partial_line + chunk).split(b"\n")
        ex.partial_line = lines.pop()
        if final and ex.partial_line:
            lines.append(ex.partial_line)
            ex.partial_line = b""
        if lines:
            head = f"({name} task={task_id[:8]}) "
            text = "".join(head + line.decode("utf-8", errors="replace") + "\n"
                           for line in lines)
            self.env.tasks.append_job_output(ex.job_id, ex.key[1], text)

    # --- helping: a parent that waits runs its own queued children -------------------------
    def _helper(self, rc: ResourceClass,
                cpus: list[int]) -> Callable[[TaskSession, list[str]], bool]:
        last = 0.0

        def help_(session: TaskSession, pending: list[str]) -> bool:
            nonlocal last
            now = time.monotonic()
            if now - last < 0.1:
                return False
            last = now
            candidates = pending[:200]
            rows = self.env.tasks.fields(candidates, "status", "class", "kind", "maps")
            for task_id, (status, cls, kind, maps) in zip(candidates, rows, strict=True):
                if status != d.QUEUED or cls != rc.name:
                    continue
                if kind == REDUCE:
                    mids = json.loads(maps or "[]")
                    mrows = self.env.tasks.fields(mids, "status")
                    queued = [m for m, row in zip(mids, mrows, strict=True)
                              if row[0] == d.QUEUED]
                    if queued:
                        return self._help_one(queued, cpus)
                    if any(row[0] not in TERMINAL for row in mrows):
                        continue
                if self._help_one([task_id], cpus):
                    return True
            return False

        return help_

    def _help_one(self, ids: list[str], cpus: list[int]) -> bool:
        for task_id in ids:
            run = uuid.uuid4().hex
            status, rec = self.env.tasks.claim(task_id, self.name, run)
            if status == "CLAIMED":
                self.execute(rec, run, cpus=cpus)
                return True
        return False

    # --- caches and housekeeping -----------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        """The job record (its static fields), cached briefly."""
        with self._lock:
            hit = self._jobs.get(job_id)
            if hit and time.monotonic() - hit[0] < 60:
                return hit[1]
        job = self.env.registry.get_job(job_id)
        with self._lock:
            self._jobs[job_id] = (time.monotonic(), job)
            while len(self._jobs) > 256:
                self._jobs.popitem(last=False)
        return job

    def function(self, job_id: str, digest: str) -> bytes:
        key = (job_id, digest)
        with self._lock:
            if key in self._fns:
                self._fns.move_to_end(key)
                return self._fns[key]
        blob = self.env.blobs.get(d.JOB_FUNCTION_KEY.format(job_id=job_id, digest=digest))
        if blob is None:
            raise QhybridError("the task's function is gone (its job ended?)")
        with self._lock:
            self._fns[key] = blob
            while len(self._fns) > 64:
                self._fns.popitem(last=False)
        return blob

    def _job_active(self, job_id: str, attempt: str) -> bool:
        status, current = self.env.registry.r.hmget(d.JOB_KEY.format(job_id=job_id),
                                                    ["status", "attempt"])
        return status in (d.RUNNING, d.INITIALIZING) and (current or "1") == attempt

    def _reaper(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.pool.reap(self._job_active)
            except Exception:
                log.exception("reaping task executors failed")

    def shutdown(self) -> None:
        self._stop.set()
        self.pool.shutdown()


_worker: TaskWorker | None = None
_worker_lock = threading.Lock()


def task_worker() -> TaskWorker:
    global _worker
    if _worker is None:
        with _worker_lock:
            if _worker is None:
                from tasks.core.services import from_env

                _worker = TaskWorker(from_env())
    return _worker


@shared_task(name=RUN_TASK, ignore_result=True, acks_late=True)
def run_task(task_id: str) -> None:
    task_worker().handle(task_id)


@shared_task(name=RUN_TASKS, ignore_result=True, acks_late=True)
def run_tasks(task_ids: list[str]) -> None:
    """A chunk of a batch of plain calls, and whatever else of the job is ready."""
    task_worker().handle_many([str(t) for t in task_ids])


@shared_task(name=RUN_MAP_TASK, acks_late=True)
def run_map_task(task_id: str) -> str:
    """A map task of a chord: its (tiny) result is what lets the chord count it."""
    return task_worker().handle(task_id, chord=True)


@shared_task(name=REDUCE_TASK, ignore_result=True, acks_late=True)
def reduce_task(task_id: str) -> None:
    task_worker().handle(task_id, reduce=True)


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    if _worker is not None:
        _worker._stop.set()     # running tasks are handed back to the queue


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _worker is not None:
        _worker.shutdown()


# --- reading tasks for the API and pages ---------------------------------------------------
