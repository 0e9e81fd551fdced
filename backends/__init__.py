"""Devices: the registry of named simulators and hardware-like devices, and how a device worker
runs a quantum task on one. The client side (`QhybridBackend`) is `qhybrid.backend`.

`backends.execute` imports qiskit-aer, so it is loaded only when its names are first used.
"""

from __future__ import annotations

from typing import Any

from backends.registry import (
    DEFAULT_MAX_MEMORY_BYTES,
    MAX_SHOTS,
    DeviceRegistry,
    DeviceSpec,
    default_registry,
    describe,
    load_devices,
)

__all__ = [
    "DEFAULT_MAX_MEMORY_BYTES",
    "MAX_SHOTS",
    "DeviceRegistry",
    "DeviceSpec",
    "build_simulator",
    "check_circuits",
    "default_registry",
    "describe",
    "load_devices",
    "result_from_json",
    "result_to_json",
    "run_task",
]

_LAZY = {
    "build_simulator": "backends.execute",
    "check_circuits": "backends.execute",
    "run_task": "backends.execute",
    "result_to_json": "backends.codec",
    "result_from_json": "backends.codec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'backends' has no attribute {name!r}")
