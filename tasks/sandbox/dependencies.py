"""A job's `dependencies`: installed once per set into an environment cached on each worker
host, layered over the workers' base environment, and shown read-only to the job's sandbox.

- One mechanism for every job kind (programs, Serverless functions, hybrid jobs) and for the
  executors of their distributed tasks: the set, with the base environment and the package
  index, names the environment (`<work dir>/environments/<key>`). The first job with a set
  installs it; later ones on that host use it as it is, with no install at all.
- Layered, not replacing: pip installs with `--prefix` from this interpreter, so what the base
  environment already has satisfies a requirement and is not installed again, and every base
  distribution is a constraint: a requirement that would change one is refused, with pip's
  reason, instead of shadowing the packages the service itself runs on.
- Only the configured package index (`QHYBRID_PACKAGE_INDEX`: an index URL, or a directory of
  wheels); pip runs `--isolated` (no pip configuration or PIP_* variables of the host), and a
  requirement may not name a URL or path.
- Wheels only (`--only-binary :all:`): installing a wheel runs no code of the package, while
  building a source distribution would run it outside the sandbox, in the worker.
- Never as root, never with the worker's view: pip runs in a sandbox of its own, like a job's,
  as the job account (QHYBRID_JOB_USER) or `nobody` when the worker is root, writing only to
  a private staging directory; the worker then owns the result and makes it read-only.
- Inside the sandbox the environment is at `SANDBOX_PATH`: its site-packages on the job's
  `sys.path` and on `PYTHONPATH` (subprocesses, a notebook kernel, see it too), its `bin` first
  on `PATH`. Each user of an environment holds a shared lock on it; only environments nobody
  holds are removed when the cache grows past `MAX_ENVIRONMENTS`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import pwd
import runpy
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from qhybrid.errors import InvalidInput, QhybridError
from tasks.core import defaults as d
from tasks.core.settings import Settings
from tasks.sandbox.isolation import job_account

SANDBOX_PATH = Path("/qhybrid/dependencies")   # where a job sees its environment
MAX_ENVIRONMENTS = 32                          # kept per host; unheld ones beyond go, oldest first
FIELD = "dependencies"
OFF = ("this server does not install dependencies (an operator enables it with "
       "QHYBRID_ALLOW_INSTALLS=1); drop them and use what the workers have "
       "(`dependencies_versions()` lists it)")
# what pip may read of the worker's environment: proxies and CA bundles, nothing of ours
_PASSED_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
               "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


class InstallCanceled(Exception):
    """The job was canceled while its dependencies were being installed."""


def parse(value: Any) -> list[str]:
    """A job's or function's `dependencies`, checked: requirement strings (name, extras,
    version specifiers, markers), as given. Raises InvalidInput saying what is wrong."""
    if value in (None, []):
        return []
    if not isinstance(value, list):
        raise InvalidInput("dependencies are a list of requirement strings, e.g. "
                           "[\"qiskit-algorithms==0.3.1\"]", field=FIELD)
    if len(value) > d.MAX_DEPENDENCIES:
        raise InvalidInput(f"at most {d.MAX_DEPENDENCIES} dependencies", field=FIELD)
    out = []
    for line in value:
        text = _from_mapping(line).strip()
        if not text or len(text) > 200:
            raise InvalidInput("a requirement is 1 to 200 characters", field=FIELD)
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise InvalidInput(f"{text[:80]!r} is not a requirement (a name with optional "
                               f"extras and versions, e.g. 'qiskit-algorithms==0.3.1'; pip "
                               f"options are not accepted): {exc}", field=FIELD) from None
        if req.url:
            raise InvalidInput(f"{text[:80]!r} names a URL or path: dependencies come from "
                               "the service's package index, by name and version", field=FIELD)
        out.append(text)
    return out


def _from_mapping(item: Any) -> str:
    """A requirement string; also from the Qiskit Serverless gateway's one-entry object form,
    `{"pendulum": "3.0.0"}` (a bare version means ==) or `{"mergedeep": ">=1.3"}`."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        [(name, version)] = item.items()
        if isinstance(name, str) and isinstance(version, str | int | float) \
                and not isinstance(version, bool):
            version = str(version).strip()
            return name + (f"=={version}" if version[:1].isdigit() else version)
    raise InvalidInput("a dependency is a requirement string (\"pendulum==3.0.0\") or an "
                       "object of one name and version ({\"pendulum\": \"3.0.0\"})",
                       field=FIELD)


def accepted(value: Any, settings: Settings) -> list[str]:
    """`parse`, and refused (InvalidInput) when this server does not install: what the API
    checks at upload and submission."""
    requirements = parse(value)
    if requirements and not settings.allow_installs:
        raise InvalidInput(OFF, field=FIELD)
    return requirements


