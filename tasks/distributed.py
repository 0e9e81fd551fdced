"""Distributed tasks: records in Redis, submission as Celery groups and chords, execution.

User code calls `distribute_task` functions; its supervisor (a job's, or a running task's for
nested calls) receives batches over the local channel (`TaskSession`), stores the pickled
function once per job and each call's pickled arguments (Redis when small, storage when
large), writes one record per task and sends ONE Celery group per batch whose messages carry
only task ids. `map_reduce` becomes one chord: map tasks as the header, the reduce as the
body, which a worker runs once the last map task ended, whoever waits for it (flat canvases:
a group, or a chord of plain tasks, never nested).

Task workers (`tasks.<class>` queues, separate from `jobs.<class>` so a parent waiting on
its tasks never takes the slot they need) claim a task atomically in the registry, which
is the source of truth, and run it in a warm executor process of the job (`tasks.executor`)
with the class's limits. A task's supervisor that waits on nested tasks of its own class
runs queued ones itself meanwhile, so nested fan-outs cannot deadlock a full worker.

Every status change is one Lua call. A task whose job is no longer running (ended, being
canceled, or run again after a lost worker) is canceled when claimed and killed while
running; the job's supervisor, when it ends, cancels what is queued and waits for what runs.
Lua scripts read the related key names from the task record (single Redis, not cluster).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import shared_task
from celery.signals import worker_shutdown, worker_shutting_down

from qhybrid.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QhybridError,
    ServiceUnavailable,
)
from storage import keys
from storage.store import ObjectStore
from tasks import defaults as d
from tasks.isolation import job_account
from tasks.queues import REDUCE_TASK, RUN_MAP_TASK, RUN_TASK, tasks_queue
from tasks.registry import Registry
from tasks.resources import ResourceClass, pick_class

if TYPE_CHECKING:
    from tasks.executor import Executor
    from tasks.services import Services
    from tasks.supervisor import Supervisor

log = logging.getLogger("qhybrid.tasks")

TASK = "task"
MAP = "map"
REDUCE = "reduce"
KINDS = (TASK, MAP, REDUCE)
TERMINAL = frozenset({d.DONE, d.ERROR, d.CANCELED})
STORE_MARK = b"\x00qh-store:"      # a Redis value that points to storage (pickles never start so)
_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGEST = re.compile(r"^[0-9a-f]{40}$")
SESSION_OPS = ("tasks_hello", "tasks_target", "tasks_submit", "tasks_collect", "tasks_put",
               "tasks_fetch_object")
TASK_OPS = (*SESSION_OPS, "update_status", "save_result", "job_info",   # inside a task
            # qhybrid.get_backend() (tasks.quantum_tasks.device_ops)
            "device_info", "qtask_submit", "qtask_status", "qtask_result", "qtask_cancel")
MAX_REPLY_BYTES = 64 * 1024**2     # values sent back by one collect call (the rest: next call)
WAIT_NOTE_S = 3.0                  # a waiting caller is told why tasks wait this often at most

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


def _k_task(task_id: str) -> str:
    return d.TASK_KEY.format(task_id=task_id)


def _now() -> float:
    return time.time()


def _check_id(value: Any, field: str) -> str:
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
            nx: bool = False) -> None:
        target = pipe if pipe is not None else self.raw
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
        self._claim(keys=[_k_task(task_id)], args=[worker, run, _now(), d.TASK_HEARTBEAT_TTL_S],
                    client=pipe)
        pipe.hgetall(_k_task(task_id))
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
        return self._finish(keys=[_k_task(task_id)],
                            args=[run, status, _now(), f"{cpu:.6f}", error[-20000:], error_type,
                                  result], client=pipe)

    def requeue(self, task_id: str, run: str) -> int:
        return int(self._requeue(keys=[_k_task(task_id)],
                                 args=[run, _now(), d.MAX_TASK_ATTEMPTS]))

    def fields(self, ids: list[str], *names: str) -> list[list[str | None]]:
        pipe = self.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(_k_task(task_id), list(names))
        return list(pipe.execute())

    def records(self, ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids[start:start + 500]:
                pipe.hgetall(_k_task(task_id))
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
            chunk = [_k_task(t) for t in ids[start:start + 500]]
            now_running, now_canceled = self._cancel(keys=chunk, args=[_now(), reason, attempt])
            running += [str(x) for x in now_running]
            canceled += [str(x) for x in now_canceled]
        return running, canceled

    def cancel_unsent(self, ids: list[str], reason: str) -> None:
        """End queued tasks whose messages could not be sent (the broker failed)."""
        for start in range(0, len(ids), 500):
            self._cancel(keys=[_k_task(t) for t in ids[start:start + 500]],
                         args=[_now(), reason, ""])

    def force_cancel(self, ids: list[str], reason: str) -> int:
        if not ids:
            return 0
        return int(self._force(keys=[_k_task(t) for t in ids], args=[_now(), reason]))

    def should_stop(self, task_id: str, run: str, job_id: str, attempt: str) -> str:
        """Why the running task must stop now ("" while it may go on)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(_k_task(task_id), ["status", "run", "cancel"])
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


