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
from typing import TYPE_CHECKING, Any, NamedTuple

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

_ADD_MANY = """
-- ARGV[1]: JSON {common = the fields every record of the batch has, tasks = {{key, id, seq,
-- fields}...}, index = the job's task index, queued_key, queued = {class = count},
-- ready = {list = {task keys}}}; ARGV[1 + i]: the i-th task's arguments ('' for none).
-- Writes the batch's records, or nothing (0) if one of them exists already.
local b = cjson.decode(ARGV[1])
for _, t in ipairs(b.tasks) do
  if redis.call('EXISTS', t.key) == 1 then return 0 end
end
local common = {}
for k, v in pairs(b.common) do
  common[#common + 1] = k
  common[#common + 1] = v
end
for i, t in ipairs(b.tasks) do
  local args = {unpack(common)}
  for k, v in pairs(t.fields) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  redis.call('HSET', t.key, unpack(args))
  if ARGV[i + 1] ~= '' then redis.call('SET', t.key .. ':payload', ARGV[i + 1]) end
  redis.call('ZADD', b.index, t.seq, t.id)
end
for cls, n in pairs(b.queued) do redis.call('HINCRBY', b.queued_key, cls, n) end
for key, items in pairs(b.ready) do
  for start = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, start, math.min(start + 999, #items)))
  end
end
return 1
"""

_CLAIM_MANY = """
-- KEYS: the tasks a message names ; ARGV: worker, run token, now, heartbeat ttl, how many,
-- ready list ('' finds it in the named tasks' records, '-' leaves it alone).
-- Claims up to that many QUEUED tasks: first from the job's ready list (what any worker may
-- take), once it is empty the named ones. {ready list, 1 if there may be more, claimed}; each
-- claimed one is two items: JSON [id, kind, fn, class, job, attempt, name, stage, maps], and
-- its payload.
local want = tonumber(ARGV[5])
local out, n = {}, 0
local function claim(key)
  if redis.call('HGET', key, 'status') ~= 'QUEUED' then return end
  local f = redis.call('HMGET', key, 'job_key', 'class', 'queued_key', 'attempt', 'inbox', 'id')
  local js = redis.call('HGET', f[1], 'status')
  local att = redis.call('HGET', f[1], 'attempt') or '1'
  redis.call('HINCRBY', f[3], f[2], -1)
  if (js ~= 'RUNNING' and js ~= 'INITIALIZING') or att ~= f[4] then
    redis.call('HSET', key, 'status', 'CANCELED', 'ended', ARGV[3],
               'error', 'the job was no longer running when the task was due to start')
    redis.call('RPUSH', f[5], f[6] .. ' CANCELED')
    redis.call('EXPIRE', f[5], 86400)
    return
  end
  redis.call('HSET', key, 'status', 'RUNNING', 'worker', ARGV[1], 'run', ARGV[2],
             'started', ARGV[3])
  redis.call('SET', key .. ':heartbeat', ARGV[1], 'EX', ARGV[4])
  local rec = redis.call('HMGET', key, 'id', 'kind', 'fn', 'class', 'job', 'attempt', 'name',
                         'stage', 'maps')
  for i = 1, 9 do rec[i] = rec[i] or '' end
  table.insert(out, cjson.encode(rec))
  table.insert(out, redis.call('GET', key .. ':payload'))
  n = n + 1
end
local ready = ARGV[6]
if ready == '' then
  ready = '-'
  for _, key in ipairs(KEYS) do
    local found = redis.call('HGET', key, 'ready_key')
    if found then ready = found break end
  end
end
local more = 0
if ready ~= '-' then
  local pops = 0
  while n < want do
    if pops >= 1000 then more = 1 break end
    local key = redis.call('LPOP', ready)
    if not key then break end
    pops = pops + 1
    claim(key)
  end
  if n >= want then more = 1 end
end
if n == 0 and more == 0 then
  for _, key in ipairs(KEYS) do
    if n >= want then more = 1 break end
    claim(key)
  end
end
return {ready, more, out}
"""

_FINISH_MANY = """
-- ARGV[1]: JSON, a list of {key, run token, status, ended, started ('' keeps the claim's),
-- cpu seconds, error, error type, result location} ; ARGV[1 + i]: the i-th task's result (its
-- bytes, or where storage has them). Each ends if it still runs with that token.
local n = 0
for i, e in ipairs(cjson.decode(ARGV[1])) do
  local key = e[1]
  if redis.call('HGET', key, 'status') == 'RUNNING' and redis.call('HGET', key, 'run') == e[2] then
    if e[3] == 'DONE' then redis.call('SET', key .. ':result', ARGV[i + 1]) end
    redis.call('HSET', key, 'status', e[3], 'ended', e[4], 'cpu', e[6], 'error', e[7],
               'error_type', e[8], 'result', e[9])
    if e[5] ~= '' then redis.call('HSET', key, 'started', e[5]) end
    local f = redis.call('HMGET', key, 'stage', 'usage_key', 'inbox', 'id')
    redis.call('HINCRBYFLOAT', f[2], f[1] .. '|CPU_TIME', e[6])
    redis.call('RPUSH', f[3], f[4] .. ' ' .. e[3])
    redis.call('EXPIRE', f[3], 86400)
    redis.call('DEL', key .. ':heartbeat')
    n = n + 1
  end
  redis.call('DEL', key .. ':payload')
end
return n
"""

