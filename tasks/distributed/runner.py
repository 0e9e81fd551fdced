"""Running claimed tasks (`TaskRunner`): one after another in the warm executors of their job,
their ends recorded several at a time.

A task worker claims a few tasks ahead, as many as it expects to run in TASK_CLAIM_AHEAD_S
(one, until it knows how long they take), and runs them back to back in one executor without
asking Celery or Redis in between; ends that come within TASK_FINISH_BATCH_S of each other are
recorded in one call. A task that runs longer than TASK_TICK_S hands the tasks claimed after
it back to the job's ready list, for any worker. Each task is still a run of its own: its
record (started and ended as the executor saw them), its output, its heartbeat, its cancel
and its traceback.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qhybrid.errors import QhybridError
from qhybrid.resources import ResourceClass
from tasks.core import defaults as d
from tasks.core.queues import RUN_TASKS, tasks_queue
from tasks.distributed.executor import Executor, ExecutorLost, executor_key
from tasks.distributed.records import REDUCE, TaskEnd, celery_app
from tasks.distributed.session import TaskSession

if TYPE_CHECKING:
    from tasks.distributed.tasks import TaskWorker

log = logging.getLogger("qhybrid.tasks")


class TaskRunner:
    """Runs the tasks one worker thread claimed, in order; `close()` records what is left and
    gives the executor and the cores back."""

    def __init__(self, worker: TaskWorker, cpus: list[int] | None = None) -> None:
        self.worker = worker
        self.env = worker.env
        self._fixed_cpus = cpus is not None      # a waiting parent's: its own cores
        self.cpus: list[int] = list(cpus or [])
        self._fds: list[int] = []
        self._cores_of = ""                      # the class whose cores are held
        self.ex: Executor | None = None
        self.waiting: deque[dict[str, Any]] = deque()    # claimed, not started
        self.ends: list[TaskEnd] = []
        self._first_end = 0.0
        self._mean: float | None = None          # seconds a task takes here, smoothed
        self._check_stop = False                 # after a cancel: the claimed may be canceled too

    def ahead(self) -> int:
        """How many tasks to claim next."""
        if self._mean is None:
            return 1
        return max(1, min(d.TASK_CLAIM_MAX, int(d.TASK_CLAIM_AHEAD_S / max(self._mean, 1e-5))))

    def run(self, recs: list[dict[str, Any]]) -> list[str]:
        """Run claimed tasks one after another; how each ended (QUEUED: handed back)."""
        self.waiting.extend(recs)
        statuses: list[str] = []
        while self.waiting:
            if self.worker._stop.is_set():      # the worker stops: others run the rest
                statuses += [d.QUEUED] * len(self.waiting)
                self.hand_back()
                break
            rec = self.waiting.popleft()
            why = self._stop_reason(rec) if self._check_stop else ""
            if why:
                self._end(TaskEnd(rec["id"], rec["run"], d.CANCELED, error=why))
                statuses.append(d.CANCELED)
                continue
            statuses.append(self.run_one(rec))
        return statuses

    def run_one(self, rec: dict[str, Any]) -> str:
        """Run one claimed task in an executor of its job; note how it ended."""
        task_id: str = rec["id"]
        run: str = rec["run"]
        status, error, etype, cpu, result = d.ERROR, "", "", 0.0, b""
        started: float | None = None
        ex: Executor | None = None
        healthy = True
        try:
            # the attempt the task belongs to (claimed only if still the job's current one),
            # never the cached record's: a job run again must not reuse its old code and
            # executors
            job = {**self.worker.job(rec["job"]), "attempt": rec.get("attempt") or "1"}
            rc = self.env.classes.get(rec["class"])
            if rc is None:
                raise QhybridError(f"resource class {rec['class']!r} is not configured here")
            self._cores(rc)
            ex = self._executor(job, rc)
            ex.serve_task(self._session(rec, job, rc, ex))
            digest = rec["fn"]
            blobs = [b"" if digest in ex.known_fns else self.worker.function(job["id"], digest)]
            blobs += self._inputs(rec)
            header = {"task_id": task_id, "fn": digest, "cpus": self.cpus,
                      "mode": REDUCE if rec["kind"] == REDUCE else "call",
                      "error_lines": d.TASK_ERROR_LINES}
            stopped: dict[str, str] = {}
            began = time.monotonic()
            reply = ex.run(header, blobs, self._ticker(rec, job, stopped))
            took = time.monotonic() - began
            self._mean = took if self._mean is None else 0.7 * self._mean + 0.3 * took
            ex.known_fns.add(digest)
            if reply is None and self.worker._stop.is_set():
                healthy = False
                self.worker._hand_back(task_id, run)    # the worker stops: another one runs it
                return d.QUEUED
            if reply is None:
                status, healthy = d.CANCELED, False
                error = stopped.get(task_id) or "the task was stopped"
                self._check_stop = True
            else:
                head, out = reply
                cpu = float(head.get("cpu") or 0.0)
                started = float(head["started"]) if head.get("started") else None
                if head.get("ok"):
                    status, result = d.DONE, out[0]
                else:
                    status, error, etype = d.ERROR, str(head.get("error")), str(head.get("type"))
        except ExecutorLost as exc:
            status, error, etype, healthy = d.ERROR, str(exc), "WorkerLost", False
        except MapFailed as exc:
            status, error, etype = d.ERROR, str(exc), exc.etype
        except Exception as exc:
            log.exception("task %s failed in the worker", task_id)
            status, error, etype = d.ERROR, f"the task worker failed: {type(exc).__name__}: {exc}", ""
            healthy = False
        finally:
            if ex is not None:
                self.worker._pump(task_id, ex, str(rec.get("name") or "task"), final=True)
                session = ex.end_task()
                if session is not None:
                    session.close()
                if not healthy:
                    self._drop_executor()
        location, value = "", b""
        if status == d.DONE:
            value = self.env.blobs.value(self.worker.job(rec["job"])["prefix"], f"res-{task_id}",
                                         result)
            location = "redis" if len(result) <= d.TASK_INLINE_BYTES else "storage"
        self._end(TaskEnd(task_id, run, status, cpu, error, etype, location, value, started,
                          time.time()))
        return status

    def close(self) -> None:
        """Record the ends not yet recorded, hand back what was claimed and not run, and
        give the executor and the cores back."""
        try:
            self.flush()
        finally:
            if self.waiting:
                self.hand_back()
            if self.ex is not None:
                self.worker.pool.release(self.ex, True)
                self.ex = None
            self.worker.slots.release(self._fds)
            self._fds = []

    # --- ends, in batches ------------------------------------------------------------------
    def _end(self, end: TaskEnd) -> None:
        now = time.monotonic()
        if not self.ends:
            self._first_end = now
        self.ends.append(end)
        # right away when nothing claimed waits: whoever waits for it sees it at once
        if not self.waiting or len(self.ends) >= d.TASK_CLAIM_MAX or \
                now - self._first_end >= d.TASK_FINISH_BATCH_S:
            self.flush()

    def flush(self) -> None:
        if self.ends:
            ends, self.ends = self.ends, []
            self.env.tasks.finish_many(ends)

    def hand_back(self) -> None:
        """Claimed tasks this runner will not run (the worker stops, or the task before them
        takes long): queued again at the head of their ready list, a message sent for them."""
        claimed = list(self.waiting)
        self.waiting.clear()
        back = set(self.env.tasks.unclaim([(r["id"], r["run"]) for r in claimed]))
        by_class: dict[str, list[str]] = {}
        for r in claimed:
            if r["id"] in back:
                by_class.setdefault(r["class"], []).append(r["id"])
        for cls, ids in by_class.items():
            celery_app().send_task(RUN_TASKS, args=[ids], queue=tasks_queue(cls))

    # --- what a task needs -----------------------------------------------------------------
    def _cores(self, rc: ResourceClass) -> None:
        if self._fixed_cpus or self._cores_of == rc.name:
            return
        self.worker.slots.release(self._fds)
        self.cpus, self._fds = self.worker.slots.acquire(rc.threads())
        self._cores_of = rc.name

    def _executor(self, job: dict[str, Any], rc: ResourceClass) -> Executor:
        """The executor of the job attempt and class this runner holds, else one from the
        pool (whose previous one goes back to it)."""
        key = executor_key(job, rc)
        if self.ex is not None and (self.ex.key != key or not self.ex.alive()):
            self.worker.pool.release(self.ex, True)
            self.ex = None
        if self.ex is None:
            self.ex = self.worker.pool.acquire(job, rc, tick=lambda: not self.worker._job_active(
                job["id"], str(job["attempt"])))
        return self.ex

    def _drop_executor(self) -> None:
        if self.ex is not None:
            self.worker.pool.release(self.ex, False)
            self.ex = None

    def _session(self, rec: dict[str, Any], job: dict[str, Any], rc: ResourceClass,
                 ex: Executor) -> Callable[[], TaskSession]:
        """What makes the task's session at its first call (nested tasks, put, devices)."""
        def make() -> TaskSession:
            return TaskSession(self.env, job, owner=rec["id"], parent_task=rec["id"],
                               stage=lambda: str(rec.get("stage") or d.RUNNING),
                               spool=ex.spool, helper=self.worker._helper(rc, list(self.cpus)))

        return make

    def _inputs(self, rec: dict[str, Any]) -> list[bytes]:
        if rec["kind"] != REDUCE:
            payload = self.env.blobs.resolve(rec.get("payload"))
            if payload is None:
                raise QhybridError("the task's arguments are gone (its job ended?)")
            return [payload]
        maps: list[str] = rec["maps"]
        rows = self.env.tasks.fields(maps, "status", "error", "name", "error_type")
        for i, (status, error, name, etype) in enumerate(rows):
            if status != d.DONE:
                raise MapFailed(f"map task {name} #{i} [{maps[i][:8]}] ended {status}:\n"
                                f"{error or ''}", etype or "")
        pipe = self.env.registry.raw.pipeline(transaction=False)
        for m in maps:
            pipe.get(d.TASK_RESULT_KEY.format(task_id=m))
        values = [self.env.blobs.resolve(v) for v in pipe.execute()]
        if any(v is None for v in values):
            raise QhybridError("a map task's result has expired")
        return [v for v in values if v is not None]

    def _stop_reason(self, rec: dict[str, Any]) -> str:
        return self.env.tasks.should_stop(rec["id"], rec["run"], rec["job"],
                                          str(rec.get("attempt") or 1))

    def _ticker(self, rec: dict[str, Any], job: dict[str, Any],
                stopped: dict[str, str]) -> Callable[[], bool]:
        """What runs every TASK_TICK_S while a task runs: the ends not yet recorded, the
        tasks claimed after it handed back (it takes longer than they were claimed for: they
        must neither wait for it nor look RUNNING meanwhile), its heartbeat and output; True
        when it must stop."""
        task_id = rec["id"]
        last_beat = time.monotonic()

        def tick() -> bool:
            nonlocal last_beat
            now = time.monotonic()
            self.flush()
            if self.waiting:
                self.hand_back()
            if now - last_beat >= d.HEARTBEAT_INTERVAL_S:
                self.env.tasks.heartbeat(task_id, self.worker.name)
                if self.ex is not None:
                    self.worker._pump(task_id, self.ex, str(rec.get("name") or "task"))
                last_beat = now
            if self.worker._stop.is_set():
                return True
            why = self._stop_reason(rec)
            if why:
                stopped[task_id] = why
            return bool(why)

        return tick


class MapFailed(Exception):
    """A reduce whose map task did not end DONE."""

    def __init__(self, message: str, etype: str) -> None:
        super().__init__(message)
        self.etype = etype
