"""Submit-to-result latency of trivial program jobs, beside a bare Celery round trip.

    python benchmarks/job_latency.py [--jobs 200] [--events on|off|both] [--history N]
                                     [--url URL --token TOKEN]

Without --url it starts a throw-away service (embedded Redis, local storage, one `small`
worker), with Celery task events and heartbeats on (the default, for Flower), off, or both in
turn (what events cost). The baseline is `delay().get()` of a no-op task through the same
Redis. Goal: p50 at most 10 ms with the sandbox on. With --history N (throw-away service only) it measures
again after seeding N earlier jobs of other users into the registry (their records, events
and per-user indexes): a job's cost must not grow with the service's history.
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


def seed_history(redis_url: str, n: int) -> None:
    """N earlier jobs of 100 other users, written as the registry keeps them."""
    import json
    import uuid

    from tasks.core import defaults as d
    from tasks.core.redis_client import connect

    r = connect(redis_url)
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        job_id = uuid.uuid4().hex
        user = f"history{i % 100}"
        pipe.hset(d.JOB_KEY.format(job_id=job_id), mapping={
            "id": job_id, "user": user, "kind": "program", "status": "DONE",
            "created": now - i, "ended": now - i + 1, "program": "old"})
        pipe.rpush(d.JOB_EVENTS_KEY.format(job_id=job_id),
                   json.dumps({"status": "DONE", "at": now - i + 1}))
        pipe.zadd(d.USER_JOBS_KEY.format(user=user), {job_id: now - i})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    print(f"seeded {n} earlier jobs ({r.dbsize()} keys in Redis)")


def report(jobs: list[float], bare: list[float], label: str = "") -> None:
    ms = 1000.0
    print(f"trivial job submit-to-result{label} over {len(jobs)} jobs: "
          f"p50 {percentile(jobs, 0.5) * ms:.1f} ms, p95 {percentile(jobs, 0.95) * ms:.1f} ms, "
          f"mean {statistics.mean(jobs) * ms:.1f} ms")
    print(f"baseline bare Celery delay().get() over {len(bare)} round trips: "
          f"p50 {percentile(bare, 0.5) * ms:.1f} ms, p95 {percentile(bare, 0.95) * ms:.1f} ms")
    print(f"goal: job p50 <= 10 ms -> {'met' if percentile(jobs, 0.5) <= 0.01 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--redis-url", help="Redis of the running service, for the baseline")
    parser.add_argument("--events", choices=["on", "off", "both"], default="both",
                        help="Celery task events of the throw-away service")
    parser.add_argument("--history", type=int, default=0,
                        help="then seed this many earlier jobs and measure again")
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
                                  "--events", events, "--history", str(args.history)],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            print(out, end="")
            p50[events] = float(out.split(" p50 ", 1)[1].split(" ms", 1)[0])
        print(f"task events cost {p50['on'] - p50['off']:+.1f} ms at p50")
        return
    env = {"QHYBRID_TASK_EVENTS": "1" if args.events == "on" else "0"}
    with running_service(["small"], extra_env=env) as (service, redis_url, token):
        client = Client(url=service.url, token=token)
        jobs = measure_jobs(client, args.jobs)
        bare = measure_bare(redis_url, args.jobs)
        report(jobs, bare, f" (task events {args.events})")
        if args.history:
            seed_history(redis_url, args.history)
            later = measure_jobs(client, args.jobs)
            ms = 1000.0
            print(f"with {args.history} earlier jobs: p50 {percentile(later, 0.5) * ms:.1f} ms, "
                  f"p95 {percentile(later, 0.95) * ms:.1f} ms (without: p50 "
                  f"{percentile(jobs, 0.5) * ms:.1f} ms)")


if __name__ == "__main__":
    main()
