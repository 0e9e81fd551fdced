"""Quantum tasks: their records in Redis, submission to a device queue, results and cancel.

A quantum task is one `backend.run(circuits)` on a device. The API and a job's supervisor
submit it here: the circuits are checked against the device at once (too wide, not in its
Target, too much memory), stored with the record, and the task is queued on its device in the
same Redis transaction (`tasks.devices.device_queue`), ahead of others when it comes from the
job that holds the device (`tasks.devices.holders`). A device worker (`tasks.devices.worker`)
runs it.

Every status change is one atomic Lua call, as for jobs: QUEUED -> RUNNING -> DONE | ERROR,
or QUEUED | RUNNING -> CANCELED. Canceling a running task (or ending its job) stops its
simulation: the device worker kills the runner process simulating it and starts a fresh one.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qhybrid.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskFailed,
    error_from_problem,
)
from storage import keys
from storage.store import ObjectStore
from tasks.core import defaults as d
from tasks.core.queues import device_queue
from tasks.core.registry import flat_record, unflat_record
from tasks.core.settings import Settings
from tasks.devices.device_queue import NORMAL, PRIORITY, enqueue, stop
from tasks.supervisor.extension import JobExtension

if TYPE_CHECKING:
    from tasks.core.registry import Registry

_TRANSITION = """
-- KEYS: task, queued (priority), queued (normal), running set, device runs, monitor counts,
--       result, circuits, ended
-- ARGV: to, allowed (csv), now, runs kept, ended TTL, monitor field, result text
--       ("": none), "1" to drop the circuits, then field/value pairs.
-- A move is counted for /metrics in the same call; a move to an end status also stores the
-- result (if any) and then pushes the status on the task's ended list, which wakes waiters.
if ARGV[8] == '1' then redis.call('DEL', KEYS[8]) end
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[3])
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local id = redis.call('HGET', KEYS[1], 'id')
if ARGV[1] ~= 'QUEUED' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
if ARGV[1] == 'RUNNING' then
  redis.call('SADD', KEYS[4], id)
  redis.call('RPUSH', KEYS[5], id)
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[4]), -1)
else
  redis.call('SREM', KEYS[4], id)
end
if ARGV[7] ~= '' then redis.call('SET', KEYS[7], ARGV[7]) end
redis.pcall('HINCRBY', KEYS[6], ARGV[6], 1)   -- counting never fails a move
if ARGV[1] == 'DONE' or ARGV[1] == 'ERROR' or ARGV[1] == 'CANCELED' then
  redis.call('RPUSH', KEYS[9], ARGV[1])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
