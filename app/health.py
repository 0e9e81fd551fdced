"""`/healthz`: is Redis reachable, is storage reachable, does every queue have a worker."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import services
from qhybrid.errors import InvalidInput
from tasks.core.queues import device_queue, jobs_queue, tasks_queue
from tasks.devices.catalog import device_registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """`?scope=service` (default): Redis, storage and a worker on every queue, live or
    starting (`warming` lists the starting ones); `scope=web`:
    this web process can serve (Redis and storage reachable; a readiness probe, which must
    not depend on workers that scale to zero); `scope=process`: it answers (liveness)."""
    scope = request.args.get("scope", "service")
    if scope not in ("service", "web", "process"):
        raise InvalidInput("scope is service, web or process", field="scope")
    if scope == "process":
        return jsonify({"ok": True}), 200
    svc = services()
    body: dict[str, Any] = {}
    try:
        svc.registry.r.ping()
        body["redis"] = "ok"
    except Exception as exc:
        body["redis"] = f"unreachable: {exc}"
    try:
        svc.store.check()
        body["storage"] = "ok"
    except Exception as exc:
        body["storage"] = f"unreachable: {exc}"
    queues: dict[str, Any] = {}
    if body["redis"] == "ok":
        live = svc.registry.workers_by_queue()
        expected = [q for name in svc.classes for q in (jobs_queue(name), tasks_queue(name))]
        # a GPU device needs a GPU host; without one it is simply not offered
        expected += [device_queue(spec.name) for spec in device_registry(svc.settings)
                     if spec.device == "CPU"]
        for q in expected:
            queues[q] = live.get(q, [])
        for q, names in live.items():
            queues.setdefault(q, names)
    body["queues"] = queues
    # a queue whose worker is starting (`qhybrid up` starts the web first, then the workers
    # and device workers) is served: its messages wait for it
    warming = svc.registry.warming() if body["redis"] == "ok" else set()
    body["warming"] = sorted(q for q, names in queues.items() if not names and q in warming)
    missing = sorted(q for q, names in queues.items() if not names and q not in warming)
    body["queues_without_worker"] = missing
    body["ok"] = body["redis"] == "ok" and body["storage"] == "ok" and \
        (not missing or scope == "web")
    return jsonify(body), 200 if body["ok"] else 503
