"""`GET /metrics`: the service's state for Prometheus, read from Redis at scrape time.

Nothing is held in the web process: counters and histograms are kept in Redis by whichever
process saw the event (tasks.core.monitoring), gauges are read from the registry and the queues.
So any number of gunicorn workers, and workers on any host, give one consistent answer, with
no prometheus-client multiprocess directory to share. Open without a token, like /healthz:
it holds counts only (no user names, job ids or programs); keep it off a public address.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.auth import services
from tasks.core import defaults as d
from tasks.core import monitoring
from tasks.core.queues import device_queue, jobs_queue, tasks_queue
from tasks.core.services import Services
from tasks.devices.catalog import device_registry

bp = Blueprint("prometheus", __name__)


class ServiceCollector:
    """Collects every qhybrid metric from Redis (prometheus-client's custom collector API)."""

    def __init__(self, svc: Services, celery: Any) -> None:
        self.svc = svc
        self.celery = celery

    def collect(self) -> Iterator[Metric]:
        r = self.svc.registry.r
        yield self._jobs_now(r)
        entered = CounterMetricFamily("qhybrid_jobs_entered", "Jobs that entered each status",
                                      labels=["status", "resource_class"])
        for (status, rc), value in monitoring.split_counts(r.hgetall(monitoring.JOBS_ENTERED_KEY)):
            entered.add_metric([status, rc], value)
        yield entered
        for name, doc in (("job_start_latency_seconds", "Submission to the job's code running"),
                          ("job_run_seconds", "The job's code running to its end")):
            yield self._histogram(r, name, doc)
        yield self._queue_depths()
        yield self._device_queues(r)
        tasks = CounterMetricFamily("qhybrid_quantum_tasks", "Quantum tasks that entered "
                                    "each status, per device", labels=["device", "status"])
        for (device, status), value in monitoring.split_counts(r.hgetall(monitoring.QTASKS_KEY)):
            tasks.add_metric([device, status], value)
        yield tasks
        workers = GaugeMetricFamily("qhybrid_workers", "Live workers consuming each queue",
                                    labels=["queue"])
        live = self.svc.registry.workers_by_queue()
        devices = [device_queue(n) for n in device_registry(self.svc.settings).names()]
        for queue in sorted(set(self._queues()) | set(devices) | set(live)):
            workers.add_metric([queue], len(live.get(queue, [])))
        yield workers
        errors = CounterMetricFamily("qhybrid_storage_errors", "Object store calls that failed",
                                     labels=["operation"])
        for (operation,), value in monitoring.split_counts(
                r.hgetall(monitoring.STORAGE_ERRORS_KEY)):
            errors.add_metric([operation], value)
        yield errors

    def _jobs_now(self, r: Any) -> Metric:
        """Jobs not yet ended, by status and class (queued, starting, running, canceling)."""
        ids = set(r.smembers(d.ACTIVE_JOBS_KEY)) | set(r.zrange(d.SENT_JOBS_KEY, 0, -1))
        counts: dict[tuple[str, str], int] = {}
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(d.JOB_KEY.format(job_id=job_id), "status", "resource_class")
        for status, rc in pipe.execute() if ids else []:
            if status and status not in d.TERMINAL_STATUSES:
                counts[(status, rc or "")] = counts.get((status, rc or ""), 0) + 1
        gauge = GaugeMetricFamily("qhybrid_jobs", "Jobs not yet ended, by status and class",
                                  labels=["status", "resource_class"])
        for rc in self.svc.classes:
            for status in (d.QUEUED, d.INITIALIZING, d.RUNNING, d.CANCELING):
                counts.setdefault((status, rc), 0)
        for (status, rc), n in sorted(counts.items()):
            gauge.add_metric([status, rc], n)
        return gauge

    @staticmethod
    def _histogram(r: Any, name: str, doc: str) -> Metric:
        family = HistogramMetricFamily(f"qhybrid_{name}", doc, labels=["resource_class"])
        for rc, parts in sorted(monitoring.histogram(r, name).items()):
            count = parts.get("count", 0.0)
            buckets = [(repr(le), parts.get(str(le), 0.0)) for le in monitoring.HISTOGRAMS[name]]
            family.add_metric([rc], buckets + [("+Inf", count)], sum_value=parts.get("sum", 0.0))
        return family

    def _queues(self) -> list[str]:
        return [q for rc in self.svc.classes for q in (jobs_queue(rc), tasks_queue(rc))]

    def _queue_depths(self) -> Metric:
        """Messages waiting in each class's Celery queue (kombu's passive queue_declare; on
        Redis an empty queue is no key at all, which the declare answers with NOT_FOUND)."""
        from kombu.exceptions import ChannelError

        gauge = GaugeMetricFamily("qhybrid_queue_depth", "Messages waiting in each job and "
                                  "task queue", labels=["queue"])
        with self.celery.connection_for_read() as conn:
            channel = conn.default_channel
            for queue in self._queues():
                try:
                    _, depth, _ = channel.queue_declare(queue=queue, passive=True)
                except ChannelError:
                    depth = 0
                gauge.add_metric([queue], depth)
        return gauge

    def _device_queues(self, r: Any) -> Metric:
        from tasks.devices.quantum_tasks import QuantumTasks

        gauge = GaugeMetricFamily("qhybrid_device_queue_depth", "Quantum tasks waiting for "
                                  "each device, by priority", labels=["device", "priority"])
        tasks = QuantumTasks(r)
        for name in device_registry(self.svc.settings).names():
            for priority, n in tasks.queue_depth(name).items():
                gauge.add_metric([name, str(priority)], n)
        return gauge


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(services(),  # type: ignore[arg-type]
                                       current_app.extensions["qhybrid.celery"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
