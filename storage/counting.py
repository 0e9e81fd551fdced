"""An object store that reports its failures (for `/metrics`), passing every call through.

Failures are what the store could not do: unreachable S3, disk errors. Answers that describe
the request (NotFound, Conflict, InvalidInput, PayloadTooLarge) are not failures.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

from qhybrid.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge

ANSWERS = (NotFound, Conflict, InvalidInput, PayloadTooLarge)


class ErrorCountingStore:
    """Wraps a store; `on_error(operation)` is called when one of its calls fails."""

    def __init__(self, store: Any, on_error: Callable[[str], None]) -> None:
        self._store = store
        self._on_error = on_error

    def __repr__(self) -> str:
        return repr(self._store)

    @property
    def wrapped(self) -> Any:
        return self._store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                out = attr(*args, **kwargs)
            except ANSWERS:
                raise
            except Exception:
                self._on_error(name)
                raise
            if isinstance(out, types.GeneratorType):
                return self._iterate(name, out)
            return out

        return call

    def _iterate(self, name: str, items: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from items
        except ANSWERS:
            raise
        except Exception:
            self._on_error(name)
            raise
