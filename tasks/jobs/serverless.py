"""The in-job contract of the `qiskit_serverless` package, kept by the job's supervisor.

What that package reads: `ARGUMENTS_PATH` (the arguments as its client encoded them),
`RESULTS_PATH` (where its `save_result` writes), `DATA_PATH` (the user's file store as a
directory), and `ENV_JOB_GATEWAY_HOST` / `ENV_JOB_GATEWAY_TOKEN` / `ENV_JOB_ID_GATEWAY` for
its gateway calls (`update_status`, `send_error`, `ServerlessClient()` inside the job). The
token is job-scoped (tasks.jobs.tokens), never the user's.

The files live directly in the job's directory, which the service made: a link the job puts
in their place is never followed when the supervisor reads them back.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage import keys
from tasks.core import defaults as d
from tasks.files.data_files import DataFiles
from tasks.jobs import tokens as job_tokens
from tasks.supervisor.extension import JobExtension
from tasks.supervisor.supervisor import INTERRUPTED

if TYPE_CHECKING:
    from tasks.sandbox.child import ChildSpec
    from tasks.supervisor.supervisor import Supervisor

ARGUMENTS_FILE = "serverless-arguments.json"
RESULT_FILE = "serverless-result.json"
CONVERTED_RESULT_FILE = "serverless-result.qhybrid.json"
DATA_DIR = "data"
MAX_EVENTS = 1000           # error events (and runtime job ids) kept per job
MAX_EVENT_BYTES = 64 * 1024


def prepare(sup: Supervisor, ext: ServerlessExtension) -> dict[str, str]:
    """Write the arguments, fill DATA_PATH with the user's files; the variables to set."""
    job = sup.job
    args = sup.job_dir / ARGUMENTS_FILE
    shutil.copyfile(sup.arguments_file, args)     # as the supervisor fetched them
    data = sup.job_dir / DATA_DIR       # made by the supervisor, shown at /data too
    data.mkdir(exist_ok=True)
    files = DataFiles(sup.store, sup.registry, sup.settings)
    ext.peer_files = {}
    # Filled only for a program that reads it: the other jobs do not pay for the copy.
    wanted = _mentions(sup.job_dir / "src", "DATA_PATH", d.JOB_DATA_MOUNT + "/")
    listed = files.list(job["user"]) if wanted else []
    for info in listed:
        reader, _ = files.open(job["user"], info.name)
        with reader, open(data / info.name, "wb") as out:
            while chunk := reader.read(1024 * 1024):
                out.write(chunk)
        st = (data / info.name).stat()
        ext.peer_files[info.name] = (st.st_size, st.st_mtime_ns)
    # Typed arguments are converted for the other package's get_arguments() only when the
    # program imports it: the conversion loads qiskit_ibm_runtime, which a job otherwise skips.
    ours = str(sup.job_dir / "arguments.json")     # what qhybrid.get_arguments() reads
    typed = b'"__type__"' in args.read_bytes()
    if job.get("arguments_format") == "serverless":
        if typed and _mentions(sup.job_dir / "src", "qhybrid"):
            ext.convert_before = [(str(args), ours, "from_peer")]
    elif typed and _mentions(sup.job_dir / "src", "qiskit_serverless"):
        ext.convert_before = [(ours, str(args), "to_peer")]
    ext.convert_after = [(str(sup.job_dir / RESULT_FILE), str(sup.job_dir / CONVERTED_RESULT_FILE),
                          "from_peer")]
    ttl = int(job.get("max_runtime") or sup.settings.max_runtime_s)
    token = job_tokens.issue(sup.registry, sup.job_id, ttl)
    host = sup.settings.public_url
    env = {str(k): str(v) for k, v in (job.get("env_vars") or {}).items()}
    env.update({
        "ARGUMENTS_PATH": str(args),
        "RESULTS_PATH": str(sup.job_dir / RESULT_FILE),
        "DATA_PATH": str(data),
        "ENV_JOB_ID_GATEWAY": sup.job_id,
        "ENV_JOB_GATEWAY_HOST": host,
        "ENV_JOB_GATEWAY_TOKEN": token,
        "ENV_GATEWAY_PROVIDER_HOST": host,
        "ENV_GATEWAY_PROVIDER_TOKEN": token,
        "ENV_ACCESS_TRIAL": "False",
    })
    return env


def channel_ops(sup: Supervisor) -> dict[str, Any]:
    """`qhybrid.send_error` inside a job: the same error event the gateway route records."""

    def send_error(code: str, message: str, exception: str, args: Any = None) -> bool:
        record_error_event(sup.registry, sup.job_id, code, message, exception, args)
        return True

    return {"send_error": send_error}


