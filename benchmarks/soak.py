"""Soak: many concurrent clients submit trivial jobs; count what went wrong and the throughput.

    python benchmarks/soak.py [--clients 50] [--jobs 5000] [--url URL --token TOKEN]

Without --url it starts a throw-away service (embedded Redis, local storage, one `small`
worker). Prints 5xx answers, lost jobs (accepted, then unknown), stuck jobs (not ended by the
deadline), ERROR and CANCELED counts (all should be 0, every job DONE) and jobs per second;
the baseline is one client submitting and awaiting jobs one after the other.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TERMINAL = {"DONE", "ERROR", "CANCELED"}
TITLE = "soak"


def _upload(url: str, token: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        main = Path(tmp) / "main.py"
        main.write_text("from qhybrid import save_result\nsave_result(1)\n")
        with open(main, "rb") as fh:
            resp = requests.post(f"{url}/api/v1/programs", headers={"Authorization": f"Bearer {token}"},
                                 data={"title": TITLE}, files={"source": ("main.py", fh)},
                                 timeout=60)
        resp.raise_for_status()


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n


def _client(url: str, token: str, n: int, counts: Counts, deadline: float) -> None:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    ids: list[str] = []
    for _ in range(n):
        while True:
            resp = s.post(f"{url}/api/v1/programs/{TITLE}/run", json={}, timeout=120)
            if resp.status_code >= 500:
                counts.add("5xx")
                time.sleep(0.5)
                continue
            resp.raise_for_status()
            ids.append(resp.json()["job_id"])
            break
    for job_id in ids:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                counts.add("stuck")
                break
            resp = s.get(f"{url}/api/v1/jobs/{job_id}/wait",
                         params={"timeout": min(30.0, max(0.0, left))}, timeout=120)
            if resp.status_code == 404:
                counts.add("lost")
                break
            if resp.status_code >= 500:
                counts.add("5xx")
                time.sleep(0.5)
                continue
            resp.raise_for_status()
            state = resp.json()["state"]
            if state in TERMINAL:
                counts.add(state)
                break


def soak(url: str, token: str, clients: int, jobs: int, timeout: float) -> tuple[Counts, float]:
    counts = Counts()
    deadline = time.monotonic() + timeout
    per = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=_client, args=(url, token, n, counts, deadline))
               for n in per]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts, time.monotonic() - start


def report(url: str, token: str, clients: int, jobs: int, timeout: float) -> None:
    _upload(url, token)
    base, base_s = soak(url, token, 1, 50, timeout)
    counts, took = soak(url, token, clients, jobs, timeout)
    c = counts.c
    print(f"soak: {clients} clients, {jobs} jobs in {took:.1f} s")
    print(f"  5xx answers: {c['5xx']}   lost: {c['lost']}   stuck: {c['stuck']}   "
          f"ERROR: {c['ERROR']}   CANCELED: {c['CANCELED']}   DONE: {c['DONE']}")
    print(f"  throughput: {c['DONE'] / took:.1f} jobs/s")
    print(f"  baseline (1 client, 50 jobs one after the other): {base.c['DONE'] / base_s:.1f} "
          f"jobs/s, 5xx {base.c['5xx']}, lost {base.c['lost']}, stuck {base.c['stuck']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds until a job not ended counts as stuck")
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    if args.url:
        report(args.url, args.token or os.environ.get("QHYBRID_TOKEN", ""), args.clients,
               args.jobs, args.timeout)
        return
    from benchmarks.harness import running_service

    with running_service(["small"]) as (service, _, token):
        report(service.url, token, args.clients, args.jobs, args.timeout)


if __name__ == "__main__":
    main()
