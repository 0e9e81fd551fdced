"""qiskit/4 "Hybrid Jobs with Qiskit": a decorated VQE for H2 with BackendEstimatorV2 on the
job's device, saving its result with save_job_result (the function returns nothing).
qiskit_algorithms' VQE + SLSQP become scipy's COBYLA (sampled energies are noisy for SLSQP's
finite differences) over the same estimator; TwoLocal is
qiskit's n_local with the same ry rotations and cz entanglers."""

from __future__ import annotations

import numpy as np

from qhybrid import get_backend, get_job_device, save_job_result


def main() -> None:
    from qiskit.circuit.library import n_local
    from qiskit.primitives import BackendEstimatorV2
    from qiskit.quantum_info import SparsePauliOp
    from scipy.optimize import minimize

    backend = get_backend(get_job_device())
    h2_op = SparsePauliOp(
        ["II", "IZ", "ZI", "ZZ", "XX"],
        coeffs=[-1.052373245772859, 0.39793742484318045, -0.39793742484318045,
                -0.01128010425623538, 0.18093119978423156],
    )
    estimator = BackendEstimatorV2(backend=backend, options={"default_precision": 0.02})
    ansatz = n_local(2, "ry", "cz", reps=1)

    def energy(point: np.ndarray) -> float:
        return float(estimator.run([(ansatz, h2_op, point)]).result()[0].data.evs)

    start = np.zeros(ansatz.num_parameters)
    result = minimize(energy, start, method="COBYLA", options={"maxiter": 8, "rhobeg": 0.5})
    save_job_result(
        {
            "VQE": {
                "eigenvalue": float(result.fun),
                "optimal_parameters": [float(x) for x in result.x],
                "optimal_point": result.x.tolist(),
                "optimal_value": float(result.fun),
            }
        }
    )
