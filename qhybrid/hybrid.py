"""`@hybrid_job`: run a decorated function as a hybrid job, on the service or locally.

Calling the decorated function ships it with its arguments (cloudpickle) and returns a handle
at once; the function runs in a job whose working directory is its results directory. Every
argument is checked before anything is uploaded: a bad job name, channel or missing input
fails at the call.

Longer than 500 lines: it is the whole Braket-compatible surface of a hybrid job (the
decorator, `create_job`, and the handle with every method Braket's job object has).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import pickle
import re
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from qhybrid.client import Client, Job
from qhybrid.errors import InvalidInput, JobCanceled, JobFailed
from qhybrid.hybrid_rules import (
    JOB_ARN_PREFIX,
    RESULT_FORMATS,
    QueuePosition,
    braket_metadata,
    braket_state,
    capture_hyperparameters,
    channels_of,
    check_hyperparameters,
    check_job_name,
    check_tags,
    default_job_name,
    is_uri,
)
from qhybrid.local_job import LocalHybridJob, extract_model, show_log


class HybridJobHandle(Protocol):
    """What calling a `@hybrid_job` function returns, on the service and in local mode."""

    name: str
    job_id: str

    @property
    def arn(self) -> str: ...

    def status(self) -> str: ...
    def state(self, use_cached_value: bool = False) -> str: ...
    def queue_position(self) -> QueuePosition: ...
    def metadata(self, use_cached_value: bool = False) -> dict[str, Any]: ...
    def hyperparameters(self) -> dict[str, str]: ...
    def checkpoints(self) -> list[str]: ...
    def quantum_tasks(self) -> list[dict[str, Any]]: ...
    def logs(self, wait: bool = False, poll_interval_seconds: float = 0.5, quiet: bool = False,
             logger: logging.Logger | None = None) -> str: ...
    def cancel(self) -> bool: ...
    def result(self, timeout: float | None = None, allow_pickle: bool = False) -> Any: ...
    def download_result(self, extract_to: str | os.PathLike[str] | None = None,
                        timeout: float | None = None) -> Path: ...
    def metrics(self, metric_type: str = "timestamp",
                statistic: str = "max") -> dict[str, list[Any]]: ...


def hybrid_job(*, device: str | None, input_data: Any = None, job_name: str | None = None,
               wait_until_complete: bool = False, local: bool = False,
               include_modules: str | ModuleType | Sequence[str | ModuleType] | None = None,
               dependencies: str | os.PathLike[str] | Sequence[str] | None = None,
               copy_checkpoints_from_job: str | None = None,
               target: str | dict[str, Any] = "small", max_runtime: int | None = None,
               result_format: str = "json", client: Client | None = None,
               tags: dict[str, str] | None = None, logger: logging.Logger | None = None,
               quiet: bool = False, reservation_arn: str | None = None,
               ) -> Callable[[Callable[..., Any]], Callable[..., HybridJobHandle]]:
    """Turn a function into a hybrid job: calling it submits the job and returns its handle.

    device: the device the job holds while it runs (its tasks get priority), or None.
    input_data: a local path or storage URI (channel `input`), or {channel: path or URI}.
    job_name: 1-50 letters, digits, hyphens; default `<function-name>-<milliseconds>`.
    wait_until_complete: show the log as it comes and return once the job has ended.
    local: run in a local child process; no server needed, outputs in `./<job_name>/`.
    include_modules: modules pickled by value with the function (the function's own module
        always is), for code the workers cannot import.
    dependencies: packages to install (a list, or a requirements file), if the server allows.
    copy_checkpoints_from_job: a job name, id or arn whose checkpoints the new job can load.
    target: the resource class (or {"cpu", "mem", "gpu"}) the job runs on.
    max_runtime: seconds after which the job is stopped (ERROR), on the service and locally.
    result_format: "json" (the codec) or "pickle" (read back only with allow_pickle=True).
    tags: {key: value} kept with the job (metadata()["tags"]).
    logger, quiet: where wait_until_complete shows the log (a logger, or nowhere).
    reservation_arn: a device reservation of yours (qhybrid.reservations): the job runs in
        its window with the device to itself.
    """
    options = _check_options(job_name=job_name, input_data=input_data, device=device,
                             result_format=result_format, max_runtime=max_runtime,
                             copy_checkpoints_from_job=copy_checkpoints_from_job, tags=tags,
                             reservation_arn=reservation_arn)

    def decorator(fn: Callable[..., Any]) -> Callable[..., HybridJobHandle]:
        @functools.wraps(fn)
        def submit(*args: Any, **kwargs: Any) -> HybridJobHandle:
            name = job_name or default_job_name(getattr(fn, "__name__", "job"))
            hyperparameters, shortened = capture_hyperparameters(fn, args, kwargs)
            payload = serialize(fn, args, kwargs, include_modules)
            return _launch(name=name, payload=payload, hyperparameters=hyperparameters,
                           shortened=shortened, input_data=input_data, device=device,
                           dependencies=dependencies, target=target, max_runtime=max_runtime,
                           result_format=result_format, local=local, client=client,
                           wait_until_complete=wait_until_complete, quiet=quiet, logger=logger,
                           entry_point="", **options)

        submit.entry_point = fn  # type: ignore[attr-defined]
        return submit

    return decorator


def create_job(device: str | None, source_module: str | os.PathLike[str],
               entry_point: str | None = None, *, job_name: str | None = None,
               hyperparameters: dict[str, Any] | None = None, input_data: Any = None,
               wait_until_complete: bool = False, local: bool = False,
               dependencies: str | os.PathLike[str] | Sequence[str] | None = None,
               copy_checkpoints_from_job: str | None = None,
               target: str | dict[str, Any] = "small", max_runtime: int | None = None,
               tags: dict[str, str] | None = None, logger: logging.Logger | None = None,
               quiet: bool = False, reservation_arn: str | None = None,
               client: Client | None = None) -> HybridJobHandle:
    """Script mode (Braket's AwsQuantumJob.create / LocalQuantumJob.create): run a source
    module as a hybrid job.

    source_module: a .py file or a directory (a package); it is shipped as it is.
    entry_point: "module" (run as __main__) or "module:function" (called with no
        arguments), relative to the source module's parent: for a directory `algo/`,
        "algo.main:start"; default: the file's or directory's name.
    hyperparameters: {name: value}, given to the job as strings (get_hyperparameters()).
    The rest are @hybrid_job's; the job returns what the function returns (or None).
    """
    from qhybrid.script_mode import check_entry_point, pack_source, run_entry_point

    options = _check_options(job_name=job_name, input_data=input_data, device=device,
                             result_format="json", max_runtime=max_runtime,
                             copy_checkpoints_from_job=copy_checkpoints_from_job, tags=tags,
                             reservation_arn=reservation_arn)
    source = Path(source_module)
    if not source.exists():
        raise InvalidInput(f"source module {str(source)!r} does not exist", field="source_module")
    entry = check_entry_point(source, entry_point)
    values, shortened = check_hyperparameters(
        {str(k): str(v) for k, v in (hyperparameters or {}).items()})
    archive = pack_source(source)
    payload = serialize(run_entry_point, (entry, archive), {}, None)
    name = job_name or default_job_name(entry.partition(":")[0].rpartition(".")[2] or "job")
    return _launch(name=name, payload=payload, hyperparameters=values, shortened=shortened,
                   input_data=input_data, device=device, dependencies=dependencies,
                   target=target, max_runtime=max_runtime, result_format="json", local=local,
                   client=client, wait_until_complete=wait_until_complete, quiet=quiet,
                   logger=logger, entry_point=entry, **options)


def create_local_job(device: str | None, source_module: str | os.PathLike[str],
                     entry_point: str | None = None, **kwargs: Any) -> HybridJobHandle:
    """Script mode in local mode (Braket's LocalQuantumJob.create)."""
    return create_job(device, source_module, entry_point, local=True, **kwargs)


def _check_options(*, job_name: Any, input_data: Any, device: Any, result_format: Any,
                   max_runtime: Any, copy_checkpoints_from_job: Any, tags: Any,
                   reservation_arn: Any) -> dict[str, Any]:
    """Check what can be checked before the call; the options every job kind sends."""
    if job_name is not None:
        check_job_name(job_name)
    channels_of(input_data)
    if device is not None and (not isinstance(device, str) or not device):
        raise InvalidInput("device is a device name or None", field="device")
    if result_format not in RESULT_FORMATS:
        raise InvalidInput(f"result_format is one of {', '.join(RESULT_FORMATS)}",
                           field="result_format")
    if copy_checkpoints_from_job is not None and not isinstance(copy_checkpoints_from_job, str):
        raise InvalidInput("copy_checkpoints_from_job is a job name or id",
                           field="copy_checkpoints_from_job")
    if max_runtime is not None and (isinstance(max_runtime, bool)
                                    or not isinstance(max_runtime, int) or max_runtime < 1):
        raise InvalidInput("max_runtime is a whole number of seconds, at least 1",
                           field="max_runtime")
    if reservation_arn is not None and (not isinstance(reservation_arn, str)
                                        or not reservation_arn):
        raise InvalidInput("reservation_arn is a reservation's arn or id", field="reservation_arn")
    return {"tags": check_tags(tags), "reservation_arn": reservation_arn,
            "copy_checkpoints_from_job": (copy_checkpoints_from_job or None) and
            copy_checkpoints_from_job.removeprefix(JOB_ARN_PREFIX)}


def _launch(*, name: str, payload: bytes, hyperparameters: dict[str, str], shortened: list[str],
            input_data: Any, device: str | None,
            dependencies: str | os.PathLike[str] | Sequence[str] | None,
            target: str | dict[str, Any], max_runtime: int | None, result_format: str,
            local: bool, client: Client | None, wait_until_complete: bool, quiet: bool,
            logger: logging.Logger | None, entry_point: str, tags: dict[str, str],
            reservation_arn: str | None, copy_checkpoints_from_job: str | None
            ) -> HybridJobHandle:
    """Start the job on the service or locally; with wait_until_complete, follow it."""
    channels = channels_of(input_data)
    for channel, source in channels.items():
        if not is_uri(source) and not Path(source).exists():
            raise InvalidInput(f"input {source!r} does not exist",
                               field=f"input_data.{channel}")
    requirements = _requirements(dependencies)
    handle: HybridJobHandle
    if local:
        _check_installed(requirements)
        if reservation_arn:
            raise InvalidInput("local mode runs on this machine: a device reservation is the "
                               "service's", field="reservation_arn")
        handle = LocalHybridJob.create(
            job_name=name, payload=payload, hyperparameters=hyperparameters,
            channels=channels, device=device, result_format=result_format,
            copy_checkpoints_from_job=copy_checkpoints_from_job, max_runtime=max_runtime,
            tags=tags, entry_point=entry_point)
    else:
        metadata: dict[str, Any] = {
            "job_name": name, "device": device, "resources": target,
            "max_runtime": max_runtime, "hyperparameters": hyperparameters,
            "hyperparameters_truncated": shortened, "dependencies": requirements,
            "copy_checkpoints_from_job": copy_checkpoints_from_job,
            "result_format": result_format,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
        if tags:
            metadata["tags"] = tags
        if entry_point:
            metadata["entry_point"] = entry_point
        if reservation_arn:
            metadata["reservation_arn"] = reservation_arn
        handle = submit_remote(client or Client(), metadata, payload, channels)
    if wait_until_complete:
        handle.logs(wait=True, quiet=quiet, logger=logger)
    return handle


# --- what is shipped ------------------------------------------------------------------------
def serialize(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              include_modules: str | ModuleType | Sequence[str | ModuleType] | None) -> bytes:
    """cloudpickle of (fn, args, kwargs), with the function's module and `include_modules`
    pickled by value so that the workers need not be able to import them."""
    import cloudpickle

    from qhybrid import _source

    if include_modules is None:
        wanted: list[str | ModuleType] = []
    elif isinstance(include_modules, str | ModuleType):
        wanted = [include_modules]
    else:
        wanted = list(include_modules)
    modules: list[ModuleType] = []
    for item in wanted:
        try:
            modules.append(importlib.import_module(item) if isinstance(item, str) else item)
        except ImportError as exc:
            raise InvalidInput(f"include_modules: cannot import {item!r}: {exc}",
                               field="include_modules") from None
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    if own is not None and own.__name__ != "__main__" and not _is_library(own):
        modules.append(own)
    registered = set(cloudpickle.list_registry_pickle_by_value())
    added = []
    try:
        for module in modules:
            if module.__name__ not in registered:
                cloudpickle.register_pickle_by_value(module)
                registered.add(module.__name__)
                added.append(module)
        try:
            # the code travels with its file names and source text: tracebacks and
            # inspect.getsource() in the job show the user's own lines
            return _source.dumps((fn, args, kwargs), protocol=pickle.DEFAULT_PROTOCOL)
        except Exception as exc:
            what = _unpicklable_part(fn, args, kwargs)
            raise RuntimeError(f"the hybrid job cannot be shipped: {what} cannot be pickled "
                               f"({type(exc).__name__}: {exc}); create such objects inside "
                               "the function instead of passing or capturing them") from exc
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)


def _unpicklable_part(fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> str:
    """Name the first argument, captured variable or global of `fn` that cloudpickle refuses."""
    import inspect

    import cloudpickle

    def fails(obj: Any) -> bool:
        try:
            cloudpickle.dumps(obj)
        except Exception:
            return True
        return False

    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    for i, value in enumerate(args):
        if fails(value):
            name = params[i] if i < len(params) else f"#{i}"
            return f"argument {name!r} ({type(value).__name__})"
    for key, value in kwargs.items():
        if fails(value):
            return f"argument {key!r} ({type(value).__name__})"
    closure = inspect.getclosurevars(fn) if inspect.isfunction(fn) else None
    if closure is not None:
        for kind, names in (("captured variable", closure.nonlocals),
                            ("global", closure.globals)):
            for key, value in names.items():
                if fails(value):
                    return f"the function's {kind} {key!r} ({type(value).__name__})"
    return f"the function {getattr(fn, '__qualname__', fn)!r}"


def _is_library(module: ModuleType) -> bool:
    """Installed packages (site-packages) and qhybrid itself stay pickled by reference."""
    path = getattr(module, "__file__", None) or ""
    return module.__name__.split(".")[0] == "qhybrid" or "site-packages" in path


def _requirements(dependencies: str | os.PathLike[str] | Sequence[str] | None) -> list[str]:
    if dependencies is None:
        return []
    if isinstance(dependencies, str | os.PathLike):
        path = Path(dependencies)
        if not path.is_file():
            raise InvalidInput(f"dependencies file {str(path)!r} does not exist",
                               field="dependencies")
        lines = path.read_text().splitlines()
    else:
        lines = list(dependencies)
    out = []
    for line in lines:
        if not isinstance(line, str):
            raise InvalidInput("dependencies are requirement strings", field="dependencies")
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _check_installed(requirements: list[str]) -> None:
    """Local mode runs in this environment: every dependency must be installed already."""
    from importlib import metadata

    missing = []
    for req in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        try:
            metadata.version(match.group(0) if match else req)
        except metadata.PackageNotFoundError:
            missing.append(req)
    if missing:
        raise InvalidInput("local mode runs in this Python environment, which lacks "
                           f"{', '.join(missing)}; install them first", field="dependencies")


# --- upload ---------------------------------------------------------------------------------
def _pack_channel(source: Path, archive: Path) -> None:
    """A plain tar of one local input: the file at the top, or the directory's contents.
    Links are followed (the data they name is sent); links to directories are skipped."""
    with tarfile.open(archive, "w") as tar:
        if source.is_file():
            tar.add(source.resolve(), arcname=source.name, recursive=False)
            return
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = sorted(d for d in dirnames
                                 if d != "__pycache__" and not Path(dirpath, d).is_symlink())
            rel = Path(dirpath).relative_to(source)
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if path.is_file():
                    tar.add(path.resolve(), arcname=(rel / name).as_posix(), recursive=False)


class _Multipart:
    """A multipart/form-data body read piece by piece: large inputs never sit in memory."""

    def __init__(self, fields: dict[str, str], files: list[tuple[str, str, Path]]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._pieces: list[bytes | Path] = []
        for name, value in fields.items():
            self._pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                                f"\r\n\r\n".encode() + value.encode() + b"\r\n")
        for name, filename, path in files:
            self._pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                                f'filename="{filename}"\r\nContent-Type: application/octet-stream'
                                "\r\n\r\n".encode())
            self._pieces.append(path)
            self._pieces.append(b"\r\n")
        self._pieces.append(f"--{boundary}--\r\n".encode())
        self._len = sum(len(p) if isinstance(p, bytes) else p.stat().st_size for p in self._pieces)
        self._chunks = self._generate()
        self._buffer = b""

    def __len__(self) -> int:
        return self._len

    def _generate(self) -> Iterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            with open(piece, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    yield chunk

    def __iter__(self) -> Iterator[bytes]:
        return self._generate()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def submit_remote(client: Client, metadata: dict[str, Any], payload: bytes,
                  channels: dict[str, str]) -> HybridJob:
    """POST /hybrid-jobs: the metadata, the pickled call and one tar per local channel."""
    inputs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="qhybrid-") as tmp:
        files: list[tuple[str, str, Path]] = []
        function = Path(tmp, "function.pkl")
        function.write_bytes(payload)
        files.append(("function", "function.pkl", function))
        for channel, source in channels.items():
            if is_uri(source):
                inputs[channel] = {"uri": source}
                continue
            path = Path(source)
            archive = Path(tmp, f"channel-{channel}.tar")
            _pack_channel(path, archive)
            files.append((f"channel.{channel}", f"{channel}.tar", archive))
            link = "" if path.is_absolute() or ".." in path.parts else path.as_posix()
            inputs[channel] = {"upload": True, "is_dir": path.is_dir(),
                               "name": path.resolve().name, "path": link}
        body = _Multipart({"metadata": json.dumps({**metadata, "input_data": inputs})}, files)
        resp = client.request("POST", "/hybrid-jobs", data=body,
                              headers={"Content-Type": body.content_type},
                              timeout=max(client.timeout, 600.0))
    return HybridJob(resp.json(), client)


# --- the service's handle -------------------------------------------------------------------
class HybridJob:
    """A hybrid job on the service: status, logs, metrics, result, model.tar.gz."""

    def __init__(self, body: dict[str, Any], client: Client) -> None:
        self._client = client
        self._body = body
        self.job_id: str = body["job_id"]
        self.name: str = body["job_name"]
        self._job = Job(body, client)

    def __repr__(self) -> str:
        return f"<HybridJob {self.name} {self._body.get('status')}>"

    @classmethod
    def from_id(cls, job_id: str, client: Client | None = None) -> HybridJob:
        """The handle of a job by its id or arn."""
        client = client or Client()
        job_id = job_id.removeprefix(JOB_ARN_PREFIX)
        return cls(client._json("GET", f"/hybrid-jobs/{job_id}"), client)

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._body)

    def refresh(self) -> dict[str, Any]:
        self._body = self._client._json("GET", f"/hybrid-jobs/{self.job_id}")
        return self._body

    @property
    def arn(self) -> str:
        """The job's arn-like id (`arn:qhybrid:job/<id>`); wherever a job id is taken, so is it."""
        return JOB_ARN_PREFIX + self.job_id

    def status(self) -> str:
        """`QUEUED`, `INITIALIZING`, `RUNNING` (or `RUNNING: <sub-status>`), `DONE`, `ERROR`,
        `CANCELED`."""
        return str(self.refresh()["status"])

    def state(self, use_cached_value: bool = False) -> str:
        """Braket's name of the state: QUEUED, RUNNING, COMPLETED, FAILED, CANCELLING or
        CANCELLED (status() has ours)."""
        body = self._body if use_cached_value else self.refresh()
        return braket_state(str(body["state"]))

    def queue_position(self) -> QueuePosition:
        """Where the job stands in its device's line: `.queue_position` is "1" (next) ...
        ">15", or None once it started, with `.message` saying why."""
        body = self.refresh()
        value = body.get("queue_position")
        return QueuePosition.of(braket_state(str(body["state"])),
                                int(value) if value is not None else None, body.get("device"))

    def metadata(self, use_cached_value: bool = False) -> dict[str, Any]:
        """The job's record, with Braket's GetJob keys beside ours (jobArn, jobName, status,
        hyperParameters, deviceConfig, createdAt, startedAt, endedAt, failureReason, tags)."""
        body = dict(self._body if use_cached_value else self.refresh())
        return braket_metadata(body, self.arn)

    def hyperparameters(self) -> dict[str, str]:
        return dict(self.refresh().get("hyperparameters") or {})

    def quantum_tasks(self) -> list[dict[str, Any]]:
        """The quantum tasks the job sent (Braket's job tasks), oldest first."""
        return self._job.quantum_tasks()

    get_tasks = quantum_tasks

    def error_message(self) -> str:
        return str(self.refresh().get("error") or "")

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the job to end; our final status (DONE, ERROR or CANCELED)."""
        return str(self._job.wait(timeout)["state"])

    def cancel(self) -> bool:
        return self._job.cancel()

    def logs(self, wait: bool = False, poll_interval_seconds: float = 0.5,
             quiet: bool = False, logger: logging.Logger | None = None) -> str:
        """The log so far; with wait=True it is shown as it comes (printed, or given to
        `logger`, or neither when quiet), until the job ends."""
        if not wait:
            return self._job.logs()
        out = []
        for chunk in self._job.follow_logs(poll_s=poll_interval_seconds):
            out.append(chunk)
            show_log(chunk, quiet, logger)
        return "".join(out)

    def result(self, timeout: float | None = None, allow_pickle: bool = False, *,
               poll_timeout_seconds: float | None = None,
               poll_interval_seconds: float | None = None) -> Any:
        """The function's return value; raises JobFailed with the error if the job failed.
        (poll_timeout_seconds is Braket's name for timeout.)"""
        timeout = poll_timeout_seconds if timeout is None else timeout
        if self._body.get("result_format") != "pickle":
            return self._job.result(timeout)
        state = self.wait(timeout)
        if state == "ERROR":
            raise JobFailed(self.error_message() or "the job failed", job_id=self.job_id)
        if state == "CANCELED":
            raise JobCanceled(f"job {self.job_id} was canceled", job_id=self.job_id)
        if not allow_pickle:
            raise InvalidInput("this job's result is pickled; result(allow_pickle=True) "
                               "unpickles it (only do that for results you trust)")
        import cloudpickle

        data = self._client.request("GET", f"/hybrid-jobs/{self.job_id}/pickled-result").content
        return cloudpickle.loads(data)

    def metrics(self, metric_type: str = "timestamp", statistic: str = "max"
                ) -> dict[str, list[Any]]:
        """Columnar metrics, as recorded so far (see qhybrid.metrics.pivot)."""
        kind = str(getattr(metric_type, "value", metric_type))
        stat = str(getattr(statistic, "value", statistic))
        body = self._client._json("GET", f"/jobs/{self.job_id}/metrics",
                                  params={"metric_type": kind, "statistic": stat})
        table = body["metrics"]
        return {column: table[column] for column in body.get("columns") or table}

    def checkpoints(self) -> list[str]:
        """Names of the checkpoint files the job has in storage."""
        body = self._client._json("GET", f"/hybrid-jobs/{self.job_id}/checkpoints")
        return [c["name"] for c in body["checkpoints"]]

    def download_result(self, extract_to: str | os.PathLike[str] | None = None,
                        timeout: float | None = None, *,
                        poll_timeout_seconds: float | None = None,
                        poll_interval_seconds: float | None = None) -> Path:
        """Wait for the job, then unpack its model.tar.gz into `<extract_to>/<job_name>/`."""
        self.wait(poll_timeout_seconds if timeout is None else timeout)
        with tempfile.TemporaryDirectory(prefix="qhybrid-") as tmp:
            archive = Path(tmp, "model.tar.gz")
            self._job.download_result(archive)
            return extract_model(archive, Path(extract_to or ".") / self.name)


HybridJob.create = staticmethod(create_job)  # type: ignore[attr-defined]

__all__ = ["HybridJob", "HybridJobHandle", "LocalHybridJob", "create_job", "create_local_job",
           "hybrid_job", "serialize"]
