"""Sustained trivial jobs per second with several clients, beside bare Celery round trips.

    python benchmarks/throughput.py [--clients 8] [--seconds 60]

Starts a throw-away service (embedded Redis, local storage, web, the `small` workers) and has
`--clients` threads each submit a trivial program job and wait for its result, again and
again, for `--seconds`; then the same threads do bare Celery `delay().get()` round trips of a
no-op task through the same Redis, against a bare worker with as many threads as the `small`
class has job slots (the baseline). Prints jobs/s, failures and latency percentiles of both,
and the goal (>= 200 trivial jobs/s with 8 clients and no failure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qhybrid import Client, Program  # noqa: E402

GOAL = 200.0


def hammer(clients: int, seconds: float, once: Callable[[], None]) -> tuple[list[float], int]:
    """Run `once` from `clients` threads for `seconds`: (latencies, failures)."""
    times: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                once()
            except Exception:
                with lock:
                    failures[0] += 1
                continue
            with lock:
                times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failures[0]


def line(label: str, times: list[float], failures: int, seconds: float) -> float:
    rate = len(times) / seconds
    q = statistics.quantiles(times, n=20) if len(times) > 1 else [0.0] * 19
    print(f"{label}: {rate:.1f}/s ({len(times)} in {seconds:.0f} s, {failures} failed), "
          f"p50 {statistics.median(times) * 1000:.1f} ms, p95 {q[18] * 1000:.1f} ms")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    from benchmarks.harness import bare_celery_worker, running_service
    from qhybrid.resources import load_classes

    slots = load_classes()["small"].slots()
    with running_service(["small"]) as (service, redis_url, token):
        client = Client(url=service.url, token=token)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "main.py").write_text("from qhybrid import save_result\n"
                                            "save_result({'ok': True})\n")
            program = client.upload(Program(title="throughput", entrypoint="main.py",
                                            working_dir=tmp))

        def job() -> None:
            if program.run().result(timeout=120) != {"ok": True}:
                raise RuntimeError("wrong result")

        hammer(args.clients, 3.0, job)                       # warm-up
        times, failed = hammer(args.clients, args.seconds, job)
        rate = line(f"qhybrid trivial jobs, {args.clients} clients", times, failed, args.seconds)

        os.environ["BARE_REDIS_URL"] = redis_url
        from benchmarks.bare_celery import app, noop

        app.conf.broker_url = app.conf.result_backend = redis_url
        with bare_celery_worker(redis_url, concurrency=slots):
            noop.delay().get(timeout=60)

            def bare() -> None:
                noop.delay().get(timeout=30)

            hammer(args.clients, 3.0, bare)
            times, failed_bare = hammer(args.clients, args.seconds, bare)
            line(f"baseline bare Celery delay().get(), {args.clients} clients, "
                 f"{slots}-thread worker", times, failed_bare, args.seconds)
    met = rate >= GOAL and failed == 0
    print(f"goal: >= {GOAL:.0f} trivial jobs/s with {args.clients} clients and no failure -> "
          f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
