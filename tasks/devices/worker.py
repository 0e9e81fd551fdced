"""The device worker: runs quantum tasks on the devices it serves.

A device worker is one process and its runners, forked from it after it imported aer: each
runner takes tasks from the device queues itself (`tasks.devices.device_queue`: a blocking
Redis pop and one Lua call, no Celery message between a submission and the simulation) and
caches its aer simulators (building a 127-qubit noisy one takes about a second). The worker
process itself simulates nothing, so it stays responsive while aer holds a runner's GIL: it
announces its presence (under the name the tasks it runs record), reads its stop list and
kills the runner of a canceled task, and starts a fresh runner whenever one ends.

A runner that dies mid-task (killed, out of memory) ends its task in ERROR; one the worker
stopped on purpose (a cancel that raced with the next task, or the worker stopping) has that
task queued again at its place. Start a device worker with

    python -m tasks.devices [--devices a,b] [--concurrency 1] [--name device]

(default: every configured device this host can simulate).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.registry import DeviceRegistry
from qhybrid.errors import QhybridError, TaskFailed
from tasks.core import defaults as d
from tasks.core.presence import note_starting, worker_name
from tasks.core.queues import device_queue
from tasks.core.settings import MissingSharedSettings, Settings, require_shared
from tasks.devices.catalog import device_registry, device_spec, device_threads
from tasks.devices.device_queue import DeviceQueue, requeue, taken_key

log = logging.getLogger("qhybrid.devices")

PR_SET_PDEATHSIG = 1


# --- a runner -----------------------------------------------------------------------------


def run_taken(services: Any, rec: dict[str, Any], inline: str | None) -> None:
    """Simulate a task this runner took (RUNNING) and record its end: DONE with its result,
    ERROR with the simulator's message or the reason it could not run. Its device time is
    charged to its job's stage."""
    from backends.execute import run_task
    from qhybrid.backend import failure_message
    from tasks.devices.quantum_tasks import QuantumTasks

    tasks = QuantumTasks(services.registry.r)
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


def _runner_main(settings: Settings, devices: list[str], worker: str, runner: str,
                 parent: int) -> None:
    """A runner's life: take the next task of its devices, run it, again, until killed."""
    import ctypes

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # its worker decides when it stops
    try:   # never outlive the worker: its tasks would look lost and end in ERROR
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent:
        os._exit(0)
    from tasks.core.services import Services, from_env
    from tasks.devices.quantum_tasks import task_record

    from_env.cache_clear()      # this process's own connections, not the worker's
    services: Services = from_env()
    queue = DeviceQueue(services.registry.r, devices, worker, runner)
    while True:
        try:
            # woken for one device, take from it; after a quiet spell, look at them all
            got = queue.take(queue.wait(d.DEVICE_WAIT_S))
            if got is not None:
                flat, inline = got
                run_taken(services, task_record(flat), inline)
        except Exception:
            log.exception("device runner %s: taking or running a task failed", runner)
            time.sleep(d.DEVICE_WAIT_S)   # Redis away, say: try again, not in a tight loop


# --- the worker ---------------------------------------------------------------------------


@dataclass
class _Runner:
    name: str
    process: Any = None
    stopped: bool = False        # killed by its worker: its task did nothing wrong


