"""What a job's sandbox is made of: the bubblewrap command line, what it shows of this host
(the system read-only, the service's Python, nothing of the service's data, secrets or other
jobs), and whether this host can make one.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

SANDBOX_ENV = "QHYBRID_SANDBOX"
BIND_ENV = "QHYBRID_SANDBOX_BIND"   # directories every sandbox also gets, read-write (opt-in)
_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")


class SandboxUnavailable(RuntimeError):
    """This host cannot run user code in a sandbox; the message says why and what to do."""


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """QHYBRID_SANDBOX: on unless it says off; anything else is an error, not a guess."""
    value = (os.environ if env is None else env).get(SANDBOX_ENV, "on").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise SandboxUnavailable(f"{SANDBOX_ENV}={value!r}: use on (the default) or off")


def hint() -> str:
    return (f"; set {SANDBOX_ENV}=off to run user code without a sandbox (only where every "
            "user of this service is trusted, e.g. a single-user laptop)")


def bwrap_binary() -> str:
    found = shutil.which("bwrap")
    if not found:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: install Debian's "
                                 "`bubblewrap` package (scripts/up and scripts/test do)" + hint())
    return found


# --- what the sandbox shows ---------------------------------------------------------------
def extra_binds(env: Mapping[str, str] | None = None) -> list[Path]:
    """QHYBRID_SANDBOX_BIND: directories the operator shares with every job (e.g. a data set)."""
    value = (os.environ if env is None else env).get(BIND_ENV, "")
    out = []
    for item in filter(None, value.split(os.pathsep)):
        path = Path(item)
        if not path.is_absolute() or not path.is_dir():
            raise SandboxUnavailable(f"{BIND_ENV}: {item!r} is not an existing absolute directory")
        out.append(path)
    return out


def python_paths() -> list[str]:
    """The Python installation and import path of this service (see `_python_paths`): worked
    out again only when this process has imported something or changed its path, not for
    every sandbox (it walks every loaded module)."""
    return list(_python_paths(tuple(sys.path), len(sys.modules)))


@functools.lru_cache(maxsize=4)
def _python_paths(sys_path: tuple[str, ...], loaded: int) -> tuple[str, ...]:
    """The Python installation and import path of this service: read-only in the sandbox.

    The prefixes, and of `sys.path` only the entries this process imported something from: a
    worker started with `python -m` in `/` or in a home directory has that directory first on
    its path, and showing it would show the whole of it.
    """
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    entries = sorted({os.path.abspath(p) for p in sys_path if p} - {"/"}, key=len, reverse=True)
    used: set[str] = set()
    for name, module in list(sys.modules.items()):
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        if not origin or not os.path.isabs(origin):
            continue
        # the longest entry that holds it is the one it was imported from
        entry = next((e for e in entries if origin.startswith(e.rstrip("/") + "/")), None)
        if entry is not None:
            used.add(entry)
        elif "." not in name:
            # found by an import hook, not a path entry (an editable install's finder): the
            # directory that holds the package or module
            top = os.path.dirname(origin)
            used.add(os.path.dirname(top) if os.path.basename(origin) == "__init__.py" else top)
    out: list[str] = []
    for path in prefixes | used:
        for p in {os.path.abspath(path), os.path.realpath(path)}:
            if p == "/" or not os.path.isdir(p):
                continue
            if not any(p == o or p.startswith(o + "/") for o in out):
                out = [o for o in out if not o.startswith(p + "/")] + [p]
    return tuple(sorted(out))


def hidden_paths(env: Mapping[str, str] | None = None) -> list[str]:
    """What of ours must stay invisible even when it lies below a path the sandbox shows."""
    from qhybrid import config
    from tasks.core.settings import Settings

    settings = Settings.from_env(dict(env) if env is not None else None)
    paths = [settings.data_dir, settings.work_dir, config.config_path().parent,
             Path.home() / ".config", Path.home() / ".aws", Path(tempfile.gettempdir())]
    return sorted({os.path.realpath(p) for p in paths})


@functools.lru_cache(maxsize=1)
def private_system_paths() -> tuple[tuple[str, bool], ...]:
    """Files and directories of /etc that an unprivileged account could not read, as
    (path, is a directory): `/etc/shadow`, `/etc/gshadow`, `/etc/ssl/private`, ssh host keys."""
    out: list[tuple[str, bool]] = []
    for root, dirs, files in os.walk("/etc"):
        for name in list(dirs):
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                out.append((path, True))
                dirs.remove(name)
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and not mode & 0o004:
                out.append((path, False))
    return tuple(sorted(out))


def bwrap_argv(rw: Iterable[Path], tmp_bytes: int, user_ns: bool,
               hide: Iterable[str] = (), ro_at: Iterable[tuple[Path, Path]] = (),
               rw_at: Iterable[tuple[Path, Path]] = ()) -> list[str]:
    argv = [bwrap_binary(), "--die-with-parent", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try",
            # the worker host's own name: user code that reports where it ran stays right
            "--hostname", socket.gethostname()]
    if user_ns:
        argv.append("--unshare-user")
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    # what no unprivileged account may read (shadow, host keys...): hidden, whoever the job
    # runs as (a root worker without QHYBRID_JOB_USER runs it as root)
    for path, is_dir in private_system_paths():
        argv += ["--tmpfs", path] if is_dir else ["--ro-bind", "/dev/null", path]
    # private /tmp first: the service's Python or checkout may itself lie below /tmp, and is
    # then bound on top of it below
    # (1777, as on a host: a job run as another account than the sandbox's owner writes there)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]
    # bwrap makes the missing parents of a bind 0700: made 0755 here first, so that a job run
    # as another account (QHYBRID_JOB_USER, or a user namespace's) can reach what is bound
    made = {"/", "/tmp", "/dev", "/proc"}       # these alone: what lies below is not there
    trees = list(_SYSTEM_DIRS)                 # these with what lies below them

    def bind(kind: str, source: str, dest: str) -> None:
        missing = []
        for parent in Path(dest).parents:
            p = str(parent)
            if p in made or any(p == t or p.startswith(t + "/") for t in trees):
                break
            missing.append(p)
        for p in reversed(missing):
            argv.extend(["--perms", "0755", "--dir", p])
        made.update(missing)
        trees.append(dest)
        argv.extend([kind, source, dest])

    shown = python_paths()
    for path in shown:
        if not any(path == s or path.startswith(s + "/") for s in _SYSTEM_DIRS):
            bind("--ro-bind", path, path)
    # anything of ours below a shown path (a data dir inside the checkout, say) is covered
    for path in hide:
        if any(path == s or path.startswith(s + "/") for s in shown):
            argv += ["--tmpfs", path]
    for rw_path in rw:
        bind("--bind", str(rw_path), str(rw_path))
    for source, dest in ro_at:
        bind("--ro-bind", str(source), str(dest))
    for source, dest in rw_at:
        bind("--bind", str(source), str(dest))
    # the namespace lives as long as this shell waits on the pipe the supervisor holds
    return argv + ["--chdir", "/", "--", "/bin/sh", "-c", "echo ready; read x"]