end
return 1
"""

_FLOATS = {"created", "started", "ended", "updated", "qpu_seconds"}
_INTS = {"num_circuits", "num_qubits", "shots", "payload_bytes", "result_bytes"}

# One circuit check at a time per process: qiskit's compiled extension is not relied on to be
# safe under this process's concurrent request threads.
_QISKIT = threading.Lock()


def _is_id(task_id: str) -> bool:
    return isinstance(task_id, str) and 0 < len(task_id) <= 64 and task_id.isalnum()


def task_record(rec: dict[str, str]) -> dict[str, Any]:
    """A task record as read from its Redis hash."""
    return unflat_record(rec, _FLOATS, _INTS)


class QuantumTasks:
    """Quantum-task records over one Redis connection (strings decoded)."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self._transition = r.register_script(_TRANSITION)

    # --- records ---------------------------------------------------------------------------
    def get(self, task_id: str, user: str | None = None) -> dict[str, Any]:
        """The task record; another user's task is reported as missing."""
        rec = self.r.hgetall(d.QTASK_KEY.format(task_id=task_id)) if _is_id(task_id) else {}
        if not rec or (user is not None and rec.get("user") != user):
            raise NotFound(f"no quantum task {task_id!r}")
        return task_record(rec)

    def many(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        pipe = self.r.pipeline()
        for task_id in ids:
            pipe.hgetall(d.QTASK_KEY.format(task_id=task_id))
        return [task_record(rec) for rec in pipe.execute() if rec]

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        """The job's quantum tasks, oldest first."""
        return self.many(self.r.zrange(d.JOB_QTASKS_KEY.format(job_id=job_id), 0, -1))

    def for_user(self, user: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the user's quantum tasks, newest first, and how many there are."""
        key = d.USER_QTASKS_KEY.format(user=user)
        ids = self.r.zrevrange(key, offset, offset + limit - 1)
        return self.many(ids), int(self.r.zcard(key))

    def transition(self, rec: dict[str, Any], to: str, allowed: Iterable[str],
                   **fields: Any) -> bool:
        """Move the task to `to` if it stands in `allowed`; True when it moved (and waiters
        for its end were woken, if `to` ends it)."""
        return self._move(rec, to, allowed, fields)

    def _move(self, rec: dict[str, Any], to: str, allowed: Iterable[str],
              fields: dict[str, Any], result: str = "", drop_circuits: bool = False) -> bool:
        """The transition script: with `result`, that text is stored (before the move is
        published) when the task moves; with `drop_circuits`, its Redis payload is deleted."""
        from tasks.core.monitoring import QTASKS_KEY

        task_id, device = rec["id"], rec["device"]
        keys_ = [d.QTASK_KEY.format(task_id=task_id),
                 d.DEVICE_QUEUED_KEY.format(device=device, priority=PRIORITY),
                 d.DEVICE_QUEUED_KEY.format(device=device, priority=NORMAL),
                 d.RUNNING_QTASKS_KEY, d.DEVICE_RUNS_KEY.format(device=device), QTASKS_KEY,
                 d.QTASK_RESULT_KEY.format(task_id=task_id),
                 d.QTASK_CIRCUITS_KEY.format(task_id=task_id),
                 d.QTASK_ENDED_KEY.format(task_id=task_id)]
        args: list[Any] = [to, ",".join(allowed), time.time(), d.DEVICE_RUNS_KEPT,
                           d.QTASK_ENDED_TTL_S, f"{device}|{to}",
                           result, "1" if drop_circuits else ""]
        for key, value in flat_record(fields).items():
            args += [key, value]
        moved = self._transition(keys=keys_, args=args)
        if moved == -1:
            raise NotFound(f"no quantum task {task_id!r}")
        return bool(moved)

    def end_with_result(self, store: ObjectStore, rec: dict[str, Any], text: str, to: str,
                        **fields: Any) -> bool:
        """Keep a result's JSON text (Redis when small, else storage), move the task from
        RUNNING to `to` with `fields` and forget its circuits; a small result in the same
        round trip as the move, stored before the move is published. True when it moved."""
        size = len(text.encode())
        inline = size <= d.QTASK_INLINE_BYTES
        fields = {**fields, "result_in": "redis" if inline else "storage", "result_bytes": size}
        if not inline:
            store.put_bytes(keys.quantum_task_result(rec["user"], rec["id"]), text.encode())
        moved = self._move(rec, to, [d.RUNNING], fields, result=text if inline else "",
                           drop_circuits=True)
        if rec.get("circuits_in") == "storage":
            store.delete(keys.quantum_task_circuits(rec["user"], rec["id"]))
        return moved

    def run_order(self, device: str) -> list[str]:
        """Task ids in the order device workers started them (the newest DEVICE_RUNS_KEPT)."""
        return list(self.r.lrange(d.DEVICE_RUNS_KEY.format(device=device), 0, -1))

    def queue_depth(self, device: str) -> dict[str, int]:
        pipe = self.r.pipeline()
        for priority in (PRIORITY, NORMAL):
            pipe.zcard(d.DEVICE_QUEUED_KEY.format(device=device, priority=priority))
        high, normal = pipe.execute()
        return {PRIORITY: int(high), NORMAL: int(normal)}

    # --- payloads and results ---------------------------------------------------------------
    def circuits(self, store: ObjectStore, rec: dict[str, Any],
                 inline: str | None = None) -> str:
        """The task's QPY payload, from Redis or storage (`inline`: as read with the record)."""
        if rec.get("circuits_in") == "storage":
            return store.get_bytes(keys.quantum_task_circuits(rec["user"], rec["id"])).decode()
        text = inline if inline is not None else self.r.get(
            d.QTASK_CIRCUITS_KEY.format(task_id=rec["id"]))
        if text is None:
            raise NotFound(f"quantum task {rec['id']} has no circuits any more")
        return str(text)

    def drop_circuits(self, store: ObjectStore, rec: dict[str, Any]) -> None:
        """Forget the payload once the task ran or was canceled."""
        self.r.delete(d.QTASK_CIRCUITS_KEY.format(task_id=rec["id"]))
        if rec.get("circuits_in") == "storage":
            store.delete(keys.quantum_task_circuits(rec["user"], rec["id"]))

    def result_text(self, store: ObjectStore, rec: dict[str, Any],
                    inline: str | None = None) -> str | None:
        """The result JSON text of an ended task; None while it is queued or running
        (`inline`: the result kept in Redis, as read with the record).

        A task that failed before simulating raises its error; a canceled one, Conflict. A
        simulation that failed has a result (success false) that the client raises from.
        """
        status = rec["status"]
        if status in (d.QUEUED, d.RUNNING):
            return None
        if status == d.CANCELED:
            raise Conflict(f"quantum task {rec['id']} was canceled", task_id=rec["id"],
                           state=status)
        where = rec.get("result_in")
        if where == "storage":
            return store.get_bytes(keys.quantum_task_result(rec["user"], rec["id"])).decode()
        if where == "redis":
            text = inline if inline is not None else self.r.get(
                d.QTASK_RESULT_KEY.format(task_id=rec["id"]))
            if text is not None:
                return str(text)
        problem = rec.get("error") or {}
        if isinstance(problem, dict) and problem.get("type"):
            raise error_from_problem(problem, int(problem.get("status") or 500))
        raise TaskFailed(f"quantum task {rec['id']} ended {status} without a result")

    def _get_with_result(self, task_id: str,
                         user: str | None) -> tuple[dict[str, Any], str | None]:
        """The task record and its result when kept in Redis, in one round trip."""
        if not _is_id(task_id):
            raise NotFound(f"no quantum task {task_id!r}")
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(d.QTASK_KEY.format(task_id=task_id))
        pipe.get(d.QTASK_RESULT_KEY.format(task_id=task_id))
        rec, text = pipe.execute()
        if not rec or (user is not None and rec.get("user") != user):
            raise NotFound(f"no quantum task {task_id!r}")
        return task_record(rec), text

    def wait_for(self, task_id: str, user: str | None, timeout: float) -> dict[str, Any]:
        """Block until the task ended or `timeout` passes; the task record."""
        return self.wait_for_result(store=None, task_id=task_id, user=user, timeout=timeout)[0]

    def wait_for_result(self, store: ObjectStore | None, task_id: str, user: str | None,
                        timeout: float) -> tuple[dict[str, Any], str | None]:
        """Block until the task ended or `timeout` passes; the task record and, with `store`,
        its result text as `result_text` gives it (None while it has not ended)."""
        rec, inline = self._get_with_result(task_id, user)
        deadline = time.monotonic() + timeout
        ended = d.QTASK_ENDED_KEY.format(task_id=task_id)
        while rec["status"] not in d.TERMINAL_STATUSES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # a blocking wait on a pooled connection: moving the ended list's one item onto
            # itself leaves it there for every other waiter (no subscription to set up)
            self.r.brpoplpush(ended, ended, max(0.01, min(remaining, 5.0)))
            rec, inline = self._get_with_result(task_id, user)
        return rec, None if store is None else self.result_text(store, rec, inline)

    # --- cancel ------------------------------------------------------------------------------
    def cancel(self, store: ObjectStore, task_id: str, user: str | None) -> dict[str, Any]:
        """A queued task never runs; a running one is stopped; an ended one answers Conflict."""
        rec = self.get(task_id, user)
        if self.transition(rec, d.CANCELED, [d.QUEUED, d.RUNNING], ended=time.time()):
            stop(self.r, [task_id])     # if a runner took it meanwhile, it is stopped
            self.drop_circuits(store, rec)
            return self.get(task_id)
        rec = self.get(task_id)
        if rec["status"] == d.CANCELED:
            return rec
        raise Conflict(f"quantum task {task_id} is {rec['status']}; it has ended",
                       task_id=task_id, state=rec["status"])

    def cancel_queued_for_job(self, store: ObjectStore | None, job_id: str) -> list[str]:
        """Cancel the job's quantum tasks that have not ended (the job ended); running ones
        are stopped."""
        canceled, running = [], []
        for rec in self.for_job(job_id):
            if rec["status"] in (d.QUEUED, d.RUNNING) and self.transition(
                    rec, d.CANCELED, [d.QUEUED, d.RUNNING], ended=time.time(),
                    error=Conflict("its job ended before it finished").to_problem()):
                canceled.append(rec["id"])
                if rec["status"] == d.RUNNING:
                    running.append(rec["id"])
                self.r.delete(d.QTASK_CIRCUITS_KEY.format(task_id=rec["id"]))
                if store is not None and rec.get("circuits_in") == "storage":
                    store.delete(keys.quantum_task_circuits(rec["user"], rec["id"]))
        if running:
            stop(self.r, running)
        return canceled


# --- submission ----------------------------------------------------------------------------


def check_payload(circuits: Any) -> str:
    """The circuits field: QPY text (`qhybrid.codec.encode_circuits`) of bounded size."""
    if not isinstance(circuits, str) or not circuits:
        raise InvalidInput("circuits must be QPY data as text (qhybrid.codec.encode_circuits)",
                           field="circuits")
    if len(circuits) > d.MAX_QTASK_CIRCUITS_BYTES:
        raise PayloadTooLarge(f"circuits are larger than {d.MAX_QTASK_CIRCUITS_BYTES} bytes",
                              field="circuits")
    return circuits


def submit(r: Any, store: ObjectStore, settings: Settings, *, user: str,
           device: Any, circuits: Any, options: Any, job_id: str | None = None,
           check_circuits_here: bool = True, reservation_arn: Any = None, stage: str = "",
           live_queues: Callable[[], dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """Check a quantum task completely, record it QUEUED and queue it on its device.

    `check_circuits_here=False` leaves decoding and checking the circuits to the device worker
    (which refuses bad ones with the reason): job workers load no qiskit at all. Circuits
    checked here are recorded as such, and the device worker does not check them again.
    `stage` is the job's stage the task's device time is charged to (QPU_TIME).

    Tasks of the job that holds the device are queued ahead of others. A GPU device
    that no live device worker serves is refused (`live_queues`: the registry's
    workers_by_queue).
    """
    from backends.registry import MAX_SHOTS
    from qhybrid.run_options import validate_run_options
    from tasks.devices.catalog import device_spec
    from tasks.devices.line import holder
    from tasks.devices.reservations import check_task

    spec = device_spec(settings, device)
    check_task(r, spec.name, user, job_id, reservation_arn)   # a reserved device refuses others
    if spec.device != "CPU" and live_queues is not None and not live_queues().get(
            device_queue(spec.name)):
        raise ServiceUnavailable(
            f"device {spec.name} simulates on an NVIDIA GPU and no device worker with one is "
            "online: start `python -m tasks.devices --devices "
            f"{spec.name}` on a host with an NVIDIA GPU and qiskit-aer-gpu", field="device")
    payload = check_payload(circuits)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidInput("options must be an object", field="options")
    run_options = validate_run_options(options)
    if run_options["shots"] > MAX_SHOTS:
        raise InvalidInput(f"shots must be at most {MAX_SHOTS}", field="shots")
    if check_circuits_here:
        from backends.execute import check_circuits  # qiskit: only where circuits are checked
        from qhybrid.codec import decode_circuits

        with _QISKIT:
            batch = decode_circuits(payload)
            check_circuits(spec, batch)

    priority = PRIORITY if job_id and holder(r, spec.name) == job_id else NORMAL
    task_id = uuid.uuid4().hex
    created = time.time()
    inline = len(payload) <= d.QTASK_INLINE_BYTES
    record = {"id": task_id, "user": user, "device": spec.name, "job_id": job_id or "",
              "status": d.QUEUED, "priority": priority, "created": created, "updated": created,
              "options": run_options, "shots": run_options["shots"],
              # known here only when the circuits were decoded (null from inside a job)
              "num_circuits": len(batch) if check_circuits_here else None,
              "num_qubits": max(c.num_qubits for c in batch) if check_circuits_here else None,
              "payload_bytes": len(payload), "circuits_in": "redis" if inline else "storage",
              "checked": "1" if check_circuits_here else "", "stage": stage}
    if not inline:
        store.put_bytes(keys.quantum_task_circuits(user, task_id), payload.encode())
    pipe = r.pipeline()
    pipe.hset(d.QTASK_KEY.format(task_id=task_id), mapping=flat_record(record))
    if inline:
        pipe.set(d.QTASK_CIRCUITS_KEY.format(task_id=task_id), payload)
    pipe.zadd(d.USER_QTASKS_KEY.format(user=user), {task_id: created})
    if job_id:
        pipe.zadd(d.JOB_QTASKS_KEY.format(job_id=job_id), {task_id: created})
    enqueue(pipe, spec.name, priority, task_id, created)    # recorded and queued at once
    if job_id:
        pipe.hget(d.JOB_KEY.format(job_id=job_id), "status")
    replies = pipe.execute()
    if job_id and replies[-1] in d.TERMINAL_STATUSES:
        tasks = QuantumTasks(r)
        tasks.cancel_queued_for_job(store, job_id)  # the job ended while this was submitted
        return tasks.get(task_id)
    return task_record(flat_record(record))   # as recorded: no second read


# --- what a job's user code may ask its supervisor ------------------------------------------


class DevicesExtension(JobExtension):
    """The operations behind `qhybrid.get_backend()` inside a job."""

    def ops(self) -> dict[str, Callable[..., Any]]:
        sup = self.sup
        return device_ops(sup.registry, lambda: sup.store, lambda: sup.settings, sup.job,
                          stage=lambda: sup.usage.stage)


def device_ops(registry: Registry, store: Callable[[], ObjectStore], settings: Callable[[], Settings],
               job: dict[str, Any], stage: Callable[[], str]) -> dict[str, Callable[..., Any]]:
    """The channel operations behind `qhybrid.get_backend()` for code of `job`: its main code
    (the supervisor) or one of its distributed tasks (the task worker).

    User code holds no credentials: these submit and read tasks as the job's user, and only
    that user's tasks are visible. Device time is charged to `stage()` of the job.
    """
    user: str = job["user"]
    job_id: str = job["id"]
    r = registry.r
    tasks = QuantumTasks(r)

    def device_info(name: str | None = None) -> dict[str, Any]:
        from backends import describe
        from tasks.devices.catalog import device_spec

        name = name or job.get("device")
        if not name:
            raise InvalidInput("name a device: this job has none", field="name")
        # without Aer's operation list: this process loads no qiskit; user code adds it
        return describe(device_spec(settings(), name), operations=False)

    def qtask_submit(device: str, circuits: str, options: dict[str, Any]) -> str:
        # user code's QhybridBackend.run() already checked the circuits against the device's
        # Target, and the device worker checks them again: the job worker does not load qiskit
        # (its compiled extension has crashed a long-running worker process)
        rec = submit(r, store(), settings(), user=user, device=device,
                     circuits=circuits, options=options, job_id=job_id,
                     check_circuits_here=False, stage=stage(),
                     live_queues=registry.workers_by_queue)
        return str(rec["id"])

    def qtask_status(task_id: str) -> str:
        return str(tasks.get(task_id, user)["status"])

    def qtask_result(task_id: str, timeout: float | None = None) -> dict[str, Any]:
        wait = d.CHANNEL_RESULT_WAIT_S if timeout is None else min(float(timeout),
                                                                   d.CHANNEL_RESULT_WAIT_S)
        rec, text = tasks.wait_for_result(store(), task_id, user, max(0.0, wait))
        return {"done": False} if text is None else {"done": True, "result": json.loads(text)}

    def qtask_cancel(task_id: str) -> str:
        return str(tasks.cancel(store(), task_id, user)["status"])

    return {"device_info": device_info, "qtask_submit": qtask_submit,
            "qtask_status": qtask_status, "qtask_result": qtask_result,
            "qtask_cancel": qtask_cancel}


__all__ = ["NORMAL", "PRIORITY", "DevicesExtension", "QuantumTasks", "check_payload", "device_ops",
           "submit", "task_record"]
