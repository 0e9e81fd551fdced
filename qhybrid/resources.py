"""Resource classes: what a job or task may ask for, and the class that serves it."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qhybrid.errors import InvalidInput, NoResourceClass


@dataclass(frozen=True)
class ResourceClass:
    name: str
    cpu: float
    mem: int
    gpu: int = 0
    concurrency: int | None = None

    def fits(self, cpu: float, mem: int, gpu: int) -> bool:
        return cpu <= self.cpu and mem <= self.mem and gpu <= self.gpu

    def slots(self) -> int:
        """Jobs one worker of this class runs at once."""
        if self.concurrency:
            return self.concurrency
        return max(1, int((os.cpu_count() or 1) // max(self.cpu, 1)))

    def threads(self) -> int:
        return max(1, math.ceil(self.cpu))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cpu": self.cpu, "mem": self.mem, "gpu": self.gpu}


def load_classes(path: Path | None = None) -> dict[str, ResourceClass]:
    """Classes from a TOML file (the packaged defaults when None), smallest first."""
    if path is None:
        text = resources.files("qhybrid").joinpath("resource_classes.toml").read_text()
    else:
        text = Path(path).read_text()
    table = tomllib.loads(text).get("classes", {})
    classes = [
        ResourceClass(name=name, cpu=float(spec["cpu"]), mem=int(spec["mem"]),
                      gpu=int(spec.get("gpu", 0)), concurrency=spec.get("concurrency"))
        for name, spec in table.items()
    ]
    classes.sort(key=lambda c: (c.gpu, c.cpu, c.mem))
    return {c.name: c for c in classes}


def _number(request: Mapping[str, Any], key: str, field: str) -> float:
    value = request.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or math.isnan(value):
        raise InvalidInput(f"{key} must be a non-negative number, got {value!r}", field=f"{field}.{key}")
    return float(value)


def pick_class(request: str | Mapping[str, Any] | None, classes: Mapping[str, ResourceClass],
               field: str = "resources") -> ResourceClass:
    """The smallest class that fits `request` (a class name or {"cpu", "mem", "gpu"})."""
    if not classes:
        raise NoResourceClass("no resource classes are configured", field=field)
    if request is None or request == "":
        return next(iter(classes.values()))
    if isinstance(request, str):
        if request not in classes:
            raise NoResourceClass(f"unknown resource class {request!r}; classes: {', '.join(classes)}",
                                  field=field, classes=describe_classes(classes))
        return classes[request]
    if not isinstance(request, Mapping):
        raise InvalidInput("resources must be a class name or an object with cpu, mem, gpu", field=field)
    unknown = set(request) - {"cpu", "mem", "gpu"}
    if unknown:
        raise InvalidInput(f"unknown resource keys: {', '.join(sorted(unknown))}; use cpu, mem (bytes), gpu",
                           field=field)
    cpu = _number(request, "cpu", field)
    mem = int(_number(request, "mem", field))
    gpu = int(_number(request, "gpu", field))
    for cls in classes.values():
        if cls.fits(cpu, mem, gpu):
            return cls
    offered = "; ".join(f"{c.name} = {c.cpu:g} CPU / {c.mem / 1024**3:g} GiB / {c.gpu} GPU"
                        for c in classes.values())
    raise NoResourceClass(f"no resource class fits cpu={cpu:g}, mem={mem}, gpu={gpu}; classes: {offered}",
                          field=field, classes=describe_classes(classes))


def describe_classes(classes: Mapping[str, ResourceClass]) -> list[dict[str, Any]]:
    return [c.describe() for c in classes.values()]
