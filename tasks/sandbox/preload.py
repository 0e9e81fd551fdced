"""Imported once by the warm parent, so that every job's child starts with these loaded."""

import pkgutil  # noqa: F401 - runpy.run_path imports it on first use: 1.5 ms of every job

import cloudpickle  # noqa: F401
import numpy  # noqa: F401
import qiskit  # noqa: F401
import qiskit.qpy  # noqa: F401
import qiskit_aer  # noqa: F401
from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2  # noqa: F401
from qiskit.transpiler import generate_preset_pass_manager  # noqa: F401

import qhybrid  # noqa: F401
import qhybrid.codec  # noqa: F401
import tasks.sandbox.child  # noqa: F401
import tasks.sandbox.serverless_codec  # noqa: F401 - every job's end may convert its result
