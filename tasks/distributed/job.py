"""A job's distributed tasks seen from its supervisor (`JobTasks`, a supervisor extension),
and ending them: when the job ends its supervisor cancels what is queued and waits for what
runs; a reaper ends those of a job whose worker was lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from storage import keys
from tasks.core import defaults as d
from tasks.distributed.records import Blobs, TaskEnv, TaskRegistry, celery_app, task_key
from tasks.distributed.session import SESSION_OPS, TaskSession
from tasks.supervisor.extension import JobExtension

if TYPE_CHECKING:
    from tasks.core.services import Services
    from tasks.supervisor.supervisor import Supervisor

log = logging.getLogger("qhybrid.tasks")


class JobTasks(JobExtension):
    """The distributed tasks of one job attempt, seen from the job's supervisor:
    `distribute_task`, `get`, `put`, `map_reduce` inside the job."""

    def __init__(self, sup: Supervisor) -> None:
        super().__init__(sup)
        self._session: TaskSession | None = None
        self._output_at = 0

    def session(self) -> TaskSession:
        if self._session is None:
            from qhybrid.resources import load_classes

            sup = self.sup
            env = TaskEnv(registry=sup.registry, tasks=TaskRegistry(sup.registry),
                          blobs=Blobs(sup.registry.raw, sup.store), store=sup.store,
                          classes=load_classes(sup.settings.resource_classes_path))
            self._session = TaskSession(env, self.sup.job,
                                        owner=self.sup.job_id, parent_task="",
                                        stage=lambda: self.sup.usage.stage,
                                        spool=self.sup.job_dir / "spool")
        return self._session

    def ops(self) -> dict[str, Callable[..., Any]]:
        def op(name: str) -> Callable[..., Any]:
            return lambda **kw: self.session().ops()[name](**kw)

        return {name: op(name) for name in SESSION_OPS}

    def output(self) -> bytes:
        if self._session is None:        # the job started no task
            return b""
        attempt = str(self.sup.job.get("attempt") or 1)
        chunk = self._session.env.tasks.job_output(self.sup.job_id, attempt, self._output_at)
        self._output_at += len(chunk)
        return chunk

    def stop(self, status: str) -> None:
        self.end_tasks(f"the job ended ({status})")

    def end_tasks(self, reason: str = "the job ended") -> None:
        """Cancel what is queued, stop what runs (confirmed by the workers), clean up."""
        if self.sup.registry.r.zcard(d.JOB_TASKS_KEY.format(job_id=self.sup.job_id)) == 0:
            return
        env = self.session().env
        end_job_tasks(env, self.sup.job, reason)
        self.session().close()


def end_job_tasks(env: TaskEnv, job: dict[str, Any], reason: str, attempt: str = "",
                  expire: bool = True) -> None:
    """Cancel the job's queued tasks (of `attempt` only, if given), stop its running ones
    and wait for their workers to confirm; a task whose worker stopped beating is not waited
    for. `expire`: the job is over, its task data goes."""
    job_id = job["id"]
    running, canceled = env.tasks.cancel_all(job_id, reason, attempt)
    try:
        if canceled:   # workers drop these messages unread (the registry refuses them anyway)
            celery_app().control.revoke(canceled[-10000:])
    except Exception as exc:
        log.info("revoke of %s's tasks failed: %s", job_id, exc)
    deadline = time.monotonic() + d.TASK_END_WAIT_S
    lost: list[str] = []
    while running and time.monotonic() < deadline:
        rows = env.tasks.fields(running, "status")
        running = [t for t, row in zip(running, rows, strict=True) if row[0] == d.RUNNING]
        pipe = env.registry.r.pipeline(transaction=False)
        for task_id in running:
            pipe.exists(d.TASK_HEARTBEAT_KEY.format(task_id=task_id))
        beating = pipe.execute() if running else []
        lost += [t for t, alive in zip(running, beating, strict=True) if not alive]
        running = [t for t, alive in zip(running, beating, strict=True) if alive]
        if running:
            time.sleep(d.TASK_TICK_S)
    env.tasks.force_cancel(lost, f"{reason}; the worker running it was lost")
    env.tasks.force_cancel(running, f"{reason}; its worker did not confirm the stop")
    if expire:
        expire_job_tasks(env, job)


def stop_job_tasks(services: Services, job: dict[str, Any], reason: str, attempt: str = "",
                   expire: bool = True) -> None:
    """End a job's tasks where its supervisor cannot (the reaper of jobs whose worker died)."""
    if services.registry.r.zcard(d.JOB_TASKS_KEY.format(job_id=job["id"])):
        end_job_tasks(TaskEnv.from_services(services), job, reason, attempt, expire)


def expire_job_tasks(env: TaskEnv, job: dict[str, Any]) -> None:
    """After the job: payloads, functions and objects go; records and results expire."""
    job_id = job["id"]
    r = env.registry.r
    ids = env.tasks.job_task_ids(job_id)
    for start in range(0, len(ids), 1000):
        pipe = r.pipeline(transaction=False)
        for task_id in ids[start:start + 1000]:
            pipe.delete(d.TASK_PAYLOAD_KEY.format(task_id=task_id))
            pipe.expire(task_key(task_id), d.TASK_EXPIRY_S)
            pipe.expire(d.TASK_RESULT_KEY.format(task_id=task_id), d.TASK_RESULT_EXPIRY_S)
            pipe.delete(d.TASK_INBOX_KEY.format(owner=task_id))
        pipe.execute()
    index = d.JOB_BLOBS_KEY.format(job_id=job_id)
    doomed = list(r.smembers(index))
    for start in range(0, len(doomed), 1000):
        r.delete(*doomed[start:start + 1000])
    r.delete(index)
    for key in (d.JOB_TASKS_KEY, d.JOB_TASK_SEQ_KEY):
        r.expire(key.format(job_id=job_id), d.TASK_EXPIRY_S)
    r.delete(d.JOB_QUEUED_TASKS_KEY.format(job_id=job_id),
             *[d.JOB_READY_TASKS_KEY.format(job_id=job_id, cls=c) for c in env.classes])
    try:
        env.store.delete_prefix(keys.job_task_blobs(job["prefix"]))
    except Exception as exc:
        log.warning("deleting %s's task blobs failed: %s", job_id, exc)


# --- the task worker -------------------------------------------------------------------------
