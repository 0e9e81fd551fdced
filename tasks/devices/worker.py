"""The device worker: runs quantum tasks on the devices it serves.

A device worker is a Celery worker consuming `device.<name>` queues with the prefork pool:
each quantum task runs in a long-lived pool process that caches its aer simulators (building a
127-qubit noisy one takes about a second), while the main process stays responsive for the
broker and the housekeeping thread (aer holds the GIL while it simulates). Start one with

    python -m tasks.devices [--devices a,b] [--concurrency 1] [--name device]

which runs `celery worker` on the queues of those devices (default: every configured device).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from celery import shared_task
from celery.signals import task_failure, worker_init

from backends.registry import DeviceRegistry
from qhybrid.errors import QhybridError, TaskFailed
from tasks.core import defaults as d
from tasks.core.presence import note_starting
from tasks.core.queues import RUN_QUANTUM_TASK, device_queue
from tasks.core.settings import MissingSharedSettings, Settings, require_shared
from tasks.devices.catalog import device_registry, device_spec, device_threads

# The presence name (`tasks.sandbox.environment.worker_name`) of this worker's main process:
# prefork pool processes are forked after this module is imported, so they inherit it.
_WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@shared_task(name=RUN_QUANTUM_TASK, ignore_result=True, acks_late=True)
def run_quantum_task(task_id: str) -> None:
    """Run one quantum task on its device and record its result; a canceled one is dropped."""
    from backends.execute import run_task
    from qhybrid.backend import failure_message
    from tasks.core.services import from_env
    from tasks.devices.quantum_tasks import QuantumTasks

    services = from_env()
    tasks = QuantumTasks(services.registry.r)
    try:
        rec, inline = tasks.get_with_circuits(task_id)
    except QhybridError:
        return
    if not tasks.transition(rec, d.RUNNING, [d.QUEUED], started=time.time(),
                            worker=_WORKER_NAME):
        if rec["status"] == d.CANCELED:  # its job may have ended without access to storage
            tasks.drop_circuits(services.store, rec)
        return  # canceled, or a second delivery of a task that already ran
    timing: dict[str, float] = {}
    try:
        spec = device_registry(services.settings).get(rec["device"])
        payload = tasks.circuits(services.store, rec, inline)
        data = run_task(spec, payload, rec["options"], device_threads(services.settings),
                        checked=bool(rec.get("checked")), timing=timing)
        text = _dumps(data)
        qpu = {"qpu_seconds": round(timing.get("simulate_s", 0.0), 6)}
        if data.get("success"):
            moved = tasks.end_with_result(services.store, rec, text, d.DONE,
                                             ended=time.time(), **qpu)
        else:
            moved = tasks.end_with_result(
                services.store, rec, text, d.ERROR, ended=time.time(), **qpu,
                error=TaskFailed(failure_message(data)).to_problem())
    except Exception as exc:
        error = exc if isinstance(exc, QhybridError) else QhybridError(
            f"{type(exc).__name__}: {exc}")
        tasks.transition(rec, d.ERROR, [d.RUNNING], ended=time.time(),
                         error=error.to_problem())
        tasks.drop_circuits(services.store, rec)
        return
    if moved and rec.get("job_id"):
        from tasks.core.usage import QPU_TIME, add_usage

        add_usage(services.registry.r, rec["job_id"], rec.get("stage") or d.RUNNING, QPU_TIME,
                  float(qpu["qpu_seconds"]))


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, separators=(",", ":"), allow_nan=False)


@task_failure.connect
def _on_task_failure(sender: Any = None, args: Sequence[Any] | None = None,
                     exception: BaseException | None = None, **_: Any) -> None:
    """The pool process died mid-task (killed, out of memory): end the task in ERROR.

    Celery sends this in the worker's main process for a lost pool process; errors inside
    the task are handled by the task itself.
    """
    if getattr(sender, "name", None) != RUN_QUANTUM_TASK or not args:
        return
    from tasks.core.services import from_env
    from tasks.devices.quantum_tasks import QuantumTasks

    tasks = QuantumTasks(from_env().registry.r)
    try:
        rec = tasks.get(str(args[0]))
    except QhybridError:
        return
    error = TaskFailed(f"the device worker's process running it stopped: {exception!r}")
    tasks.transition(rec, d.ERROR, [d.QUEUED, d.RUNNING], ended=time.time(),
                     error=error.to_problem())


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """In a device worker, import aer before the pool forks, so no task pays for it."""
    queues = getattr(getattr(sender, "app", None), "amqp", None)
    names = list(queues.queues.consume_from or {}) if queues is not None else []
    if names and all(name.startswith(device_queue("")) for name in names):
        import backends.execute  # noqa: F401


def served_here(registry: DeviceRegistry) -> list[str]:
    """The devices a device worker started without --devices serves: all but GPU ones, and
    those too on a host where aer has a GPU (qiskit-aer-gpu and an NVIDIA GPU)."""
    if all(spec.device == "CPU" for spec in registry):
        return registry.names()
    from backends.execute import host_devices

    here = host_devices()
    return [spec.name for spec in registry if spec.device in here]


def worker_argv(devices: Sequence[str], concurrency: int, name: str) -> list[str]:
    """The `celery worker` command line of a device worker for `devices`."""
    from tasks.core.settings import worker_event_flags

    return [sys.executable, "-m", "celery", "-A", "tasks.core.celery_app", "worker",
            "--queues", ",".join(device_queue(device) for device in devices),
            "--include", "tasks.devices.worker", "--hostname", f"{name}@%h",
            "--pool", "prefork", "--concurrency", str(concurrency),
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", *worker_event_flags()]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.devices`: become a device worker (exec's celery)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.devices",
                                     description="Run a device worker for quantum tasks.")
    parser.add_argument("--devices", default="",
                        help="comma-separated device names [default: every configured device]")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="quantum tasks run at once (one pool process each) [default: 1]")
    parser.add_argument("--name", default="device", help="Celery node name [default: device]")
    args = parser.parse_args(argv)
    try:
        require_shared(role="device worker")
    except MissingSharedSettings as exc:
        parser.exit(2, f"{exc}\n")
    settings = Settings.from_env()
    registry = device_registry(settings)
    named = [device_spec(settings, n).name for n in args.devices.split(",") if n]
    names = named or served_here(registry)
    if named:
        from backends.execute import check_host

        for n in named:
            check_host(registry.get(n))   # a GPU device on a host without one: refused
    os.environ.setdefault("QHYBRID_DEVICE_THREADS",
                          str(device_threads(settings, args.concurrency)))
    # Idle OpenMP threads would otherwise spin after every simulation, taking cores from the
    # web app and job workers on the same host (on 2 cores: 5-qubit tasks 2.5 ms -> 10-20 ms).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = worker_argv(names, max(1, args.concurrency), args.name)
    note_starting(settings.redis_url, [device_queue(n) for n in names])
    os.execv(command[0], command)


def cli() -> None:
    try:
        main()
    except QhybridError as exc:
        sys.exit(f"qhybrid device worker: {exc}")
