"""Hybrid jobs on the server side: submission, their JSON, metrics and checkpoints.

A submission is validated completely (metadata, name, channels and the URIs they name, the
job to copy checkpoints from, dependencies, sizes, every uploaded tar) before anything is
stored; if storing then fails half-way, what was stored is removed. The pickled function is
stored as bytes and never unpickled here: only the job's child process loads it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from celery import Celery

from app import jobs
from app.params import iso, load_json
from qhybrid.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from qhybrid.hybrid_rules import (
    JOB_ARN_PREFIX,
    MAX_CHANNELS,
    RESULT_FORMATS,
    check_channel,
    check_hyperparameters,
    check_job_name,
    check_link,
    check_tags,
)
from qhybrid.metrics import check_view, pivot
from qhybrid.resources import pick_class
from qhybrid.script_mode import ENTRY_POINT_RE
from storage import keys
from storage.store import validate_prefix
from storage.tarsafe import safe_extract
from tasks.core import defaults as d
from tasks.core.queues import jobs_queue
from tasks.core.services import Services
from tasks.devices import reservations
from tasks.devices.catalog import device_spec
from tasks.devices.holders import start_job
from tasks.jobs import metrics
from tasks.jobs.hybrid import KIND
from tasks.sandbox import dependencies as requirements

METADATA_FIELDS = {"job_name", "device", "resources", "max_runtime", "hyperparameters",
                   "hyperparameters_truncated", "dependencies", "copy_checkpoints_from_job",
                   "result_format", "python", "input_data", "tags", "entry_point",
                   "reservation_arn"}
SERVER_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


# --- submission -----------------------------------------------------------------------------
def parse_metadata(text: str | None) -> dict[str, Any]:
    if not text:
        raise InvalidInput("send the job's metadata as a JSON form field 'metadata'",
                           field="metadata")
    meta = load_json(text, "metadata")
    if not isinstance(meta, dict):
        raise InvalidInput("metadata is a JSON object", field="metadata")
    unknown = sorted(set(meta) - METADATA_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown metadata fields: {', '.join(unknown)}", field=unknown[0])
    return meta


def storage_root(svc: Services) -> str:
    """The URI prefix of the service's storage (`s3://bucket/prefix/` or `file:///dir/`)."""
    return svc.settings.storage_url.rstrip("/") + "/"


def resolve_uri(svc: Services, user: str, uri: Any, field: str) -> tuple[str, str]:
    """(prefix to download, base to strip) of an input URI in the user's own namespace."""
    root = storage_root(svc)
    own = keys.user_prefix(user) + "/"
    if not isinstance(uri, str) or not uri.startswith(root):
        raise InvalidInput(f"{uri!r} is not in this service's storage: a job reads input URIs "
                           f"under {root}{own}", field=field)
    key = uri[len(root):]
    if not key.startswith(own):
        raise Forbidden(f"{uri!r} is outside your namespace: a job reads input URIs under "
                        f"{root}{own} only", field=field)
    try:
        validate_prefix(key)
    except InvalidInput:
        raise InvalidInput(f"{uri!r} is not a valid storage URI", field=field) from None
    if next(iter(svc.store.list(key)), None) is None:
        raise InvalidInput(f"there is no data under {uri!r}", field=field)
    base = key if key.endswith("/") else key.rpartition("/")[0] + "/"
    return key, base


def _resolve_checkpoint_job(svc: Services, user: str, ref: Any) -> dict[str, Any] | None:
    if ref is None or ref == "":
        return None
    field = "copy_checkpoints_from_job"
    if not isinstance(ref, str):
        raise InvalidInput("copy_checkpoints_from_job is a job name or id", field=field)
    ref = ref.removeprefix(JOB_ARN_PREFIX)
    job_id = svc.registry.job_id_for_name(user, ref) or ref
    try:
        return svc.registry.get_job(job_id, user)
    except NotFound:
        raise NotFound(f"you have no job named or with id {ref!r} to copy checkpoints from",
                       field=field) from None


def _device(svc: Services, value: Any) -> tuple[str, bool]:
    """(device name or "", whether the job must hold it: a device that is not shared)."""
    if value in (None, ""):
        return "", False
    spec = device_spec(svc.settings, value)
    return spec.name, not spec.shared


def _size(stream: BinaryIO) -> int:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


