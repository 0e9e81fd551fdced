"""A device's queue of quantum tasks in Redis, and how a device worker's runner takes one.

Queued tasks wait in two sorted sets per device, oldest first (`DEVICE_QUEUED_KEY`): those of
the job holding the device (`PRIORITY`) before all others (`NORMAL`). Queuing a task also
pushes a token on the device's wake list, on which idle runners block (BLPOP): no Celery
message, prefetch or acknowledgement stands between a submission and the simulation.

Taking a task is one Lua call: it pops the next task still QUEUED, moves it to RUNNING with the
worker's and the runner's names, and notes it under the runner's taken key, so a task is always
either queued or running in a named runner, never in between. What a runner that dies leaves
behind, its worker settles (`requeue`, or ERROR: tasks.devices.worker); a worker that dies
with its runners is noticed by the housekeeping's repair (tasks.devices.holders). A canceled
running task is stopped through its worker's stop list (`stop`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tasks.core import defaults as d

#: The two priorities a task is queued with, as the API names them.
PRIORITY = "priority"
NORMAL = "normal"

# KEYS: running set, monitor counts, runner's taken key, then per device: priority zset,
#       normal zset, wake list, runs list
# ARGV: task key prefix, circuits key prefix, now, runs kept, worker, runner, then the
#       device names in the order of their keys
# Returns {task id, the record's HGETALL, circuits or false} or false when every queue is empty.
# Wake tokens are left while tasks wait (a woken runner finds one); an empty queue drops them.
_TAKE = """
local ndev = (#KEYS - 3) / 4
for i = 0, ndev - 1 do
  local base = 4 + 4 * i
  local device = ARGV[7 + i]
  for z = base, base + 1 do
    while true do
      local popped = redis.call('ZPOPMIN', KEYS[z])
      if #popped == 0 then break end
      local id = popped[1]
      local key = ARGV[1] .. id
      if redis.call('HGET', key, 'status') == 'QUEUED' then
        redis.call('HSET', key, 'status', 'RUNNING', 'updated', ARGV[3], 'started', ARGV[3],
                   'worker', ARGV[5], 'runner', ARGV[6])
        redis.call('SADD', KEYS[1], id)
        redis.call('RPUSH', KEYS[base + 3], id)
        redis.call('LTRIM', KEYS[base + 3], -tonumber(ARGV[4]), -1)
        redis.call('SET', KEYS[3], id)
        if redis.call('ZCARD', KEYS[base]) + redis.call('ZCARD', KEYS[base + 1]) == 0 then
          redis.call('DEL', KEYS[base + 2])     -- no stale tokens once the queue is empty
        end
        redis.pcall('HINCRBY', KEYS[2], device .. '|RUNNING', 1)
        return {id, redis.call('HGETALL', key), redis.call('GET', ARGV[2] .. id .. ':circuits')}
      end
    end
  end
  redis.call('DEL', KEYS[base + 2])
end
return false
"""

# Put a RUNNING task its runner did not finish back at its place in its queue, if that runner
# still holds it. KEYS: task, its queued zset, wake list, running set, monitor counts
# ARGV: runner, now, monitor field
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'RUNNING' then return 0 end
if redis.call('HGET', KEYS[1], 'runner') ~= ARGV[1] then return 0 end
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('HSET', KEYS[1], 'status', 'QUEUED', 'updated', ARGV[2], 'started', '', 'worker', '',
           'runner', '')
redis.call('SREM', KEYS[4], id)
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'created'), id)
redis.call('RPUSH', KEYS[3], '1')
redis.pcall('HINCRBY', KEYS[5], ARGV[3], 1)
return 1
"""


def queued_key(device: str, priority: str) -> str:
    return d.DEVICE_QUEUED_KEY.format(device=device, priority=priority)


def enqueue(pipe: Any, device: str, priority: str, task_id: str, created: float) -> None:
    """Queue a task (its record already written) in `pipe`, a MULTI pipeline, and wake a
    runner."""
    pipe.zadd(queued_key(device, priority), {task_id: created})
    pipe.rpush(d.DEVICE_WAKE_KEY.format(device=device), "1")


class DeviceQueue:
    """The queues of the devices one runner serves, over one Redis connection (strings
    decoded). A runner waits for a wake token (`wait`), then takes from that device (`take`);
    after a wait that timed out it looks at every device, in case a token went missing."""

    def __init__(self, r: Any, devices: Sequence[str], worker: str, runner: str) -> None:
        from tasks.core.monitoring import QTASKS_KEY

        self.r = r
        self.devices = list(devices)
        self.worker = worker
        self.runner = runner
        self._take = r.register_script(_TAKE)
        self._head = [d.RUNNING_QTASKS_KEY, QTASKS_KEY, taken_key(runner)]
        self._keys = {name: [queued_key(name, PRIORITY), queued_key(name, NORMAL),
                             d.DEVICE_WAKE_KEY.format(device=name),
                             d.DEVICE_RUNS_KEY.format(device=name)] for name in self.devices}
        self._wake = {d.DEVICE_WAKE_KEY.format(device=name): name for name in self.devices}
        self._turn = 0

    def take(self, device: str | None = None) -> tuple[dict[str, str], str | None] | None:
        """The next task of `device` (None: of any device), its flat record now RUNNING here
        and its payload when kept in Redis; None when there is none."""
        import time

        order = [device] if device is not None else self.devices
        keys = list(self._head)
        for name in order:
            keys += self._keys[name]
        got = self._take(keys=keys, args=[d.QTASK_KEY.format(task_id=""),
                                          d.QTASK_KEY.format(task_id=""), repr(time.time()),
                                          d.DEVICE_RUNS_KEPT, self.worker, self.runner, *order])
        if not got:
            return None
        _, flat, payload = got
        return dict(zip(flat[::2], flat[1::2], strict=True)), payload

    def wait(self, timeout: float) -> str | None:
        """The device a task may have been queued on (its wake token), or None after
        `timeout`. Devices take turns to be looked at first, so that none waits behind a
        busy one."""
        names = list(self._wake)
        self._turn = (self._turn + 1) % len(names)
        got = self.r.blpop(names[self._turn:] + names[:self._turn], timeout=max(0.01, timeout))
        return self._wake[got[0]] if got else None


def taken_key(runner: str) -> str:
    return d.RUNNER_TAKEN_KEY.format(runner=runner)


def requeue(r: Any, rec: dict[str, Any], runner: str) -> bool:
    """Put a task that `runner` took and did not finish back in its queue, at its place; False
    when it moved on meanwhile (ended, canceled, or another runner's)."""
    import time

    from tasks.core.monitoring import QTASKS_KEY

    device = rec["device"]
    keys = [d.QTASK_KEY.format(task_id=rec["id"]),
            queued_key(device, rec.get("priority") or NORMAL),
            d.DEVICE_WAKE_KEY.format(device=device), d.RUNNING_QTASKS_KEY, QTASKS_KEY]
    return bool(r.register_script(_REQUEUE)(keys=keys, args=[runner, repr(time.time()),
                                                             f"{device}|{d.QUEUED}"]))


def stop(r: Any, task_ids: Iterable[str]) -> None:
    """Ask the device workers running these tasks (already CANCELED) to stop them: each
    worker kills the runner simulating one, and starts a fresh runner."""
    ids = list(task_ids)
    if not ids:
        return
    pipe = r.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(d.QTASK_KEY.format(task_id=task_id), "worker")
    workers = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for task_id, worker in zip(ids, workers, strict=True):
        if worker:
            key = d.DEVICE_WORKER_STOP_KEY.format(worker=worker)
            pipe.rpush(key, task_id)
            pipe.expire(key, d.DEVICE_STOP_TTL_S)
    pipe.execute()


__all__ = ["NORMAL", "PRIORITY", "DeviceQueue", "enqueue", "queued_key", "requeue", "stop",
           "taken_key"]
