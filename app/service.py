"""`qhybrid up`: every process of the service on one machine, on embedded defaults.

Embedded Redis (persisted with AOF under the data directory) unless QHYBRID_REDIS_URL is set,
local-directory storage unless QHYBRID_STORAGE_URL is set, the web app, and one Celery worker
per resource class. The same processes are named in the Procfile.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from qhybrid import config
from qhybrid.resources import load_classes
from tasks.core.defaults import (
    GUNICORN_LIMIT_FIELD_SIZE,
    GUNICORN_LIMIT_REQUEST_LINE,
    REDIS_RESTART_WAIT_S,
    WEB_REDIS_RETRY_S,
)
from tasks.core.queues import device_queue, jobs_queue, tasks_queue
from tasks.core.redis_client import connect, redis_server_binary, set_retry_window
from tasks.core.registry import Registry
from tasks.core.settings import Settings
from tasks.sandbox.isolation import job_account, private_dir, root_notice

LOCAL_USER = "local"
DEVICE_WORKER = "worker-devices"   # "worker-": stop() signals its main process, not its pool


def _die_with_parent() -> None:
    """Run in each child before exec: if `qhybrid up` is killed, its processes go with it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start the embedded redis-server, persisted with AOF under `data_dir/redis`.

    It asks for a password kept in a private file: any local process could reach the port,
    and a password on the command line would be readable by all of them.
    """
    rdir = private_dir(data_dir / "redis")
    secret = rdir / "password"
    if not secret.exists():
        _write_private(secret, secrets.token_urlsafe(32))
    password = secret.read_text().strip()
    conf = rdir / "redis.conf"
    _write_private(conf, f"requirepass {password}\n")
    port = port or free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), str(conf), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(rdir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
         "--logfile", str(rdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    r = connect(url)
    deadline = time.monotonic() + REDIS_RESTART_WAIT_S
    while True:
        try:
            if r.ping():
                break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {rdir / 'redis.log'}") from None
            time.sleep(0.05)
    # AOF loading: wait until the data set is ready
    while r.info("persistence").get("loading"):
        time.sleep(0.05)
    _write_private(rdir / "url", url)   # so `qhybrid user create` finds it
    return proc, url


def restart_redis_if_exited(proc: subprocess.Popen[bytes], data_dir: Path, url: str,
                            log: Any = print) -> subprocess.Popen[bytes] | None:
    """The embedded redis-server again, on the same port and AOF, if it exited; else None.

    Workers and the web reconnect by themselves (tasks.core.redis_client, Celery's broker retry);
    meanwhile the API answers 503 with Retry-After.
    """
    if proc.poll() is None:
        return None
    port = urlsplit(url).port
    log(f"redis-server exited ({proc.returncode}); starting it again on port {port} "
        f"(see {data_dir / 'redis' / 'redis.log'})")
    new, _ = start_redis(data_dir, port)
    log(f"redis-server is back on port {port}")
    return new


def prepare_dirs(settings: Settings, env: dict[str, str]) -> None:
    """Only the service's account enters its data; user code gets a work directory it can reach.

    With QHYBRID_JOB_USER set (workers running as root), user code runs as that account,
    which cannot enter a data directory under /root: job directories go to the temp directory.
    """
    os.chmod(settings.data_dir, 0o711)
    for name in ("storage", "logs", "redis"):
        private_dir(settings.data_dir / name)
    if job_account(env) is not None and not env.get("QHYBRID_WORK_DIR"):
        env["QHYBRID_WORK_DIR"] = str(Path(tempfile.gettempdir()) / "qhybrid-work")
    work = Path(env.get("QHYBRID_WORK_DIR") or settings.data_dir / "work")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@dataclass
class Service:
    """The processes of one running service."""

    host: str
    port: int
    env: dict[str, str]
    classes: list[str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    log_dir: Path | None = None
    # One job worker and one task worker consume every class's queues (the supervisor applies
    # each job's own class limits): what one small host can serve, with every class answered.
    shared_workers: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, name: str, argv: list[str]) -> None:
        out: Any = subprocess.DEVNULL
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child
        # Workers tell jobs where the in-job gateway calls go (the Qiskit Serverless drop-in).
        env = {"QHYBRID_PUBLIC_URL": self.url, **self.env}
        self.procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        self.argv[name] = argv

    def respawn_exited(self, log: Any = print) -> list[str]:
        """Start again any process that exited: a crashed worker's jobs are run again by the
        reaper of the workers still up, and new jobs need a worker."""
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                where = f" (see {self.log_dir}/{name}.log)" if self.log_dir else ""
                log(f"{name} exited ({proc.returncode}); starting it again{where}")
                self._spawn(name, self.argv[name])
                restarted.append(name)
        return restarted

    def start_web(self) -> None:
        self._spawn("web", web_command(self.host, self.port))

    def start_workers(self) -> None:
        if self.shared_workers and len(self.classes) > 1:
            joined = ",".join(self.classes)
            self._spawn("worker-jobs", worker_command(joined))
            self._spawn("worker-tasks", task_worker_command(joined))
            return
        for cls in self.classes:
            self._spawn(f"worker-{cls}", worker_command(cls))
            self._spawn(f"worker-tasks-{cls}", task_worker_command(cls))

    def _has_task_worker(self, cls: str) -> bool:
        return f"worker-tasks-{cls}" in self.procs or \
            (self.shared_workers and "worker-tasks" in self.procs)

    def start_device_workers(self) -> None:
        """One device worker consuming every configured device's queue (tasks.devices.worker)."""
        self._spawn(DEVICE_WORKER, device_worker_command())

    def _device_queues(self) -> list[str]:
        if DEVICE_WORKER not in self.procs:
            return []
        from tasks.devices.catalog import device_registry

        # GPU devices are served only where a GPU is (tasks.devices.worker.served_here): not awaited
        return [device_queue(spec.name) for spec in device_registry(Settings.from_env(self.env))
                if spec.device == "CPU"]

    def wait_web(self, timeout: float = 60.0) -> None:
        """Block until the web process answers (`/healthz?scope=process`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get("web")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"web exited with code {proc.returncode}"
                                   + (f"; see {self.log_dir}/web.log" if self.log_dir else ""))
            try:
                if requests.get(self.url + "/healthz?scope=process", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the web did not answer in {timeout} s")

    def expected_queues(self) -> list[str]:
        """The queues the processes this service started consume."""
        expected = [jobs_queue(c) for c in self.classes] + self._device_queues()
        return expected + [tasks_queue(c) for c in self.classes if self._has_task_worker(c)]

    def wait_ready(self, timeout: float = 60.0, warming_ok: bool = False) -> dict[str, object]:
        """Block until /healthz says Redis, storage and every queue have what they need: a
        live worker, or with `warming_ok` one that is starting."""
        deadline = time.monotonic() + timeout
        last: dict[str, object] = {}
        expected = self.expected_queues()
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}"
                                       + (f"; see {self.log_dir}/{name}.log" if self.log_dir else ""))
            try:
                resp = requests.get(self.url + "/healthz", timeout=2)
                last = resp.json()
                queues = last.get("queues", {})
                warming = last.get("warming") if warming_ok else []
                served = [q for q in expected if isinstance(queues, dict) and queues.get(q)
                          or isinstance(warming, list) and q in warming]
                if len(served) == len(expected) and last.get("redis") == "ok" \
                        and last.get("storage") == "ok":
                    return last
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the service did not become ready in {timeout} s: {last}")

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process this service started (workers' running jobs are run again later)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                if name.startswith("worker"):
                    # the worker itself first: its supervisors hand running jobs back to the
                    # queue before anything else in its process group is stopped
                    proc.send_signal(signal.SIGTERM)
                else:
                    _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)     # what is left of its group
            proc.wait()
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def web_command(host: str, port: int | str) -> list[str]:
    # Threads, not processes: long-polls hold a thread each while they wait. Its limits sit
    # above the app's (app.errors answers 414/431 as problem+json); its worker dies with its
    # master and a new master binds beside a lingering one (app.gunicorn_hooks).
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "64",
            "--workers", "1", "--bind", f"{host}:{port}", "--timeout", "120",
            "--graceful-timeout", "3", "--access-logfile", "-", "--reuse-port",
            "--limit-request-line", str(GUNICORN_LIMIT_REQUEST_LINE),
            "--limit-request-field_size", str(GUNICORN_LIMIT_FIELD_SIZE),
            "--config", "python:app.gunicorn_hooks", "app:create_app()"]


def worker_command(resource_class: str) -> list[str]:
    """The worker for a class's whole jobs (`jobs.<class>`; several classes comma-separated)."""
    return [sys.executable, "-m", "tasks.worker", "jobs", resource_class]


def task_worker_command(resource_class: str, concurrency: int | None = None,
                        name: str | None = None) -> list[str]:
    """A worker for the class's distributed tasks (`tasks.<class>`), apart from its job worker,
    so jobs waiting on their tasks never hold the slots the tasks need."""
    argv = [sys.executable, "-m", "tasks.worker", "tasks", resource_class]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv + (["--name", name] if name else [])


def _slots(resource_class: str) -> int:
    """How many jobs or tasks of the class one worker on this host runs at once."""
    rc = load_classes(Settings.from_env().resource_classes_path).get(resource_class)
    return rc.slots() if rc else 1


def device_worker_command(devices: list[str] | None = None, concurrency: int = 1) -> list[str]:
    """A device worker for `devices` (default: all); the same line suits a Procfile."""
    argv = [sys.executable, "-m", "tasks.devices", "--concurrency", str(concurrency)]
    return argv + (["--devices", ",".join(devices)] if devices else [])


def procfile(classes: list[str] | None = None) -> str:
    """The Procfile: every long-running process, from the same commands `qhybrid up` runs.

    Redis and storage are not in it: point QHYBRID_REDIS_URL and QHYBRID_STORAGE_URL at
    the ones every host shares.
    """
    import shlex

    names = classes or list(load_classes(Settings.from_env().resource_classes_path))
    entries = {"web": web_command("${HOST:-127.0.0.1}", "${PORT:-8000}")}
    for cls in names:
        entries[f"jobs-{cls}"] = worker_command(cls)
        entries[f"tasks-{cls}"] = task_worker_command(cls)
    entries["devices"] = device_worker_command()

    python = procfile_python()

    def line(argv: list[str]) -> str:
        argv = [python, *argv[1:]] if argv[0] == sys.executable else argv
        # keep ${VAR:-default} for the runner's shell to expand
        return " ".join(a if a.startswith("${") or "${" in a else shlex.quote(a) for a in argv)

    header = ("# Every long-running process of qhybrid (`qhybrid procfile` writes this file).\n"
              "# All hosts share QHYBRID_REDIS_URL and QHYBRID_STORAGE_URL; run web on one host\n"
              "# and the workers you want on each. QHYBRID_PYTHON: the interpreter qhybrid is\n"
              "# installed in, if not the one named here.\n")
    return header + "".join(f"{name}: {line(argv)}\n" for name, argv in entries.items())


def check_sandbox(env: dict[str, str]) -> str:
    """How user code will be sandboxed here; a clear error when it cannot be (never a
    silent downgrade: QHYBRID_SANDBOX=off is the explicit way to run without)."""
    from tasks.sandbox import box as sandbox
    from tasks.sandbox.bwrap import SandboxUnavailable

    try:
        return sandbox.check_host(env)
    except SandboxUnavailable as exc:
        raise SystemExit(f"qhybrid up: user code cannot be sandboxed on this host: {exc}") from None
    finally:
        sandbox.shutdown()


def procfile_python() -> str:
    """The interpreter a Procfile line starts: this one, so a runner from another environment
    (honcho installed with pipx ...) still finds gunicorn and celery. Inside the project's own
    `.venv` it is named relative to the project, so the committed Procfile fits every checkout;
    `${QHYBRID_PYTHON:-...}` lets a host name its own."""
    exe = Path(sys.executable).absolute()
    venv = Path(__file__).resolve().parent.parent / ".venv"
    default = f".venv/bin/{exe.name}" if exe.parent.parent == venv else str(exe)
    return "${QHYBRID_PYTHON:-" + default + "}"


def ensure_local_user(settings: Settings, url: str) -> str:
    """The local user's token: kept if still valid, else a new one, written for Client()."""
    reg = Registry(connect(settings.redis_url))
    stored = config.load()
    token = stored.get("token", "")
    if token and reg.user_for_token(token) == LOCAL_USER:
        if stored.get("url") != url:
            config.save(url, token)
        return token
    token = reg.create_user(LOCAL_USER)
    config.save(url, token)
    return token


def up(host: str = "127.0.0.1", port: int = 8000, data_dir: Path | None = None,
       classes: list[str] | None = None, log=print,  # type: ignore[assignment]
       worker_per_class: bool = False) -> None:
    """Run the whole service until Ctrl-C; then stop every process it started.

    By default one job worker and one task worker serve every class (a small host cannot run
    a worker per class usefully); `worker_per_class` starts one of each per class instead.
    """
    set_retry_window(WEB_REDIS_RETRY_S)     # its own few Redis calls: no long waits
    env = dict(os.environ)
    if data_dir is not None:
        env["QHYBRID_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    settings = Settings.from_env(env)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env["QHYBRID_DATA_DIR"] = str(settings.data_dir)
    prepare_dirs(settings, env)
    sandboxing = check_sandbox(env)
    redis_proc = None
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        if not stopping:            # once stopping, a second signal lets the stop finish
            stopping = True
            raise KeyboardInterrupt

    service = Service(host=host, port=port, env=env, classes=[], log_dir=settings.data_dir / "logs",
                      shared_workers=not worker_per_class)
    # Both installed explicitly: a process started with SIGINT ignored (nohup, `cmd &` in a
    # script, a Procfile runner) gets no KeyboardInterrupt from Python, and would keep running.
    # A signal during start-up interrupts it too. The processes started below begin with the
    # default dispositions (exec resets handled signals), not with an inherited SIG_IGN.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not env.get("QHYBRID_REDIS_URL"):
            redis_proc, env["QHYBRID_REDIS_URL"] = start_redis(settings.data_dir)
        env.setdefault("QHYBRID_STORAGE_URL", settings.storage_url)
        settings = Settings.from_env(env)
        service.classes = classes or list(load_classes(settings.resource_classes_path))
        token = ensure_local_user(settings, service.url)
        # what answers first, then the workers, which warm up while the web already serves
        # (/healthz lists them under `warming` until they are live)
        started = time.monotonic()
        service.start_web()
        service.wait_web(timeout=60)      # its start is not slowed by the workers' imports
        service.start_workers()
        service.start_device_workers()
        registry = Registry(connect(env["QHYBRID_REDIS_URL"]))
        registry.note_warming(service.expected_queues())
        health = service.wait_ready(timeout=120, warming_ok=True)
        warming = list(health.get("warming") or [])  # type: ignore[call-overload]
        log(f"qhybrid is up at {service.url}")
        log(f"  token of user '{LOCAL_USER}': {token}  (written to {config.config_path()})")
        log(f"  data: {settings.data_dir}   storage: {settings.storage_url}")
        log(f"  user code: {sandboxing}")
        log(f"  workers: {', '.join(jobs_queue(c) for c in service.classes)}, "
            f"{', '.join(tasks_queue(c) for c in service.classes)}, device.*")
        if warming:
            log(f"  warming up: {len(warming)} queues' workers are still starting (they take "
                "jobs as soon as they are; /healthz lists them under `warming`)")
        notice = root_notice(env)
        if notice:
            log(f"  note: {notice}")
        log("next:")
        log(f"  open {service.url}/ and log in with the token above, or from Python:")
        log("    from qhybrid import Client; client = Client()   # finds this service")
        log("  or: qhybrid run ./my_program --entrypoint main.py --arg n=3;  qhybrid jobs")
        log(f"  Flower: qhybrid flower;  Prometheus: {service.url}/metrics")
        log("Ctrl-C stops it")
        restarts: list[float] = []
        while not stopping:
            if warming:
                try:
                    live = registry.workers_by_queue()
                except Exception:     # Redis away for a moment (it is restarted below)
                    live = {}
                warming = [q for q in warming if not live.get(q)]
                if not warming:
                    log(f"every worker is ready ({time.monotonic() - started:.1f} s after start)")
            if redis_proc is not None:
                try:
                    again = restart_redis_if_exited(redis_proc, settings.data_dir,
                                                    env["QHYBRID_REDIS_URL"], log)
                except RuntimeError as exc:      # e.g. its port taken meanwhile: next round
                    log(str(exc))
                    again = None
                if again is not None:
                    redis_proc = again
                    restarts.append(time.monotonic())
            restarts += [time.monotonic() for _ in service.respawn_exited(log)]
            restarts = [t for t in restarts if time.monotonic() - t < 60]
            if len(restarts) > 10:
                log("processes keep exiting (more than 10 restarts in a minute); stopping")
                stopping = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stopping = True             # nothing interrupts the stop itself
        log("stopping ...")
        service.stop()
        if redis_proc is not None:
            (settings.data_dir / "redis" / "url").unlink(missing_ok=True)
            try:
                connect(env["QHYBRID_REDIS_URL"]).shutdown(save=False)
            except Exception:
                pass
            try:
                redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log("stopped")
