"""hybrid_jobs/8 "Creating Hybrid Job Scripts" (algorithm_script.py): a script-mode job
that finds its device in AMZN_BRAKET_DEVICE_ARN, runs random rotations, logs the tracked
cost per iteration and saves counts, angles and the Tracker's task summary with
save_job_result. Braket's Circuit().rx(0, angle) becomes a Qiskit circuit."""

import os

import numpy as np
from qiskit import QuantumCircuit

from qhybrid import Tracker, get_backend, log_metric, save_job_result

cost_tracker = Tracker().start()

print("Test job started!!!!!")

device = get_backend(os.environ["AMZN_BRAKET_DEVICE_ARN"])

counts_list = []
angle_list = []
braket_tasks_cost = 0.0
for i in range(3):
    angle = np.pi * np.random.rand()
    random_circuit = QuantumCircuit(1)
    random_circuit.rx(angle, 0)
    random_circuit.measure_all()

    task = device.run(random_circuit, shots=100)
    counts = task.result().get_counts()

    angle_list.append(angle)
    counts_list.append(counts)
    print(counts)

    braket_tasks_cost = float(cost_tracker.simulator_tasks_cost() + cost_tracker.qpu_tasks_cost())
    log_metric(metric_name="braket_tasks_cost", value=braket_tasks_cost, iteration_number=i)

save_job_result(
    {
        "counts": counts_list,
        "angles": angle_list,
        "task summary": cost_tracker.quantum_tasks_statistics(),
        "estimated cost": braket_tasks_cost,
    },
)

print("Test job completed!!!!!")
