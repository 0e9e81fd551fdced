"""Distributed transpilation: 64 random 20-qubit circuits (depth 20) transpiled at level 2
for a 127-qubit heavy-hex GenericBackendV2, serially in one process versus fanned out with
distribute_task over 2 `small` task worker processes.

    python benchmarks/transpile_fanout.py [--circuits 64]

It starts a throw-away service (embedded Redis, local storage, the `small` job worker and two
`tasks.small` workers of one slot each). Both sides build the backend before the clock
starts (the job's executors in a warm-up round); both transpile the same circuits, with
QISKIT_PARALLEL=FALSE. A `small` task runs with one thread (RAYON_NUM_THREADS=1), so the
baseline is timed that way, and also with qiskit's default Rust threads for reference.
Goal: speed-up at least 1.7x on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETUP = """
from qiskit.circuit.random import random_circuit
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit.transpiler import generate_preset_pass_manager

from backends.registry import eagle_127_edges

_cache = {}


def eagle():
    if "backend" not in _cache:
        _cache["backend"] = GenericBackendV2(127, basis_gates=["ecr", "id", "rz", "sx", "x"],
                                             coupling_map=eagle_127_edges(), seed=127)
    return _cache["backend"]


def circuits(n):
    return [random_circuit(20, 20, max_operands=2, measure=True, seed=i) for i in range(n)]


def transpile_one(circuit):
    pm = generate_preset_pass_manager(optimization_level=2, backend=eagle(), seed_transpiler=1)
    return pm.run(circuit)
"""

FANOUT = SETUP + """
import time
from qhybrid import distribute_task, get, get_arguments, save_result


@distribute_task(target="small")
def transpile_task(circuit):
    if circuit is None:          # warm-up: build the backend once in this executor
        eagle()
        time.sleep(0.3)          # long enough that both workers take some
        return None
    return transpile_one(circuit)

args = get_arguments()
get([transpile_task(None) for _ in range(8)])
work = circuits(args["circuits"])
start = time.perf_counter()
isa = get([transpile_task(c) for c in work])
elapsed = time.perf_counter() - start
save_result({"seconds": elapsed, "depths": [c.depth() for c in isa]})
"""


def serial(n: int) -> None:
    """In this process: build the backend, then time the transpilations one by one."""
    scope: dict[str, object] = {}
    exec(compile(SETUP, "setup", "exec"), scope)
    scope["eagle"]()  # type: ignore[operator]
    work = scope["circuits"](n)  # type: ignore[operator]
    cpu, start = time.process_time(), time.perf_counter()
    isa = [scope["transpile_one"](c) for c in work]  # type: ignore[operator]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": elapsed, "cpu": cpu, "depths": [c.depth() for c in isa]}))


def serial_run(n: int, threads: int | None) -> dict[str, object]:
    """The serial baseline in a fresh process; `threads` caps qiskit's Rust threads."""
    env = {**os.environ, "QISKIT_PARALLEL": "FALSE"}
    if threads:
        env.update({k: str(threads) for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS")})
    out = subprocess.run([sys.executable, __file__, "--serial", "--circuits", str(n)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def fanned_out(n: int) -> tuple[float, list[int]]:
    from app.service import Service, free_port, start_redis, task_worker_command, worker_command
    from qhybrid import Client, Program
    from tasks.core.redis_client import connect
    from tasks.core.registry import Registry

    tmp = Path(tempfile.mkdtemp(prefix="qh-bench-"))
    redis_proc, redis_url = start_redis(tmp / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    env.update({"QHYBRID_REDIS_URL": redis_url, "QHYBRID_DATA_DIR": str(tmp / "data"),
                "QHYBRID_STORAGE_URL": (tmp / "storage").as_uri(), "QHYBRID_SECRET_KEY": "b",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    service = Service(host="127.0.0.1", port=free_port(), env=env, classes=["small"],
                      log_dir=tmp / "logs")
    try:
        service.start_web()
        service._spawn("worker-small", worker_command("small"))
        for i in (1, 2):
            service._spawn(f"worker-tasks-small-{i}",
                           task_worker_command("small", concurrency=1, name=f"tasks-small-{i}"))
        service.wait_ready(timeout=120)
        token = Registry(connect(redis_url)).create_user("bench")
        client = Client(url=service.url, token=token)
        with tempfile.TemporaryDirectory() as src:
            Path(src, "main.py").write_text(FANOUT)
            program = client.upload(Program(title="transpile-fanout", entrypoint="main.py",
                                            working_dir=src))
        job = program.run(circuits=n)
        out = job.result(timeout=1800)
        workers = {t["worker"] for t in job.tasks() if t["name"] == "transpile_task"}
        print(f"  the fan-out ran on {len(workers)} task worker processes")
        return float(out["seconds"]), list(out["depths"])
    finally:
        service.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=64)
    parser.add_argument("--serial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serial:
        serial(args.circuits)
        return
    print(f"{args.circuits} random 20-qubit depth-20 circuits, level 2, 127-qubit heavy-hex "
          f"GenericBackendV2, {os.cpu_count()} cores")
    one = serial_run(args.circuits, threads=1)
    free = serial_run(args.circuits, threads=None)
    print(f"baseline serial, one process, one thread (as a `small` task runs): "
          f"{one['seconds']:.2f} s")
    print(f"  (the same with qiskit's default Rust threads: {free['seconds']:.2f} s wall, "
          f"{free['cpu']:.2f} s CPU)")
    fan, fan_depths = fanned_out(args.circuits)
    print(f"distribute_task over 2 small task worker processes: {fan:.2f} s")
    same = "same" if fan_depths == one["depths"] == free["depths"] else "DIFFERENT"
    speedup = float(one["seconds"]) / fan       # type: ignore[arg-type]
    print(f"speed-up {speedup:.2f}x over the one-thread baseline, "
          f"{float(free['seconds']) / fan:.2f}x over the default-threads one "  # type: ignore[arg-type]
          f"({same} output depths); goal >= 1.7x -> {'met' if speedup >= 1.7 else 'NOT met'}")


if __name__ == "__main__":
    main()
