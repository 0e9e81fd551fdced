"""Devices from the user's side: `get_backend()` wherever the code runs: over the job's
supervisor channel (inside a job, where user code holds no credentials), on local simulators
(local mode), else over HTTP (qhybrid.http_devices).

Importing this module imports neither qiskit nor the server; `qhybrid.backend` (qiskit) is
imported when a backend is built.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from qhybrid import _channel
from qhybrid.errors import InvalidInput, Timeout
from qhybrid.http_devices import RESULT_STEP_S, deadline_of, step_of
from qhybrid.hybrid_env import ENV_JOB_DEVICE, ENV_LOCAL_MODE, ENV_LOCAL_TASKS_FILE

if TYPE_CHECKING:
    from qhybrid.backend import QhybridBackend

class ChannelTransport:
    """Quantum tasks through the job's supervisor, which submits them as the job's user; tasks
    of the job that holds the device go ahead of standalone ones."""

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        return str(_channel.call("qtask_submit", device=device, circuits=circuits,
                                 options=options))

    def status(self, task_id: str) -> str:
        return str(_channel.call("qtask_status", task_id=task_id))

    def result(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        # Short waits: the channel serves one call of this process at a time.
        deadline = deadline_of(timeout)
        while True:
            reply = _channel.call("qtask_result", task_id=task_id,
                                  timeout=step_of(deadline, RESULT_STEP_S))
            if reply.get("done"):
                return dict(reply["result"])
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"quantum task {task_id} has not finished after {timeout} s")

    def cancel(self, task_id: str) -> None:
        _channel.call("qtask_cancel", task_id=task_id)


class LocalTransport:
    """Quantum tasks run here, on qiskit-aer, with the device's target and noise: local mode
    needs no service. Like Braket's local mode, its tasks have no priority to claim."""

    def __init__(self, sims: Simulators) -> None:
        self.sims = sims
        self._results: dict[str, dict[str, Any]] = {}

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        import uuid

        task_id = f"local-{uuid.uuid4().hex}"
        threads = len(os.sched_getaffinity(0))
        created = time.time()
        result = self.sims.run(device, circuits, options, threads)
        self._results[task_id] = result
        listing = os.environ.get(ENV_LOCAL_TASKS_FILE)
        if listing:                  # a local-mode job's quantum_tasks()
            import json

            with open(listing, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({
                    "task_id": task_id, "device": device, "shots": options.get("shots"),
                    "status": "DONE" if result.get("success", True) else "ERROR",
                    "created": created, "ended": time.time()}) + "\n")
        return task_id

    def status(self, task_id: str) -> str:
        return "DONE" if self._results[task_id].get("success", True) else "ERROR"

    def result(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        return self._results[task_id]

    def cancel(self, task_id: str) -> None:
        """A local task has already run when submit() returns."""


class Simulators(Protocol):
    """What local mode runs devices on: the server's packages provide it (backends.local)."""

    def names(self) -> list[str]: ...
    def describe(self, name: str) -> dict[str, Any]: ...
    def run(self, name: str, circuits: str, options: dict[str, Any],
            threads: int) -> dict[str, Any]: ...
    def add_operations(self, desc: dict[str, Any]) -> None: ...


SIMULATORS_ENTRY_POINT = "qhybrid.simulators"


def local_simulators() -> Simulators:
    """The devices local mode runs on: the `qhybrid.simulators` entry point's (qiskit-aer
    with the built-in devices and QHYBRID_DEVICES, when the server's packages are installed)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=SIMULATORS_ENTRY_POINT):
        sims: Simulators = ep.load()()
        return sims
    raise InvalidInput("running devices locally needs qiskit-aer: "
                       "pip install 'qhybrid[server]'")


def get_job_device() -> str | None:
    """The device the running job holds or was given (None outside a job, or with none)."""
    return os.environ.get(ENV_JOB_DEVICE) or None


def get_backend(name: str | None = None) -> QhybridBackend:
    """A device as a Qiskit BackendV2 (default: the job's device).

    Inside a job (or one of its distributed tasks) its tasks go through the supervisor, and
    run before standalone tasks while the job holds the device; in a local-mode job, on
    qiskit-aer in this process; elsewhere through `Client()` (the configured service). IBM
    names select the copies of IBM devices (``ibm_torino`` is ``fake_torino``).
    """
    from qhybrid.backend import QhybridBackend

    name = name or get_job_device()
    if _channel.in_job():
        desc = _channel.call("device_info", name=name)
        if desc.get("kind") == "aer" and "operations" not in desc:
            # the supervisor loads no qiskit: Aer's operations are listed here, on the same
            # host and installation as the device workers
            local_simulators().add_operations(desc)
        return QhybridBackend(desc, ChannelTransport())
    if not name:
        raise InvalidInput("name a device: get_backend('aer_simulator')", field="name")
    if os.environ.get(ENV_LOCAL_MODE):
        sims = local_simulators()
        return QhybridBackend(sims.describe(name), LocalTransport(sims))
    from qhybrid.client import Client
    from qhybrid.http_devices import backend

    return backend(Client(), name)


__all__ = ["ChannelTransport", "LocalTransport", "Simulators", "get_backend", "get_job_device",
           "local_simulators"]
