"""What a hybrid job may be: names, hyperparameters, input channels, checkpoint files.

Shared by the `@hybrid_job` decorator, local mode and the server, so a rule is checked the same
way on a laptop (before anything is uploaded) and at the API (for callers that skip the client).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qhybrid.errors import InvalidInput

# --- job names ------------------------------------------------------------------------------
MAX_JOB_NAME = 50
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?$")
_TIMESTAMP_DIGITS = 13            # milliseconds since the epoch, until the year 2286

# --- hyperparameters ------------------------------------------------------------------------
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_CHARS = 2500
MAX_HYPERPARAMETER_NAME_CHARS = 256
_KEEP_TAIL = 100                  # a shortened value keeps its last characters too

# --- input channels -------------------------------------------------------------------------
DEFAULT_CHANNEL = "input"
MAX_CHANNELS = 20
CHANNEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
URI_SCHEMES = ("s3://", "file://")   # names of data already in the service's storage

# --- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
CHECKPOINT_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.json$")

# --- results --------------------------------------------------------------------------------
RESULT_FORMATS = ("json", "pickle")
RETURN_HINT = ("return JSON data, numpy arrays, Qiskit circuits or SparsePauliOp (in dicts, "
               "lists, tuples), or write other objects to files in the results directory "
               "(get_results_dir()): they come back in model.tar.gz")


# --- states ---------------------------------------------------------------------------------
#: Our statuses as Braket's hybrid-job states (`job.state()`); `job.status()` keeps ours.
BRAKET_STATES = {"QUEUED": "QUEUED", "INITIALIZING": "RUNNING", "RUNNING": "RUNNING",
                 "DONE": "COMPLETED", "ERROR": "FAILED", "CANCELING": "CANCELLING",
                 "CANCELED": "CANCELLED"}
BRAKET_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
JOB_ARN_PREFIX = "arn:qhybrid:job/"          # a job's arn-like id: this and its id
LOCAL_ARN_PREFIX = "local:job/"               # a local job's, as Braket's local mode
QUEUE_POSITION_BOUND = 15          # past it a position reads ">15", as Braket's does

NO_DEVICE = "local:none/none"     # what Braket's AMZN_BRAKET_DEVICE_ARN holds for no device


def braket_state(status: str) -> str:
    """Braket's name for one of our statuses (a `RUNNING: <sub-status>` is RUNNING)."""
    return BRAKET_STATES.get(status.split(":", 1)[0].strip(), status)


@dataclass(frozen=True)
class QueuePosition:
    """What `job.queue_position()` answers, shaped as Braket's HybridJobQueueInfo:
    `queue_position` is a string ("3", ">15") while the job waits, else None and `message`
    says why there is none."""

    queue_position: str | None
    message: str | None = None

    @classmethod
    def of(cls, state: str, position: int | None, device: str | None) -> QueuePosition:
        if state == "QUEUED" and position is not None:
            text = f">{QUEUE_POSITION_BOUND}" if position > QUEUE_POSITION_BOUND else str(position)
            return cls(text)
        if state == "QUEUED":
            why = ("it waits for a free worker" if not device
                   else f"it waits for a worker; device {device} is its own")
            return cls(None, f"Job is in QUEUED status without a device line: {why}.")
        return cls(None, f"Job is in {state} status. qhybrid shows a queue position only for "
                   "jobs waiting for their device.")


def check_job_name(name: Any, field: str = "job_name") -> str:
    """A job name: 1 to 50 letters, digits and hyphens, not starting or ending with a hyphen."""
    if not isinstance(name, str):
        raise InvalidInput(f"a job name is a string, got {type(name).__name__}", field=field)
    if JOB_NAME_RE.match(name):
        return name
    if not name or len(name) > MAX_JOB_NAME:
        why = f"it has {len(name)} characters; a job name has 1 to {MAX_JOB_NAME}"
    elif name.startswith("-") or name.endswith("-"):
        why = "it starts or ends with a hyphen"
    else:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c == "-"))})
        why = f"it contains {''.join(bad)!r}; use letters, digits and hyphens only"
    raise InvalidInput(f"job name {name!r} is not valid: {why}", field=field)


