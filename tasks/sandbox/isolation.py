"""Keeping user code away from what the service holds.

User code runs in a child without the Redis URL or storage credentials in its environment.
Two more walls keep it from reading them elsewhere:

- server processes are not dumpable, so code running as the same OS user cannot read their
  /proc/<pid>/environ or memory;
- user code holds no capabilities (when the workers run as root, the child drops them all),
  so it cannot override that, nor trace or read other processes;
- with QHYBRID_JOB_USER set and the workers running as root, user code runs as that
  unprivileged account, which owns only its job directory and cannot read the data
  directory either (Python must then be installed where that account can read it).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_CAP_VERSION_3 = 0x20080522


def make_undumpable() -> None:
    """Hide this process's environment and memory from other processes of the same user."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except OSError:
        pass


@dataclass(frozen=True)
class JobAccount:
    name: str
    uid: int
    gid: int
    home: str


def root_notice(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """One line for an operator running the workers as root (None when they are not)."""
    if os.geteuid() != 0:
        return None
    account = (os.environ if env is None else env).get("QHYBRID_JOB_USER", "")
    if account:
        return (f"workers run as root to start each job's code as {account!r}; they accept "
                "JSON messages only")
    return ("workers run as root and so does user code: set QHYBRID_JOB_USER=nobody (or "
            "another unprivileged account) to run it as that account")


def job_account(env: dict[str, str] | os._Environ[str] | None = None) -> JobAccount | None:
    """The account user code runs as (QHYBRID_JOB_USER, workers running as root), or None."""
    env = os.environ if env is None else env
    name = env.get("QHYBRID_JOB_USER", "")
    if os.geteuid() != 0 or not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"QHYBRID_JOB_USER={name!r} is not an account on this host; create "
                           "it, or set QHYBRID_JOB_USER= to run user code as the workers' "
                           "account") from None
    return JobAccount(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def hand_over(account: JobAccount | None, *paths: Path) -> None:
    """Give `paths` (recursively) to the job's account, so its code can work there."""
    if account is None:
        return
    for root in paths:
        os.chown(root, account.uid, account.gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), account.uid, account.gid)


def drop_capabilities() -> None:
    """In the child: give up every capability, for good.

    Also for an unprivileged account: a process that joined a sandbox's user namespace holds
    every capability in it until it drops them.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break                               # past the last capability this kernel knows
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()              # effective, permitted, inheritable: all empty
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed: user code would keep root's powers")


def open_job_file(path: Path) -> BinaryIO | None:
    """Open a file user code wrote, for reading by the service, or None if it is not there.

    User code owns the job's directory: a link there must not make the service read a file
    of its own choosing, so links are refused and only a regular file is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, OSError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def private_dir(path: Path) -> Path:
    """A directory only the service's own account may enter."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
