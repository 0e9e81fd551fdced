"""`Tracker`: count the quantum tasks, shots and simulated seconds of a block of code.

    with Tracker() as t:
        backend.run(circuit, shots=100).result()
    t.quantum_tasks_statistics()   # {"aer_simulator": {"shots": 100, "tasks": {"COMPLETED": 1},
                                   #                     "execution_duration": 0.003}}

It sees every task sent through a qhybrid device (`QhybridBackend.run`), on the service, inside
a job and in local mode, from the thread that opened it and any other. Trackers nest: each
open one counts every task. As in Braket, a task is counted when it is sent (`CREATED`) and
moves to `COMPLETED` or `FAILED` when its result is read; simulated seconds are what the
device reported (the result's `time_taken`).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from types import TracebackType
from typing import Any

_lock = threading.Lock()
_active: list[Tracker] = []


class Tracker:
    """Counts tasks, shots and simulated seconds per device while it is open."""

    def __init__(self, price_per_second: float | Decimal = 0) -> None:
        """price_per_second: what a simulated second costs, for `simulator_tasks_cost()`;
        a self-hosted device costs nothing unless you say so."""
        self.price_per_second = Decimal(str(price_per_second))
        self._tasks: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Tracker:
        with _lock:
            if self not in _active:
                _active.append(self)
        return self

    def stop(self) -> Tracker:
        with _lock:
            if self in _active:
                _active.remove(self)
        return self

    def receive_event(self, task_id: str, device: str, shots: int | None = None,
                      state: str = "CREATED", seconds: float | None = None) -> None:
        with _lock:
            task = self._tasks.setdefault(task_id, {"device": device, "shots": 0,
                                                    "state": "CREATED", "seconds": 0.0})
            if shots is not None:
                task["shots"] = int(shots)
            task["state"] = state
            if seconds is not None:
                task["seconds"] = float(seconds)

    def tracked_resources(self) -> list[str]:
        """The ids of the quantum tasks seen."""
        with _lock:
            return list(self._tasks)

    def quantum_tasks_statistics(self) -> dict[str, dict[str, Any]]:
        """{device: {"shots": n, "tasks": {state: count}, "execution_duration": seconds}}."""
        out: dict[str, dict[str, Any]] = {}
        with _lock:
            for task in self._tasks.values():
                stats = out.setdefault(task["device"], {"shots": 0, "tasks": {},
                                                        "execution_duration": 0.0})
                stats["shots"] += task["shots"]
                stats["tasks"][task["state"]] = stats["tasks"].get(task["state"], 0) + 1
                stats["execution_duration"] += task["seconds"]
        return out

    def simulated_seconds(self) -> float:
        """The devices' reported run time of every completed task, in seconds."""
        with _lock:
            return sum(t["seconds"] for t in self._tasks.values())

    def simulator_tasks_cost(self) -> Decimal:
        """simulated_seconds() times price_per_second (0 unless a price was given)."""
        return (Decimal(str(self.simulated_seconds())) * self.price_per_second).normalize()

    def qpu_tasks_cost(self) -> Decimal:
        """Every qhybrid device is simulated: no QPU cost."""
        return Decimal(0)


def broadcast(task_id: str, device: str, shots: int | None = None, state: str = "CREATED",
              seconds: float | None = None) -> None:
    """Tell every open Tracker about a task (called by QhybridBackend and QhybridJob)."""
    with _lock:
        trackers = list(_active)
    for tracker in trackers:
        tracker.receive_event(task_id, device, shots, state, seconds)


def active() -> bool:
    return bool(_active)


__all__ = ["Tracker"]
