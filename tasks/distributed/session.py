"""The distributed-task operations of one caller (`TaskSession`): a job's main code, or a
running task for nested calls.

User code calls `distribute_task` functions; the caller's supervisor receives batches over the
local channel, stores the pickled function once per job and each call's pickled arguments,
writes one record per task and sends ONE Celery group per batch whose messages carry only task
ids (each message a chunk of them; any worker of the class claims from the job's ready list,
see tasks.distributed.runner). `map_reduce` becomes one chord: map tasks as the header, the reduce as the body, which a
worker runs once the last map task ended, whoever waits for it (flat canvases: a group, or a
chord of plain tasks, never nested).

Longer than 500 lines: it is one class, `TaskSession`, whose submit, collect, put and wait
share one inbox and one set of fields; halves of it would reach into each other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qhybrid.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from qhybrid.resources import pick_class
from tasks.core import defaults as d
from tasks.core.queues import REDUCE_TASK, RUN_MAP_TASK, RUN_TASK, RUN_TASKS, tasks_queue
from tasks.distributed.records import (
    DIGEST,
    KINDS,
    MAP,
    REDUCE,
    TASK,
    TERMINAL,
    TaskEnv,
    celery_app,
    check_id,
    settings_from_env,
    task_key,
    timestamp,
    waiting_for,
)
from tasks.sandbox.isolation import job_account

if TYPE_CHECKING:
    pass

log = logging.getLogger("qhybrid.tasks")


MAX_REPLY_BYTES = 64 * 1024**2     # values sent back by one collect call (the rest: next call)
WAIT_NOTE_S = 3.0                  # a waiting caller is told why tasks wait this often at most
SESSION_OPS = ("tasks_hello", "tasks_target", "tasks_submit", "tasks_collect", "tasks_put",
               "tasks_fetch_object")
TASK_OPS = (*SESSION_OPS, "update_status", "save_result", "job_info",   # inside a task
            # qhybrid.get_backend() (tasks.devices.quantum_tasks.device_ops)
            "device_info", "qtask_submit", "qtask_status", "qtask_result", "qtask_cancel")
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
            from tasks.devices.quantum_tasks import device_ops

            self._ops.update({"update_status": self.op_task_status,
                              "save_result": self.op_task_result, "job_info": self.op_job_info})
            # get_backend() inside a task: quantum tasks as the job's user, charged to the
            # stage its caller was in
            self._ops.update(device_ops(env.registry, lambda: env.store, settings_from_env, job, stage))

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
            if not isinstance(digest, str) or not DIGEST.match(digest):
                raise InvalidInput("a function digest is 40 hex digits", field="functions")
            if digest in self.known_fns:
                continue
            blob = self._blob_in(enc, "functions")
            if hashlib.sha1(blob).hexdigest() != digest:
                raise InvalidInput("a function's bytes do not match its digest", field="functions")
            self.env.blobs.put(d.JOB_FUNCTION_KEY.format(job_id=self.job_id, digest=digest),
                               self.prefix, f"fn-{digest}", blob, nx=True,
                               index=d.JOB_BLOBS_KEY.format(job_id=self.job_id))
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
        ids = [check_id(i, "ids") for i in ids]
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
        ref = check_id(ref, "ref")
        self._check_running()
        blob = self._blob_in({"data": data} if data is not None else {"path": path}, "data")
        self.env.blobs.put(d.JOB_OBJECT_KEY.format(job_id=self.job_id, ref=ref), self.prefix,
                           f"obj-{ref}", blob, nx=True,
                           index=d.JOB_BLOBS_KEY.format(job_id=self.job_id))
        return True

    def op_fetch_object(self, ref: Any) -> dict[str, str]:
        ref = check_id(ref, "ref")
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
        if not isinstance(fn, str) or not DIGEST.match(fn):
            raise InvalidInput(f"{where}.fn is a function digest", field=f"{where}.fn")
        name = str(t.get("name") or "task")[:200]
        entry: dict[str, Any] = {"id": check_id(t.get("id"), f"{where}.id"), "kind": kind,
                                 "class": cls, "fn": fn, "name": name}
        if kind == REDUCE:
            maps = t.get("maps")
            if not isinstance(maps, list) or not maps:
                raise InvalidInput(f"{where}.maps lists the map tasks", field=f"{where}.maps")
            entry["maps"] = [check_id(m, f"{where}.maps") for m in maps]
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
        # ids that exist already: _write refuses the batch (in the same call that writes it)

    def _write(self, entries: list[dict[str, Any]], batch: str) -> None:
        """The batch's records, arguments, index entries and ready lists, in one call."""
        r = self.env.registry.r
        seq = int(r.incrby(d.JOB_TASK_SEQ_KEY.format(job_id=self.job_id), len(entries))) \
            - len(entries)
        common = {
            "job": self.job_id, "attempt": self.attempt, "owner": self.owner,
            "parent": self.parent_task, "status": d.QUEUED, "created": str(timestamp()),
            "stage": self.stage(), "inbox": self.inbox,
            "job_key": d.JOB_KEY.format(job_id=self.job_id),
            "queued_key": d.JOB_QUEUED_TASKS_KEY.format(job_id=self.job_id),
            "usage_key": d.JOB_USAGE_KEY.format(job_id=self.job_id),
        }
        tasks: list[dict[str, Any]] = []
        payloads: list[bytes] = []
        queued: dict[str, int] = {}
        for e in entries:
            seq += 1
            fields = {
                "id": e["id"], "kind": e["kind"], "name": e["name"], "fn": e["fn"],
                "class": e["class"], "queue": tasks_queue(e["class"]), "seq": str(seq),
                "chord": e.get("chord", ""),
                # the Celery group it was sent in; for map_reduce, the chord (its reduce's id)
                "group": batch if e["kind"] == TASK else (e.get("chord") or e["id"]),
            }
            if e["kind"] == TASK:       # any worker of the class takes it from the job's list
                fields["ready_key"] = d.JOB_READY_TASKS_KEY.format(job_id=self.job_id,
                                                                   cls=e["class"])
            if e["kind"] == REDUCE:
                fields["maps"] = json.dumps(e["maps"])
                payloads.append(b"")
            else:
                payloads.append(self.env.blobs.value(self.prefix, f"args-{e['id']}", e["args"]))
            tasks.append({"key": task_key(e["id"]), "id": e["id"], "seq": seq, "fields": fields})
            queued[e["class"]] = queued.get(e["class"], 0) + 1
        ready = {d.JOB_READY_TASKS_KEY.format(job_id=self.job_id, cls=cls): [task_key(i) for i in ids]
                 for cls, ids in _plain_by_class(entries).items()}
        written = self.env.tasks.add_many(
            {"common": common, "tasks": tasks, "index": d.JOB_TASKS_KEY.format(job_id=self.job_id),
             "queued_key": d.JOB_QUEUED_TASKS_KEY.format(job_id=self.job_id), "queued": queued,
             "ready": ready}, payloads)
        if not written:
            raise Conflict("a task with one of these ids exists already")
        self.owned.update(e["id"] for e in entries)

    def _send(self, entries: list[dict[str, Any]], batch: str) -> None:
        """One Celery group for the plain calls; one chord per map_reduce. Ids only.

        A message per tiny task would cost more than the task: the group's messages each name
        a chunk of the plain calls, and a worker that takes one also claims, a few at a time,
        whatever of the job waits in the class's ready list, so the first workers to wake
        share the whole batch and the other messages find their tasks taken.
        """
        from celery import chord, group

        app = celery_app()

        def sig(name: str, e: dict[str, Any]) -> Any:
            return app.signature(name, args=[e["id"]], queue=tasks_queue(e["class"]),
                                 task_id=e["id"], immutable=True)

        plain = []
        for cls, ids in _plain_by_class(entries).items():
            messages = min(len(ids), max(-(-len(ids) // d.TASK_MESSAGE_IDS), d.TASK_MESSAGES_MIN))
            size = -(-len(ids) // messages)
            # the message is named after its first task: revoking canceled tasks drops it
            plain += [app.signature(RUN_TASKS, args=[ids[i:i + size]], queue=tasks_queue(cls),
                                    task_id=ids[i], immutable=True)
                      for i in range(0, len(ids), size)]
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
                cls, kind = self.env.tasks.fields([task_id], "class", "kind")[0]
                name = RUN_MAP_TASK if kind == MAP else RUN_TASK
                celery_app().send_task(name, args=[task_id], queue=tasks_queue(cls or ""))
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
                celery_app().send_task(name, args=[task_id], queue=tasks_queue(cls))
            log.warning("%d queued tasks of %s lost their message; sent again", len(items),
                        self.job_id)

    def _kick_reduce(self, task_id: str, maps: list[str], cls: str) -> None:
        """A reduce whose maps all ended but whose chord never fired (a lost map message, or a
        map run again after its worker was lost); its maps' own losses are mended first, as
        the caller waits on the reduce alone."""
        rows = self.env.tasks.fields(maps, "status", "run", "class")
        pending = [(m, st, run, c) for m, (st, run, c) in zip(maps, rows, strict=True)
                   if st not in TERMINAL]
        if pending:
            self._kick_seen.pop(task_id, None)
            self._rescue([(m, run) for m, st, run, _ in pending if st == d.RUNNING and run])
            self._resend_lost([(m, MAP, c or "") for m, st, _, c in pending if st == d.QUEUED])
            return
        first = self._kick_seen.setdefault(task_id, time.monotonic())
        if time.monotonic() - first >= 5 * d.TASK_RECONCILE_S:
            self._kick_seen[task_id] = time.monotonic()
            celery_app().send_task(REDUCE_TASK, args=[task_id], queue=tasks_queue(cls))

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


def _plain_by_class(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The ids of a batch's plain calls (not map_reduce), by resource class, in call order."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if e["kind"] == TASK:
            out.setdefault(e["class"], []).append(e["id"])
    return out


# --- a job's side: its supervisor's operations and the end of its tasks --------------------