def _celery() -> Any:
    from tasks.celery_app import app

    return app


def _settings() -> Any:
    from tasks.settings import Settings

    return Settings.from_env()


class TaskSession:
    """The distributed-task operations of one caller: a job's main code, or a running task.

    It submits the caller's batches, answers its waits from an inbox list that tasks push
    their end to, and keeps put() objects. Values stay pickled bytes here: only user code
    unpickles them.
    """

    def __init__(self, env: TaskEnv, job: dict[str, Any], owner: str, parent_task: str,
                 stage: Callable[[], str], spool: Path,
                 helper: Callable[[TaskSession, list[str]], bool] | None = None) -> None:
        self.env = env
        self.job = job
        self.job_id: str = job["id"]
        self.attempt = str(job.get("attempt") or 1)
        self.prefix: str = job["prefix"]
        self.owner = owner
        self.parent_task = parent_task
        self.stage = stage
        self.spool = spool
        self.helper = helper
        self.inbox = d.TASK_INBOX_KEY.format(owner=owner)
        self.owned: set[str] = set()
        self.final: dict[str, str] = {}
        self.known_fns: set[str] = set()
        self._cond = threading.Condition()
        self._reading = False
        self._last_reconcile = 0.0
        self._kick_seen: dict[str, float] = {}
        self._queued_seen: dict[str, float] = {}
        self._last_wait_note = 0.0
        self._spool_fd: int | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "tasks_hello": self.op_hello, "tasks_target": self.op_target,
            "tasks_submit": self.op_submit, "tasks_collect": self.op_collect,
            "tasks_put": self.op_put, "tasks_fetch_object": self.op_fetch_object,
        }
        if parent_task:
            from tasks.quantum_tasks import device_ops

            self._ops.update({"update_status": self.op_task_status,
                              "save_result": self.op_task_result, "job_info": self.op_job_info})
            # get_backend() inside a task: quantum tasks as the job's user, charged to the
            # stage its caller was in
            self._ops.update(device_ops(env.registry, lambda: env.store, _settings, job, stage))

    def ops(self) -> dict[str, Callable[..., Any]]:
        return self._ops

    def close(self) -> None:
        if self.owned:
            self.env.registry.r.delete(self.inbox)
        if self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None

    # --- channel operations ------------------------------------------------------------------
    def op_hello(self) -> dict[str, Any]:
        self._spool()
        return {"spool_dir": str(self.spool), "job_id": self.job_id,
                "task_id": self.parent_task or None, "classes": list(self.env.classes)}

    def op_target(self, target: Any = None) -> str:
        return pick_class(target, self.env.classes, field="target").name

    def op_submit(self, tasks: Any, functions: Any = None) -> int:
        if not isinstance(tasks, list) or not tasks:
            raise InvalidInput("tasks is a non-empty list", field="tasks")
        if not isinstance(functions, dict | None):
            raise InvalidInput("functions maps digests to pickled functions", field="functions")
        self._check_running()
        for digest, enc in (functions or {}).items():
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise InvalidInput("a function digest is 40 hex digits", field="functions")
            if digest in self.known_fns:
                continue
            blob = self._blob_in(enc, "functions")
            if hashlib.sha1(blob).hexdigest() != digest:
                raise InvalidInput("a function's bytes do not match its digest", field="functions")
            self.env.blobs.put(d.JOB_FUNCTION_KEY.format(job_id=self.job_id, digest=digest),
                               self.prefix, f"fn-{digest}", blob, nx=True)
            self.known_fns.add(digest)
        entries = [self._check_entry(t, i) for i, t in enumerate(tasks)]
        self._check_functions({e["fn"] for e in entries})
        self._check_new([e["id"] for e in entries])
        maps_of = {e["id"]: e for e in entries if e["kind"] == MAP}
        for e in entries:
            if e["kind"] == REDUCE:
                bad = [m for m in e["maps"] if m not in maps_of]
                if bad:
                    raise InvalidInput("a reduce names map tasks of the same batch", field="maps")
                for m in e["maps"]:
                    maps_of[m]["chord"] = e["id"]
        if any(e["kind"] == MAP and "chord" not in e for e in entries):
            raise InvalidInput("map tasks belong to a reduce of the same batch", field="kind")
        if self.env.tasks.count(self.job_id) + len(entries) > d.MAX_TASKS_PER_JOB:
            raise Conflict(f"a job may run at most {d.MAX_TASKS_PER_JOB} tasks")
        batch = uuid.uuid4().hex          # the Celery group's id
        self._write(entries, batch)
        try:
            self._send(entries, batch)
        except Exception as exc:          # no record may wait for a message that never went
            self.env.tasks.cancel_unsent([e["id"] for e in entries], f"not sent: {exc}")
            raise ServiceUnavailable(f"the task queue refused the tasks: {exc}") from exc
        return len(entries)

    def op_collect(self, ids: Any, wait: Any = d.TASK_COLLECT_WAIT_S, min_done: Any = None,
                   values: Any = True, linger: Any = 0.0) -> dict[str, Any]:
        """The ids that ended (with values), once `min_done` of them did or `wait` passed.

        With `linger`, it waits that much longer for more to end before it answers, so that
        results come back as they end, in few calls.
        """
        if not isinstance(ids, list) or len(ids) > d.MAX_TASKS_PER_JOB:
            raise InvalidInput("ids is a list of task ids", field="ids")
        ids = [_check_id(i, "ids") for i in ids]
        try:
            wait_s = min(max(float(wait), 0.0), 5.0)
            linger_s = min(max(float(linger), 0.0), 1.0)
        except (TypeError, ValueError):
            raise InvalidInput("wait and linger are numbers of seconds", field="wait") from None
        need = len(ids) if min_done is None else min(max(int(min_done), 0), len(ids))
        deadline = time.monotonic() + wait_s
        statuses = self._statuses(ids)
        lingering = False
        while True:
            done = [i for i in ids if statuses.get(i) in TERMINAL]
            if len(done) == len(ids) or time.monotonic() >= deadline:
                break
            if len(done) >= need:
                if lingering or not linger_s:
                    break
                lingering = True
                deadline = min(deadline, time.monotonic() + linger_s)
            pending = [i for i in ids if statuses.get(i) not in TERMINAL]
            if not (self.helper and self.helper(self, pending)):
                # others' tasks do not report to this inbox: look again soon
                foreign = any(i not in self.owned for i in pending)
                self._wait_inbox(min(deadline, time.monotonic() + 0.05) if foreign else deadline)
            statuses = self._statuses(ids)
        reply: dict[str, Any] = {"done": self._entries(done, bool(values))}
        if len(done) < need and time.monotonic() - self._last_wait_note >= WAIT_NOTE_S:
            self._last_wait_note = time.monotonic()
            why = waiting_for(self.env.registry, self.job_id)
            if why:
                reply["waiting_for"] = why
        return reply

    def op_put(self, ref: Any, data: Any = None, path: Any = None) -> bool:
        ref = _check_id(ref, "ref")
        self._check_running()
        blob = self._blob_in({"data": data} if data is not None else {"path": path}, "data")
        self.env.blobs.put(d.JOB_OBJECT_KEY.format(job_id=self.job_id, ref=ref), self.prefix,
                           f"obj-{ref}", blob, nx=True)
        return True

    def op_fetch_object(self, ref: Any) -> dict[str, str]:
        ref = _check_id(ref, "ref")
        blob = self.env.blobs.get(d.JOB_OBJECT_KEY.format(job_id=self.job_id, ref=ref))
        if blob is None:
            raise NotFound(f"no object {ref} in this job")
        return self._blob_out(blob, f"obj-{ref}")

    def op_task_status(self, status: Any = None) -> bool:
        return False            # a task has no sub-status of its own: its job's shows

    def op_task_result(self, result: Any = None) -> bool:
        raise Conflict("save_result() is for the job's own code; a task returns its value")

    def op_job_info(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "job_name": self.job.get("job_name"),
                "user": self.job["user"], "task_id": self.parent_task}

    # --- submission --------------------------------------------------------------------------
    def _check_running(self) -> None:
        status, attempt = self.env.registry.r.hmget(d.JOB_KEY.format(job_id=self.job_id),
                                                    ["status", "attempt"])
        if status not in (d.RUNNING, d.INITIALIZING) or (attempt or "1") != self.attempt:
            raise Conflict(f"the job is {status}: it starts no more tasks")

    def _check_entry(self, t: Any, i: int) -> dict[str, Any]:
        where = f"tasks[{i}]"
        if not isinstance(t, dict):
            raise InvalidInput(f"{where} is an object", field=where)
        kind = t.get("kind", TASK)
        if kind not in KINDS:
            raise InvalidInput(f"{where}.kind is one of {', '.join(KINDS)}", field=f"{where}.kind")
        cls = t.get("class")
        if cls not in self.env.classes:
            raise InvalidInput(f"{where}.class: unknown resource class {cls!r}; classes: "
                               f"{', '.join(self.env.classes)}", field=f"{where}.class")
        fn = t.get("fn")
        if not isinstance(fn, str) or not _DIGEST.match(fn):
            raise InvalidInput(f"{where}.fn is a function digest", field=f"{where}.fn")
        name = str(t.get("name") or "task")[:200]
        entry: dict[str, Any] = {"id": _check_id(t.get("id"), f"{where}.id"), "kind": kind,
                                 "class": cls, "fn": fn, "name": name}
        if kind == REDUCE:
            maps = t.get("maps")
            if not isinstance(maps, list) or not maps:
                raise InvalidInput(f"{where}.maps lists the map tasks", field=f"{where}.maps")
            entry["maps"] = [_check_id(m, f"{where}.maps") for m in maps]
        else:
            entry["args"] = self._blob_in(t.get("args"), f"{where}.args")
        return entry

    def _check_functions(self, digests: set[str]) -> None:
        unknown = sorted(digests - self.known_fns)
        if not unknown:
            return
        pipe = self.env.registry.r.pipeline(transaction=False)
        for digest in unknown:
            pipe.exists(d.JOB_FUNCTION_KEY.format(job_id=self.job_id, digest=digest))
        for digest, there in zip(unknown, pipe.execute(), strict=True):
            if not there:
                raise InvalidInput(f"function {digest} was never sent", field="functions")
            self.known_fns.add(digest)

    def _check_new(self, ids: list[str]) -> None:
        if len(set(ids)) != len(ids):
            raise InvalidInput("task ids repeat within the batch", field="tasks")
        pipe = self.env.registry.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.exists(_k_task(task_id))
        if any(pipe.execute()):
            raise Conflict("a task with one of these ids exists already")

    def _write(self, entries: list[dict[str, Any]], batch: str) -> None:
        r = self.env.registry.r
        seq_end = int(r.incrby(d.JOB_TASK_SEQ_KEY.format(job_id=self.job_id), len(entries)))
        seq = seq_end - len(entries)
        now = _now()
        stage = self.stage()
        queued: dict[str, int] = {}
        pipe = self.env.registry.raw.pipeline(transaction=False)
        for e in entries:
            seq += 1
            record = {
                "id": e["id"], "job": self.job_id, "attempt": self.attempt,
                "owner": self.owner, "parent": self.parent_task, "kind": e["kind"],
                "name": e["name"], "fn": e["fn"], "class": e["class"],
                "queue": tasks_queue(e["class"]), "status": d.QUEUED, "created": now,
                "stage": stage, "seq": seq, "chord": e.get("chord", ""),
                # the Celery group it was sent in; for map_reduce, the chord (its reduce's id)
                "group": batch if e["kind"] == TASK else (e.get("chord") or e["id"]),
                "inbox": self.inbox, "job_key": d.JOB_KEY.format(job_id=self.job_id),
                "queued_key": d.JOB_QUEUED_TASKS_KEY.format(job_id=self.job_id),
                "usage_key": d.JOB_USAGE_KEY.format(job_id=self.job_id),
            }
            if e["kind"] == REDUCE:
                record["maps"] = json.dumps(e["maps"])
            else:
                self.env.blobs.put(d.TASK_PAYLOAD_KEY.format(task_id=e["id"]), self.prefix,
                                   f"args-{e['id']}", e["args"], pipe=pipe)
            pipe.hset(_k_task(e["id"]), mapping={k: str(v) for k, v in record.items()})
            pipe.zadd(d.JOB_TASKS_KEY.format(job_id=self.job_id), {e["id"]: seq})
            queued[e["class"]] = queued.get(e["class"], 0) + 1
        for cls, n in queued.items():
            pipe.hincrby(d.JOB_QUEUED_TASKS_KEY.format(job_id=self.job_id), cls, n)
        pipe.execute()
        self.owned.update(e["id"] for e in entries)

    def _send(self, entries: list[dict[str, Any]], batch: str) -> None:
        """One Celery group for the plain calls; one chord per map_reduce. Ids only."""
        from celery import chord, group

        app = _celery()

        def sig(name: str, e: dict[str, Any]) -> Any:
            return app.signature(name, args=[e["id"]], queue=tasks_queue(e["class"]),
                                 task_id=e["id"], immutable=True)

        plain = [sig(RUN_TASK, e) for e in entries if e["kind"] == TASK]
        if plain:
            group(plain).apply_async(task_id=batch)
        by_id = {e["id"]: e for e in entries}
        for e in entries:
            if e["kind"] == REDUCE:
                header = [sig(RUN_MAP_TASK, by_id[m]) for m in e["maps"]]
                chord(header, sig(REDUCE_TASK, e)).apply_async()

    # --- waiting -----------------------------------------------------------------------------
    def _statuses(self, ids: list[str]) -> dict[str, str]:
        """Status of each id: ended ones from the inbox, the rest re-read now and then.

        Tasks this session submitted push their end to its inbox; others' (a reference
        passed in) are read each time.
        """
        out = {i: self.final[i] for i in ids if i in self.final}
        now = time.monotonic()
        foreign = [i for i in ids if i not in out and i not in self.owned]
        due = now - self._last_reconcile >= d.TASK_RECONCILE_S
        check = [i for i in ids if i not in out] if due else foreign
        if due:
            self._last_reconcile = now
        if not check:
            return {i: out.get(i, d.QUEUED) for i in ids}
        rows = self.env.tasks.fields(check, "status", "job", "run", "kind", "maps", "class")
        running: list[tuple[str, str]] = []
        queued: list[tuple[str, str, str]] = []
        for task_id, (status, job, run, kind, maps, cls) in zip(check, rows, strict=True):
            if status is None or job != self.job_id:
                raise NotFound(f"no task {task_id} in this job")
            out[task_id] = status
            if status != d.QUEUED:
                self._queued_seen.pop(task_id, None)
            if status in TERMINAL:
                self.final[task_id] = status
            elif status == d.RUNNING and run:
                running.append((task_id, run))
            elif status == d.QUEUED and kind == REDUCE and due:
                self._kick_reduce(task_id, json.loads(maps or "[]"), cls or "")
            elif status == d.QUEUED and due:
                queued.append((task_id, kind or TASK, cls or ""))
        if due and running:
            self._rescue(running)
        if due and queued:
            self._resend_lost(queued)
        return {i: out.get(i, d.QUEUED) for i in ids}

    def _rescue(self, running: list[tuple[str, str]]) -> None:
        """Running tasks whose worker stopped beating: queue them again (once), else ERROR."""
        pipe = self.env.registry.r.pipeline(transaction=False)
        for task_id, _ in running:
            pipe.exists(d.TASK_HEARTBEAT_KEY.format(task_id=task_id))
        for (task_id, run), alive in zip(running, pipe.execute(), strict=True):
            if alive:
                continue
            if self.env.tasks.requeue(task_id, run) == 1:
                cls = self.env.tasks.fields([task_id], "class")[0][0] or ""
                _celery().send_task(RUN_TASK, args=[task_id], queue=tasks_queue(cls))
                log.warning("task %s lost its worker; sent again", task_id)

    def _resend_lost(self, queued: list[tuple[str, str, str]]) -> None:
        """Queued tasks whose message a worker took and never ran (it died first, on another
        host maybe): sent again once their queue has drained and they still wait. A second
        message is harmless: only the first claim of a QUEUED task runs it."""
        now = time.monotonic()
        due: dict[str, list[tuple[str, str]]] = {}
        for task_id, kind, cls in queued:
            first = self._queued_seen.setdefault(task_id, now)
            if now - first >= d.LOST_MESSAGE_AFTER_S:
                due.setdefault(cls, []).append((task_id, kind))
        r = self.env.registry.r
        for cls, items in due.items():
            if r.llen(tasks_queue(cls)):
                continue        # messages still wait: theirs may be among them
            for task_id, kind in items:
                self._queued_seen[task_id] = now
                name = RUN_MAP_TASK if kind == MAP else RUN_TASK
                _celery().send_task(name, args=[task_id], queue=tasks_queue(cls))
            log.warning("%d queued tasks of %s lost their message; sent again", len(items),
                        self.job_id)

    def _kick_reduce(self, task_id: str, maps: list[str], cls: str) -> None:
        """A reduce whose maps all ended but whose chord never fired (a lost map message)."""
        rows = self.env.tasks.fields(maps, "status")
        if not all(row[0] in TERMINAL for row in rows):
            self._kick_seen.pop(task_id, None)
            return
        first = self._kick_seen.setdefault(task_id, time.monotonic())
        if time.monotonic() - first >= 5 * d.TASK_RECONCILE_S:
            self._kick_seen[task_id] = time.monotonic()
            _celery().send_task(REDUCE_TASK, args=[task_id], queue=tasks_queue(cls))

    def _wait_inbox(self, deadline: float) -> None:
        """Wait for a task end pushed to the inbox; one thread reads, the others wait on it."""
        left = max(0.0, min(deadline - time.monotonic(), d.TASK_RECONCILE_S))
        with self._cond:
            if self._reading:
                self._cond.wait(left)
                return
            self._reading = True
        got: list[str] = []
        try:
            r = self.env.registry.r
            if left > 0:
                item = r.blpop([self.inbox], timeout=max(left, 0.01))
                if item:
                    got.append(item[1])
                    got += r.lpop(self.inbox, 10000) or []
        finally:
            with self._cond:
                for entry in got:
                    task_id, _, status = entry.partition(" ")
                    if status in TERMINAL:
                        self.final[task_id] = status
                self._reading = False
                self._cond.notify_all()

    def _entries(self, ids: list[str], values: bool) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not ids:
            return out
        rows = self.env.tasks.fields(ids, "status", "error", "error_type")
        sizes = 0
        want = [i for i, row in zip(ids, rows, strict=True) if values and row[0] == d.DONE]
        raw_values: dict[str, bytes | None] = {}
        if want:
            pipe = self.env.registry.raw.pipeline(transaction=False)
            for task_id in want:
                pipe.get(d.TASK_RESULT_KEY.format(task_id=task_id))
            raw_values = dict(zip(want, pipe.execute(), strict=True))
        for task_id, (status, error, etype) in zip(ids, rows, strict=True):
            entry: dict[str, Any] = {"status": status}
            if status == d.DONE and values:
                blob = self.env.blobs.resolve(raw_values.get(task_id))
                if blob is None:
                    entry = {"status": d.ERROR, "error": "the task's result has expired"}
                else:
                    if sizes > MAX_REPLY_BYTES:
                        continue        # the caller asks again for the rest
                    sizes += len(blob)
                    entry.update(self._blob_out(blob, f"res-{task_id}"))
            elif status != d.DONE:
                entry["error"] = error or f"the task ended {status}"
                if etype:
                    entry["type"] = etype
            out[task_id] = entry
        return out

    # --- bytes across the channel ------------------------------------------------------------
    def _spool(self) -> int:
        """A descriptor of the spool directory, where big values cross between us and user code.

        Its parent belongs to the user (who may run as another account): every file is opened
        by name relative to this descriptor, never following links, so no path the user
        plants can make the worker read or write anything outside it.
        """
        if self._spool_fd is None:
            try:
                os.mkdir(self.spool, 0o755)
            except FileExistsError:
                pass
            fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            account = job_account()
            if account is not None and os.fstat(fd).st_uid == os.geteuid():
                os.fchown(fd, account.uid, account.gid)     # user code writes its files here
            self._spool_fd = fd
        return self._spool_fd

    def _blob_in(self, enc: Any, field: str) -> bytes:
        """Bytes from user code: inline base64, or a file it wrote in the spool directory."""
        if not isinstance(enc, dict):
            raise InvalidInput(f"{field} is {{'data': base64}} or {{'path': spool file}}",
                               field=field)
        if enc.get("path") is not None:
            path = str(enc["path"])
            name = os.path.basename(path)
            if os.path.dirname(path) != str(self.spool) or name in ("", ".", ".."):
                raise InvalidInput(f"{field}: files must be in the spool directory {self.spool}",
                                   field=field)
            spool = self._spool()
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=spool)
            except OSError:
                raise InvalidInput(f"{field}: no file {name} in the spool directory",
                                   field=field) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise InvalidInput(f"{field}: {name} is not a plain file", field=field)
                if st.st_size > d.MAX_TASK_BLOB_BYTES:
                    raise PayloadTooLarge(f"{field} is larger than {d.MAX_TASK_BLOB_BYTES} "
                                          "bytes", field=field)
                with os.fdopen(os.dup(fd), "rb") as fh:
                    data = fh.read()
            finally:
                os.close(fd)
                os.unlink(name, dir_fd=spool)
            return data
        raw = enc.get("data")
        if not isinstance(raw, str):
            raise InvalidInput(f"{field}.data is base64 text", field=field)
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError:
            raise InvalidInput(f"{field}.data is not base64", field=field) from None

    def _blob_out(self, blob: bytes, name: str) -> dict[str, str]:
        if len(blob) <= d.TASK_CHANNEL_INLINE_BYTES:
            return {"data": base64.b64encode(blob).decode()}
        name = f"{name}-{uuid.uuid4().hex[:8]}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=self._spool())
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        return {"path": str(self.spool / name)}


