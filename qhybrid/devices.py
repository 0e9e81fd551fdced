"""Devices from the user's side: `QhybridBackend`s over HTTP (a laptop) or over the job's
supervisor channel (inside a job, where user code holds no credentials).

Importing this module imports neither qiskit nor the server; `qhybrid.backend` (qiskit) is
imported when a backend is built.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

from qhybrid import _channel
from qhybrid.errors import InvalidInput, Timeout
from qhybrid.hybrid_env import ENV_JOB_DEVICE, ENV_LOCAL_MODE, ENV_LOCAL_TASKS_FILE

if TYPE_CHECKING:
    from qhybrid.backend import QhybridBackend
    from qhybrid.client import Client

#: The longest one result request waits on the server (it answers at once when the task ends).
RESULT_STEP_S = 30.0


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if math.isnan(timeout) or timeout < 0:
        raise InvalidInput(f"timeout must be a non-negative number, got {timeout!r}")
    return time.monotonic() + timeout


def _step(deadline: float | None, most: float) -> float:
    return most if deadline is None else max(0.0, min(most, deadline - time.monotonic()))


class HttpTransport:
    """Quantum tasks through the REST API (`/api/v1/quantum-tasks`)."""

    def __init__(self, client: Client, reservation_arn: str | None = None) -> None:
        self.client = client
        self.reservation_arn = reservation_arn

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        body: dict[str, Any] = {"device": device, "circuits": circuits, "options": options}
        if self.reservation_arn:
            body["reservation_arn"] = self.reservation_arn
        body = self.client._json("POST", "/quantum-tasks", json=body)
        return str(body["task_id"])

    def status(self, task_id: str) -> str:
        return str(self.client._json("GET", f"/quantum-tasks/{task_id}")["status"])

    def result(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        deadline = _deadline(timeout)
        while True:
            step = _step(deadline, RESULT_STEP_S)
            resp = self.client.request("GET", f"/quantum-tasks/{task_id}/result", ok=(200, 202),
                                       params={"wait": step}, timeout=step + 30)
            if resp.status_code == 200:
                return dict(resp.json()["result"])
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"quantum task {task_id} has not finished after {timeout} s")

    def cancel(self, task_id: str) -> None:
        self.client._json("POST", f"/quantum-tasks/{task_id}/cancel")


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
        deadline = _deadline(timeout)
        while True:
            reply = _channel.call("qtask_result", task_id=task_id,
                                  timeout=_step(deadline, RESULT_STEP_S))
            if reply.get("done"):
                return dict(reply["result"])
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"quantum task {task_id} has not finished after {timeout} s")

    def cancel(self, task_id: str) -> None:
        _channel.call("qtask_cancel", task_id=task_id)


class LocalTransport:
    """Quantum tasks run here, on qiskit-aer, with the device's target and noise: local mode
    needs no service. Like Braket's local mode, its tasks have no priority to claim."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._results: dict[str, dict[str, Any]] = {}

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        import uuid

        from backends.execute import run_task

        task_id = f"local-{uuid.uuid4().hex}"
        threads = len(os.sched_getaffinity(0))
        created = time.time()
        result = run_task(self.registry.get(device), circuits, options, threads)
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


def local_registry() -> Any:
    """The built-in devices, plus those of QHYBRID_DEVICES (a TOML file) when it is set."""
    try:
        from backends.registry import default_registry, load_devices
    except ImportError as exc:       # a client-only install has no simulators
        raise InvalidInput("running devices locally needs qiskit-aer: "
                           "pip install 'qhybrid[server]'") from exc
    path = os.environ.get("QHYBRID_DEVICES")
    return load_devices(path, default_registry()) if path else default_registry()


def list_devices(client: Client) -> list[dict[str, Any]]:
    """Every device's description and status (qubits, basis gates, online, queue depth ...)."""
    return list(client._json("GET", "/devices")["devices"])


def backend(client: Client, name: str, reservation_arn: str | None = None) -> QhybridBackend:
    """The named device as a Qiskit BackendV2 whose run() goes through the HTTP API; with
    `reservation_arn`, its tasks run in that reservation of yours."""
    from qhybrid.backend import QhybridBackend

    return QhybridBackend(client._json("GET", f"/devices/{name}"),
                          HttpTransport(client, reservation_arn))


def backends(client: Client) -> list[QhybridBackend]:
    from qhybrid.backend import QhybridBackend

    transport = HttpTransport(client)
    return [QhybridBackend(desc, transport) for desc in list_devices(client)]


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
            from backends.registry import add_aer_operations

            add_aer_operations(desc)
        return QhybridBackend(desc, ChannelTransport())
    if not name:
        raise InvalidInput("name a device: get_backend('aer_simulator')", field="name")
    if os.environ.get(ENV_LOCAL_MODE):
        from backends.registry import describe

        registry = local_registry()
        return QhybridBackend(describe(registry.get(name)), LocalTransport(registry))
    from qhybrid.client import Client

    return backend(Client(), name)


__all__ = ["ChannelTransport", "HttpTransport", "backend", "backends", "get_backend",
           "get_job_device", "list_devices"]
