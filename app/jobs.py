"""What the API and the pages both do: store programs, submit and cancel jobs, read outputs.

Everything is validated before anything is written, so bad input changes nothing.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from celery import Celery

from app.params import iso
from qhybrid import codec
from qhybrid.errors import (
    Conflict,
    InvalidInput,
    JobCanceled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from qhybrid.resources import pick_class
from storage import keys
from storage.tarsafe import is_tar, safe_extract
from tasks.core import defaults as d
from tasks.core.queues import jobs_queue
from tasks.core.registry import display_status, flat_record, unflat_record
from tasks.core.services import Services
from tasks.devices import reservations
from tasks.devices.catalog import device_spec
from tasks.devices.holders import start_job
from tasks.devices.line import queue_position
from tasks.sandbox import dependencies as requirements

# Qiskit Serverless' status names, for filters in either vocabulary
OUR_STATUS = {"SUCCEEDED": d.DONE, "FAILED": d.ERROR, "STOPPED": d.CANCELED,
              "PENDING": d.INITIALIZING, "STOPPING": d.CANCELING}


def our_status(status: str) -> str:
    """A status filter in either vocabulary, as ours (`SUCCEEDED` -> `DONE`)."""
    return OUR_STATUS.get(status, status)


@dataclass
class JobQuery:
    """The filters and page of a job list, as both APIs take them."""

    status: str | None
    created_after: float | None
    limit: int
    offset: int


def job_query(args: Mapping[str, str], *, default_limit: int, min_limit: int) -> JobQuery:
    """`status` (ours or Qiskit Serverless' names, `RUNNING: <sub-status>`), `created_after`,
    `limit` and `offset` of a job list (GET /api/v1/jobs, and the Serverless GET /jobs/)."""
    from app.params import int_arg

    status = our_status(args.get("status") or "") or None
    if status and status.split(":")[0] not in d.ALL_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(d.ALL_STATUSES)} "
                           f"(or RUNNING: <sub-status>), or {', '.join(OUR_STATUS)}",
                           field="status")
    created_after = args.get("created_after")
    return JobQuery(status=status,
                    created_after=parse_time(created_after, "created_after")
                    if created_after else None,
                    limit=int_arg("limit", default_limit, min_limit, 1000),
                    offset=int_arg("offset", 0, 0, 10**9))


def parse_time(value: str, field: str) -> float:
    """An ISO 8601 time or epoch seconds."""
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise InvalidInput(f"{field} must be a finite time, got {value!r}", field=field)
        return seconds
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{value!r} is neither ISO 8601 nor epoch seconds", field=field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --- programs -----------------------------------------------------------------------------
def check_title(title: str, field: str = "title") -> str:
    if not isinstance(title, str) or not re.match(d.TITLE_PATTERN, title):
        raise InvalidInput("a title is 1-64 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit", field=field)
    return title


def check_entrypoint(entrypoint: str) -> str:
    p = Path(entrypoint or "")
    if not entrypoint or p.is_absolute() or ".." in p.parts or p.suffix != ".py":
        raise InvalidInput("entrypoint must be a relative path to a .py file inside the working "
                           "directory", field="entrypoint")
    return p.as_posix()


def save_program(svc: Services, user: str, *, title: str, entrypoint: str | None,
                 source: IO[bytes], filename: str, resources: Any = None,
                 device: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate an uploaded working directory (a tar) or single .py file, then store it.

    `extra`: further fields the caller validated (the Qiskit Serverless drop-in's
    dependencies, env_vars, description ...), kept with the program.
    """
    check_title(title)
    if resources is not None:
        pick_class(resources, svc.classes)
    if device:
        device_spec(svc.settings, device)
    limit = svc.settings.max_program_bytes
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "upload"
        size = _spool(source, upload, limit)
        head = upload.read_bytes()[:4096] if size else b""
        archive = Path(tmp) / "source.tar.gz"
        if is_tar(head):
            check_entrypoint(entrypoint or "")
            try:
                members = safe_extract(upload, Path(tmp) / "check",
                                       max_bytes=svc.settings.tar_max_bytes,
                                       max_members=svc.settings.tar_max_members)
            except tarfile.TarError as exc:
                raise InvalidInput(f"the source is not a readable tar: {exc}", field="source") from None
            except (InvalidInput, PayloadTooLarge) as exc:
                raise type(exc)(f"source: {exc.detail}", field="source") from None
            if entrypoint not in {Path(m).as_posix() for m in members}:
                raise InvalidInput(f"entrypoint {entrypoint!r} is not in the uploaded working "
                                   "directory", field="entrypoint")
            archive = upload
        elif filename.endswith(".py"):
            try:
                compile(upload.read_bytes(), filename, "exec")
            except (SyntaxError, ValueError) as exc:
                raise InvalidInput(f"{filename} is not valid Python: {exc}", field="source") from None
            name = Path(filename).name
            entrypoint = check_entrypoint(entrypoint or name)
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(upload, arcname=entrypoint)
        else:
            raise UnsupportedMediaType("source must be a tar (plain or gzip) of the working "
                                       "directory, or a single .py file", field="source")
        record = {"title": title, "entrypoint": entrypoint, "created": time.time(),
                  "resources": resources, "device": device or "", "size": size, **(extra or {})}
        svc.store.put_file(keys.program_source(user, title), archive)
    svc.registry.save_program(user, record)
    return record


def _spool(source: IO[bytes], dest: Path, limit: int) -> int:
    size = 0
    with open(dest, "wb") as out:
        while chunk := source.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the program is larger than {limit} bytes", field="source")
            out.write(chunk)
    if size == 0:
        raise InvalidInput("the uploaded source is empty", field="source")
    return size


def program_extras(svc: Services, dependencies: str | None,
                   env_vars: str | None) -> dict[str, Any]:
    """A program's `dependencies` (a JSON list of requirement strings, installed for its jobs)
    and `env_vars` (a JSON object of strings), checked; the fields save_program keeps."""
    out: dict[str, Any] = {}
    if dependencies:
        try:
            deps = json.loads(dependencies)
        except ValueError:
            raise InvalidInput("dependencies is a JSON list of requirement strings",
                               field="dependencies") from None
        out["dependencies"] = requirements.accepted(deps, svc.settings)
    if env_vars:
        try:
            env = json.loads(env_vars)
        except ValueError:
            env = None
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", k)
                and isinstance(v, str) for k, v in env.items()):
            raise InvalidInput("env_vars is a JSON object of variable names to string values",
                               field="env_vars")
        out["env_vars"] = env
    return out


