"""What running on a device through the queue costs beyond simulating in-process.

Starts a throw-away service (embedded Redis, local storage, web, a small worker and a device
worker) and times, in one run:

* a 20-qubit random circuit (depth 20, 1024 shots): `backend.run` on the `aer_simulator`
  device through the HTTP API, the device queue and the device worker, against
  `AerSimulator().run` in this process (the baseline). Goal: at most 1.1x.
* 200 five-qubit random circuits, one at a time (submit, wait for the result, next), both ways.
  Goal: at most 2x.
* the same 200 circuits in one `run()` (one quantum task), both ways. Goal: at most 1.2x.

Both ways run the same transpiled circuits with the same seed and the same aer settings: all
the host's cores (QHYBRID_DEVICE_THREADS unset) and OMP_WAIT_POLICY=PASSIVE, which the device
worker sets for itself (idle OpenMP threads must not spin on cores the web app needs).

    python -m benchmarks.device_overhead [--repeats 7] [--small 200]
    python benchmarks/device_overhead.py [--repeats 7] [--small 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run as a script, too

from qiskit import QuantumCircuit, transpile  # noqa: E402
from qiskit.circuit.random import random_circuit  # noqa: E402

from benchmarks.harness import running_service  # noqa: E402
from qhybrid import Client  # noqa: E402

SHOTS = 1024


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _seconds(task: dict[str, str]) -> float:
    """The device worker's own time on a task (started to ended)."""
    return (datetime.fromisoformat(task["ended"]) -
            datetime.fromisoformat(task["started"])).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of the 20-qubit circuit")
    parser.add_argument("--small", type=int, default=200, help="five-qubit circuits")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read when aer's OpenMP loads
    from qiskit_aer import AerSimulator

    with running_service(["small"]) as (service, _, token):
        service.start_device_workers()
        service.wait_ready(timeout=120)
        client = Client(url=service.url, token=token)
        device = client.backend("aer_simulator")
        direct = AerSimulator()

        big = transpile(random_circuit(20, 20, measure=True, seed=2024), device,
                        optimization_level=1, seed_transpiler=1)
        small = [transpile(random_circuit(5, 10, measure=True, seed=i), device,
                           optimization_level=1, seed_transpiler=1) for i in range(args.small)]

        def via_queue(circuit: QuantumCircuit | list[QuantumCircuit], seed: int = 1) -> str:
            job = device.run(circuit, shots=SHOTS, seed_simulator=seed)
            job.result()
            return job.job_id()

        def in_process(circuit: QuantumCircuit, seed: int = 1) -> None:
            direct.run(circuit, shots=SHOTS, seed_simulator=seed).result()

        # warm up both ways: the device worker builds its simulator, the web app imports aer
        for _ in range(2):
            via_queue(big)
            in_process(big)

        queue_times, direct_times, ids = [], [], []
        for _ in range(args.repeats):   # interleaved, so drift hits both alike
            start = time.perf_counter()
            ids.append(via_queue(big))
            queue_times.append(time.perf_counter() - start)
            direct_times.append(_timed(lambda: in_process(big)))
        worker_times = [_seconds(client._json("GET", f"/quantum-tasks/{i}")) for i in ids]

        small_queue = _timed(lambda: [via_queue(c, i) for i, c in enumerate(small)])
        small_direct = _timed(lambda: [in_process(c, i) for i, c in enumerate(small)])
        batch_queue = min(_timed(lambda: via_queue(small)) for _ in range(3))
        batch_direct = min(_timed(lambda: direct.run(small, shots=SHOTS, seed_simulator=1)
                                  .result()) for _ in range(3))

    q, b, w = (statistics.median(x) for x in (queue_times, direct_times, worker_times))
    print(f"20-qubit random circuit, depth 20, {SHOTS} shots "
          f"({big.size()} gates after transpile), median of {args.repeats}:")
    print(f"  baseline  AerSimulator().run in-process   {b * 1000:8.1f} ms")
    print(f"  qhybrid   backend.run via device queue    {q * 1000:8.1f} ms"
          f"   (device worker's own time {w * 1000:.1f} ms)")
    print(f"  ratio {q / b:.2f}x (goal <= 1.1x); overhead {(q - b) * 1000:.1f} ms per task")
    print(f"{args.small} five-qubit random circuits (depth 10, {SHOTS} shots), one at a time:")
    print(f"  baseline  AerSimulator().run in-process   {small_direct:8.2f} s"
          f"   ({small_direct / args.small * 1000:.2f} ms each)")
    print(f"  qhybrid   backend.run via device queue    {small_queue:8.2f} s"
          f"   ({small_queue / args.small * 1000:.2f} ms each)")
    print(f"  ratio {small_queue / small_direct:.2f}x (goal <= 2x); overhead "
          f"{(small_queue - small_direct) / args.small * 1000:.2f} ms per task")
    print(f"the same {args.small} circuits in one run() (one quantum task), best of 3:")
    print(f"  baseline  AerSimulator().run in-process   {batch_direct * 1000:8.1f} ms")
    print(f"  qhybrid   backend.run via device queue    {batch_queue * 1000:8.1f} ms")
    print(f"  ratio {batch_queue / batch_direct:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
