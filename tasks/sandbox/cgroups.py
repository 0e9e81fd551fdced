"""Control groups for job sandboxes: one per job attempt or task executor.

A job's cgroup holds every process its user code starts, so that memory (shared memory and
tmpfs pages included), the number of processes and CPU are limited for the whole tree, and
so that the whole tree can be killed at once however it tried to escape (setsid, double
forks, fork loops). cgroup v2 is used where the host has it; else the v1 `memory`, `pids`,
`freezer` and `cpu` hierarchies. Job cgroups are made below the cgroup this process is in,
under a directory named for this process (`qh-<pid>-<random>-<pid namespace>`), so that parallel services
on one host never collide; directories left by a worker that died are removed by the next.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from qhybrid.processes import pid_alive

V1_CONTROLLERS = ("memory", "pids", "freezer", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000
_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """This process cannot make the cgroups a sandbox needs; the message says why."""


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" -> its v2 path."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(",") if ctrls else [""]:
                out[ctrl] = path
    return out


def _mounts() -> dict[str, tuple[str, str]]:
    """Controller (v2: "") -> (mount point, root of the mount) from /proc/self/mountinfo."""
    out: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(rparts) < 3:
                continue
            fstype, options = rparts[0], rparts[2].split(",")
            if fstype == "cgroup2":
                out.setdefault("", (parts[4], parts[3]))
            elif fstype == "cgroup":
                for ctrl in V1_CONTROLLERS:
                    if ctrl in options:
                        out.setdefault(ctrl, (parts[4], parts[3]))
    return out


def _dir_for(mount: tuple[str, str], path: str) -> Path:
    point, root = mount
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return Path(point + rel.rstrip("/")) if rel not in ("", "/") else Path(point)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(path: Path, name: str) -> int:
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _pid_namespace() -> str:
    """This process's PID namespace: a worker's pid, in its cgroups' names, is one of it.

    Workers in other PID namespaces (containers, the simulated hosts of the tests) share the
    cgroup hierarchy, and their pids name other processes here, or none."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


