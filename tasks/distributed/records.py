"""Distributed tasks' records: one Redis hash per task, the job's task index, the blobs
(pickled functions and arguments: Redis when small, storage when large), and the Lua scripts
that move a task's status, each one atomic call. Lua scripts read the related key names from
the task record (single Redis, not cluster). What the task API lists is read here too.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qhybrid.errors import (
    InvalidInput,
)
from qhybrid.resources import ResourceClass
from storage import keys
from storage.store import ObjectStore
from tasks.core import defaults as d
from tasks.core.queues import tasks_queue
from tasks.core.registry import Registry

if TYPE_CHECKING:
    from tasks.core.services import Services

log = logging.getLogger("qhybrid.tasks")


TASK = "task"
MAP = "map"
REDUCE = "reduce"
KINDS = (TASK, MAP, REDUCE)
TERMINAL = frozenset({d.DONE, d.ERROR, d.CANCELED})
STORE_MARK = b"\x00qh-store:"      # a Redis value that points to storage (pickles never start so)
_ID = re.compile(r"^[0-9a-f]{32}$")
DIGEST = re.compile(r"^[0-9a-f]{40}$")

# --- Lua: every status change in one call --------------------------------------------------
_CLAIM = """
-- KEYS: task ; ARGV: worker, run token, now, heartbeat ttl
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'MISSING'} end
if st ~= 'QUEUED' then return {st} end
local job = redis.call('HGET', KEYS[1], 'job_key')
local cls = redis.call('HGET', KEYS[1], 'class')
local queued = redis.call('HGET', KEYS[1], 'queued_key')
local js = redis.call('HGET', job, 'status')
local att = redis.call('HGET', job, 'attempt') or '1'
if (js ~= 'RUNNING' and js ~= 'INITIALIZING') or att ~= redis.call('HGET', KEYS[1], 'attempt') then
  redis.call('HSET', KEYS[1], 'status', 'CANCELED', 'ended', ARGV[3],
             'error', 'the job was no longer running when the task was due to start')
  redis.call('HINCRBY', queued, cls, -1)
  local inbox = redis.call('HGET', KEYS[1], 'inbox')
  redis.call('RPUSH', inbox, redis.call('HGET', KEYS[1], 'id') .. ' CANCELED')
  redis.call('EXPIRE', inbox, 86400)
  return {'CANCELED'}
end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'worker', ARGV[1], 'run', ARGV[2],
           'started', ARGV[3])
redis.call('HINCRBY', queued, cls, -1)
redis.call('SET', KEYS[1] .. ':heartbeat', ARGV[1], 'EX', ARGV[4])
return {'CLAIMED'}
"""

_FINISH = """
-- KEYS: task ; ARGV: run token, status, now, cpu seconds, error, error type, result location
if redis.call('HGET', KEYS[1], 'status') ~= 'RUNNING' or
   redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'ended', ARGV[3], 'cpu', ARGV[4],
           'error', ARGV[5], 'error_type', ARGV[6], 'result', ARGV[7])
local stage = redis.call('HGET', KEYS[1], 'stage')
redis.call('HINCRBYFLOAT', redis.call('HGET', KEYS[1], 'usage_key'), stage .. '|CPU_TIME', ARGV[4])
local inbox = redis.call('HGET', KEYS[1], 'inbox')
redis.call('RPUSH', inbox, redis.call('HGET', KEYS[1], 'id') .. ' ' .. ARGV[2])
redis.call('EXPIRE', inbox, 86400)
redis.call('DEL', KEYS[1] .. ':heartbeat')
return 1
"""

_CANCEL = """
-- KEYS: tasks of one job ; ARGV: now, reason, attempt ('' any). Queued ones end; running ones
-- are asked to stop.
local running, canceled = {}, {}
for _, key in ipairs(KEYS) do
  local st = redis.call('HGET', key, 'status')
  if ARGV[3] ~= '' and redis.call('HGET', key, 'attempt') ~= ARGV[3] then st = 'OTHER' end
  if st == 'QUEUED' then
    table.insert(canceled, redis.call('HGET', key, 'id'))
    redis.call('HSET', key, 'status', 'CANCELED', 'ended', ARGV[1], 'error', ARGV[2])
    redis.call('HINCRBY', redis.call('HGET', key, 'queued_key'), redis.call('HGET', key, 'class'), -1)
    local inbox = redis.call('HGET', key, 'inbox')
    redis.call('RPUSH', inbox, redis.call('HGET', key, 'id') .. ' CANCELED')
    redis.call('EXPIRE', inbox, 86400)
  elseif st == 'RUNNING' then
    redis.call('HSET', key, 'cancel', ARGV[2])
    table.insert(running, redis.call('HGET', key, 'id'))
  end