def record_error_event(registry: Any, job_id: str, code: Any, message: Any, exception: Any,
                       args: Any) -> None:
    """Keep an ERROR event (Qiskit Serverless' send_error) with the job."""
    import json
    import time

    from qhybrid.errors import InvalidInput

    # Trimmed as the gateway trims them: a traceback's message ends with a newline.
    code, message, exception = (None if v is None else str(v).strip()
                                for v in (code, message, exception))
    for name, value in (("code", code), ("message", message), ("exception", exception)):
        if not value:
            raise InvalidInput(f"{name} is required", field=name)
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
    event = {"event_type": "ERROR", "origin": "API", "context": "SEND_ERROR", "created": at,
             "data": {"code": code[:200], "message": message[:10000],
                      "exception": exception[:200], "args": args}}
    try:
        encoded = json.dumps(event, allow_nan=False)
    except ValueError:
        raise InvalidInput("args must be plain JSON", field="args") from None
    if len(encoded) > MAX_EVENT_BYTES:
        raise InvalidInput(f"the event is larger than {MAX_EVENT_BYTES} bytes", field="args")
    key = d.JOB_PEER_EVENTS_KEY.format(job_id=job_id)
    if registry.r.llen(key) >= MAX_EVENTS:
        raise InvalidInput(f"a job keeps at most {MAX_EVENTS} error events", field="args")
    registry.r.rpush(key, encoded)


def _mentions(src: Path, *words: str) -> bool:
    """Whether any Python file of the program names one of `words`."""
    needles = [w.encode() for w in words]
    for path in src.rglob("*.py"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                text = fh.read(4 * 1024**2)
                if any(n in text for n in needles):
                    return True
    return False


def _open_in(dir_fd: int, name: str) -> Any:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def finish(sup: Supervisor, keep: bool = True,
           peer_files: dict[str, tuple[int, int]] | None = None) -> None:
    """Revoke the job's token; with `keep`, store what it saved through RESULTS_PATH and the
    files it wrote in DATA_PATH (not for an attempt that a stopping worker cut short)."""
    job_tokens.revoke(sup.registry, sup.job_id)
    if not keep:
        return
    try:
        top = os.open(sup.job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        raw, converted = _read(sup, top, RESULT_FILE), _read(sup, top, CONVERTED_RESULT_FILE)
        if raw is not None:
            sup.store.put_bytes(keys.job_peer_result(sup.prefix), raw)
            sup.store.put_bytes(keys.job_result(sup.prefix), converted or raw)
            sup.registry.set_fields(sup.job_id, has_result=True, result_format="serverless")
        _sync_back(sup, top, peer_files or {})
    finally:
        os.close(top)


def _read(sup: Supervisor, top: int, name: str) -> bytes | None:
    fh = _open_in(top, name)
    if fh is None:
        return None
    with fh:
        data: bytes = fh.read(d.MAX_RESULT_BYTES + 1)
    if len(data) > d.MAX_RESULT_BYTES:
        sup.registry.append_log(sup.job_id, f"\n[qhybrid: {name} is larger than "
                                f"{d.MAX_RESULT_BYTES} bytes and was not kept]\n")
        return None
    return data


def _sync_back(sup: Supervisor, top: int, peer_files: dict[str, tuple[int, int]]) -> None:
    try:
        data_fd = os.open(DATA_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    except OSError:
        return
    files = DataFiles(sup.store, sup.registry, sup.settings)
    try:
        for name in sorted(os.listdir(data_fd)):
            fh = _open_in(data_fd, name)
            if fh is None:
                continue
            with fh:
                st = os.fstat(fh.fileno())
                if peer_files.get(name) == (st.st_size, st.st_mtime_ns):
                    continue
                try:
                    files.put(sup.job["user"], name, fh, length=st.st_size)
                except Exception as exc:   # a bad name, content or quota: say so, keep going
                    sup.registry.append_log(sup.job_id, f"\n[qhybrid: DATA_PATH/{name} was not "
                                            f"stored: {exc}]\n")
    finally:
        os.close(data_fd)


class ServerlessExtension(JobExtension):
    """The `qiskit_serverless` package's contract in a job: its files, variables, calls."""

    keeps = "DATA_PATH and result"

    def __init__(self, sup: Supervisor) -> None:
        super().__init__(sup)
        self.peer_files: dict[str, tuple[int, int]] = {}   # DATA_PATH as it was filled
        self.convert_before: list[tuple[str, str, str]] = []
        self.convert_after: list[tuple[str, str, str]] = []

    def ops(self) -> dict[str, Any]:
        return channel_ops(self.sup)

    def env(self) -> dict[str, str]:
        return prepare(self.sup, self)

    def prepare(self, spec: ChildSpec) -> None:
        spec.convert_before = self.convert_before
        spec.convert_after = self.convert_after

    def keep(self, status: str) -> None:
        finish(self.sup, keep=status != INTERRUPTED, peer_files=self.peer_files)


__all__ = ["ServerlessExtension", "finish", "prepare"]
