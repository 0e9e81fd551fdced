"""IBM's fake backends (qiskit-ibm-runtime's calibration snapshots) as qhybrid devices.

The one adapter to `qiskit_ibm_runtime.fake_provider`. Listing the snapshots reads the package's
``fake_provider/backends/<name>/conf_<name>.json`` files without importing it (the import takes
seconds and loads qiskit, which the job workers never do); `tests/test_backends.py` checks that
this listing matches `FakeProviderForBackendV2().backends()`, so a new layout is noticed.
Building the backend itself (`qhybrid.backend.ibm_fake_backend`, client side since clients
rebuild its Target too) imports the package, on a device worker or in the user's process.

Names: ``fake_torino`` is the snapshot of ``ibm_torino``; both select the device (see
`device_name`), the way a program written for IBM names its backend.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["FakeSnapshot", "device_name", "fake_noise_model", "snapshots"]

PREFIX = "fake_"
_LOCK = threading.Lock()
_NOISE: dict[str, Any] = {}


@dataclass(frozen=True)
class FakeSnapshot:
    """One fake backend as its configuration file describes it."""

    name: str                   # fake_torino
    ibm_name: str               # ibm_torino, as the configuration names the real device
    num_qubits: int
    basis_gates: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]   # directed, as the device's coupling map has them


def _backends_dir() -> Path | None:
    spec = importlib.util.find_spec("qiskit_ibm_runtime")   # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "fake_provider" / "backends"
    return folder if folder.is_dir() else None


@cache
def snapshots() -> tuple[FakeSnapshot, ...]:
    """Every fake backend the installed qiskit-ibm-runtime ships; none when it is absent."""
    folder = _backends_dir()
    if folder is None:
        return ()
    found = []
    for conf in sorted(folder.glob("*/conf_*.json")):
        short = conf.parent.name
        data = json.loads(conf.read_text())
        found.append(FakeSnapshot(
            name=f"{PREFIX}{short}",
            ibm_name=str(data.get("backend_name") or f"ibm_{short}"),
            num_qubits=int(data["n_qubits"]),
            basis_gates=tuple(str(g) for g in data.get("basis_gates") or ()),
            edges=tuple((int(a), int(b)) for a, b in data.get("coupling_map") or ()),
        ))
    return tuple(found)


def device_name(name: str) -> str | None:
    """The fake device an IBM or fake backend name selects (``ibm_torino`` -> ``fake_torino``);
    None when no snapshot has that name."""
    for snap in snapshots():
        short = snap.name.removeprefix(PREFIX)
        if name in (snap.name, snap.ibm_name, f"ibm_{short}", f"ibmq_{short}"):
            return snap.name
    return None


def fake_noise_model(name: str) -> Any:
    """The noise model the snapshot's own `FakeBackendV2.run` simulates with (its gate,
    readout and thermal-relaxation errors from the calibration properties).

    qiskit-ibm-runtime builds it in a private method; this is the one place that calls it
    (`tests/test_devices.py` compares counts with the fake backend's own run()).
    """
    from qhybrid.backend import ibm_fake_backend

    backend = ibm_fake_backend(name)
    with _LOCK:
        model = _NOISE.get(name)
        if model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = _NOISE[name] = backend._get_noise_model_from_backend_v2()
    return model