@functools.lru_cache(maxsize=1)
def base_distributions() -> tuple[tuple[str, str], ...]:
    """(name, version) of every distribution of the workers' base environment."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return tuple(sorted(found.items()))


def index_args(index: str) -> list[str]:
    """pip's arguments for the configured index: a URL, or a directory of wheels."""
    if index.startswith(("http://", "https://", "file://")):
        return ["--index-url", index]
    path = Path(index)
    if not path.is_absolute() or not path.is_dir():
        raise QhybridError(f"QHYBRID_PACKAGE_INDEX={index!r} is neither an index URL nor an "
                           "existing absolute directory of wheels")
    return ["--no-index", "--find-links", str(path)]


def key(requirements: Iterable[str], index: str) -> str:
    """The environment's name: the set (order and spelling aside), the base and the index."""
    reqs = sorted({_canonical(Requirement(r)) for r in requirements})
    basis = {"requirements": reqs, "index": index, "python": sys.version,
             "prefix": sys.prefix, "base": base_distributions()}
    return hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:32]


def _canonical(req: Requirement) -> str:
    extras = ",".join(sorted(canonicalize_name(e) for e in req.extras))
    specs = ",".join(sorted(str(s) for s in req.specifier))
    marker = f";{req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}[{extras}]{specs}{marker}"


@dataclass
class Environment:
    """One installed set, as a job uses it; `hold` keeps it from being removed."""

    path: Path
    _lock: int | None = field(default=None, repr=False)

    @property
    def site(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.path),
                                                        "platbase": str(self.path)}))

    def seen(self, sandboxed: bool) -> tuple[str, str]:
        """(site-packages, bin) as the job sees them."""
        root = SANDBOX_PATH if sandboxed else self.path
        site = root / self.site.relative_to(self.path)
        return str(site), str(root / "bin")

    def apply(self, spec: Any, sandboxed: bool) -> None:
        """Put the environment on a child's import path, PYTHONPATH and PATH."""
        site, bin_dir = self.seen(sandboxed)
        spec.sys_path.append(site)
        spec.env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, spec.env.get("PYTHONPATH")]))
        spec.env["PATH"] = os.pathsep.join(filter(None, [bin_dir, spec.env.get("PATH")]))

    def mount(self) -> list[tuple[Path, Path]]:
        """The sandbox's read-only view of it: (host directory, where the job sees it)."""
        return [(self.path, SANDBOX_PATH)]

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _lock_path(env_path: Path) -> Path:
    return env_path.with_name(env_path.name + ".lock")


def root(settings: Settings) -> Path:
    return settings.work_dir / "environments"