end
return {running, canceled}
"""

_FORCE_CANCEL = """
-- KEYS: tasks ; ARGV: now, reason. Running ones whose worker never confirmed the stop.
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'RUNNING' then
    redis.call('HSET', key, 'status', 'CANCELED', 'ended', ARGV[1], 'error', ARGV[2], 'run', '')
    redis.call('DEL', key .. ':heartbeat')
    n = n + 1
  end
end
return n
"""

_REQUEUE = """
-- KEYS: task ; ARGV: run token, now, max attempts. A running task whose worker was lost.
if redis.call('HGET', KEYS[1], 'status') ~= 'RUNNING' or
   redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] or
   redis.call('EXISTS', KEYS[1] .. ':heartbeat') == 1 then return 0 end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
if tries >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'ERROR', 'ended', ARGV[2], 'run', '',
             'error', 'worker lost: the worker running the task stopped, ' .. tries .. ' times')
  local inbox = redis.call('HGET', KEYS[1], 'inbox')
  redis.call('RPUSH', inbox, redis.call('HGET', KEYS[1], 'id') .. ' ERROR')
  redis.call('EXPIRE', inbox, 86400)
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'QUEUED', 'worker', '', 'run', '')
redis.call('HINCRBY', redis.call('HGET', KEYS[1], 'queued_key'), redis.call('HGET', KEYS[1], 'class'), 1)
return 1
"""


def task_key(task_id: str) -> str:
    return d.TASK_KEY.format(task_id=task_id)


def timestamp() -> float:
    return time.time()


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidInput(f"{field} must be 32 lower-case hex digits", field=field)
    return value


# --- blobs: small ones in Redis, big ones in storage ---------------------------------------
class Blobs:
    """Pickled bytes of one job: in Redis up to TASK_INLINE_BYTES, else in storage."""

    def __init__(self, raw: Any, store: ObjectStore) -> None:
        self.raw = raw
        self.store = store

    def put(self, rkey: str, prefix: str, name: str, data: bytes, pipe: Any = None,
            nx: bool = False, index: str | None = None) -> None:
        """Store `data` under `rkey`; with `index`, note `rkey` in that set (what to delete
        with the job, without scanning the keyspace)."""
        target = pipe if pipe is not None else self.raw
        if index:
            target.sadd(index, rkey)
        if len(data) <= d.TASK_INLINE_BYTES:
            target.set(rkey, data, nx=nx)
            return
        skey = keys.job_task_blob(prefix, name)
        self.store.put_bytes(skey, data)
        target.set(rkey, STORE_MARK + skey.encode(), nx=nx)

    def resolve(self, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        if value.startswith(STORE_MARK):
            return self.store.get_bytes(value[len(STORE_MARK):].decode())
        return bytes(value)

    def get(self, rkey: str) -> bytes | None:
        return self.resolve(self.raw.get(rkey))


# --- the task records ------------------------------------------------------------------------
class TaskRegistry:
    """Task records, their status changes and the per-job indexes, over the job registry's Redis."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.r = registry.r
        self.raw = registry.raw
        self._claim = self.r.register_script(_CLAIM)
        self._finish = self.r.register_script(_FINISH)
        self._cancel = self.r.register_script(_CANCEL)
        self._force = self.r.register_script(_FORCE_CANCEL)
        self._requeue = self.r.register_script(_REQUEUE)

    def claim(self, task_id: str, worker: str, run: str) -> tuple[str, dict[str, Any]]:
        """('CLAIMED', record) when this worker now runs it, else (its status, {}).

        One round trip: the claim, the record and the arguments (record["payload"], bytes).
        """
        pipe = self.raw.pipeline(transaction=False)
        self._claim(keys=[task_key(task_id)], args=[worker, run, timestamp(), d.TASK_HEARTBEAT_TTL_S],
                    client=pipe)
        pipe.hgetall(task_key(task_id))
        pipe.get(d.TASK_PAYLOAD_KEY.format(task_id=task_id))
        outcome, raw, payload = pipe.execute()
        status = outcome[0].decode()
        if status != "CLAIMED":
            return status, {}
        rec = _unflat({k.decode(): v.decode() for k, v in raw.items()})
        rec["payload"] = payload
        return status, rec

    def finish(self, task_id: str, run: str, status: str, cpu: float, error: str = "",
               error_type: str = "", result: str = "", pipe: Any = None) -> Any:
        return self._finish(keys=[task_key(task_id)],
                            args=[run, status, timestamp(), f"{cpu:.6f}", error[-20000:], error_type,
                                  result], client=pipe)

    def requeue(self, task_id: str, run: str) -> int:
        return int(self._requeue(keys=[task_key(task_id)],
                                 args=[run, timestamp(), d.MAX_TASK_ATTEMPTS]))

    def fields(self, ids: list[str], *names: str) -> list[list[str | None]]:
        pipe = self.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(task_key(task_id), list(names))
        return list(pipe.execute())

    def records(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids[start:start + 500]:
                pipe.hgetall(task_key(task_id))
            out.extend(_unflat(rec) for rec in pipe.execute() if rec)
        return out

    def job_task_ids(self, job_id: str, offset: int = 0, limit: int = -1) -> list[str]:
        end = -1 if limit < 0 else offset + limit - 1
        return list(self.r.zrange(d.JOB_TASKS_KEY.format(job_id=job_id), offset, end))

    def count(self, job_id: str) -> int:
        return int(self.r.zcard(d.JOB_TASKS_KEY.format(job_id=job_id)))

    def cancel_all(self, job_id: str, reason: str,
                   attempt: str = "") -> tuple[list[str], list[str]]:
        """Cancel the job's queued tasks (of `attempt` only, if given); ask running ones to
        stop. (running, canceled) ids."""
        running: list[str] = []
        canceled: list[str] = []
        ids = self.job_task_ids(job_id)
        for start in range(0, len(ids), 500):
            chunk = [task_key(t) for t in ids[start:start + 500]]
            now_running, now_canceled = self._cancel(keys=chunk, args=[timestamp(), reason, attempt])
            running += [str(x) for x in now_running]
            canceled += [str(x) for x in now_canceled]
        return running, canceled

    def cancel_unsent(self, ids: list[str], reason: str) -> None:
        """End queued tasks whose messages could not be sent (the broker failed)."""
        for start in range(0, len(ids), 500):
            self._cancel(keys=[task_key(t) for t in ids[start:start + 500]],
                         args=[timestamp(), reason, ""])

    def force_cancel(self, ids: list[str], reason: str) -> int:
        if not ids:
            return 0
        return int(self._force(keys=[task_key(t) for t in ids], args=[timestamp(), reason]))

    def should_stop(self, task_id: str, run: str, job_id: str, attempt: str) -> str:
        """Why the running task must stop now ("" while it may go on)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(task_key(task_id), ["status", "run", "cancel"])
        pipe.hmget(d.JOB_KEY.format(job_id=job_id), ["status", "attempt"])
        (status, token, cancel), (job_status, job_attempt) = pipe.execute()
        if cancel:
            return str(cancel)
        if status != d.RUNNING or token != run:
            return f"the task was {status} elsewhere"
        if job_status not in (d.RUNNING, d.INITIALIZING):
            return f"the job is {job_status}"
        if (job_attempt or "1") != attempt:
            return "the job is running again (a new attempt)"
        return ""

    def heartbeat(self, task_id: str, worker: str) -> None:
        self.r.set(d.TASK_HEARTBEAT_KEY.format(task_id=task_id), worker,
                   ex=d.TASK_HEARTBEAT_TTL_S)

    def append_log(self, task_id: str, text: str) -> None:
        key = d.TASK_LOG_KEY.format(task_id=task_id)
        have = int(self.r.strlen(key) or 0)
        room = d.TASK_LOG_MAX_BYTES - have
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room] + "\n[qhybrid: the task's output is cut here]\n"
        self.r.append(key, text)
        self.r.expire(key, d.TASK_EXPIRY_S)


    def append_job_output(self, job_id: str, attempt: str, text: str) -> None:
        """Task output for the job's own log (the job's supervisor moves it there)."""
        key = d.JOB_TASK_OUTPUT_KEY.format(job_id=job_id, attempt=attempt)
        room = d.JOB_TASK_OUTPUT_MAX_BYTES - int(self.r.strlen(key) or 0)
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room] + "\n[qhybrid: the tasks' output is cut here; each task's own " \
                                 "log keeps its beginning]\n"
        pipe = self.r.pipeline(transaction=False)
        pipe.append(key, text)
        pipe.expire(key, d.TASK_EXPIRY_S)
        pipe.execute()

    def job_output(self, job_id: str, attempt: str, offset: int) -> bytes:
        """The output of the tasks of a job attempt, from byte `offset`."""
        key = d.JOB_TASK_OUTPUT_KEY.format(job_id=job_id, attempt=attempt)
        return bytes(self.raw.getrange(key, offset, -1) or b"")


def _unflat(rec: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(rec)
    for k in ("created", "started", "ended", "cpu"):
        if out.get(k):
            out[k] = float(out[k])
        else:
            out[k] = None
    if out.get("maps"):
        out["maps"] = json.loads(out["maps"])
    return out


# --- what a session needs ------------------------------------------------------------------
@dataclass
class TaskEnv:
    """The connections task sessions and workers share."""

    registry: Registry
    tasks: TaskRegistry
    blobs: Blobs
    store: ObjectStore
    classes: dict[str, ResourceClass]

    @classmethod
    def from_services(cls, svc: Services) -> TaskEnv:
        return cls(registry=svc.registry, tasks=TaskRegistry(svc.registry),
                   blobs=Blobs(svc.registry.raw, svc.store), store=svc.store,
                   classes=svc.classes)


def celery_app() -> Any:
    from tasks.core.celery_app import app

    return app


def settings_from_env() -> Any:
    from tasks.core.settings import Settings

    return Settings.from_env()


def task_json(rec: dict[str, Any], iso: Callable[[float | None], str | None]) -> dict[str, Any]:
    started, ended = rec.get("started"), rec.get("ended")
    return {
        "task_id": rec["id"],
        "name": rec.get("name"),
        "kind": rec.get("kind"),
        "status": rec.get("status"),
        "resource_class": rec.get("class"),
        "queue": rec.get("queue"),
        "worker": rec.get("worker") or None,
        "parent_task": rec.get("parent") or None,
        "group": rec.get("group") or None,
        "stage": rec.get("stage") or None,
        "created": iso(rec.get("created")),
        "started": iso(started),
        "ended": iso(ended),
        "duration": round(ended - started, 6) if started and ended else None,
        "cpu_time": rec.get("cpu"),
        "error": rec.get("error") or None,
    }


def list_tasks(tasks: TaskRegistry, job_id: str, *, status: str | None = None,
               offset: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int,
                                                           dict[str, int]]:
    """(page of records in submission order, total matching, count by status)."""
    ids = tasks.job_task_ids(job_id)
    counts: dict[str, int] = {}
    rows = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        for task_id, (st,) in zip(chunk, tasks.fields(chunk, "status"), strict=True):
            if st is None:
                continue
            counts[st] = counts.get(st, 0) + 1
            if status is None or st == status:
                rows.append(task_id)
    page = rows[offset:offset + limit]
    return tasks.records(page), len(rows), counts


def queued_by_class(registry: Registry, job_id: str) -> dict[str, int]:
    raw = registry.r.hgetall(d.JOB_QUEUED_TASKS_KEY.format(job_id=job_id))
    return {k: int(v) for k, v in raw.items() if int(v) > 0}


def live_queues(registry: Registry) -> set[str]:
    """Queues some live worker consumes."""
    return set(registry.workers_by_queue())


def waiting_for(registry: Registry, job_id: str) -> str | None:
    """"no worker consumes tasks.large" while the job has tasks queued where no worker looks."""
    queued = queued_by_class(registry, job_id)
    if not queued:
        return None
    live = live_queues(registry)
    missing = [tasks_queue(c) for c in sorted(queued) if tasks_queue(c) not in live]
    return "no worker consumes " + ", ".join(missing) if missing else None


def task_log(registry: Registry, task_id: str) -> str:
    return str(registry.r.get(d.TASK_LOG_KEY.format(task_id=task_id)) or "")
