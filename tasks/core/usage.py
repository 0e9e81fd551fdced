"""Resource usage of a job, per stage: CPU seconds of its own process and of its tasks.

The stage is the status a running job shows (`RUNNING`, `RUNNING: OPTIMIZING_FOR_HARDWARE`
...). The supervisor samples its child's CPU time from /proc while it runs and at every
sub-status change; each distributed task adds its CPU time to the stage its caller was in
when it submitted it. The totals live in one Redis hash per job, in the shape Qiskit
Serverless programs report by hand: `{"RUNNING: MAPPING": {"CPU_TIME": s, "QPU_TIME": s}}`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tasks.core import defaults as d

CPU_TIME = "CPU_TIME"
QPU_TIME = "QPU_TIME"
KINDS = (CPU_TIME, QPU_TIME)
SAMPLE_S = 0.1                  # how often a running job's CPU time is read
FLUSH_S = 2.0                   # how often the totals are written to Redis while it runs

try:
    _TICKS = float(os.sysconf("SC_CLK_TCK"))
except (ValueError, OSError, AttributeError):
    _TICKS = 100.0


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of `pid` and of the children it waited for; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()   # the name may hold spaces: cut after it
    try:
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    except (ValueError, IndexError):
        return None
    return (utime + stime + cutime + cstime) / _TICKS


def stage_name(sub_status: str | None) -> str:
    return f"{d.RUNNING}: {sub_status}" if sub_status else d.RUNNING


def add_usage(r: Any, job_id: str, stage: str, kind: str, seconds: float) -> None:
    """Add `seconds` of `kind` (CPU_TIME or QPU_TIME) to the job's `stage`."""
    if seconds > 0:
        r.hincrbyfloat(d.JOB_USAGE_KEY.format(job_id=job_id), f"{stage}|{kind}", seconds)


def usage_json(r: Any, job_id: str) -> dict[str, dict[str, float]]:
    """`{stage: {"CPU_TIME": s, "QPU_TIME": s}}` for the stages the job has been through."""
    out: dict[str, dict[str, float]] = {}
    for field, value in (r.hgetall(d.JOB_USAGE_KEY.format(job_id=job_id)) or {}).items():
        stage, _, kind = str(field).rpartition("|")
        if kind in KINDS:
            entry = out.setdefault(stage, {k: 0.0 for k in KINDS})
            entry[kind] = round(float(value), 6)
    return out


class UsageMeter:
    """Follows one job's child process and charges its CPU time to the current stage."""

    def __init__(self, r: Any, job_id: str) -> None:
        self.r = r
        self.job_id = job_id
        self.stage = d.RUNNING
        self._pid: int | None = None
        self._last = 0.0
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, pid: int | None) -> None:
        """Start sampling `pid` (the job's child) until `stop()`."""
        if not pid:
            return
        with self._lock:
            self._pid = pid
            self._last = 0.0
        self._thread = threading.Thread(target=self._loop, name="usage", daemon=True)
        self._thread.start()

    def set_stage(self, sub_status: str | None) -> None:
        """The job changed its sub-status: what ran until now belongs to the previous stage."""
        self.sample()
        with self._lock:
            self.stage = stage_name(sub_status)
        self.flush()

    def sample(self) -> None:
        with self._lock:
            if self._pid is None:
                return
            now = process_cpu_seconds(self._pid)
            if now is None or now < self._last:
                return
            delta, self._last = now - self._last, now
            if delta > 0:
                self._pending[self.stage] = self._pending.get(self.stage, 0.0) + delta

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for stage, seconds in pending.items():
            try:
                add_usage(self.r, self.job_id, stage, CPU_TIME, seconds)
            except Exception:
                with self._lock:         # try again at the next flush
                    self._pending[stage] = self._pending.get(stage, 0.0) + seconds

    def _loop(self) -> None:
        ticks = 0
        while not self._stop.wait(SAMPLE_S):
            self.sample()
            ticks += 1
            if ticks * SAMPLE_S >= FLUSH_S:
                ticks = 0
                self.flush()

    def stop(self) -> None:
        """The child ended: record what is left (its last sample) and stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self.sample()
        self.flush()
        with self._lock:
            self._pid = None
