"""The job registry in Redis: users, programs, jobs, their events and live logs.

The registry, not Celery, is the source of truth for a job's state. Every status change is
one atomic Lua call that checks where the job stands, writes the change, appends the event
and publishes it, so two processes can never both move a job out of the same state.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from qhybrid.errors import Conflict, InvalidInput, NotFound
from tasks.core import defaults as d
from tasks.core import signals

_TRANSITION = """
-- KEYS: job, events, active, heartbeat, sent, changed (channel) ; ARGV: to, allowed (csv or
--        ''), event json, now, require_field, require_value, unless_beating ('1': refuse
--        while the heartbeat lives), beat (a worker's name: set the heartbeat, a claim),
--        beat ttl (ms), whole ('1': return the whole record), then field/value pairs.
-- Returns -1 (no job), 0 (not moved) or, moved, what /metrics and a job's end need:
-- {1, created, started, ended, resource_class, sub_status, device, [the record's fields
-- and values, when whole]}.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
if ARGV[2] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
  if not ok then return 0 end
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], ARGV[5]) ~= ARGV[6] then return 0 end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[4])
for i = 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
if ARGV[1] == 'INITIALIZING' or ARGV[1] == 'RUNNING' or ARGV[1] == 'CANCELING' then
  redis.call('SADD', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
else
  redis.call('SREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
  redis.call('DEL', KEYS[4])
end
if ARGV[1] ~= 'QUEUED' then
  redis.call('ZREM', KEYS[5], redis.call('HGET', KEYS[1], 'id'))
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9])
end
redis.call('PUBLISH', KEYS[6], 'status')
local f = redis.call('HMGET', KEYS[1], 'created', 'started', 'ended', 'resource_class',
                     'sub_status', 'device')
