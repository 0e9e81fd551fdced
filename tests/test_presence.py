"""Live workers are listed from one set: the cost does not grow with what else Redis holds."""

from __future__ import annotations

import time

from tasks.core import defaults as d
from tasks.core.redis_client import connect
from tasks.core.registry import Registry
from tests.conftest import RunningService


def _calls(r: object, command: str) -> int:
    stats = r.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_workers_are_listed_without_scanning_the_keyspace(redis_server: str) -> None:
    r = connect(f"{redis_server}/12")
    r.flushdb()
    registry = Registry(r)
    # given a year of history: many keys that are not workers
    pipe = r.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"qh:job:{i:032x}", "x")
    pipe.execute()
    # and two live workers, one of which retires, and one that went silent
    registry.announce_worker("host-a:1", {"name": "host-a:1", "queues": ["jobs.small"]})
    registry.announce_worker("host-b:2", {"name": "host-b:2", "queues": ["jobs.small",
                                                                        "tasks.small"]})
    registry.announce_worker("host-c:3", {"name": "host-c:3", "queues": ["jobs.large"]})
    registry.retire_worker("host-c:3")
    r.zadd(d.WORKERS_KEY, {"host-gone:4": time.time() - 1})
    scans = _calls(r, "scan")
    # when the live workers are listed
    live = registry.workers_by_queue()
    # then they are the live ones, by queue, and no SCAN ran
    assert live == {"jobs.small": ["host-a:1", "host-b:2"], "tasks.small": ["host-b:2"]}
    assert _calls(r, "scan") == scans
    # and a worker whose presence expired is no longer listed
    r.delete(d.WORKER_KEY.format(name="host-a:1"))
    assert registry.workers_by_queue() == {"jobs.small": ["host-b:2"], "tasks.small": ["host-b:2"]}
    r.flushdb()


def test_healthz_counts_a_starting_worker_and_says_it_is_warming(service: RunningService) -> None:
    import requests

    registry = service.registry
    # given a class whose worker is not running (large: configured, never started here)
    body = requests.get(service.url + "/healthz", timeout=10).json()
    assert "jobs.large" in body["queues_without_worker"]
    try:
        # when its worker's command says it is starting
        registry.note_warming(["jobs.large"])
        body = requests.get(service.url + "/healthz", timeout=10).json()
        # then /healthz counts the queue as served and lists it as warming
        assert "jobs.large" in body["warming"]
        assert "jobs.large" not in body["queues_without_worker"]
        # and once a worker for it is live, it is no longer warming
        registry.announce_worker("host-w:9", {"name": "host-w:9", "queues": ["jobs.large"]})
        body = requests.get(service.url + "/healthz", timeout=10).json()
        assert "jobs.large" not in body["warming"] and body["queues"]["jobs.large"] == ["host-w:9"]
    finally:
        registry.retire_worker("host-w:9")
        registry.r.hdel(d.WARMING_KEY, "jobs.large")
