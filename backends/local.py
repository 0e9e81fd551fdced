"""The simulators behind the client's local mode: qiskit-aer devices in the calling process.

`qhybrid.devices` finds them through the `qhybrid.simulators` entry point (pyproject.toml),
so the client package imports nothing of the server's; a client-only install has none.
"""

from __future__ import annotations

import os
from typing import Any

from backends.registry import (
    DeviceRegistry,
    add_aer_operations,
    default_registry,
    describe,
    load_devices,
)


class AerSimulators:
    """The built-in devices, plus those of QHYBRID_DEVICES (a TOML file) when it is set."""

    def __init__(self) -> None:
        path = os.environ.get("QHYBRID_DEVICES")
        self._registry: DeviceRegistry = (load_devices(path, default_registry()) if path
                                          else default_registry())

    def names(self) -> list[str]:
        return list(self._registry.names())

    def describe(self, name: str) -> dict[str, Any]:
        return describe(self._registry.get(name))

    def run(self, name: str, circuits: str, options: dict[str, Any], threads: int) -> dict[str, Any]:
        from backends.execute import run_task

        return run_task(self._registry.get(name), circuits, options, threads)

    @staticmethod
    def add_operations(desc: dict[str, Any]) -> None:
        add_aer_operations(desc)


def simulators() -> AerSimulators:
    return AerSimulators()
