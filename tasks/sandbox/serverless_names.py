"""`distribute_task`, `get`, `put`, `get_refs_by_status` of `qiskit_serverless`, in a job.

Programs written for Qiskit Serverless fan out with `from qiskit_serverless import
distribute_task, get`. The package's releases since 0.36 no longer have these names (and
before, they needed Ray); in a job they are qhybrid's distributed tasks, added to the package
when the program imports it. A release that still has a name keeps its own.

Upstream's forms: `distribute_task(target=None)` takes the target first (`@distribute_task()`,
`@distribute_task(target={"cpu": 1, "mem": <bytes>})`), `get(refs, timeout=None)`,
`put(value)`, `get_refs_by_status(refs)` -> (ready, not ready).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

PACKAGE = "qiskit_serverless"


def distribute_task(target: Any = None) -> Callable[[Callable[..., Any]], Any]:
    """Upstream's decorator factory: `@distribute_task(target={...})` over qhybrid's."""
    from qhybrid.distributed import distribute_task as ours

    if callable(target):                 # used bare: @distribute_task
        return ours(target)              # type: ignore[no-any-return]
    if target is not None and not isinstance(target, (dict, str)):
        target = {k: v for k, v in vars(target).items()          # upstream's Target object
                  if k in ("cpu", "mem", "gpu") and v is not None}
    return ours(target=target)


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    from qhybrid.distributed import get as ours

    return ours(object_refs, timeout=timeout)


def put(value: Any, **_: Any) -> Any:
    from qhybrid.distributed import put as ours

    return ours(value)


def get_refs_by_status(object_refs: Sequence[Any], **_: Any) -> tuple[list[Any], list[Any]]:
    """(ready, not ready), without waiting."""
    from qhybrid.distributed import wait

    refs = list(object_refs)
    return wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])


NAMES: dict[str, Any] = {"distribute_task": distribute_task, "get": get, "put": put,
                         "get_refs_by_status": get_refs_by_status}


def add_names(module: ModuleType) -> None:
    for name, value in NAMES.items():
        if not hasattr(module, name):
            setattr(module, name, value)


class _Loader(importlib.abc.Loader):
    """The package's own loader, then the names."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        add_names(module)


class ServerlessNames(importlib.abc.MetaPathFinder):
    """Adds the names when `qiskit_serverless` is imported (first on sys.meta_path)."""

    def find_spec(self, name: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != PACKAGE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


__all__ = ["ServerlessNames", "add_names", "distribute_task", "get", "put",
           "get_refs_by_status"]
