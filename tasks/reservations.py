"""Device holding and device reservations.

Holding: one hybrid job at a time holds a non-shared device, the rest wait.
A job that names such a device is not sent to a job queue at submission unless it gets the
device at once; otherwise it waits QUEUED in the device's line (a sorted set, first come first
served) and takes no worker slot. When the holder ends, however it ends (DONE, ERROR, CANCELED,
worker lost, canceled while queued), `job_ended` gives the device to the next job still
QUEUED and sends that job's message. `Registry.transition` calls it on every move into a
terminal status; `repair` (run by the workers' housekeeping) mends what a crash between two
steps may leave behind. Holding and handing over are each one atomic Lua call.

Reservations (Braket's `reservation_arn`): a user, or an admin for a user, reserves a device
for a time window; windows of one device never overlap. Inside its window only the jobs that
carry the reservation are given the device, and only their quantum tasks (and the owner's
tasks that name it) are accepted on it. A job with a reservation waits QUEUED until its window
opens, and ends in ERROR if the window closes (or is canceled) first; a quantum task naming a
reservation outside its window is refused. A job already holding the device when a window
opens is not stopped: the reservation's jobs get the device when it ends.
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

# Hands the device to the first waiting job still QUEUED that may have it now, if nobody
# holds it: while a reservation's window is open (ARGV[4] its id), only that reservation's
# jobs; otherwise only jobs without one (a reservation's job waits for its window).
# KEYS: holder, waiting ; ARGV[1]: job key prefix, ARGV[2]: now, ARGV[4]: open reservation
_PROMOTE = """
local function promote()
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end
  local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, id in ipairs(ids) do
    if redis.call('HGET', ARGV[1] .. id, 'status') ~= 'QUEUED' then
      redis.call('ZREM', KEYS[2], id)
    else
      local res = redis.call('HGET', ARGV[1] .. id, 'reservation_id') or ''
      if res == ARGV[4] then
        redis.call('ZREM', KEYS[2], id)
        redis.call('SET', KEYS[1], id)
        redis.call('HSET', ARGV[1] .. id, 'device_granted', ARGV[2])
        return id
      end
    end
  end
  return false
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


def _open_window(r: Any, device: str) -> str:
    current = open_reservation(r, device)
    return current["id"] if current else ""


def reserve(r: Any, device: str, job_id: str) -> str | None:
    """Put the job in the device's line; the job that now holds it and must be sent, if any."""
    moved = r.register_script(_RESERVE)(
        keys=[*_keys(device), d.DEVICE_ARRIVALS_KEY],
        args=[_JOB_PREFIX, time.time(), job_id, _open_window(r, device)])
    return str(moved) if moved else None


def release(r: Any, device: str, job_id: str) -> str | None:
    """Take the job off the device (holder or waiting); the job that now holds it, if any."""
    moved = r.register_script(_RELEASE)(
        keys=_keys(device), args=[_JOB_PREFIX, time.time(), job_id, _open_window(r, device)])
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
        _end_jobs_of_closed_windows(registry, name, now)
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


# --- reservations ---------------------------------------------------------------------------
RESERVATION_ARN_PREFIX = "arn:qhybrid:reservation/"
CANCELED = "CANCELED"

# Record a reservation unless it overlaps another live one of the device: '' or the other's id.
# KEYS: device windows, the reservation, user's, all ; ARGV: id, start, end, reservation key
# prefix, then field/value pairs of the record
_CREATE = """
local start, stop = tonumber(ARGV[2]), tonumber(ARGV[3])
for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])) do
  local fields = redis.call('HMGET', ARGV[4] .. other, 'status', 'end')
  if fields[1] ~= 'CANCELED' and tonumber(fields[2]) > start then return other end
end
local record = {}
for i = 5, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(record))
redis.call('ZADD', KEYS[1], start, ARGV[1])
redis.call('ZADD', KEYS[3], start, ARGV[1])
redis.call('ZADD', KEYS[4], start, ARGV[1])
return ''
"""


def _number(value: Any, field: str) -> float:
    """Seconds since the epoch, from a number or an ISO 8601 text (UTC unless it says)."""
    from datetime import UTC, datetime

    from qhybrid.errors import InvalidInput

    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    raise InvalidInput(f"{field} is a time: seconds since the epoch or ISO 8601 "
                       "(2030-01-01T10:00:00Z)", field=field)


