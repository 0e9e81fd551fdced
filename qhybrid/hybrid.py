"""`@hybrid_job`: run a decorated function as a hybrid job, on the service or locally.

Calling the decorated function ships it with its arguments (cloudpickle) and returns a handle
at once; the function runs in a job whose working directory is its results directory. Every
argument is checked before anything is uploaded: a bad job name, channel or missing input
fails at the call.
"""

from __future__ import annotations

import functools
import importlib
import json
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
    RESULT_FORMATS,
    capture_hyperparameters,
    channels_of,
    check_job_name,
    default_job_name,
    is_uri,
)
from qhybrid.local_job import LocalHybridJob, extract_model


class HybridJobHandle(Protocol):
    """What calling a `@hybrid_job` function returns, on the service and in local mode."""

    name: str
    job_id: str

    def status(self) -> str: ...
    def state(self) -> str: ...
    def queue_position(self) -> int | None: ...
    def logs(self, wait: bool = False) -> str: ...
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
               result_format: str = "json", client: Client | None = None
               ) -> Callable[[Callable[..., Any]], Callable[..., HybridJobHandle]]:
    """Turn a function into a hybrid job: calling it submits the job and returns its handle.

    device: the device the job holds while it runs (its tasks get priority), or None.
    input_data: a local path or storage URI (channel `input`), or {channel: path or URI}.
    job_name: 1-50 letters, digits, hyphens; default `<function-name>-<milliseconds>`.
    wait_until_complete: print the log as it comes and return once the job has ended.
    local: run in a local child process; no server needed, outputs in `./<job_name>/`.
    include_modules: modules pickled by value with the function (the function's own module
        always is), for code the workers cannot import.
    dependencies: packages to install (a list, or a requirements file), if the server allows.
    copy_checkpoints_from_job: a job name or id whose checkpoints the new job can load.
    target: the resource class (or {"cpu", "mem", "gpu"}) the job runs on.
    result_format: "json" (the codec) or "pickle" (read back only with allow_pickle=True).
    """
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

    def decorator(fn: Callable[..., Any]) -> Callable[..., HybridJobHandle]:
        @functools.wraps(fn)
        def submit(*args: Any, **kwargs: Any) -> HybridJobHandle:
            name = job_name or default_job_name(getattr(fn, "__name__", "job"))
            hyperparameters, shortened = capture_hyperparameters(fn, args, kwargs)
            channels = channels_of(input_data)
            for channel, source in channels.items():
                if not is_uri(source) and not Path(source).exists():
                    raise InvalidInput(f"input {source!r} does not exist",
                                       field=f"input_data.{channel}")
            requirements = _requirements(dependencies)
            payload = serialize(fn, args, kwargs, include_modules)
            handle: HybridJobHandle
            if local:
                _check_installed(requirements)
                handle = LocalHybridJob.create(
                    job_name=name, payload=payload, hyperparameters=hyperparameters,
                    channels=channels, device=device, result_format=result_format,
                    copy_checkpoints_from_job=copy_checkpoints_from_job)
            else:
                metadata = {
                    "job_name": name, "device": device, "resources": target,
                    "max_runtime": max_runtime, "hyperparameters": hyperparameters,
                    "hyperparameters_truncated": shortened, "dependencies": requirements,
                    "copy_checkpoints_from_job": copy_checkpoints_from_job,
                    "result_format": result_format,
                    "python": f"{sys.version_info.major}.{sys.version_info.minor}",
                }
                handle = submit_remote(client or Client(), metadata, payload, channels)
            if wait_until_complete:
                handle.logs(wait=True)
            return handle

        submit.entry_point = fn  # type: ignore[attr-defined]
        return submit

    return decorator


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
        # the code travels with its file names and source text: tracebacks and
        # inspect.getsource() in the job show the user's own lines
        return _source.dumps((fn, args, kwargs), protocol=pickle.DEFAULT_PROTOCOL)
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)


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
        client = client or Client()
        return cls(client._json("GET", f"/hybrid-jobs/{job_id}"), client)

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._body)

    def refresh(self) -> dict[str, Any]:
        self._body = self._client._json("GET", f"/hybrid-jobs/{self.job_id}")
        return self._body

    def status(self) -> str:
        """`QUEUED`, `INITIALIZING`, `RUNNING` (or `RUNNING: <sub-status>`), `DONE`, `ERROR`,
        `CANCELED`."""
        return str(self.refresh()["status"])

    def state(self) -> str:
        """The status without a sub-status."""
        return str(self.refresh()["state"])

    def queue_position(self) -> int | None:
        """Where the job stands among those waiting (for its device); None once it started."""
        value = self.refresh().get("queue_position")
        return int(value) if value is not None else None

    def hyperparameters(self) -> dict[str, str]:
        return dict(self.refresh().get("hyperparameters") or {})

    def error_message(self) -> str:
        return str(self.refresh().get("error") or "")

    def wait(self, timeout: float | None = None) -> str:
        return str(self._job.wait(timeout)["state"])

    def cancel(self) -> bool:
        return self._job.cancel()

    def logs(self, wait: bool = False) -> str:
        """The log so far; with wait=True it is printed as it comes, until the job ends."""
        if not wait:
            return self._job.logs()
        out = []
        for chunk in self._job.follow_logs():
            out.append(chunk)
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return "".join(out)

    def result(self, timeout: float | None = None, allow_pickle: bool = False) -> Any:
        """The function's return value; raises JobFailed with the error if the job failed."""
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
        return dict(body["metrics"])

    def checkpoints(self) -> list[str]:
        """Names of the checkpoint files the job has in storage."""
        body = self._client._json("GET", f"/hybrid-jobs/{self.job_id}/checkpoints")
        return [c["name"] for c in body["checkpoints"]]

    def download_result(self, extract_to: str | os.PathLike[str] | None = None,
                        timeout: float | None = None) -> Path:
        """Wait for the job, then unpack its model.tar.gz into `<extract_to>/<job_name>/`."""
        self.wait(timeout)
        with tempfile.TemporaryDirectory(prefix="qhybrid-") as tmp:
            archive = Path(tmp, "model.tar.gz")
            self._job.download_result(archive)
            return extract_model(archive, Path(extract_to or ".") / self.name)


__all__ = ["HybridJob", "HybridJobHandle", "LocalHybridJob", "hybrid_job", "serialize"]
