"""Operational counters and histograms, kept in Redis for `/metrics` (app.prometheus).

Every process that sees an event (web processes, job workers, device workers, on any host)
adds it here with one pipelined HINCRBY/HINCRBYFLOAT; the web app reads the totals at scrape
time. Kept in Redis rather than in each process (prometheus-client's multiprocess mode) because
workers run on other hosts than the web app and come and go: a per-process file would lose
their counts or need a scrape target per worker. Recording never raises: monitoring must not
fail a job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tasks.core import defaults as d

log = logging.getLogger(__name__)

KEY = d.KEY_PREFIX + "monitor:"
JOBS_ENTERED_KEY = KEY + "jobs_entered"          # hash "<status>|<class>" -> count
QTASKS_KEY = KEY + "quantum_tasks"               # hash "<device>|<status>" -> count
# (counted by the quantum-task transition script itself, tasks.devices.quantum_tasks)
STORAGE_ERRORS_KEY = KEY + "storage_errors"      # hash "<operation>" -> count
HIST_KEY = KEY + "hist:{name}"                   # hash "<class>|<le>", "<class>|sum", "|count"

# seconds: from milliseconds (our jobs start in tens of ms) to hours (long runs)
START_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                         300.0, 1800.0)
RUN_TIME_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0,
                    24 * 3600.0)
HISTOGRAMS = {"job_start_latency_seconds": START_LATENCY_BUCKETS,
              "job_run_seconds": RUN_TIME_BUCKETS}


def _observe(pipe: Any, name: str, label: str, value: float) -> None:
    key = HIST_KEY.format(name=name)
    for le in HISTOGRAMS[name]:
        if value <= le:
            pipe.hincrby(key, f"{label}|{le}", 1)
    pipe.hincrby(key, f"{label}|count", 1)
    pipe.hincrbyfloat(key, f"{label}|sum", value)


def count_entered(pipe: Any, to: str, rc: str) -> None:
    """Count, in the pipeline `pipe`, a job of class `rc` entering `to`."""
    pipe.hincrby(JOBS_ENTERED_KEY, f"{to}|{rc or ''}", 1)


def job_transition(r: Any, to: str, rc: str, *, created: str = "", started: str = "",
                   ended: str = "", sub_status: str = "") -> None:
    """A job of class `rc` entered `to` (its record's times as they are now): count it, and
    observe start latency (RUNNING) or run time (end)."""
    try:
        if to == d.RUNNING and sub_status:
            return                                   # a sub-status, not a new start
        pipe = r.pipeline(transaction=False)
        count_entered(pipe, to, rc)
        if to == d.RUNNING and created and started:
            _observe(pipe, "job_start_latency_seconds", rc, max(0.0, float(started) - float(created)))
        if to in d.TERMINAL_STATUSES and started and ended:
            _observe(pipe, "job_run_seconds", rc, max(0.0, float(ended) - float(started)))
        pipe.execute()
    except Exception:
        log.warning("could not record a job entering %s for /metrics", to, exc_info=True)


def storage_error(r: Any, operation: str) -> None:
    try:
        r.hincrby(STORAGE_ERRORS_KEY, operation, 1)
    except Exception:
        log.warning("could not record a storage error for /metrics", exc_info=True)


def split_counts(raw: dict[str, str]) -> Iterable[tuple[tuple[str, ...], float]]:
    """(labels, value) from a hash whose fields are labels joined by '|'."""
    for field, value in raw.items():
        yield tuple(field.split("|")), float(value)


def histogram(r: Any, name: str) -> dict[str, dict[str, float]]:
    """{label: {"<le>": cumulative count, ..., "count": n, "sum": s}} of one histogram."""
    out: dict[str, dict[str, float]] = {}
    for field, value in r.hgetall(HIST_KEY.format(name=name)).items():
        label, _, part = field.rpartition("|")
        out.setdefault(label, {})[part] = float(value)
    return out