def ensure(requirements: list[str], settings: Settings, log: IO[bytes],
           tick: Callable[[], bool] = lambda: False) -> Environment | None:
    """The environment of `requirements` on this host, installed now if it is not yet, and
    held (call `release` when done). None for no requirements.

    pip's output goes to `log`. `tick` runs while pip runs and while waiting for another
    process installing the same set; True cancels (InstallCanceled). Raises InvalidInput when
    installs are off, QhybridError (with pip's last lines) when the install fails.
    """
    if not requirements:
        return None
    if not settings.allow_installs:
        raise InvalidInput(OFF, field=FIELD)
    base = root(settings)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o711)       # the job account passes through to its own environment only
    env = Environment(base / key(requirements, settings.package_index))
    lock = os.open(_lock_path(env.path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + d.DEPENDENCY_INSTALL_TIMEOUT_S
        if _claim(lock, env.path, tick, deadline):
            _install(requirements, settings, env.path, log, tick)
            _prune(base, keep=env.path)
            os.utime(lock)             # the newest: not what a prune removes next
            fcntl.flock(lock, fcntl.LOCK_SH)
        else:
            _note(log, b"[qhybrid: dependencies already installed on this host]\n")
        os.utime(lock)
        env._lock, lock = lock, -1
        return env
    finally:
        if lock >= 0:
            os.close(lock)


def _note(log: IO[bytes], line: bytes) -> None:
    log.write(line)
    log.flush()         # before the child writes: the log is read through its descriptor


def _claim(fd: int, path: Path, tick: Callable[[], bool], deadline: float) -> bool:
    """Hold the environment's lock: shared when the environment is there (False), else
    exclusive, to install it (True).

    Shared: the jobs using it hold it so. Exclusive: one process installs or removes it. A
    process waiting to install looks again while it waits: the one that installed it first
    holds it shared from then on.
    """
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if path.is_dir():
                return False
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not path.is_dir():
                return True
            fcntl.flock(fd, fcntl.LOCK_SH)      # installed between the two looks
            return False
        except BlockingIOError:       # being installed, or removed, or (exclusive) in use
            pass
        if tick():
            raise InstallCanceled()
        if time.monotonic() > deadline:
            raise QhybridError("waiting for another install of the same dependencies took "
                               f"more than {d.DEPENDENCY_INSTALL_TIMEOUT_S} s")
        time.sleep(d.SUPERVISOR_TICK_S * 4)


def _installer() -> tuple[int, int] | None:
    """(uid, gid) pip runs as when the worker is root: the job account, else nobody."""
    if os.geteuid() != 0:
        return None
    account = job_account()
    if account is not None:
        return account.uid, account.gid
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _install(requirements: list[str], settings: Settings, target: Path, log: IO[bytes],
             tick: Callable[[], bool]) -> None:
    """pip, in a sandbox of its own like a job's (forked from the warm parent, with a private
    /tmp, seeing the system and the service's Python read-only and only its staging directory
    read-write), as the installing account; the result lands under `target` when complete."""
    import cloudpickle

    from tasks.sandbox.box import Sandbox
    from tasks.sandbox.child import ChildSpec
    from tasks.sandbox.environment import warm_parent

    as_user = _installer()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    box: Sandbox | None = None
    try:
        reqs, constraints = staging / "requirements.txt", staging / "base-constraints.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in base_distributions()))
        prefix, pip_log = staging / "env", staging / "pip.log"
        pip_log.touch()
        call = staging / "call.pkl"
        call.write_bytes(cloudpickle.dumps((runpy.run_module, ("pip",),
                                            {"run_name": "__main__", "alter_sys": True})))
        index = index_args(settings.package_index)
        argv = ["pip", "install", "--isolated", "--no-input", "--disable-pip-version-check",
                "--no-warn-script-location", "--progress-bar", "off", "--only-binary", ":all:",
                *index, "--cache-dir", str(staging / "cache"), "--prefix", str(prefix),
                "-c", str(constraints), "-r", str(reqs)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(staging), "LANG": "C.UTF-8",
               **{k: os.environ[k] for k in _PASSED_ENV if k in os.environ}}
        if as_user:
            for path in (staging, reqs, constraints, pip_log, call):
                os.chown(path, *as_user)
        wheels = [Path(index[-1])] if index[0] == "--no-index" else []
        box = Sandbox([staging], mem=d.DEPENDENCY_INSTALL_MEM_BYTES, cpu=1.0,
                      label=f"deps-{target.name[:12]}", ro_at=[(w, w) for w in wheels])
        spec = ChildSpec(cwd=str(staging), argv=argv, env=env, log_path=str(pip_log),
                         error_path=str(staging / "error.txt"), run_as=as_user,
                         mem_bytes=d.DEPENDENCY_INSTALL_MEM_BYTES, call_path=str(call),
                         return_path=str(staging / "return.json"))
        log.write(f"[qhybrid: installing dependencies: {', '.join(requirements)}]\n".encode())
        log.flush()
        start = log.tell()
        warm_parent()
        proc = box.spawn(spec)
        deadline = time.monotonic() + d.DEPENDENCY_INSTALL_TIMEOUT_S
        copied = 0
        while proc.is_alive():
            proc.join(d.SUPERVISOR_TICK_S * 2)
            copied = _forward(pip_log, log, copied)
            canceled = tick()
            if canceled or time.monotonic() > deadline:
                box.kill()
                if canceled:
                    raise InstallCanceled()
                raise QhybridError("installing the dependencies took more than "
                                   f"{d.DEPENDENCY_INSTALL_TIMEOUT_S} s")
        _forward(pip_log, log, copied)
        hit = box.limit_hit(final=True)
        if proc.exitcode:
            tail = hit or _tail(log, start)
            raise QhybridError(f"installing the dependencies failed (pip exited with "
                               f"{proc.exitcode}); pip said:\n{tail}")
        prefix.mkdir(exist_ok=True)     # every requirement was in the base environment
        # ours from here, read-only for everyone else, and complete when it appears under
        # its name (a rename, on this file system)
        for dirpath, dirnames, filenames in os.walk(prefix):
            for name in [*dirnames, *filenames, ""]:
                entry = os.path.join(dirpath, name) if name else str(dirpath)
                if as_user:
                    os.lchown(entry, os.geteuid(), os.getegid())
                if not os.path.islink(entry):
                    mode = os.lstat(entry).st_mode & 0o777
                    os.chmod(entry, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & 0o755)
        os.rename(prefix, target)
    finally:
        if box is not None:
            box.close()
        shutil.rmtree(staging, ignore_errors=True)


def _forward(source: Path, log: IO[bytes], pos: int) -> int:
    """Copy what pip wrote since `pos` into the job's log; the new position."""
    with open(source, "rb") as fh:
        fh.seek(pos)
        chunk = fh.read()
    if chunk:
        log.write(chunk)
        log.flush()
    return pos + len(chunk)


def _tail(log: IO[bytes], start: int, lines: int = 30) -> str:
    try:
        text = os.pread(log.fileno(), 256 * 1024, start).decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _prune(base: Path, keep: Path, limit: int = MAX_ENVIRONMENTS) -> None:
    """Remove the least recently used environments past `limit`, skipping any in use."""
    envs = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep]
    if len(envs) + 1 <= limit:
        return
    envs.sort(key=lambda p: _lock_path(p).stat().st_mtime if _lock_path(p).exists() else 0)
    for path in envs[:len(envs) + 1 - limit]:
        fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue            # a job uses it
        try:
            # its lock file stays: a process may have it open, waiting to install this set
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


__all__ = ["FIELD", "MAX_ENVIRONMENTS", "SANDBOX_PATH", "Environment", "InstallCanceled",
           "base_distributions", "ensure", "index_args", "key", "parse"]
