"""Device reservations (Braket's `reservation_arn`).

A user, or an admin for a user, reserves a device for a time window; windows of one device
never overlap. Inside its window only the jobs that carry the reservation are given the device
(tasks.devices.holders), and only their quantum tasks (and the owner's tasks that name it) are
accepted on it. A job with a reservation waits QUEUED until its window opens, and ends in
ERROR if the window closes (or is canceled) first; a quantum task naming a reservation outside
its window is refused. A job holding the device without the reservation when a window opens
is stopped (it ends in ERROR saying so; tasks.devices.holders.repair, within seconds), so the
reservation's jobs get the device.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tasks.core import defaults as d

if TYPE_CHECKING:

    from tasks.core.services import Services

log = logging.getLogger("qhybrid.reservations")

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


def load(r: Any, res_id: str) -> dict[str, Any] | None:
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
    from tasks.devices.catalog import device_spec

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
        taken = load(r, str(other)) or {}
        raise Conflict(f"device {spec.name} is reserved from {reservation_json(taken)['start']} "
                       f"to {reservation_json(taken)['end']}; choose a window that does not "
                       "overlap it", field="start")
    return record


def get_reservation(services: Services, user: str, ref: Any) -> dict[str, Any]:
    """A reservation of the user's (an admin sees every one); NotFound otherwise."""
    from qhybrid.errors import NotFound

    res_id = reservation_id(ref)
    rec = load(services.registry.r, res_id)
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
        rec = load(r, res_id)
        if rec is not None:
            out.append(rec)
    return out


def open_reservation(r: Any, device: str, now: float | None = None) -> dict[str, Any] | None:
    """The reservation whose window is open on the device now, if any."""
    now = time.time() if now is None else now
    key = d.DEVICE_RESERVATIONS_KEY.format(device=device)
    for res_id in r.zrevrangebyscore(key, now, "-inf", start=0, num=8):
        rec = load(r, res_id)
        if rec and rec.get("status") != CANCELED and float(rec["end"]) > now:
            return rec
    return None


def for_job(r: Any, user: str, ref: Any, device: str | None) -> dict[str, Any]:
    """Check a job's reservation_arn at submission: the user's, not ended, its device."""
    from qhybrid.errors import Conflict, InvalidInput, NotFound

    res_id = reservation_id(ref)
    rec = load(r, res_id)
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
        rec = load(r, wanted)
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
