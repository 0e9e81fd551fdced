"""A device's line: who holds it and who waits, in Redis (tasks.devices.holders moves it).

Holding and handing over are each one atomic Lua call; while a reservation's window is open
only that reservation's jobs are given the device.
"""

from __future__ import annotations

import time
from typing import Any

from tasks.core import defaults as d
from tasks.devices import reservations

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
    current = reservations.open_reservation(r, device)
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