def default_job_name(function_name: str, now_ms: int | None = None) -> str:
    """`<function-name>-<milliseconds>`: underscores become hyphens, leading ones are dropped,
    and the function part is cut so that the whole name is at most 50 characters."""
    stamp = str(int(time.time() * 1000) if now_ms is None else now_ms)
    base = re.sub(r"[^A-Za-z0-9-]", "-", function_name.replace("_", "-")).lstrip("-")
    base = base[:MAX_JOB_NAME - len(stamp) - 1] or "job"
    return check_job_name(f"{base}-{stamp}")


# --- hyperparameters ------------------------------------------------------------------------
def shorten_hyperparameter(text: str) -> tuple[str, bool]:
    """The value as kept (at most 2500 characters, start and end kept around a marker) and
    whether it had to be shortened."""
    if len(text) <= MAX_HYPERPARAMETER_CHARS:
        return text, False
    marker = f" ...[qhybrid: shortened from {len(text)} characters]... "
    head = MAX_HYPERPARAMETER_CHARS - len(marker) - _KEEP_TAIL
    return text[:head] + marker + text[-_KEEP_TAIL:], True


def capture_hyperparameters(fn: Callable[..., Any], args: tuple[Any, ...],
                            kwargs: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The call's bound arguments with defaults applied, as strings: (values, shortened names).

    Raises TypeError when the arguments do not fit the function, as calling it would.
    """
    sig = inspect.signature(fn)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    raw: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            raw.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raw[name] = list(value)
        else:
            raw[name] = value
    return check_hyperparameters({k: str(v) for k, v in raw.items()})


def check_hyperparameters(values: Any,
                          field: str = "hyperparameters") -> tuple[dict[str, str], list[str]]:
    """Refuse more than 100 or badly named ones; shorten long values: (values, shortened)."""
    if not isinstance(values, dict):
        raise InvalidInput("hyperparameters are an object of strings", field=field)
    if len(values) > MAX_HYPERPARAMETERS:
        raise InvalidInput(f"a hybrid job records at most {MAX_HYPERPARAMETERS} hyperparameters "
                           f"(its function's arguments), got {len(values)}; pass related values "
                           "together as one argument", field=field)
    out: dict[str, str] = {}
    shortened: list[str] = []
    for name, value in values.items():
        if not isinstance(name, str) or not name or len(name) > MAX_HYPERPARAMETER_NAME_CHARS:
            raise InvalidInput(f"hyperparameter names are 1 to {MAX_HYPERPARAMETER_NAME_CHARS} "
                               f"characters, got {str(name)[:60]!r}", field=field)
        if not isinstance(value, str):
            raise InvalidInput(f"hyperparameter {name!r} must be a string", field=f"{field}.{name}")
        out[name], cut = shorten_hyperparameter(value)
        if cut:
            shortened.append(name)
    return out, shortened


# --- tags -----------------------------------------------------------------------------------
MAX_TAGS = 50


def check_tags(tags: Any) -> dict[str, str]:
    """At most 50 tags, keys 1-128 and values 0-256 characters, all strings."""
    if tags is None:
        return {}
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS or not all(
            isinstance(k, str) and 0 < len(k) <= 128 and isinstance(v, str) and len(v) <= 256
            for k, v in tags.items()):
        raise InvalidInput(f"tags are at most {MAX_TAGS} {{key: value}} strings (keys 1-128, "
                           "values up to 256 characters)", field="tags")
    return dict(tags)


# --- input channels -------------------------------------------------------------------------
def check_channel(name: Any, field: str = "input_data") -> str:
    if not isinstance(name, str) or not CHANNEL_RE.match(name) or name in (".", ".."):
        raise InvalidInput(f"channel name {name!r} is not valid: use 1 to 64 letters, digits, "
                           "'.', '_' or '-'", field=field)
    return name


def is_uri(source: str) -> bool:
    return "://" in source


def channels_of(input_data: Any) -> dict[str, str]:
    """`input_data` as {channel: local path or URI}: a single source is channel `input`."""
    if input_data is None:
        return {}
    if isinstance(input_data, dict):
        if len(input_data) > MAX_CHANNELS:
            raise InvalidInput(f"at most {MAX_CHANNELS} input channels, got {len(input_data)}",
                               field="input_data")
        out = {}
        for name, source in input_data.items():
            check_channel(name)
            out[name] = _source(source, f"input_data.{name}")
        return out
    return {DEFAULT_CHANNEL: _source(input_data, "input_data")}


def _source(source: Any, field: str) -> str:
    import os

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise InvalidInput("an input source is a local path or a storage URI (s3://...)",
                           field=field)
    if is_uri(source) and not source.startswith(URI_SCHEMES):
        raise InvalidInput(f"{source!r}: only local paths and storage URIs "
                           f"({', '.join(URI_SCHEMES)}) can be input data", field=field)
    return source


def check_link(path: Any, field: str) -> str:
    """An input's original relative path (where the job also finds it), or '' for none."""
    from pathlib import PurePosixPath

    if path in (None, ""):
        return ""
    if not isinstance(path, str) or len(path) > 1024 or "\\" in path or "\x00" in path:
        raise InvalidInput("an input path is a relative path of at most 1024 characters",
                           field=field)
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("..", ".") for part in p.parts) or not p.parts:
        raise InvalidInput(f"input path {path!r} must be relative, without '.' or '..'",
                           field=field)
    return p.as_posix()