# --- a job's side: its supervisor's operations and the end of its tasks --------------------
class JobTasks:
    """The distributed tasks of one job attempt, seen from the job's supervisor."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._session: TaskSession | None = None

    def session(self) -> TaskSession:
        if self._session is None:
            from tasks.resources import load_classes

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

    def end(self, reason: str = "the job ended") -> None:
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
            _celery().control.revoke(canceled[-10000:])
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
            pipe.expire(_k_task(task_id), d.TASK_EXPIRY_S)
            pipe.expire(d.TASK_RESULT_KEY.format(task_id=task_id), d.TASK_RESULT_EXPIRY_S)
            pipe.delete(d.TASK_INBOX_KEY.format(owner=task_id))
        pipe.execute()
    doomed = list(r.scan_iter(match=d.JOB_FUNCTION_KEY.format(job_id=job_id, digest="*"),
                              count=1000))
    doomed += list(r.scan_iter(match=d.JOB_OBJECT_KEY.format(job_id=job_id, ref="*"),
                               count=1000))
    if doomed:
        r.delete(*doomed)
    for key in (d.JOB_TASKS_KEY, d.JOB_TASK_SEQ_KEY):
        r.expire(key.format(job_id=job_id), d.TASK_EXPIRY_S)
    r.delete(d.JOB_QUEUED_TASKS_KEY.format(job_id=job_id))
    try:
        env.store.delete_prefix(keys.job_task_blobs(job["prefix"]))
    except Exception as exc:
        log.warning("deleting %s's task blobs failed: %s", job_id, exc)


# --- the task worker -------------------------------------------------------------------------
class TaskWorker:
    """Runs distributed tasks in one worker process (`tasks.<class>` queues)."""

    def __init__(self, services: Services) -> None:
        from tasks.executor import CpuSlots, ExecutorPool
        from tasks.supervisor import worker_name

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

    def _maps_ended(self, task_id: str) -> bool:
        maps = self.env.tasks.fields([task_id], "maps")[0][0]
        mids = json.loads(maps or "[]")
        return all(row[0] in TERMINAL for row in self.env.tasks.fields(mids, "status"))

    def execute(self, rec: dict[str, Any], run: str, cpus: list[int] | None = None) -> str:
        """Run a claimed task in an executor of its job; record how it ended."""
        from tasks.executor import ExecutorLost

        task_id: str = rec["id"]
        status, error, etype, cpu, result = d.ERROR, "", "", 0.0, b""
        fds: list[int] = []
        ex: Executor | None = None
        healthy = True
        session: TaskSession | None = None
        try:
            # the attempt the task belongs to (claimed only if still the job's current one),
            # never the cached record's: a job run again must not reuse its old code and
            # executors
            job = {**self.job(rec["job"]), "attempt": rec.get("attempt") or "1"}
            rc = self.env.classes.get(rec["class"])
            if rc is None:
                raise QhybridError(f"resource class {rec['class']!r} is not configured here")
            if cpus is None:
                cpus, fds = self.slots.acquire(rc.threads())
            ex = self.pool.acquire(job, rc)
            session = TaskSession(self.env, job, owner=task_id, parent_task=task_id,
                                  stage=lambda: str(rec.get("stage") or d.RUNNING),
                                  spool=ex.spool,
                                  helper=self._helper(rc, list(cpus)))
            ex.session = session
            digest = rec["fn"]
            blobs = [b"" if digest in ex.known_fns else self.function(job["id"], digest)]
            blobs += self._inputs(rec)
            header = {"task_id": task_id, "fn": digest, "cpus": cpus,
                      "mode": REDUCE if rec["kind"] == REDUCE else "call",
                      "error_lines": d.TASK_ERROR_LINES}
            stopped: dict[str, str] = {}
            reply = ex.run(header, blobs, self._ticker(rec, run, job, ex, stopped))
            ex.known_fns.add(digest)
            if reply is None and self._stop.is_set():
                self._hand_back(task_id, run)   # the worker stops: another one runs it
                return d.QUEUED
            if reply is None:
                status, healthy = d.CANCELED, False
                error = stopped.get(task_id) or "the task was stopped"
            else:
                head, out = reply
                cpu = float(head.get("cpu") or 0.0)
                if head.get("ok"):
                    status, result = d.DONE, out[0]
                else:
                    status, error, etype = d.ERROR, str(head.get("error")), str(head.get("type"))
        except ExecutorLost as exc:
            status, error, etype, healthy = d.ERROR, str(exc), "WorkerLost", False
        except _MapFailed as exc:
            status, error, etype = d.ERROR, str(exc), exc.etype
        except Exception as exc:
            log.exception("task %s failed in the worker", task_id)
            status, error, etype = d.ERROR, f"the task worker failed: {type(exc).__name__}: {exc}", ""
            healthy = False
        finally:
            if ex is not None:
                self._pump(task_id, ex)
                ex.session = None
                self.pool.release(ex, healthy)
            if session is not None:
                session.close()
            self.slots.release(fds)
        self._record(rec, run, status, cpu, error, etype, result)
        return status

    def _hand_back(self, task_id: str, run: str) -> None:
        self.env.registry.r.delete(d.TASK_HEARTBEAT_KEY.format(task_id=task_id))
        if self.env.tasks.requeue(task_id, run) == 1:
            cls = self.env.tasks.fields([task_id], "class")[0][0] or ""
            _celery().send_task(RUN_TASK, args=[task_id], queue=tasks_queue(cls))

    def _record(self, rec: dict[str, Any], run: str, status: str, cpu: float, error: str,
                etype: str, result: bytes) -> None:
        task_id = rec["id"]
        location = ""
        pipe = self.env.registry.raw.pipeline(transaction=False)
        if status == d.DONE:
            job = self.job(rec["job"])
            self.env.blobs.put(d.TASK_RESULT_KEY.format(task_id=task_id), job["prefix"],
                               f"res-{task_id}", result, pipe=pipe)
            location = "redis" if len(result) <= d.TASK_INLINE_BYTES else "storage"
        self.env.tasks.finish(task_id, run, status, cpu, error, etype, location, pipe=pipe)
        pipe.delete(d.TASK_PAYLOAD_KEY.format(task_id=task_id))
        pipe.execute()

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
                raise _MapFailed(f"map task {name} #{i} [{maps[i][:8]}] ended {status}:\n"
                                 f"{error or ''}", etype or "")
        pipe = self.env.registry.raw.pipeline(transaction=False)
        for m in maps:
            pipe.get(d.TASK_RESULT_KEY.format(task_id=m))
        values = [self.env.blobs.resolve(v) for v in pipe.execute()]
        if any(v is None for v in values):
            raise QhybridError("a map task's result has expired")
        return [v for v in values if v is not None]

    def _ticker(self, rec: dict[str, Any], run: str, job: dict[str, Any], ex: Executor,
                stopped: dict[str, str]) -> Callable[[], bool]:
        task_id = rec["id"]
        attempt = str(rec.get("attempt") or 1)
        last_beat = time.monotonic()

        def tick() -> bool:
            nonlocal last_beat
            now = time.monotonic()
            if now - last_beat >= d.HEARTBEAT_INTERVAL_S:
                self.env.tasks.heartbeat(task_id, self.name)
                self._pump(task_id, ex)
                last_beat = now
            if self._stop.is_set():
                return True
            why = self.env.tasks.should_stop(task_id, run, job["id"], attempt)
            if why:
                stopped[task_id] = why
            return bool(why)

        return tick

    def _pump(self, task_id: str, ex: Executor) -> None:
        chunk = ex.read_output()
        if chunk:
            self.env.tasks.append_log(task_id, chunk.decode("utf-8", errors="replace"))

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


class _MapFailed(Exception):
    def __init__(self, message: str, etype: str) -> None:
        super().__init__(message)
        self.etype = etype


_worker: TaskWorker | None = None
_worker_lock = threading.Lock()


def task_worker() -> TaskWorker:
    global _worker
    if _worker is None:
        with _worker_lock:
            if _worker is None:
                from tasks.services import from_env

                _worker = TaskWorker(from_env())
    return _worker


@shared_task(name=RUN_TASK, ignore_result=True, acks_late=True)
def run_task(task_id: str) -> None:
    task_worker().handle(task_id)


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
    """Queues some live worker consumes (from the workers' presence keys)."""
    keys_ = list(registry.r.scan_iter(match=d.WORKER_KEY.format(name="*"), count=500))
    out: set[str] = set()
    for raw in registry.r.mget(keys_) if keys_ else []:
        if raw:
            out.update(json.loads(raw).get("queues", []))
    return out


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

