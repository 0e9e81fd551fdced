"""hybrid_jobs/0 "Creating your first Hybrid Job": a decorated function that rotates one
qubit by gradient descent, logs the expectation value per step and returns its parameters
pickled (Braket's data_format="pickle"). The PennyLane QNode becomes a Qiskit circuit whose
<Z> comes from BackendEstimatorV2, the gradient from the parameter-shift rule."""

from __future__ import annotations

import os

import numpy as np

from qhybrid import get_backend, log_metric


def qubit_rotation_hybrid_job(num_steps: int = 1, stepsize: float = 0.5) -> np.ndarray:
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.primitives import BackendEstimatorV2
    from qiskit.quantum_info import SparsePauliOp

    backend = get_backend(os.environ["AMZN_BRAKET_DEVICE_ARN"])
    theta = ParameterVector("p", 2)
    circuit = QuantumCircuit(1)
    circuit.rx(theta[0], 0)
    circuit.ry(theta[1], 0)
    estimator = BackendEstimatorV2(backend=backend, options={"default_precision": 0.02})
    z = SparsePauliOp("Z")

    def expvals(points: list[np.ndarray]) -> list[float]:
        job = estimator.run([(circuit, z, np.array(points))])
        return [float(v) for v in job.result()[0].data.evs]

    params = np.array([0.5, 0.75])
    for i in range(num_steps):
        shifts = [params + s * np.pi / 2 * np.eye(2)[k] for k in range(2) for s in (1, -1)]
        values = expvals(shifts)
        grad = np.array([(values[2 * k] - values[2 * k + 1]) / 2 for k in range(2)])
        params = params - stepsize * grad
        expval = expvals([params])[0]
        log_metric(metric_name="expval", iteration_number=i, value=expval)
    return params