_UNCLAIM = """
-- KEYS: claimed tasks a worker will not run after all ; ARGV: their run tokens.
-- Queued again, at the head of their ready list; their ids are returned.
local back = {}
for i = #KEYS, 1, -1 do
  local key = KEYS[i]
  if redis.call('HGET', key, 'status') == 'RUNNING' and
     redis.call('HGET', key, 'run') == ARGV[i] then
    redis.call('HSET', key, 'status', 'QUEUED', 'worker', '', 'run', '')
    redis.call('HINCRBY', redis.call('HGET', key, 'queued_key'), redis.call('HGET', key, 'class'), 1)
    redis.call('DEL', key .. ':heartbeat')
    local ready = redis.call('HGET', key, 'ready_key')
    if ready then redis.call('LPUSH', ready, key) end
    table.insert(back, redis.call('HGET', key, 'id'))
  end
end
return back
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


# what a claim returns of each task's record (then its arguments)
_CLAIMED = ("id", "kind", "fn", "class", "job", "attempt", "name", "stage", "maps")


class TaskEnd(NamedTuple):
    """How one run of a task ended, to record."""

    task_id: str
    run: str
    status: str
    cpu: float = 0.0
    error: str = ""
    error_type: str = ""
    location: str = ""          # of the result: "redis" or "storage"
    value: bytes = b""          # the result's Redis value (Blobs.value)
    started: float | None = None    # in the executor (None: the claim's time stands)
    ended: float | None = None      # None: now


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
        target.set(rkey, self.value(prefix, name, data), nx=nx)

    def value(self, prefix: str, name: str, data: bytes) -> bytes:
        """What Redis keeps for `data`: the bytes, or where storage has them (stored now)."""
        if len(data) <= d.TASK_INLINE_BYTES:
            return data
        skey = keys.job_task_blob(prefix, name)
        self.store.put_bytes(skey, data)
        return STORE_MARK + skey.encode()

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
        self._claim_many = self.raw.register_script(_CLAIM_MANY)
        self._add_many = self.raw.register_script(_ADD_MANY)
        self._finish = self.r.register_script(_FINISH_MANY)
        self._unclaim = self.r.register_script(_UNCLAIM)
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

    def add_many(self, batch: dict[str, Any], payloads: list[bytes]) -> bool:
        """Write a batch of new task records in one call (see _ADD_MANY for `batch`); False,
        writing nothing, if one of them exists already."""
        return bool(self._add_many(keys=[], args=[json.dumps(batch), *payloads]))

    def claim_many(self, ids: list[str], worker: str, run: str, want: int,
                   ready: str) -> tuple[str, bool, list[dict[str, Any]]]:
        """Claim up to `want` tasks: queued ones of the job's ready list `ready` ('' finds it
        from `ids`, '-' leaves it alone), once it is empty those of `ids`.

        (the ready list, whether there may be more, the claimed records with their
        arguments as record["payload"]), in one round trip.
        """
        found_ready, more, claimed = self._claim_many(
            keys=[task_key(i) for i in ids],
            args=[worker, run, timestamp(), d.TASK_HEARTBEAT_TTL_S, want, ready])
        recs = []
        for i in range(0, len(claimed), 2):
            rec: dict[str, Any] = dict(zip(_CLAIMED, json.loads(claimed[i]), strict=True))
            rec["payload"] = claimed[i + 1] or None
            rec["maps"] = json.loads(rec["maps"]) if rec["maps"] else None
            rec["run"] = run
            recs.append(rec)
        return found_ready.decode(), bool(more), recs

    def finish_many(self, ends: list[TaskEnd]) -> int:
        """Record how tasks ended, each only if it still runs with its run token, in one
        call; their arguments go. The executor's start time replaces the claim's when given."""
        rows = [[task_key(e.task_id), e.run, e.status, str(e.ended or timestamp()),
                 str(e.started or ""), f"{e.cpu:.6f}", e.error[-20000:], e.error_type, e.location]
                for e in ends]
        return int(self._finish(keys=[], args=[json.dumps(rows), *(e.value for e in ends)]))

    def unclaim(self, claimed: list[tuple[str, str]]) -> list[str]:
        """Claimed (task id, run token)s this worker will not run: queued again."""
        if not claimed:
            return []
        back = self._unclaim(keys=[task_key(t) for t, _ in claimed],
                             args=[run for _, run in claimed])
        return [str(t) for t in back]

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
