"""Submit-to-result latency of trivial program jobs, beside a bare Celery round trip.

    python benchmarks/job_latency.py [--jobs 200] [--events on|off|both] [--url URL --token TOKEN]

Without --url it starts a throw-away service (embedded Redis, local storage, one `small`
worker), with Celery task events and heartbeats on (the default, for Flower), off, or both in
turn (what events cost). The baseline is `delay().get()` of a no-op task through the same
Redis. Goal: p50 at most 100 ms.
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_jobs(client: Client, n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "main.py").write_text("from qhybrid import save_result\nsave_result({'ok': True})\n")
        program = client.upload(Program(title="latency", entrypoint="main.py", working_dir=tmp))
    for _ in range(5):                                   # warm-up
        program.run().result()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        assert program.run().result() == {"ok": True}
        times.append(time.perf_counter() - start)
    return times


def measure_bare(redis_url: str, n: int) -> list[float]:
    os.environ["BARE_REDIS_URL"] = redis_url
    from benchmarks.bare_celery import app, noop
    from benchmarks.harness import bare_celery_worker

    app.conf.broker_url = app.conf.result_backend = redis_url
    with bare_celery_worker(redis_url):
        noop.delay().get(timeout=60)                     # worker up and warm
        for _ in range(5):
            noop.delay().get(timeout=10)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            noop.delay().get(timeout=10)
            times.append(time.perf_counter() - start)
    return times


def report(jobs: list[float], bare: list[float], label: str = "") -> None:
    ms = 1000.0
    print(f"trivial job submit-to-result{label} over {len(jobs)} jobs: "
          f"p50 {percentile(jobs, 0.5) * ms:.1f} ms, p95 {percentile(jobs, 0.95) * ms:.1f} ms, "
          f"mean {statistics.mean(jobs) * ms:.1f} ms")
    print(f"baseline bare Celery delay().get() over {len(bare)} round trips: "
          f"p50 {percentile(bare, 0.5) * ms:.1f} ms, p95 {percentile(bare, 0.95) * ms:.1f} ms")
    print(f"goal: job p50 <= 100 ms -> {'met' if percentile(jobs, 0.5) <= 0.1 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--redis-url", help="Redis of the running service, for the baseline")
    parser.add_argument("--events", choices=["on", "off", "both"], default="both",
                        help="Celery task events of the throw-away service")
    args = parser.parse_args()
    if args.url:
        jobs = measure_jobs(Client(url=args.url, token=args.token), args.jobs)
        if not args.redis_url:
            parser.error("--redis-url is needed for the baseline with --url")
        report(jobs, measure_bare(args.redis_url, args.jobs))
        return
    from benchmarks.harness import running_service

    if args.events == "both":
        # each in its own process: the baseline's Celery app keeps its first Redis
        import subprocess

        p50 = {}
        for events in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, "--jobs", str(args.jobs),
                                  "--events", events], check=True, stdout=subprocess.PIPE,
                                 text=True).stdout
            print(out, end="")
            p50[events] = float(out.split(" p50 ", 1)[1].split(" ms", 1)[0])
        print(f"task events cost {p50['on'] - p50['off']:+.1f} ms at p50")
        return
    env = {"QHYBRID_TASK_EVENTS": "1" if args.events == "on" else "0"}
    with running_service(["small"], extra_env=env) as (service, redis_url, token):
        jobs = measure_jobs(Client(url=service.url, token=token), args.jobs)
        bare = measure_bare(redis_url, args.jobs)
    report(jobs, bare, f" (task events {args.events})")


if __name__ == "__main__":
    main()