def program_json(rec: dict[str, Any]) -> dict[str, Any]:
    return {"title": rec["title"], "entrypoint": rec["entrypoint"],
            "resources": rec.get("resources"), "device": rec.get("device"),
            "dependencies": rec.get("dependencies") or [],
            "env_vars": sorted(rec.get("env_vars") or {}),   # names only: values may be secrets
            "size": rec.get("size"), "created": iso(rec.get("created"))}


# --- jobs ---------------------------------------------------------------------------------
def run_program(svc: Services, celery: Celery, user: str, title: str,
                body: dict[str, Any], *, peer_arguments: str | None = None) -> dict[str, Any]:
    """Validate a run request completely, store its inputs, record the job, send one message.

    `peer_arguments` are arguments as the Qiskit Serverless client encodes them (JSON text,
    already checked to be an object by the caller); they are stored as they came and the job
    is marked so that its code reads them in that encoding.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    unknown = set(body) - {"arguments", "resources", "max_runtime", "device", "reservation_arn"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    program = svc.registry.get_program(user, check_title(title))
    if peer_arguments is not None:
        encoded = peer_arguments
    else:
        arguments = body.get("arguments", {})
        if not isinstance(arguments, dict):
            raise InvalidInput("arguments must be a JSON object", field="arguments")
        codec.validate(arguments, path="arguments")
        try:
            encoded = json.dumps(arguments, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise InvalidInput("arguments hold NaN or Infinity, which JSON cannot; send them "
                               "encoded (the qhybrid client does)", field="arguments") from None
    if len(encoded) > d.MAX_ARGUMENTS_BYTES:
        raise PayloadTooLarge(f"arguments are larger than {d.MAX_ARGUMENTS_BYTES} bytes",
                              field="arguments")
    rc = pick_class(body.get("resources", program.get("resources")), svc.classes)
    max_runtime = check_max_runtime(svc, body.get("max_runtime"))
    device = body.get("device") or program.get("device") or None
    if device is not None and not isinstance(device, str):
        raise InvalidInput("device must be a device name", field="device")
    spec = device_spec(svc.settings, device) if device else None
    reservation = None
    if body.get("reservation_arn") not in (None, ""):
        # Braket's reservation_arn: the job waits for the window and holds the device in it
        reservation = reservations.for_job(svc.registry.r, user, body["reservation_arn"],
                                           spec.name if spec else None)
        device = reservation["device"]
        spec = device_spec(svc.settings, device)

    job_id = svc.registry.new_job_id()
    created = time.time()
    timestamp = f"{int(created * 1000)}-{job_id[:8]}"
    prefix = keys.job_prefix(user, title, timestamp)
    svc.store.copy(keys.program_source(user, title), keys.job_script(prefix))
    svc.store.put_bytes(keys.job_arguments(prefix), encoded.encode())
    record = {"id": job_id, "user": user, "kind": "program", "program": title,
              "job_name": title, "timestamp": timestamp, "prefix": prefix,
              "entrypoint": program["entrypoint"], "resource_class": rc.name,
              "queue": jobs_queue(rc.name), "max_runtime": max_runtime, "created": created,
              "device": device or "",
              "arguments_format": "serverless" if peer_arguments is not None else "qhybrid",
              "env_vars": program.get("env_vars") or None,
              "provider": program.get("provider") or None,
              "dependencies": program.get("dependencies") or None}
    if reservation is not None:
        record.update(reservation_id=reservation["id"], reservation_arn=reservation["arn"])
    svc.registry.create_job(record)
    # A job naming a non-shared device, or a reservation, waits in the device's line until it
    # holds the device.
    hold = reservation is not None or (spec is not None and not spec.shared)
    start_job(svc.registry, celery, record, hold=hold)
    if hold:     # its device's line may have moved it on
        return svc.registry.get_job(job_id)
    return unflat_record(flat_record(record))       # as stored: no need to read it back


def check_max_runtime(svc: Services, value: Any) -> int:
    if value is None:
        return svc.settings.max_runtime_s
    top = svc.settings.server_max_runtime_s
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise InvalidInput(f"max_runtime is a whole number of seconds from 1 to {top}",
                           field="max_runtime")
    return value


def job_json(svc: Services, job: dict[str, Any], *, events: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": job["id"],
        "kind": job.get("kind"),
        "program": job.get("program"),
        "job_name": job.get("job_name"),
        "status": display_status(job["status"], job.get("sub_status")),
        "state": job["status"],
        "sub_status": job.get("sub_status"),
        "resource_class": job.get("resource_class"),
        "queue": job.get("queue"),
        "device": job.get("device"),
        "reservation_arn": job.get("reservation_arn") or None,
        "attempt": job.get("attempt"),
        "worker": job.get("worker"),
        "created": iso(job.get("created")),
        "started": iso(job.get("started")),
        "ended": iso(job.get("ended")),
        "max_runtime": job.get("max_runtime"),
        "error": job.get("error") or None,
        "has_result": job.get("has_result") == "1",
    }
    if events:
        out["events"] = [{**e, "at": iso(e["at"])} for e in svc.registry.events(job["id"])]
    if job["status"] == d.QUEUED:
        if not svc.registry.workers_by_queue().get(job.get("queue") or ""):
            out["waiting_for"] = f"no worker consumes {job.get('queue')}"
    # Jobs ahead of this one in its device's line (1: next); null when not waiting for one.
    out["queue_position"] = queue_position(svc.registry.r, job)
    if out["queue_position"]:
        out["waiting_for"] = f"device {job['device']}, held by another job"
    from app.tasks_api import task_fields

    task_fields(svc, job, out, detailed=events)   # resource_usage; tasks no worker takes
    return out


def cancel_job(svc: Services, user: str, job_id: str) -> dict[str, Any]:
    """A queued job never starts; a running one is killed by its supervisor within a second."""
    reg = svc.registry
    job = reg.get_job(job_id, user)
    if reg.transition(job_id, d.CANCELED, allowed=[d.QUEUED], ended=time.time(),
                      detail="canceled before it started"):
        return reg.get_job(job_id)
    if reg.transition(job_id, d.CANCELING, allowed=[d.INITIALIZING, d.RUNNING]):
        return reg.get_job(job_id)
    job = reg.get_job(job_id, user)
    if job["status"] in (d.CANCELING, d.CANCELED):
        return job
    raise Conflict(f"job {job_id} already ended ({job['status']})", state=job["status"])


def result_text(svc: Services, job: dict[str, Any]) -> str:
    """The saved result as encoded JSON text (`null` when the job saved none)."""
    if job["status"] == d.ERROR:
        raise JobFailed(job.get("error") or "the job failed", job_id=job["id"])
    if job["status"] == d.CANCELED:
        raise JobCanceled(f"job {job['id']} was canceled", job_id=job["id"])
    if job["status"] != d.DONE:
        raise Conflict(f"job {job['id']} has not finished ({job['status']})")
    try:
        return svc.store.get_bytes(keys.job_result(job["prefix"])).decode()
    except NotFound:
        return "null"


def read_logs(svc: Services, job: dict[str, Any], offset: int) -> tuple[str, int]:
    """Log text from byte `offset` and the offset to ask for next."""
    raw = svc.registry.read_log(job["id"], offset)
    if raw is None:
        if job["status"] in d.TERMINAL_STATUSES:
            try:
                raw = svc.store.get_bytes(keys.job_logs(job["prefix"]))[offset:]
            except NotFound:
                raw = b""
        else:
            raw = b""
    raw = _whole_utf8(raw)
    return raw.decode("utf-8", errors="replace"), offset + len(raw)


def _whole_utf8(raw: bytes) -> bytes:
    """Drop a multi-byte character cut at the end; the next read starts with it whole."""
    for cut in range(0, min(4, len(raw) + 1)):
        chunk = raw[: len(raw) - cut] if cut else raw
        try:
            chunk.decode("utf-8")
            return chunk
        except UnicodeDecodeError:
            continue
    return raw


def model_response(svc: Services, job: dict[str, Any]) -> Any:
    """The job's model.tar.gz: a redirect to a presigned URL on S3, else streamed."""
    from flask import redirect, send_file

    key = keys.job_model(job["prefix"])
    if not svc.store.exists(key):
        raise NotFound(f"job {job['id']} has no model.tar.gz yet ({job['status']})")
    url = svc.store.presigned_url(key)
    if url:
        return redirect(url, code=302)
    return send_file(svc.store.open(key), mimetype="application/gzip", as_attachment=True,
                     download_name=f"{job.get('job_name') or job['id']}-model.tar.gz")
