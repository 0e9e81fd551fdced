"""Fan-out overhead: 1000 no-op distribute_task calls + get() from one job, beside Ray's
1000 no-op `.remote()` calls + `ray.get` and a bare Celery group of 1000 no-op tasks.

    python benchmarks/fanout.py [--tasks 1000] [--rounds 4]

It starts a throw-away service (embedded Redis, local storage, the `small` job and task
workers). Inside one job, each round times `get([noop(i) for i in range(n)])` from the first
call to the last result; the first round also starts the job's warm executors. One baseline
times `group(noop.s() ...).apply_async().get()` on a bare Celery worker with the same pool and
concurrency as the `tasks.small` worker, through the same Redis. Once the service stopped,
the other times `ray.get([noop.remote(i) for i in range(n)])` on a local Ray with as many CPUs
as the `tasks.small` worker has threads (its first round starts Ray's workers). Ray comes with
the bench extra only (`qh_sync --extra test --extra bench`); without it, the bare Celery
baseline is printed alone. Goal: no slower than Ray (warm medians).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qhybrid import Client, Program  # noqa: E402

FANOUT = """
import time
from qhybrid import distribute_task, get, get_arguments, save_result

@distribute_task(target="small")
def noop(i):
    return None

args = get_arguments()
times = []
for _ in range(args["rounds"]):
    start = time.perf_counter()
    assert get([noop(i) for i in range(args["tasks"])]) == [None] * args["tasks"]
    times.append(time.perf_counter() - start)
save_result(times)
"""


def measure_fanout(client: Client, tasks: int, rounds: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "main.py").write_text(FANOUT)
        program = client.upload(Program(title="fanout", entrypoint="main.py", working_dir=tmp))
    job = program.run(tasks=tasks, rounds=rounds)
    return list(job.result(timeout=600))


def measure_bare(redis_url: str, tasks: int, rounds: int, concurrency: int) -> list[float]:
    os.environ["BARE_REDIS_URL"] = redis_url
    from celery import group

    from benchmarks.bare_celery import app, noop
    from benchmarks.harness import bare_celery_worker

    app.conf.broker_url = app.conf.result_backend = redis_url
    with bare_celery_worker(redis_url, concurrency=concurrency):
        noop.delay().get(timeout=60)                     # worker up
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            group(noop.s(i) for i in range(tasks)).apply_async().get(timeout=600)
            times.append(time.perf_counter() - start)
    return times


RAY_FANOUT = """
import json, sys, time
import ray

tasks, rounds, cpus = (int(a) for a in sys.argv[1:4])
ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
         configure_logging=False)

@ray.remote
def noop(i):
    return None

times = []
for _ in range(rounds):
    start = time.perf_counter()
    assert ray.get([noop.remote(i) for i in range(tasks)]) == [None] * tasks
    times.append(time.perf_counter() - start)
ray.shutdown()
print(json.dumps({"version": ray.__version__, "times": times}))
"""


def measure_ray(tasks: int, rounds: int, cpus: int) -> tuple[str, list[float]] | None:
    """(Ray's version, its rounds) in a fresh process; None when Ray is not installed here."""
    if importlib.util.find_spec("ray") is None:
        return None
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", RAY_FANOUT, str(tasks), str(rounds), str(cpus)],
                         env=env, check=True, capture_output=True, text=True, timeout=900)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return str(found["version"]), [float(t) for t in found["times"]]


def rounds_line(times: list[float], tasks: int, first: str) -> str:
    warm = statistics.median(times[1:] or times)
    return (f"  rounds: {', '.join(f'{t:.3f}' for t in times)} s  (first round {first}); "
            f"median warm {warm:.3f} s, {tasks / warm:.0f} tasks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from app.service import _slots
    from benchmarks.harness import running_service

    concurrency = _slots("small")
    with running_service(["small"]) as (service, redis_url, token):
        ours = measure_fanout(Client(url=service.url, token=token), args.tasks, args.rounds)
        bare = measure_bare(redis_url, args.tasks, args.rounds, concurrency)
    ray = measure_ray(args.tasks, args.rounds, concurrency)
    warm = statistics.median(ours[1:] or ours)
    print(f"{args.tasks} no-op distribute_task calls + get() in one job "
          f"(tasks.small worker, {concurrency} threads):")
    print(rounds_line(ours, args.tasks, "starts the executors"))
    print(f"baseline bare Celery group of {args.tasks} no-op tasks, same Redis, {concurrency} "
          f"threads:")
    print(rounds_line(bare, args.tasks, "as the others"))
    bare_warm = statistics.median(bare[1:] or bare)
    print(f"  qhybrid / bare Celery: {warm / bare_warm:.2f}x")
    if ray is None:
        print("baseline Ray: not installed (qh_sync --extra test --extra bench installs it); "
              "goal (no slower than Ray) not checked")
        return
    version, ray_times = ray
    print(f"baseline Ray {version}: {args.tasks} no-op .remote() calls + "
          f"ray.get, local, num_cpus={concurrency}:")
    print(rounds_line(ray_times, args.tasks, "starts Ray's workers"))
    ray_warm = statistics.median(ray_times[1:] or ray_times)
    print(f"qhybrid / Ray: {warm / ray_warm:.2f}x; goal <= 1x (no slower than Ray) -> "
          f"{'met' if warm <= ray_warm else 'NOT met'}")


if __name__ == "__main__":
    main()
