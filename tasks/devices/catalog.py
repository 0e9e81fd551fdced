"""The devices this service offers: the configured registry, one device by name."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from backends.registry import DeviceRegistry, DeviceSpec, default_registry, load_devices
from qhybrid.errors import InvalidInput
from tasks.core.settings import Settings


@functools.lru_cache(maxsize=4)
def _load(path: Path | None) -> DeviceRegistry:
    return load_devices(path) if path else default_registry()


def device_registry(settings: Settings) -> DeviceRegistry:
    """The devices this service offers: the built-in ones plus `QHYBRID_DEVICES` (TOML)."""
    return _load(settings.devices_path)


def device_spec(settings: Settings, name: Any, field: str = "device") -> DeviceSpec:
    """The named device; an unknown name is bad input that lists the devices."""
    devices = device_registry(settings)
    spec = devices.find(name)   # by name, or an IBM name (ibm_torino -> fake_torino)
    if spec is None:
        raise InvalidInput(f"unknown device {name!r}; devices: {', '.join(devices.names())}",
                           field=field, devices=devices.names())
    return spec


def device_threads(settings: Settings, concurrency: int = 1) -> int:
    """Simulator threads per quantum task: configured, else the worker's cores per slot."""
    if settings.device_threads > 0:
        return settings.device_threads
    return max(1, len(os.sched_getaffinity(0)) // max(1, concurrency))