@dataclass
class DeviceWorker:
    """One device worker: its runners, its presence and its stop list."""

    settings: Settings
    devices: list[str]
    concurrency: int = 1
    name: str = field(default_factory=worker_name)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        from tasks.core.redis_client import connect
        from tasks.core.registry import Registry

        self.registry = Registry(connect(self.settings.redis_url))
        self.runners = [_Runner(f"{self.name}/{i}") for i in range(max(1, self.concurrency))]
        self._fork = multiprocessing.get_context("fork")

    @property
    def queues(self) -> list[str]:
        return [device_queue(n) for n in self.devices]

    def _start(self, runner: _Runner) -> None:
        runner.stopped = False
        runner.process = self._fork.Process(
            target=_runner_main, name=f"device runner {runner.name}", daemon=True,
            args=(self.settings, self.devices, self.name, runner.name, os.getpid()))
        runner.process.start()

    def _announce(self) -> None:
        self.registry.announce_worker(self.name, {
            "name": self.name, "queues": self.queues, "pid": os.getpid(),
            "started": self.started, "kind": "device"})

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; then stop the runners and queue their tasks again."""
        self.started = time.time()
        for runner in self.runners:
            self._start(runner)
        self._announce()
        announced = time.monotonic()
        stop_key = d.DEVICE_WORKER_STOP_KEY.format(worker=self.name)
        try:
            while not self.stopping.is_set():
                try:
                    got = self.registry.r.blpop([stop_key], timeout=0.5)
                    if got:
                        self.stop_task(got[1])
                    self.restart_ended()
                    if time.monotonic() - announced >= d.REAPER_INTERVAL_S:
                        self._announce()
                        announced = time.monotonic()
                except Exception:
                    if self.stopping.is_set():
                        break
                    log.exception("device worker %s: housekeeping failed", self.name)
                    self.stopping.wait(1.0)
        finally:
            self.shutdown()

    def stop_task(self, task_id: str) -> None:
        """A task of this worker was canceled: kill the runner that still has it."""
        for runner in self.runners:
            if self.registry.r.get(taken_key(runner.name)) == task_id and \
                    runner.process is not None and runner.process.is_alive():
                runner.stopped = True
                runner.process.kill()
                runner.process.join()
                self.settle(runner)
                if not self.stopping.is_set():
                    self._start(runner)

    def restart_ended(self) -> None:
        """Runners that died on their own: their task ends in ERROR; a fresh runner each."""
        for runner in self.runners:
            if runner.process is not None and not runner.process.is_alive():
                runner.process.join()
                self.settle(runner)
                if not self.stopping.is_set():
                    self._start(runner)

    def settle(self, runner: _Runner) -> None:
        """What an ended runner leaves: its task, if it still runs there, is queued again
        (the worker stopped the runner) or ends in ERROR (the runner died)."""
        from tasks.devices.quantum_tasks import QuantumTasks

        r = self.registry.r
        key = taken_key(runner.name)
        task_id = r.get(key)
        r.delete(key)
        if not task_id:
            return
        tasks = QuantumTasks(r)
        try:
            rec = tasks.get(task_id)
        except QhybridError:
            return
        if rec["status"] != d.RUNNING or rec.get("runner") != runner.name:
            return
        if runner.stopped:
            requeue(r, rec, runner.name)
            return
        code = runner.process.exitcode if runner.process is not None else None
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        error = TaskFailed(f"the device worker's process running it stopped ({how})")
        if tasks.transition(rec, d.ERROR, [d.RUNNING], ended=time.time(),
                            error=error.to_problem()):
            from tasks.core.services import from_env

            tasks.drop_circuits(from_env().store, rec)

    def shutdown(self) -> None:
        """Stop every runner; a task one was running goes back to its queue for another."""
        for runner in self.runners:
            if runner.process is not None:
                runner.stopped = True
                runner.process.kill()
                runner.process.join()
                try:
                    self.settle(runner)
                except Exception:
                    log.exception("device worker %s: could not queue %s's task again",
                                  self.name, runner.name)
        try:
            self.registry.retire_worker(self.name)
        except Exception:
            pass


def served_here(registry: DeviceRegistry) -> list[str]:
    """The devices a device worker started without --devices serves: all but GPU ones, and
    those too on a host where aer has a GPU (qiskit-aer-gpu and an NVIDIA GPU)."""
    if all(spec.device == "CPU" for spec in registry):
        return registry.names()
    from backends.execute import host_devices

    here = host_devices()
    return [spec.name for spec in registry if spec.device in here]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tasks.devices`: become a device worker."""
    parser = argparse.ArgumentParser(prog="python -m tasks.devices",
                                     description="Run a device worker for quantum tasks.")
    parser.add_argument("--devices", default="",
                        help="comma-separated device names [default: every configured device]")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="quantum tasks run at once (one runner process each) [default: 1]")
    parser.add_argument("--name", default="device",
                        help="a label for this worker in its logs [default: device]")
    args = parser.parse_args(argv)
    # Idle OpenMP threads would otherwise spin after every simulation, taking cores from the
    # web app and job workers on the same host (on 2 cores: 5-qubit tasks 2.5 ms -> 10-20 ms).
    # OpenMP reads it when aer loads: before anything here imports aer (served_here may).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
    note_starting(settings.redis_url, [device_queue(n) for n in names])
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s {args.name}: %(message)s")
    from tasks.sandbox.isolation import make_undumpable

    make_undumpable()       # our environment holds credentials
    import backends.execute  # noqa: F401  (aer, before the runners fork: no task pays for it)

    worker = DeviceWorker(Settings.from_env(), names, max(1, args.concurrency))

    def _stop(signum: int, frame: Any) -> None:
        worker.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()


def cli() -> None:
    try:
        main()
    except QhybridError as exc:
        sys.exit(f"qhybrid device worker: {exc}")
