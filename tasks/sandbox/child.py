"""What runs inside a job's child process: limits first, then the user's code.

The child is forked from the warm zygote (tasks.sandbox.zygote) that already imported qiskit, so a
job does not pay for the import; it runs in the job's sandbox (tasks.sandbox.box). Nothing here
may touch Redis or storage: the child has no credentials.
"""

from __future__ import annotations

import ctypes
import io
import os
import resource
import runpy
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from tasks.sandbox.isolation import drop_capabilities
from tasks.sandbox.serverless_names import ServerlessNames

PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    cwd: str
    argv: list[str]                 # argv[0] is the entrypoint script
    env: dict[str, str]
    log_path: str
    error_path: str
    sys_path: list[str] = field(default_factory=list)
    cpus: list[int] = field(default_factory=list)
    mem_bytes: int = 0              # RLIMIT_DATA per process (a sandbox's cgroup limits the tree)
    file_bytes: int = 0             # RLIMIT_FSIZE: no file bigger than the job's disk quota
    tail_lines: int = 15
    # The account user code runs as (uid, gid), when the worker is root; see tasks.sandbox.isolation.
    run_as: tuple[int, int] | None = None
    # Set for a function call instead of a script: a cloudpickle file of (fn, args, kwargs);
    # the return value goes to return_path as codec JSON ("json") or cloudpickle ("pickle").
    call_path: str = ""
    return_path: str = ""
    return_format: str = "json"
    # Files to convert between qhybrid's codec and the Qiskit Serverless one (src, dst,
    # direction), before the user's code starts and after it ends (tasks.sandbox.serverless_codec).
    convert_before: list[tuple[str, str, str]] = field(default_factory=list)
    convert_after: list[tuple[str, str, str]] = field(default_factory=list)


def _die_with_parent() -> None:
    """Be killed when the process that waits for it dies: no orphaned user code."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _apply_limits(spec: ChildSpec) -> None:
    if spec.cpus:
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError:
            pass
    if spec.mem_bytes:
        # RLIMIT_DATA counts heap and private mappings (what user code allocates), not the
        # shared libraries inherited from the warm parent.
        resource.setrlimit(resource.RLIMIT_DATA, (spec.mem_bytes, spec.mem_bytes))
    if spec.file_bytes:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.file_bytes, spec.file_bytes))


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True,
                                  write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                  write_through=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))


def _user_frames(exc: BaseException) -> BaseException:
    """Drop our own frames (this module, runpy) from the top of the traceback."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or "runpy" in tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return exc.with_traceback(tb) if tb is not None else exc


def format_error(exc: BaseException, tail_lines: int) -> str:
    """The exception and the traceback's last lines: what the job's error message shows."""
    lines = "".join(traceback.format_exception(_user_frames(exc))).rstrip().splitlines()
    head = f"{type(exc).__name__}: {exc}"
    tail = "\n".join(lines[-tail_lines:])
    return f"{head}\n\n{tail}"


def main(spec: ChildSpec) -> None:
    os.setsid()                     # its own process group: a cancel kills it and all it started
    _die_with_parent()
    os.environ.clear()
    os.environ.update(spec.env)
    _redirect_output(spec.log_path)
    code = 0
    try:
        _apply_limits(spec)
        if spec.run_as:
            os.setgroups([])
            os.setgid(spec.run_as[1])
            os.setuid(spec.run_as[0])
        drop_capabilities()
        os.chdir(spec.cwd)
        sys.path[:0] = spec.sys_path
        sys.argv = list(spec.argv)
        sys.meta_path.append(_NoRay())   # last: an installed Ray is found first
        sys.meta_path.insert(0, ServerlessNames())
        _convert(spec.convert_before)
        if spec.call_path:
            _call(spec)
        else:
            runpy.run_path(spec.argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            code = exc.code if isinstance(exc.code, int) else 1
            message = f"SystemExit: {exc.code}"
            _write(spec.error_path, message)
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    except BaseException as exc:
        traceback.print_exception(_user_frames(exc))
        _write(spec.error_path, format_error(exc, spec.tail_lines))
        code = 1
    finally:
        _convert(spec.convert_after)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
    os._exit(code)


class _NoRay:
    """Answers `import ray` (when Ray is not installed) with the way to fan out on qhybrid."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(
                "Ray is not available on qhybrid: fan out with qhybrid's distribute_task "
                "(`from qhybrid import distribute_task, get`; `@distribute_task(target={'cpu': 1})`"
                " then `get(refs)`) instead of ray.remote", name="ray")
        return None


def _convert(steps: list[tuple[str, str, str]]) -> None:
    """Convert the peer's argument and result files; a file that cannot be is left as it is."""
    if not steps:
        return
    try:
        from tasks.sandbox.serverless_codec import convert_file

        for src, dst, direction in steps:
            if os.path.isfile(src):
                convert_file(src, dst, direction)
    except Exception:
        pass


def _call(spec: ChildSpec) -> None:
    """Call the shipped function and write its return value where the supervisor reads it."""
    import cloudpickle

    with open(spec.call_path, "rb") as fh:
        fn, args, kwargs = cloudpickle.load(fh)
    from qhybrid.runtime import final_result

    value = final_result(fn(*args, **kwargs))
    if spec.return_format == "pickle":
        data = cloudpickle.dumps(value)
    else:
        from qhybrid import codec

        data = codec.dumps(value, path="return value").encode()
    tmp = spec.return_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, spec.return_path)


def _write(path: str, text: str) -> None:
    """Write the error file; never through a link the user code put in its place."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