@dataclass
class JobCgroup:
    """The cgroup of one sandbox (on v1: one directory per controller)."""

    version: int
    dirs: dict[str, Path]           # controller -> directory; v2: {"": directory}
    mem: int = 0
    pids: int = 0
    removed: bool = field(default=False, repr=False)

    def _d(self, ctrl: str) -> Path:
        return self.dirs[""] if self.version == 2 else self.dirs[ctrl]

    def rename(self, label: str) -> None:
        """Name it after `label` from now on (a sandbox made ready before its job came)."""
        for ctrl, path in list(self.dirs.items()):
            new = path.with_name(f"{label}-{path.name.split('-', 1)[-1]}")
            path.rename(new)
            self.dirs[ctrl] = new

    def procs_files(self) -> list[str]:
        """The files a process writes "0" to, to enter this cgroup (every hierarchy)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def set_limits(self, mem: int, pids: int, cpu: float) -> None:
        self.mem, self.pids = mem, pids
        if self.version == 2:
            d = self.dirs[""]
            _write(d / "memory.max", str(mem))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "memory.oom.group", "1")    # an OOM kill takes the whole job
            _write(d / "pids.max", str(pids))
            if cpu > 0:
                _write(d / "cpu.max", f"{int(cpu * CFS_PERIOD_US)} {CFS_PERIOD_US}")
            return
        m = self.dirs["memory"]
        _write(m / "memory.limit_in_bytes", str(mem))
        if (m / "memory.memsw.limit_in_bytes").exists():   # no escape into swap either
            _write(m / "memory.memsw.limit_in_bytes", str(mem))
        _write(self.dirs["pids"] / "pids.max", str(pids))
        if cpu > 0 and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(int(cpu * CFS_PERIOD_US)))

    def oom_kills(self) -> int:
        if self.version == 2:
            return _counter(self.dirs[""] / "memory.events", "oom_kill")
        return _counter(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def pids_refused(self) -> int:
        """How often a fork was refused because the job had `pids` processes."""
        return _counter(self._d("pids") / "pids.events", "max")

    def pids_in(self) -> list[int]:
        out = []
        for line in _read(self._d("freezer" if self.version == 1 else "") / "cgroup.procs").split():
            try:
                out.append(int(line))
            except ValueError:
                pass
        return out

    def kill(self, timeout: float = 10.0) -> None:
        """Kill every process in the cgroup, forks in flight included; wait until it is empty."""
        if self.removed:
            return
        deadline = time.monotonic() + timeout
        if self.version == 2:
            d = self.dirs[""]
            if (d / "cgroup.kill").exists():
                _write(d / "cgroup.kill", "1")
            else:           # kernels before 5.14: freeze, kill, thaw
                self._freeze_kill(d / "cgroup.freeze", "1", "0", deadline)
        else:
            self._freeze_kill(self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED",
                              deadline)
        while self.pids_in() and time.monotonic() < deadline:
            for pid in self.pids_in():
                _kill(pid)
            time.sleep(0.005)

    def _freeze_kill(self, state: Path, frozen: str, thawed: str, deadline: float) -> None:
        # Frozen, no process can fork; each gets SIGKILL, which it takes when thawed.
        _write(state, frozen)
        while time.monotonic() < deadline:
            now = _read(state).strip()
            if now in (frozen, "") or (self.version == 2 and _counter(
                    state.parent / "cgroup.events", "frozen") == 1):
                break
            time.sleep(0.001)
        for pid in self.pids_in():
            _kill(pid)
        _write(state, thawed)

    def remove(self) -> None:
        """Kill what is left and remove the directories."""
        if self.removed:
            return
        self.kill()
        for d in self.dirs.values():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:         # a process is still on its way out
                    time.sleep(0.005)
        self.removed = True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CgroupTree:
    """Where this process makes its job cgroups."""

    def __init__(self) -> None:
        own, mounts = _own_paths(), _mounts()
        tag = f"qh-{os.getpid()}-{secrets.token_hex(3)}-{_pid_namespace()}"
        self._n = 0
        v2 = mounts.get("")
        if v2 and set(V2_CONTROLLERS) <= set(_read(Path(v2[0]) / "cgroup.controllers").split()):
            self.version = 2
            parent = _dir_for(v2, own.get("", "/"))
            self.parents = {"": parent}
        else:
            missing = [c for c in V1_CONTROLLERS if c not in mounts or c not in own]
            if [c for c in missing if c != "cpu"]:
                raise CgroupUnavailable(
                    "this host has neither cgroup v2 with the memory, pids and cpu controllers "
                    f"nor the cgroup v1 hierarchies {', '.join(missing)}")
            self.version = 1
            self.parents = {c: _dir_for(mounts[c], own[c]) for c in V1_CONTROLLERS
                            if c not in missing}
        self.tag = tag
        self.bases: dict[str, Path] = {}
        try:
            for ctrl, parent in self.parents.items():
                _remove_stale(parent)
                base = parent / tag
                base.mkdir()
                self.bases[ctrl] = base
            if self.version == 2:
                self._enable_v2()
        except OSError as exc:
            self.close()
            where = ", ".join(str(p) for p in self.parents.values())
            raise CgroupUnavailable(f"cannot make cgroups under {where}: {exc}") from None

    def _enable_v2(self) -> None:
        want = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        parent = self.parents[""]
        try:
            _write(parent / "cgroup.subtree_control", want)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror}; the service's cgroup must be delegated "
                          "to it with these controllers available to children (for example "
                          "systemd-run --scope -p Delegate=yes)") from None
        _write(self.bases[""] / "cgroup.subtree_control", want)

    def create(self, mem: int, pids: int, cpu: float, label: str = "") -> JobCgroup:
        """A new job cgroup, named after `label` (the job attempt) so operators find it."""
        self._n += 1
        name = f"{label or 'j'}-{self._n}-{secrets.token_hex(3)}"
        dirs: dict[str, Path] = {}
        group = JobCgroup(self.version, dirs)
        try:
            for ctrl, base in self.bases.items():
                (base / name).mkdir()
                dirs[ctrl] = base / name
            group.set_limits(mem, pids, cpu)
        except OSError:
            group.remove()
            raise
        return group

    def close(self) -> None:
        for base in self.bases.values():
            for child in base.iterdir() if base.is_dir() else []:
                if child.is_dir():
                    _kill_and_rmdir(child, self.version)
            try:
                base.rmdir()
            except OSError:
                pass
        self.bases = {}


def _kill_and_rmdir(path: Path, version: int) -> None:
    for line in _read(path / "cgroup.procs").split():
        _kill(int(line))
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _remove_stale(parent: Path) -> None:
    """Remove what workers that died left under `parent` (their processes were killed)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        parts = entry.name.split("-")
        if len(parts) != 4 or parts[0] != "qh" or not parts[1].isdigit() or not entry.is_dir():
            continue
        if parts[3] != _pid_namespace():
            continue    # its pid means nothing here: a worker of that namespace cleans it up
        if pid_alive(int(parts[1])):
            continue
        for child in entry.iterdir():
            if child.is_dir():
                _kill_and_rmdir(child, 1)
        try:
            entry.rmdir()
        except OSError:
            pass
