"""`python -m tasks.sandbox.zygote SOCKET`: the warm parent of a worker's job processes.

Started by the worker with an explicit environment that holds no credential, it imports
qiskit once (tasks.sandbox.preload), then serves one request per connection on SOCKET (in a
directory only the service's account may enter): `{"spec", "ns_pid", "cgroup_procs"}`.

For each it forks an intermediate process that enters the sandbox's cgroup (writing 0 to
each `cgroup.procs`), joins the namespaces of `ns_pid` (the sandbox bubblewrap made) and
forks the job's process there. The intermediate sends `{"pid": <job pid>}`, waits for that
one process and sends `{"status": <exit code, -signal if killed>}`. It ends when its
standard input closes (the worker is gone).

A request without a spec makes a job process that waits, in its sandbox, for the spec to
come as the next line on the same connection (a sandbox made ready before its job is known:
tasks.sandbox.ready). Everything the spec decides (account, limits, environment, the code)
is applied only once it has come, exactly as for a spawn with the spec.

Before serving, the zygote's objects are frozen out of the garbage collector's reach
(`gc.freeze`): a child's collections then never touch, and so never copy, the pages it
shares with the zygote.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
# Joined in this order, after the user namespace that owns them; the mount one last.
_NAMESPACES = (("ipc", 0x08000000), ("uts", 0x04000000), ("pid", 0x20000000),
               ("mnt", 0x00020000))
NS_GET_USERNS = 0xB701       # ioctl: the user namespace that owns a namespace (linux/nsfs.h)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _send(conn: socket.socket, msg: dict[str, object]) -> None:
    try:
        conn.sendall(json.dumps(msg).encode() + b"\n")
    except OSError:
        pass


def _enter(ns_pid: int, cgroup_procs: list[str]) -> int | None:
    """Move this process into the cgroup and the namespaces; the new root's descriptor.

    Unprivileged, bubblewrap makes its namespaces in one user namespace and then runs the
    sandbox in a second one nested in it, which owns none of them: this process joins the
    owner first (it holds every capability there, as its creator's account), then the
    namespaces, then the nested one, as the sandbox's own processes are.
    """
    for path in cgroup_procs:
        with open(path, "w") as fh:
            fh.write("0")
    if not ns_pid:
        return None
    libc = _libc()
    own_user = os.stat("/proc/self/ns/user").st_ino
    fds = [(name, flag, os.open(f"/proc/{ns_pid}/ns/{name}", os.O_RDONLY))
           for name, flag in _NAMESPACES]
    users = []
    target_user = os.open(f"/proc/{ns_pid}/ns/user", os.O_RDONLY)
    if os.fstat(target_user).st_ino != own_user:   # not a root worker's sandbox
        owner = fcntl.ioctl(fds[-1][2], NS_GET_USERNS)      # the mount namespace's owner
        if os.fstat(owner).st_ino != os.fstat(target_user).st_ino:
            users.append(("user (owner)", owner))
        else:
            os.close(owner)
        users.append(("user", target_user))
    else:
        os.close(target_user)
    root = os.open(f"/proc/{ns_pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    steps = [(name, 0x10000000, fd) for name, fd in users[:1]] + fds + \
            [(name, 0x10000000, fd) for name, fd in users[1:]]
    for name, flag, fd in steps:
        if libc.setns(fd, flag) != 0:
            raise OSError(ctypes.get_errno(), f"joining the sandbox's {name} namespace failed")
        os.close(fd)
    return root


def _intermediate(conn: socket.socket, msg: dict[str, object]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        root = _enter(int(msg.get("ns_pid") or 0), list(msg.get("cgroup_procs") or []))  # type: ignore[call-overload]
        pid = os.fork()
        if pid == 0:
            _job(conn, root, msg)
        _send(conn, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(conn, {"status": os.waitstatus_to_exitcode(status)})
    except BaseException as exc:
        _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
    os._exit(0)


def _job(conn: socket.socket, root: int | None, msg: dict[str, object]) -> None:
    try:
        if root is not None:
            os.fchdir(root)
            os.chroot(".")
            os.chdir("/")
        spec = msg.get("spec")
        if spec is None:             # made ready ahead: the spec is the next line
            spec = _read_spec(conn)
        conn.close()
        os.closerange(3, 65536)      # nothing of the zygote's reaches user code
        from tasks.sandbox.child import ChildSpec, main

        main(ChildSpec(**spec))  # type: ignore[arg-type]
    except BaseException:
        # before user code runs: the service's fault, for the worker's log (os._exit below
        # would drop the traceback Python prints on the way out)
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(70)


def _read_spec(conn: socket.socket) -> dict[str, object]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 20)
        if not chunk:           # the sandbox was closed before a job came: nothing to run
            os._exit(0)
        data += chunk
    spec: dict[str, object] = json.loads(data)
    return spec


def serve(path: str) -> None:
    import tasks.sandbox.preload  # noqa: F401 - every job starts with qiskit imported

    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)    # intermediates are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([listener, stdin], [], [])
        if stdin in ready and not os.read(stdin, 4096):
            os._exit(0)             # the worker is gone
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        try:
            conn.settimeout(10)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            msg = json.loads(data)
            conn.settimeout(None)
        except (OSError, ValueError):
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _intermediate(conn, msg)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