def reservation_state(rec: dict[str, Any], now: float | None = None) -> str:
    """SCHEDULED, ACTIVE, ENDED or CANCELED."""
    if rec.get("status") == CANCELED:
        return CANCELED
    now = time.time() if now is None else now
    if now < float(rec["start"]):
        return "SCHEDULED"
    return "ACTIVE" if now < float(rec["end"]) else "ENDED"


def reservation_json(rec: dict[str, Any]) -> dict[str, Any]:
    from datetime import UTC, datetime

    def iso(t: Any) -> str | None:
        return (datetime.fromtimestamp(float(t), UTC).isoformat().replace("+00:00", "Z")
                if t not in (None, "") else None)

    return {"reservation_id": rec["id"], "arn": RESERVATION_ARN_PREFIX + rec["id"],
            "user": rec["user"], "device": rec["device"], "start": iso(rec["start"]),
            "end": iso(rec["end"]), "state": reservation_state(rec),
            "created": iso(rec.get("created")), "created_by": rec.get("created_by"),
            "canceled": iso(rec.get("canceled"))}


def _load(r: Any, res_id: str) -> dict[str, Any] | None:
    rec = r.hgetall(d.RESERVATION_KEY.format(res_id=res_id))
    return dict(rec) if rec else None


def reservation_id(ref: Any) -> str:
    """The id in a reservation's arn (or the id itself)."""
    from qhybrid.errors import InvalidInput

    if not isinstance(ref, str) or not ref:
        raise InvalidInput("a reservation is named by its arn or id", field="reservation_arn")
    res_id = ref.removeprefix(RESERVATION_ARN_PREFIX)
    if not res_id.isalnum() or len(res_id) > 64:
        raise InvalidInput(f"{ref!r} is not a reservation arn", field="reservation_arn")
    return res_id


def create_reservation(services: Services, by_user: str, device: Any, start: Any, end: Any,
                       for_user: Any = None) -> dict[str, Any]:
    """Reserve `device` from `start` to `end` for `by_user` (or, by an admin, `for_user`)."""
    import uuid

    from qhybrid.errors import Conflict, Forbidden, InvalidInput
    from tasks.devices import device_spec

    spec = device_spec(services.settings, device)
    begin, stop = _number(start, "start"), _number(end, "end")
    now = time.time()
    if stop <= begin:
        raise InvalidInput("end must come after start", field="end")
    if stop <= now:
        raise InvalidInput("the window has already ended", field="end")
    if stop - begin > d.MAX_RESERVATION_S:
        raise InvalidInput(f"a reservation lasts at most {d.MAX_RESERVATION_S} s", field="end")
    if begin > now + d.MAX_RESERVATION_AHEAD_S:
        raise InvalidInput("a reservation starts within a year", field="start")
    owner = by_user
    if for_user not in (None, "", by_user):
        if by_user not in services.settings.admins:
            raise Forbidden("only an admin reserves a device for another user", field="user")
        if not isinstance(for_user, str) or not services.registry.user_exists(for_user):
            raise InvalidInput(f"there is no user {for_user!r}", field="user")
        owner = for_user
    res_id = uuid.uuid4().hex
    record = {"id": res_id, "user": owner, "device": spec.name, "start": repr(begin),
              "end": repr(stop), "status": "LIVE", "created": repr(now), "created_by": by_user}
    flat = [x for pair in record.items() for x in pair]
    r = services.registry.r
    other = r.register_script(_CREATE)(
        keys=[d.DEVICE_RESERVATIONS_KEY.format(device=spec.name),
              d.RESERVATION_KEY.format(res_id=res_id),
              d.USER_RESERVATIONS_KEY.format(user=owner), d.ALL_RESERVATIONS_KEY],
        args=[res_id, begin, stop, d.RESERVATION_KEY.format(res_id=""), *flat])
    if other:
        taken = _load(r, str(other)) or {}
        raise Conflict(f"device {spec.name} is reserved from {reservation_json(taken)['start']} "
                       f"to {reservation_json(taken)['end']}; choose a window that does not "
                       "overlap it", field="start")
    return record


def get_reservation(services: Services, user: str, ref: Any) -> dict[str, Any]:
    """A reservation of the user's (an admin sees every one); NotFound otherwise."""
    from qhybrid.errors import NotFound

    res_id = reservation_id(ref)
    rec = _load(services.registry.r, res_id)
    if rec is None or (rec["user"] != user and user not in services.settings.admins):
        raise NotFound(f"you have no reservation {ref!r}", field="reservation_arn")
    return rec


