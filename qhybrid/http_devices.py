"""Devices over HTTP: the service's devices as `QhybridBackend`s whose tasks go through the
REST API (`/api/v1/quantum-tasks`), from a laptop or anything else holding a token.

Importing this module imports neither qiskit nor the server; `qhybrid.backend` (qiskit) is
imported when a backend is built.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from qhybrid.errors import InvalidInput, Timeout

if TYPE_CHECKING:
    from qhybrid.backend import QhybridBackend
    from qhybrid.client import Client

#: The longest one result request waits on the server (it answers at once when the task ends).
RESULT_STEP_S = 30.0


def deadline_of(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if math.isnan(timeout) or timeout < 0:
        raise InvalidInput(f"timeout must be a non-negative number, got {timeout!r}")
    return time.monotonic() + timeout


def step_of(deadline: float | None, most: float) -> float:
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
        deadline = deadline_of(timeout)
        while True:
            step = step_of(deadline, RESULT_STEP_S)
            resp = self.client.request("GET", f"/quantum-tasks/{task_id}/result", ok=(200, 202),
                                       params={"wait": step}, timeout=step + 30)
            if resp.status_code == 200:
                return dict(resp.json()["result"])
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"quantum task {task_id} has not finished after {timeout} s")

    def cancel(self, task_id: str) -> None:
        self.client._json("POST", f"/quantum-tasks/{task_id}/cancel")


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


__all__ = ["HttpTransport", "RESULT_STEP_S", "backend", "backends", "deadline_of", "list_devices",
           "step_of"]