# --- checkpoints ----------------------------------------------------------------------------
def checkpoint_file(job_name: str, suffix: str = "") -> str:
    """`<job_name>.json`, or `<job_name>_<suffix>.json`."""
    if not isinstance(suffix, str) or not CHECKPOINT_SUFFIX_RE.match(suffix):
        raise InvalidInput("a checkpoint suffix is at most 64 letters, digits, '.', '_' or '-'",
                           field="checkpoint_file_suffix")
    return f"{job_name}_{suffix}.json" if suffix else f"{job_name}.json"


def check_checkpoint_file(name: Any) -> str:
    if not isinstance(name, str) or not CHECKPOINT_FILE_RE.match(name):
        raise InvalidInput(f"checkpoint file {name!r} is not valid", field="file")
    return name




def braket_metadata(body: dict[str, Any], arn: str) -> dict[str, Any]:
    """Our job JSON plus the keys of Braket's GetJob answer."""
    out = dict(body)
    out.update({
        "jobArn": arn, "jobName": body.get("job_name"),
        "status": braket_state(str(body.get("state") or body.get("status") or "")),
        "hyperParameters": body.get("hyperparameters") or {},
        "deviceConfig": {"device": body.get("device") or NO_DEVICE},
        "createdAt": body.get("created"), "startedAt": body.get("started"),
        "endedAt": body.get("ended"), "failureReason": body.get("error"),
        "tags": body.get("tags") or {},
    })
    if body.get("reservation_arn"):
        out["associations"] = [{"arn": body["reservation_arn"],
                                "type": "RESERVATION_TIME_WINDOW_ARN"}]
    return out


__all__ = [
    "BRAKET_STATES",
    "BRAKET_TERMINAL",
    "DEFAULT_CHANNEL",
    "JOB_ARN_PREFIX",
    "LOCAL_ARN_PREFIX",
    "QueuePosition",
    "braket_metadata",
    "braket_state",
    "MAX_CHANNELS",
    "MAX_HYPERPARAMETERS",
    "MAX_HYPERPARAMETER_CHARS",
    "MAX_JOB_NAME",
    "NO_DEVICE",
    "RESULT_FORMATS",
    "RETURN_HINT",
    "capture_hyperparameters",
    "channels_of",
    "check_channel",
    "check_checkpoint_file",
    "check_hyperparameters",
    "check_job_name",
    "check_link",
    "check_tags",
    "checkpoint_file",
    "default_job_name",
    "is_uri",
    "shorten_hyperparameter",
]
