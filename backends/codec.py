"""Aer results as strict JSON, for the trip from a device worker to the client.

`result_to_json` runs on the worker; its inverse `result_from_json` lives in the client package
(`qhybrid.backend`), since `QhybridJob.result()` needs it without the server, and is re-exported
here. Counts stay hex-keyed dicts and memory a list of hex strings; numpy and complex values use
`qhybrid.codec` envelopes. Saved quantum states (``save_statevector`` and friends) travel as
ndarrays, which `Result.get_statevector()` and friends accept; Cliffords as their dict form.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from qiskit.result import Result

from qhybrid.backend import INT_KEYED, result_from_json
from qhybrid.codec import TYPE_KEY, VALUE_KEY, encode

__all__ = ["result_from_json", "result_to_json"]

_SCALARS = frozenset({str, int, bool})   # exactly these types pass through as they are


def _wire(value: Any) -> Any:
    """`qhybrid.codec.encode` of a result's value, in the same one walk that replaces the
    qiskit objects aer may put there by data encode takes (and turns tuples into lists and
    keys into strings, as `Result.to_dict` consumers expect)."""
    kind = type(value)
    if value is None or kind in _SCALARS:
        return value
    if kind is float:
        return value if math.isfinite(value) else encode(value, path="result")
    if isinstance(value, dict):
        out = {key if type(key) is str else str(key):
               item if item is None or type(item) in _SCALARS else _wire(item)
               for key, item in value.items()}
        # a dict that looks like an envelope travels as one ("dict": its pairs)
        return {TYPE_KEY: "dict", VALUE_KEY: [[k, v] for k, v in out.items()]} \
            if TYPE_KEY in out else out
    if isinstance(value, list | tuple):
        return [item if item is None or type(item) in _SCALARS else _wire(item)
                for item in value]
    if isinstance(value, Enum):  # MeasLevel, MeasReturnType
        return _wire(value.value)
    # aer returns its own subclasses (qiskit_aer.backends.compatibility.Statevector ...)
    modules = [cls.__module__ or "" for cls in type(value).__mro__]
    if any(module.startswith("qiskit.quantum_info") for module in modules):
        from qiskit.quantum_info import Clifford, StabilizerState

        if isinstance(value, StabilizerState):
            return encode(value.clifford.to_dict(), path="result")
        if isinstance(value, Clifford):
            return encode(value.to_dict(), path="result")
        data = getattr(value, "data", None)
        if data is not None:  # Statevector, DensityMatrix, Operator, SuperOp
            import numpy as np

            return encode(np.asarray(data), path="result")
    return encode(value, path="result")   # numpy, complex, bytes; refuses anything else


def result_to_json(result: Result) -> dict[str, Any]:
    """A strictly JSON-able dict of a Result (its `to_dict()`, made JSON-safe).

    Saved probabilities (``save_probabilities_dict``) are keyed by integers, which JSON turns
    into strings: `INT_KEYED` lists them so that `result_from_json` gives the integers back.
    """
    raw = result.to_dict()
    int_keyed = []
    for i, experiment in enumerate(raw.get("results") or []):
        for key, value in (experiment.get("data") or {}).items():
            if isinstance(value, dict) and value and all(
                    isinstance(k, int) and not isinstance(k, bool) for k in value):
                int_keyed.append([i, str(key)])
    data = _wire(raw)
    assert isinstance(data, dict)
    if int_keyed:
        data[INT_KEYED] = int_keyed
    return data
