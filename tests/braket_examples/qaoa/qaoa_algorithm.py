"""hybrid_jobs/4 "Embedded simulators" (qaoa/qaoa_algorithm.py, entry point
"qaoa.qaoa_algorithm:main"): reads its hyperparameters from AMZN_BRAKET_HP_FILE, optimises a
QAOA cost with Adam, logs "Cost" per iteration and saves the parameters and final cost with
save_job_result. PennyLane's QNode becomes a Qiskit QAOAAnsatz run by BackendEstimatorV2."""

from __future__ import annotations

import json
import os

import numpy as np
from qaoa.utils import maxcut_hamiltonian, ring_graph

from qhybrid import get_backend, log_metric, save_job_result


def main() -> None:
    from qiskit.circuit.library import QAOAAnsatz
    from qiskit.primitives import BackendEstimatorV2

    with open(os.environ["AMZN_BRAKET_HP_FILE"]) as f:
        hyperparams = json.load(f)
    print("hyperparams: ", hyperparams)

    n_nodes = int(hyperparams["n_nodes"])
    n_edges = int(float(hyperparams["n_edges"]))
    n_layers = int(hyperparams["n_layers"])
    seed = int(hyperparams["seed"])
    iterations = int(hyperparams["iterations"])
    stepsize = float(hyperparams["stepsize"])

    cost_h = maxcut_hamiltonian(n_nodes, ring_graph(n_nodes, n_edges, seed))
    ansatz = QAOAAnsatz(cost_h, reps=n_layers).decompose(reps=3)
    estimator = BackendEstimatorV2(backend=get_backend(os.environ["AMZN_BRAKET_DEVICE_ARN"]),
                                   options={"default_precision": 0.02})

    def costs(points: list[np.ndarray]) -> np.ndarray:
        return np.asarray(estimator.run([(ansatz, cost_h, np.array(points))]).result()[0]
                          .data.evs, dtype=float)

    rng = np.random.default_rng(seed)
    params = rng.uniform(size=2 * n_layers)
    m = np.zeros_like(params)
    v = np.zeros_like(params)
    for i in range(iterations):
        eye = np.eye(len(params)) * np.pi / 2
        values = costs([params, *(params + e for e in eye), *(params - e for e in eye)])
        cost_before = values[0]
        grad = (values[1:1 + len(params)] - values[1 + len(params):]) / 2
        m = 0.9 * m + 0.1 * grad                       # Adam, as qml.AdamOptimizer
        v = 0.99 * v + 0.01 * grad**2
        params = params - stepsize * (m / (1 - 0.9 ** (i + 1))) / (
            np.sqrt(v / (1 - 0.99 ** (i + 1))) + 1e-8)
        log_metric(metric_name="Cost", value=float(cost_before), iteration_number=i)

    final_cost = float(costs([params])[0])
    log_metric(metric_name="Cost", value=final_cost, iteration_number=iterations)
    save_job_result({"params": params.tolist(), "cost": final_cost})


if __name__ == "__main__":
    main()
