"""Fan-out overhead: 1000 no-op distribute_task calls + get() from one job, beside a bare
Celery group of 1000 no-op tasks through the same Redis.

    python benchmarks/fanout.py [--tasks 1000] [--rounds 4]

It starts a throw-away service (embedded Redis, local storage, the `small` job and task
workers). Inside one job, each round times `get([noop(i) for i in range(n)])` from the first
call to the last result; the first round also starts the job's warm executors. The baseline
times `group(noop.s() ...).apply_async().get()` on a bare Celery worker with the same pool and
concurrency as the `tasks.small` worker. Goal: at most 3x the bare group's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    warm, bare_warm = ours[1:] or ours, bare[1:] or bare
    ratio = statistics.median(warm) / statistics.median(bare_warm)
    print(f"{args.tasks} no-op distribute_task calls + get() in one job "
          f"(tasks.small worker, {concurrency} threads):")
    print(f"  rounds: {', '.join(f'{t:.3f}' for t in ours)} s  (first round starts the "
          f"executors); median warm {statistics.median(warm):.3f} s, "
          f"{args.tasks / statistics.median(warm):.0f} tasks/s")
    print(f"baseline bare Celery group of {args.tasks} no-op tasks, same Redis, {concurrency} "
          f"threads:")
    print(f"  rounds: {', '.join(f'{t:.3f}' for t in bare)} s; median warm "
          f"{statistics.median(bare_warm):.3f} s")
    print(f"ratio {ratio:.2f}x; goal <= 3x -> {'met' if ratio <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
