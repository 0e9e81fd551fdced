"""Aer results as strict JSON, for the trip from a device worker to the client.

`result_to_json` runs on the worker; its inverse `result_from_json` lives in the client package
(`qhybrid.backend`), since `QhybridJob.result()` needs it without the server, and is re-exported
here. Counts stay hex-keyed dicts and memory a list of hex strings; numpy and complex values use
`qhybrid.codec` envelopes. Saved quantum states (``save_statevector`` and friends) travel as
ndarrays, which `Result.get_statevector()` and friends accept; Cliffords as their dict form.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from qiskit.result import Result

from qhybrid.backend import INT_KEYED, result_from_json
from qhybrid.codec import encode

__all__ = ["result_from_json", "result_to_json"]

_SCALARS = (str, int, float, bool)   # exactly these types pass through as they are


def _plain(value: Any) -> Any:
    """Replace qiskit objects aer may put in a result by data `qhybrid.codec.encode` takes."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):  # MeasLevel, MeasReturnType
        return _plain(value.value)
    # aer returns its own subclasses (qiskit_aer.backends.compatibility.Statevector ...)
    modules = [cls.__module__ or "" for cls in type(value).__mro__]
    if any(module.startswith("qiskit.quantum_info") for module in modules):
        from qiskit.quantum_info import Clifford, StabilizerState

        if isinstance(value, StabilizerState):
            return value.clifford.to_dict()
        if isinstance(value, Clifford):
            return value.to_dict()
        data = getattr(value, "data", None)
        if data is not None:  # Statevector, DensityMatrix, Operator, SuperOp
            import numpy as np

            return np.asarray(data)
    return value


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
    data = encode(_plain(raw), path="result")
    assert isinstance(data, dict)
    if int_keyed:
        data[INT_KEYED] = int_keyed
    return data