def list_reservations(services: Services, user: str) -> list[dict[str, Any]]:
    """The user's reservations (an admin's: everyone's), by start time."""
    r = services.registry.r
    key = (d.ALL_RESERVATIONS_KEY if user in services.settings.admins
           else d.USER_RESERVATIONS_KEY.format(user=user))
    out = []
    for res_id in r.zrange(key, 0, -1):
        rec = _load(r, res_id)
        if rec is not None:
            out.append(rec)
    return out


def cancel_reservation(services: Services, user: str, ref: Any) -> dict[str, Any]:
    """Cancel a reservation that has not ended; its waiting jobs end, the device is freed."""
    from qhybrid.errors import Conflict

    rec = get_reservation(services, user, ref)
    state = reservation_state(rec)
    if state == CANCELED:
        return rec
    if state == "ENDED":
        raise Conflict("the reservation has already ended", field="reservation_arn")
    r = services.registry.r
    r.hset(d.RESERVATION_KEY.format(res_id=rec["id"]),
           mapping={"status": CANCELED, "canceled": repr(time.time())})
    _end_jobs_of_closed_windows(services.registry, rec["device"], time.time())
    granted = release(r, rec["device"], "")
    if granted:
        dispatch(services.registry, granted)
    return _load(r, rec["id"]) or rec


def open_reservation(r: Any, device: str, now: float | None = None) -> dict[str, Any] | None:
    """The reservation whose window is open on the device now, if any."""
    now = time.time() if now is None else now
    key = d.DEVICE_RESERVATIONS_KEY.format(device=device)
    for res_id in r.zrevrangebyscore(key, now, "-inf", start=0, num=8):
        rec = _load(r, res_id)
        if rec and rec.get("status") != CANCELED and float(rec["end"]) > now:
            return rec
    return None


def for_job(r: Any, user: str, ref: Any, device: str | None) -> dict[str, Any]:
    """Check a job's reservation_arn at submission: the user's, not ended, its device."""
    from qhybrid.errors import Conflict, InvalidInput, NotFound

    res_id = reservation_id(ref)
    rec = _load(r, res_id)
    if rec is None or rec["user"] != user:
        raise NotFound(f"you have no reservation {ref!r}", field="reservation_arn")
    state = reservation_state(rec)
    if state in ("ENDED", CANCELED):
        raise Conflict(f"reservation {ref} is {state.lower()}: a job can no longer run in it",
                       field="reservation_arn")
    if device and device != rec["device"]:
        raise InvalidInput(f"reservation {ref} is for device {rec['device']}, not {device}",
                           field="reservation_arn")
    return {**rec, "arn": RESERVATION_ARN_PREFIX + res_id}


def check_task(r: Any, device: str, user: str, job_id: str | None, ref: Any) -> None:
    """Refuse a quantum task the device's reservations keep out (Conflict), or one naming a
    reservation that is not the user's (NotFound) or not open now (Conflict)."""
    from qhybrid.errors import Conflict, NotFound

    wanted = ""
    if ref not in (None, ""):
        wanted = reservation_id(ref)
        rec = _load(r, wanted)
        if rec is None or rec["user"] != user:
            raise NotFound(f"you have no reservation {ref!r}", field="reservation_arn")
        if rec["device"] != device:
            raise Conflict(f"reservation {ref} is for device {rec['device']}, not {device}",
                           field="reservation_arn")
    elif job_id:
        wanted = r.hget(d.JOB_KEY.format(job_id=job_id), "reservation_id") or ""
    current = open_reservation(r, device)
    if current is None:
        if wanted:
            raise Conflict(f"reservation {wanted} is not open now: its tasks run inside its "
                           "window", field="reservation_arn")
        return
    if wanted != current["id"]:
        until = reservation_json(current)["end"]
        raise Conflict(f"device {device} is reserved until {until}: only the tasks of that "
                       "reservation run on it now", field="device")


def _end_jobs_of_closed_windows(registry: Registry, device: str, now: float) -> None:
    """Jobs still waiting for a reservation that ended or was canceled end in ERROR."""
    r = registry.r
    for job_id in waiting(r, device):
        res_id = r.hget(d.JOB_KEY.format(job_id=job_id), "reservation_id")
        if not res_id:
            continue
        rec = _load(r, res_id)
        state = reservation_state(rec) if rec else CANCELED
        if state in ("ENDED", CANCELED):
            registry.transition(job_id, d.ERROR, allowed=[d.QUEUED], ended=now,
                                error=f"its reservation {res_id} {state.lower()} before the "
                                "job could start", detail="reservation closed")
