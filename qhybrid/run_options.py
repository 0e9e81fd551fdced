"""Run options of a quantum task, checked the same way by the client, the API and the workers.

Kept apart from `qhybrid.backend` so that checking them needs no qiskit.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from qhybrid.errors import InvalidInput

RUN_OPTIONS: dict[str, Any] = {"shots": 1024, "memory": False, "seed_simulator": None}
MAX_SEED = 2**63 - 1                # the simulator takes a 64-bit seed


def validate_run_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check run options and return them as plain JSON values (numpy ints become ints)."""
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown run options {', '.join(unknown)}; supported: {', '.join(RUN_OPTIONS)}",
            field="options",
        )
    out = {**RUN_OPTIONS, **options}
    shots = out["shots"]
    if isinstance(shots, bool) or not isinstance(shots, numbers.Integral) or shots < 1:
        raise InvalidInput(f"shots must be a positive integer, got {shots!r}", field="shots")
    out["shots"] = int(shots)
    memory = out["memory"]
    if not isinstance(memory, bool | np.bool_):
        raise InvalidInput(f"memory must be true or false, got {memory!r}", field="memory")
    out["memory"] = bool(memory)
    seed = out["seed_simulator"]
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) \
                or not 0 <= int(seed) <= MAX_SEED:
            raise InvalidInput(
                f"seed_simulator must be an integer from 0 to {MAX_SEED} or None, got {seed!r}",
                field="seed_simulator",
            )
        out["seed_simulator"] = int(seed)
    return out
