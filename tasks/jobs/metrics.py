"""A hybrid job's metrics in Redis: appended as `log_metric` is called, read by the API.

The supervisor appends each record the moment the job logs it, so `job.metrics()` shows a
running job's progress; when the job ends the records are also stored with its outputs
(`output/metrics.jsonl`) and the Redis copy expires like the live log.
"""

from __future__ import annotations

import json
from typing import Any

from qhybrid.errors import NotFound
from storage import keys
from storage.store import ObjectStore
from tasks.core import defaults as d
from tasks.core.registry import Registry


def append(registry: Registry, job_id: str, record: dict[str, Any]) -> bool:
    """Append one record; False (nothing written) once the job has MAX_METRICS_PER_JOB."""
    key = d.JOB_METRICS_KEY.format(job_id=job_id)
    if registry.r.llen(key) >= d.MAX_METRICS_PER_JOB:
        return False
    registry.r.rpush(key, json.dumps(record, separators=(",", ":")))
    return True


def clear(registry: Registry, job_id: str) -> None:
    """Forget the records of an earlier attempt: a job run again starts its metrics anew."""
    registry.r.delete(d.JOB_METRICS_KEY.format(job_id=job_id))


def read(registry: Registry, store: ObjectStore, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's records in the order they were logged: from Redis, else from storage."""
    key = d.JOB_METRICS_KEY.format(job_id=job["id"])
    pipe = registry.r.pipeline()
    pipe.exists(key)
    pipe.lrange(key, 0, -1)
    exists, lines = pipe.execute()
    if not exists and job.get("prefix"):
        try:
            lines = store.get_bytes(keys.job_metrics(job["prefix"])).decode().splitlines()
        except NotFound:
            lines = []
    return [json.loads(line) for line in lines if line]


def store_and_expire(registry: Registry, store: ObjectStore, job_id: str, prefix: str) -> None:
    """Keep the records with the job's outputs; the Redis copy expires later."""
    key = d.JOB_METRICS_KEY.format(job_id=job_id)
    lines = registry.r.lrange(key, 0, -1)
    if lines:
        store.put_bytes(keys.job_metrics(prefix), ("\n".join(lines) + "\n").encode())
        registry.r.expire(key, d.LOG_EXPIRY_S)


__all__ = ["append", "clear", "read", "store_and_expire"]