def submit_hybrid_job(svc: Services, celery: Celery, user: str, metadata: str | None,
                      function: BinaryIO | None,
                      uploads: dict[str, BinaryIO]) -> dict[str, Any]:
    """Validate a hybrid job completely, store its function and inputs, record it, queue it."""
    meta = parse_metadata(metadata)
    name = check_job_name(meta.get("job_name"))
    python = meta.get("python")
    if python is not None and python != SERVER_PYTHON:
        raise InvalidInput(f"the function was pickled with Python {python}; the workers run "
                           f"Python {SERVER_PYTHON}, and a pickled function needs the same one",
                           field="python")
    rc = pick_class(meta.get("resources"), svc.classes)
    max_runtime = jobs.check_max_runtime(svc, meta.get("max_runtime"))
    device, hold = _device(svc, meta.get("device"))
    hyperparameters, shortened = check_hyperparameters(meta.get("hyperparameters") or {})
    claimed = meta.get("hyperparameters_truncated") or []
    if not isinstance(claimed, list) or not set(claimed) <= set(hyperparameters):
        raise InvalidInput("hyperparameters_truncated names hyperparameters of the job",
                           field="hyperparameters_truncated")
    truncated = sorted(set(shortened) | set(claimed))
    result_format = meta.get("result_format") or "json"
    if result_format not in RESULT_FORMATS:
        raise InvalidInput(f"result_format is one of {', '.join(RESULT_FORMATS)}",
                           field="result_format")
    dependencies = requirements.accepted(meta.get("dependencies"), svc.settings)
    source_job = _resolve_checkpoint_job(svc, user, meta.get("copy_checkpoints_from_job"))
    tags = check_tags(meta.get("tags"))
    entry_point = meta.get("entry_point") or ""
    if not isinstance(entry_point, str) or (entry_point and not ENTRY_POINT_RE.match(entry_point)):
        raise InvalidInput("entry_point is 'module' or 'module:function'", field="entry_point")
    reservation = None
    if meta.get("reservation_arn") not in (None, ""):
        reservation = reservations.for_job(svc.registry.r, user, meta["reservation_arn"],
                                           device or None)
        device, hold = reservation["device"], True
    if function is None:
        raise InvalidInput("attach the cloudpickled (function, args, kwargs) as 'function'",
                           field="function")
    size = _size(function)
    if not 0 < size <= d.MAX_FUNCTION_BYTES:
        raise PayloadTooLarge(f"the pickled function is {size} bytes; it must be 1 to "
                              f"{d.MAX_FUNCTION_BYTES}", field="function")

    job_id = svc.registry.new_job_id()
    created = time.time()
    timestamp = f"{int(created * 1000)}-{job_id[:8]}"
    prefix = keys.job_prefix(user, name, timestamp)
    channels, uploaded = _channels(svc, user, prefix, meta.get("input_data"), uploads)

    with tempfile.TemporaryDirectory(prefix="qh-hybrid-") as tmp:
        budget = d.MAX_INPUT_DATA_BYTES
        for channel in uploaded:
            dest = Path(tmp, channel)
            field = f"channel.{channel}"
            try:
                members = safe_extract(uploads[channel], dest,
                                       max_bytes=min(budget, svc.settings.tar_max_bytes),
                                       max_members=svc.settings.tar_max_members)
            except (InvalidInput, PayloadTooLarge) as exc:
                raise type(exc)(f"input channel {channel}: {exc.detail}", field=field) from None
            files = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()]
            budget -= sum(p.stat().st_size for p in files)
            if not channels[channel]["is_dir"]:
                if len(files) != 1 or len(members) != 1:
                    raise InvalidInput(f"input channel {channel} is a file: its tar holds one "
                                       "file", field=field)
                channels[channel]["name"] = files[0].name
        try:
            svc.store.put_stream(keys.job_function(prefix), function)
            for channel in uploaded:
                dest = Path(tmp, channel)
                for path in sorted(dest.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        rel = path.relative_to(dest).as_posix()
                        svc.store.put_file(keys.job_data(prefix, channel) + rel, path)
        except BaseException:
            svc.store.delete_prefix(prefix + "/")
            raise

    record: dict[str, Any] = {
        "id": job_id, "user": user, "kind": KIND, "job_name": name, "timestamp": timestamp,
        "prefix": prefix, "resource_class": rc.name, "queue": jobs_queue(rc.name),
        "max_runtime": max_runtime, "created": created, "device": device,
        "hyperparameters": hyperparameters, "hyperparameters_truncated": truncated,
        "input_data": channels, "dependencies": dependencies, "result_format": result_format,
        "python": python or SERVER_PYTHON, "tags": tags, "entry_point": entry_point,
    }
    if reservation is not None:
        record.update(reservation_id=reservation["id"], reservation_arn=reservation["arn"])
    if source_job is not None:
        record.update(checkpoints_from=source_job["prefix"],
                      checkpoints_from_job=source_job.get("job_name") or source_job["id"],
                      checkpoints_from_id=source_job["id"])
    try:
        svc.registry.create_job(record)
    except BaseException:
        svc.store.delete_prefix(prefix + "/")
        raise
    # A job naming a non-shared device waits in the device's line until it holds it.
    start_job(svc.registry, celery, record, hold=hold)
    return svc.registry.get_job(job_id)


def _channels(svc: Services, user: str, prefix: str, value: Any,
              uploads: dict[str, BinaryIO]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The job record's channels and the names of those that come as uploads."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput("input_data is an object of channels", field="input_data")
    if len(value) > MAX_CHANNELS:
        raise InvalidInput(f"at most {MAX_CHANNELS} input channels, got {len(value)}",
                           field="input_data")
    out: dict[str, dict[str, Any]] = {}
    uploaded = []
    for channel, spec in value.items():
        check_channel(channel)
        field = f"input_data.{channel}"
        if not isinstance(spec, dict):
            raise InvalidInput("a channel is {\"uri\": ...} or {\"upload\": true, ...}",
                               field=field)
        if "uri" in spec:
            key, base = resolve_uri(svc, user, spec["uri"], field)
            out[channel] = {"source": "storage", "uri": spec["uri"], "key": key, "base": base,
                            "is_dir": True, "link": ""}
        elif spec.get("upload") is True:
            if channel not in uploads:
                raise InvalidInput(f"channel {channel} is an upload: attach its tar as "
                                   f"'channel.{channel}'", field=f"channel.{channel}")
            data = keys.job_data(prefix, channel)
            out[channel] = {"source": "upload", "key": data, "base": data,
                            "is_dir": bool(spec.get("is_dir")),
                            "link": check_link(spec.get("path"), f"{field}.path"),
                            "path": spec.get("path") or ""}
            uploaded.append(channel)
        else:
            raise InvalidInput("a channel is {\"uri\": ...} or {\"upload\": true, ...}",
                               field=field)
    extra = sorted(set(uploads) - set(uploaded))
    if extra:
        raise InvalidInput(f"uploaded channel {extra[0]} is not in input_data",
                           field=f"channel.{extra[0]}")
    return out, uploaded


# --- reading --------------------------------------------------------------------------------
def get_hybrid_job(svc: Services, user: str, job_id: str) -> dict[str, Any]:
    job = svc.registry.get_job(job_id, user)
    if job.get("kind") != KIND:
        raise NotFound(f"job {job_id} is not a hybrid job")
    return job


def hybrid_job_json(svc: Services, job: dict[str, Any], *, events: bool = True) -> dict[str, Any]:
    """The job's JSON (as GET /jobs/<id>) plus what only a hybrid job has."""
    out = jobs.job_json(svc, job, events=events)
    channels = {}
    for channel, info in (job.get("input_data") or {}).items():
        if info.get("source") == "storage":
            channels[channel] = {"source": "storage", "uri": info.get("uri")}
        else:
            channels[channel] = {"source": "upload", "path": info.get("path") or None,
                                 "is_dir": bool(info.get("is_dir"))}
    out.update({
        "hyperparameters": job.get("hyperparameters") or {},
        "hyperparameters_truncated": job.get("hyperparameters_truncated") or [],
        "input_data": channels,
        "copy_checkpoints_from_job": job.get("checkpoints_from_job"),
        "dependencies": job.get("dependencies") or [],
        "result_format": job.get("result_format") or "json",
        "storage_uri": storage_root(svc) + job["prefix"] + "/",
        "arn": JOB_ARN_PREFIX + job["id"],
        "tags": job.get("tags") or {},
        "entry_point": job.get("entry_point") or None,
        "reservation_arn": job.get("reservation_arn") or None,
    })
    return out


def job_metrics(svc: Services, user: str, job_id: str, metric_type: str,
                statistic: str) -> dict[str, Any]:
    job = svc.registry.get_job(job_id, user)
    kind, stat = check_view(metric_type, statistic)
    records = metrics.read(svc.registry, svc.store, job)
    table = pivot(records, kind, stat)
    # JSON objects lose their order on the way: `columns` keeps pivot()'s, as local mode has it
    return {"job_id": job_id, "metric_type": kind, "statistic": stat, "count": len(records),
            "state": job["status"], "metrics": table, "columns": list(table)}


def list_checkpoints(svc: Services, user: str, job_id: str) -> list[dict[str, Any]]:
    job = svc.registry.get_job(job_id, user)        # every job kind may save checkpoints
    base = keys.job_checkpoints(job["prefix"])
    return [{"name": obj.key[len(base):], "size": obj.size, "modified": iso(obj.modified)}
            for obj in svc.store.list(base)]


def pickled_result(svc: Services, user: str, job_id: str) -> BinaryIO:
    """The stream of a DONE job's pickled return value (never unpickled here)."""
    job = get_hybrid_job(svc, user, job_id)
    if job.get("result_format") != "pickle":
        raise Conflict(f"job {job_id} returns JSON: GET /api/v1/jobs/{job_id}/result")
    if job["status"] != d.DONE:
        jobs.result_text(svc, job)       # raises JobFailed, JobCanceled or Conflict
    return svc.store.open(keys.job_pickled_result(job["prefix"]))


__all__ = ["get_hybrid_job", "hybrid_job_json", "job_metrics", "list_checkpoints",
           "pickled_result", "resolve_uri", "submit_hybrid_job"]