local out = {1, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or ''}
if ARGV[10] == '1' then
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
end
return out
"""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def now() -> float:
    return time.time()


def display_status(status: str, sub_status: str | None) -> str:
    """`RUNNING: MAPPING` while a sub-status is set, else the bare status."""
    if status == d.RUNNING and sub_status:
        return f"{d.RUNNING}: {sub_status}"
    return status


class Registry:
    """Users, programs and jobs over one Redis connection."""

    def __init__(self, r: redis.Redis, raw: redis.Redis | None = None) -> None:
        # Typed as Any: redis-py's stubs say bytes | str even for a decoding client.
        self.r: Any = r
        self.raw: Any = raw or r
        self._transition = r.register_script(_TRANSITION)

    # --- users ----------------------------------------------------------------------------
    def create_user(self, name: str, token: str | None = None) -> str:
        """Create `name` (or give it a new token) and return the token, stored only hashed."""
        import re

        if not re.match(d.USER_PATTERN, name):
            raise InvalidInput("user names are 1-32 lower-case letters, digits, '-' or '_'", field="name")
        token = token or "qh_" + secrets.token_urlsafe(32)
        digest = hash_token(token)
        old = self.r.hget(d.USER_KEY.format(user=name), "token_hash")
        pipe = self.r.pipeline()
        if old:
            pipe.delete(d.TOKEN_KEY.format(token_hash=old))
        pipe.hset(d.USER_KEY.format(user=name), mapping={"name": name, "token_hash": digest,
                                                         "created": now()})
        pipe.set(d.TOKEN_KEY.format(token_hash=digest), name)
        pipe.sadd(d.USERS_KEY, name)
        pipe.execute()
        return token

    def user_for_token(self, token: str) -> str | None:
        return self.user_for_token_hash(hash_token(token)) if token else None

    def user_for_token_hash(self, digest: str) -> str | None:
        user = self.r.get(d.TOKEN_KEY.format(token_hash=digest)) if digest else None
        return str(user) if user else None

    def user_exists(self, name: str) -> bool:
        return bool(self.r.exists(d.USER_KEY.format(user=name)))

    # --- programs -------------------------------------------------------------------------
    def save_program(self, user: str, record: dict[str, Any]) -> None:
        title = record["title"]
        pipe = self.r.pipeline()
        pipe.delete(d.PROGRAM_KEY.format(user=user, title=title))
        pipe.hset(d.PROGRAM_KEY.format(user=user, title=title), mapping=flat_record(record))
        pipe.zadd(d.PROGRAMS_KEY.format(user=user), {title: record["created"]})
        pipe.execute()

    def get_program(self, user: str, title: str) -> dict[str, Any]:
        rec = self.r.hgetall(d.PROGRAM_KEY.format(user=user, title=title))
        if not rec:
            raise NotFound(f"no program {title!r}")
        return unflat_record(rec)

    def list_programs(self, user: str) -> list[dict[str, Any]]:
        titles = self.r.zrange(d.PROGRAMS_KEY.format(user=user), 0, -1)
        pipe = self.r.pipeline()
        for t in titles:
            pipe.hgetall(d.PROGRAM_KEY.format(user=user, title=t))
        return [unflat_record(rec) for rec in pipe.execute() if rec]

    # --- jobs -----------------------------------------------------------------------------
    @staticmethod
    def new_job_id() -> str:
        return uuid.uuid4().hex

    def create_job(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write a new job record in QUEUED with its first event."""
        job_id = record["id"]
        created = record.setdefault("created", now())
        record.setdefault("status", d.QUEUED)
        record.setdefault("attempt", 1)
        pipe = self.r.pipeline()
        pipe.hset(d.JOB_KEY.format(job_id=job_id), mapping=flat_record(record))
        pipe.rpush(d.JOB_EVENTS_KEY.format(job_id=job_id),
                   json.dumps({"status": d.QUEUED, "at": created}))
        pipe.zadd(d.USER_JOBS_KEY.format(user=record["user"]), {job_id: created})
        if record.get("job_name"):
            pipe.set(d.JOB_NAME_KEY.format(user=record["user"], name=record["job_name"]), job_id)
        from tasks.core import monitoring

        monitoring.count_entered(pipe, d.QUEUED, record.get("resource_class") or "")
        pipe.execute()
        return record

    def get_job(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        """The job record; another user's job is reported as missing."""
        rec = self.r.hgetall(d.JOB_KEY.format(job_id=job_id)) if _is_id(job_id) else {}
        if not rec or (user is not None and rec.get("user") != user):
            raise NotFound(f"no job {job_id!r}")
        return unflat_record(rec)

    def job_field(self, job_id: str, field: str) -> str | None:
        value = self.r.hget(d.JOB_KEY.format(job_id=job_id), field)
        return str(value) if value is not None else None

    def set_fields(self, job_id: str, **fields: Any) -> None:
        self.r.hset(d.JOB_KEY.format(job_id=job_id), mapping=flat_record(fields))

    def job_id_for_name(self, user: str, name: str) -> str | None:
        value = self.r.get(d.JOB_NAME_KEY.format(user=user, name=name))
        return str(value) if value else None

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(d.JOB_EVENTS_KEY.format(job_id=job_id), 0, -1)]

    def transition(self, job_id: str, to: str, *, allowed: Iterable[str] = (),
                   require: tuple[str, str] | None = None, sub_status: str | None = None,
                   detail: str | None = None, unless_beating: bool = False,
                   **fields: Any) -> bool:
        """Move the job to `to` if it stands in `allowed` (any when empty); True when it moved.

        `require` = (field, value) must hold too; `unless_beating` refuses while a supervisor's
        heartbeat lives (a reaper's move, fenced by what it judged lost).
        """
        return self._move(job_id, to, allowed=allowed, require=require, sub_status=sub_status,
                          detail=detail, unless_beating=unless_beating, fields=fields) is not None

    def claim(self, job_id: str, attempt: int, worker: str) -> dict[str, Any] | None:
        """Take a QUEUED job's `attempt` for `worker`: INITIALIZING, with its first heartbeat,
        in one call; the job record as it now stands, or None when it is not to be run."""
        return self._move(job_id, d.INITIALIZING, allowed=[d.QUEUED],
                          require=("attempt", str(attempt)), beat=worker, whole=True,
                          fields={"worker": worker})

    def _move(self, job_id: str, to: str, *, allowed: Iterable[str],
              require: tuple[str, str] | None, sub_status: str | None = None,
              detail: str | None = None, unless_beating: bool = False, beat: str = "",
              whole: bool = False, fields: dict[str, Any]) -> dict[str, Any] | None:
        at = now()
        event: dict[str, Any] = {"status": to, "at": at}
        if sub_status:
            event["sub_status"] = sub_status
        if detail:
            event["detail"] = detail
        fields["sub_status"] = sub_status or ""
        args: list[Any] = [to, ",".join(allowed), json.dumps(event), at,
                           require[0] if require else "", require[1] if require else "",
                           "1" if unless_beating else "", beat,
                           int(d.HEARTBEAT_TTL_S * 1000), "1" if whole else ""]
        for k, v in flat_record(fields).items():
            args += [k, v]
        keys = [d.JOB_KEY.format(job_id=job_id), d.JOB_EVENTS_KEY.format(job_id=job_id),
                d.ACTIVE_JOBS_KEY, d.JOB_HEARTBEAT_KEY.format(job_id=job_id), d.SENT_JOBS_KEY,
                d.JOB_CHANGED_CHANNEL.format(job_id=job_id)]
        moved = self._transition(keys=keys, args=args)
        if moved == -1:
            raise NotFound(f"no job {job_id!r}")
        if not moved:
            return None
        created, started, ended, rc, sub, device = moved[1:7]
        from tasks.core import monitoring

        monitoring.job_transition(self.r, to, rc, created=created, started=started,
                                  ended=ended, sub_status=sub)
        if to in d.TERMINAL_STATUSES:
            # However a job ends, what acts on it does (its device goes to the next job,
            # its queued quantum tasks are canceled: tasks.devices.reservations)
            signals.job_ended.send(sender=self, job_id=job_id, device=device)
        rest = moved[7:]
        return unflat_record(dict(zip(rest[::2], rest[1::2], strict=True)))

    def set_sub_status(self, job_id: str, sub_status: str) -> bool:
        """A sub-status while RUNNING (`RUNNING: MAPPING`); an event like any transition."""
        return self.transition(job_id, d.RUNNING, allowed=[d.RUNNING], sub_status=sub_status)

    def list_jobs(self, user: str, *, status: str | None = None, program: str | None = None,
                  created_after: float | None = None, limit: int = 50, offset: int = 0,
                  kind: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """The user's jobs, newest first, filtered; returns (page, total matching)."""
        lo = f"({created_after}" if created_after is not None else "-inf"
        ids = self.r.zrevrangebyscore(d.USER_JOBS_KEY.format(user=user), "+inf", lo)
        filtered = bool(status or program or kind)
        if not filtered:
            page_ids = ids[offset:offset + limit]
            return [r for r in self._jobs(page_ids)], len(ids)
        matched = []
        for rec in self._jobs(ids):
            if status and display_status(rec["status"], rec.get("sub_status")) != status \
                    and rec["status"] != status:
                continue
            if program and rec.get("program") != program:
                continue
            if kind and rec.get("kind") != kind:
                continue
            matched.append(rec)
        return matched[offset:offset + limit], len(matched)

    def _jobs(self, ids: list[str]) -> Iterator[dict[str, Any]]:
        for start in range(0, len(ids), 500):
            pipe = self.r.pipeline()
            for job_id in ids[start:start + 500]:
                pipe.hgetall(d.JOB_KEY.format(job_id=job_id))
            for rec in pipe.execute():
                if rec:
                    yield unflat_record(rec)

    def active_jobs(self) -> list[str]:
        return list(self.r.smembers(d.ACTIVE_JOBS_KEY))

    # --- heartbeats, logs, notifications ---------------------------------------------------
    def heartbeat(self, job_id: str, worker: str) -> None:
        self.r.set(d.JOB_HEARTBEAT_KEY.format(job_id=job_id), worker, ex=d.HEARTBEAT_TTL_S)

    def has_heartbeat(self, job_id: str) -> bool:
        return bool(self.r.exists(d.JOB_HEARTBEAT_KEY.format(job_id=job_id)))

    def append_log(self, job_id: str, text: str) -> None:
        if text:
            self.r.append(d.JOB_LOG_KEY.format(job_id=job_id), text)
            self.publish(job_id, "log")

    def read_log(self, job_id: str, offset: int = 0) -> bytes | None:
        """The live log from byte `offset`, or None once Redis no longer holds it."""
        key = d.JOB_LOG_KEY.format(job_id=job_id)
        pipe = self.raw.pipeline()
        pipe.exists(key)
        pipe.getrange(key, offset, -1)
        exists, data = pipe.execute()
        return bytes(data) if exists else None

    def expire_log(self, job_id: str) -> None:
        self.r.expire(d.JOB_LOG_KEY.format(job_id=job_id), d.LOG_EXPIRY_S)

    def publish(self, job_id: str, what: str) -> None:
        self.r.publish(d.JOB_CHANGED_CHANNEL.format(job_id=job_id), what)

    @contextmanager
    def subscription(self, job_id: str) -> Iterator[Any]:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(d.JOB_CHANGED_CHANNEL.format(job_id=job_id))
        try:
            yield pubsub
        finally:
            pubsub.close()

    def wait_for(self, job_id: str, user: str | None, timeout: float,
                 until: Iterable[str] = d.TERMINAL_STATUSES) -> dict[str, Any]:
        """Block until the job's status is one of `until` or `timeout` passes; the job record."""
        until = set(until)
        deadline = time.monotonic() + timeout
        with self.subscription(job_id) as pubsub:
            while True:
                job = self.get_job(job_id, user)
                remaining = deadline - time.monotonic()
                if job["status"] in until or remaining <= 0:
                    return job
                pubsub.get_message(timeout=min(remaining, 5.0))

    def announce_worker(self, name: str, info: dict[str, Any]) -> None:
        """Note a live worker for `WORKER_TTL_S`: its presence key, and its name in the set of
        workers, so that listing them never scans the keyspace."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.set(d.WORKER_KEY.format(name=name), json.dumps(info), ex=d.WORKER_TTL_S)
        pipe.zadd(d.WORKERS_KEY, {name: now + d.WORKER_TTL_S})
        pipe.zremrangebyscore(d.WORKERS_KEY, "-inf", now)      # workers that went silent
        if info.get("queues"):
            pipe.hdel(d.WARMING_KEY, *info["queues"])          # no longer starting
        pipe.execute()

    def note_warming(self, queues: list[str]) -> None:
        """A worker for `queues` is starting (its command ran; Celery and its imports follow):
        /healthz counts them as served, and says they are warming, for WARMING_TTL_S."""
        if queues:
            until = time.time() + d.WARMING_TTL_S
            self.r.hset(d.WARMING_KEY, mapping={q: until for q in queues})

    def warming(self) -> set[str]:
        """Queues whose worker is starting and not yet live."""
        now = time.time()
        return {q for q, until in self.r.hgetall(d.WARMING_KEY).items() if float(until) > now}

    def retire_worker(self, name: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(d.WORKER_KEY.format(name=name))
        pipe.zrem(d.WORKERS_KEY, name)
        pipe.execute()

    def workers_by_queue(self) -> dict[str, list[str]]:
        """Live workers grouped by the queues they consume: as many reads as there are live
        workers, however many jobs, tasks and users Redis holds."""
        out: dict[str, list[str]] = {}
        names = self.r.zrangebyscore(d.WORKERS_KEY, time.time(), "+inf")
        keys = [d.WORKER_KEY.format(name=n) for n in names]
        for raw in self.r.mget(keys) if keys else []:
            if not raw:
                continue
            info = json.loads(raw)
            for q in info.get("queues", []):
                out.setdefault(q, []).append(info["name"])
        return out

    def lock(self, key: str, ttl_s: float) -> bool:
        return bool(self.r.set(key, "1", nx=True, px=int(ttl_s * 1000)))

    @contextmanager
    def held_lock(self, key: str, ttl_s: float) -> Iterator[bool]:
        """Take `key` for `ttl_s` if free (yields whether it was taken), renewed while the
        body runs however long it takes, then left to expire `ttl_s` after the body ended
        (so the lock also spaces out the holders' turns, on every host)."""
        lock = self.r.lock(key, timeout=ttl_s, thread_local=False)
        if not lock.acquire(blocking=False):
            yield False
            return
        done = threading.Event()

        def renew() -> None:
            while not done.wait(ttl_s / 3):
                try:
                    lock.reacquire()
                except redis.RedisError:
                    return
        renewer = threading.Thread(target=renew, name=f"renew {key}", daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            done.set()
            renewer.join()
            try:
                lock.reacquire()    # a full ttl from now: the next turn comes after it
            except redis.RedisError:
                pass


def _is_id(job_id: str) -> bool:
    return 0 < len(job_id) <= 64 and job_id.isalnum()


def flat_record(record: dict[str, Any]) -> dict[str, str]:
    """A record as Redis hash fields: None as "", lists and dicts as "json:..."."""
    out = {}
    for k, v in record.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        elif isinstance(v, dict | list):
            out[k] = "json:" + json.dumps(v)
        else:
            out[k] = str(v)
    return out


_FLOATS = {"created", "started", "ended", "updated"}
_INTS = {"attempt", "max_runtime", "size"}


def unflat_record(rec: dict[str, str], floats: Iterable[str] = _FLOATS,
                  ints: Iterable[str] = _INTS) -> dict[str, Any]:
    """The inverse of flat_record; `floats` and `ints` name the numeric fields."""
    floats, ints = set(floats), set(ints)
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if v.startswith("json:"):
            out[k] = json.loads(v[5:])
        elif k in floats:
            out[k] = float(v) if v else None
        elif k in ints:
            out[k] = int(v) if v else None
        else:
            out[k] = v if v != "" else None
    return out


__all__ = ["Registry", "Conflict", "display_status", "hash_token"]
