"""The in-job contract of the `qiskit_serverless` package, kept by the job's supervisor.

What that package reads: `ARGUMENTS_PATH` (the arguments as its client encoded them),
`RESULTS_PATH` (where its `save_result` writes), `DATA_PATH` (the user's file store as a
directory), and `ENV_JOB_GATEWAY_HOST` / `ENV_JOB_GATEWAY_TOKEN` / `ENV_JOB_ID_GATEWAY` for
its gateway calls (`update_status`, `send_error`, `ServerlessClient()` inside the job). The
token is job-scoped (tasks.job_tokens), never the user's.

The files live directly in the job's directory, which the service made: a link the job puts
in their place is never followed when the supervisor reads them back.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from storage import keys
from tasks import defaults as d
from tasks import job_tokens
from tasks.files import DataFiles

if TYPE_CHECKING:
    from tasks.supervisor import Supervisor

ARGUMENTS_FILE = "serverless-arguments.json"
RESULT_FILE = "serverless-result.json"
DATA_DIR = "data"


def prepare(sup: Supervisor) -> dict[str, str]:
    """Write the arguments, fill DATA_PATH with the user's files; the variables to set."""
    job = sup.job
    args = sup.job_dir / ARGUMENTS_FILE
    if sup.store.exists(keys.job_arguments(sup.prefix)):
        sup.store.download_file(keys.job_arguments(sup.prefix), args)
    else:
        args.write_text("{}")
    data = sup.job_dir / DATA_DIR
    data.mkdir()
    files = DataFiles(sup.store, sup.registry, sup.settings)
    sup.peer_files = {}
    for info in files.list(job["user"]):
        reader, _ = files.open(job["user"], info.name)
        with reader, open(data / info.name, "wb") as out:
            while chunk := reader.read(1024 * 1024):
                out.write(chunk)
        st = (data / info.name).stat()
        sup.peer_files[info.name] = (st.st_size, st.st_mtime_ns)
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


def _open_in(dir_fd: int, name: str) -> Any:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def finish(sup: Supervisor, keep: bool = True) -> None:
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
        result = _open_in(top, RESULT_FILE)
        if result is not None:
            with result:
                data = result.read(d.MAX_RESULT_BYTES + 1)
            if len(data) > d.MAX_RESULT_BYTES:
                sup.registry.append_log(sup.job_id, f"\n[qhybrid: the result is larger than "
                                        f"{d.MAX_RESULT_BYTES} bytes and was not kept]\n")
            else:
                sup.store.put_bytes(keys.job_result(sup.prefix), data)
                sup.registry.set_fields(sup.job_id, has_result=True, result_format="serverless")
        _sync_back(sup, top)
    finally:
        os.close(top)


def _sync_back(sup: Supervisor, top: int) -> None:
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
                if getattr(sup, "peer_files", {}).get(name) == (st.st_size, st.st_mtime_ns):
                    continue
                try:
                    files.put(sup.job["user"], name, fh, length=st.st_size)
                except Exception as exc:   # a bad name, content or quota: say so, keep going
                    sup.registry.append_log(sup.job_id, f"\n[qhybrid: DATA_PATH/{name} was not "
                                            f"stored: {exc}]\n")
    finally:
        os.close(data_fd)


__all__ = ["prepare", "finish"]
