"""The devices and quantum-tasks API under /api/v1 (token auth, problem+json errors).

Devices are listed with their description (from which a client rebuilds the Target) and their
status. Quantum tasks are submitted with QPY circuits, checked against the device at once, and
followed like jobs: get, long-polled result, cancel; a job's tasks are listed with the job.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.auth import services, token_required
from app.params import float_arg, int_arg, iso, json_body
from backends.registry import describe
from qhybrid.errors import InvalidInput, PayloadTooLarge
from tasks.core import defaults as d
from tasks.devices.catalog import device_registry
from tasks.devices.quantum_tasks import QuantumTasks, submit
from tasks.devices.status import device_status

bp = Blueprint("devices", __name__, url_prefix="/api/v1")


def _tasks() -> QuantumTasks:
    return QuantumTasks(services().registry.r)


def task_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A quantum task as the API shows it."""
    error = rec.get("error")
    return {
        "task_id": rec["id"],
        "device": rec["device"],
        "status": rec["status"],
        "priority": rec.get("priority"),
        "job_id": rec.get("job_id"),
        "num_circuits": rec.get("num_circuits"),
        "num_qubits": rec.get("num_qubits"),
        "shots": rec.get("shots"),
        "options": rec.get("options"),
        "created": iso(rec.get("created")),
        "started": iso(rec.get("started")),
        "ended": iso(rec.get("ended")),
        "error": error.get("detail") if isinstance(error, dict) else error,
    }


def _device_json(name: str, live: dict[str, list[str]]) -> dict[str, Any]:
    spec = device_registry(services().settings).get(name)   # unknown: 404 listing devices
    return {**describe(spec), "status": device_status(services().registry.r, spec, live, g.user)}


# --- devices ------------------------------------------------------------------------------
@bp.get("/devices")
@token_required
def list_devices() -> Response:
    live = services().registry.workers_by_queue()
    names = device_registry(services().settings).names()
    return jsonify({"devices": [_device_json(name, live) for name in names]})


@bp.get("/devices/<name>")
@token_required
def get_device(name: str) -> Response:
    return jsonify(_device_json(name, services().registry.workers_by_queue()))


# --- quantum tasks ------------------------------------------------------------------------
@bp.post("/quantum-tasks")
@token_required
def submit_task() -> tuple[Response, int]:
    if (request.content_length or 0) > d.MAX_QTASK_CIRCUITS_BYTES + 1024**2:
        raise PayloadTooLarge(f"circuits are larger than {d.MAX_QTASK_CIRCUITS_BYTES} bytes",
                              field="circuits")
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    unknown = set(body) - {"device", "circuits", "options", "reservation_arn"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}",
                           field=sorted(unknown)[0])
    svc = services()
    rec = submit(svc.registry.r, svc.store, svc.settings, user=g.user, device=body.get("device"),
                 circuits=body.get("circuits"), options=body.get("options"),
                 reservation_arn=body.get("reservation_arn"),
                 live_queues=svc.registry.workers_by_queue)
    return jsonify(task_json(rec)), 201


@bp.get("/quantum-tasks")
@token_required
def list_tasks() -> Response:
    limit = int_arg("limit", 50, 1, 1000)
    offset = int_arg("offset", 0, 0, 10**9)
    page, total = _tasks().for_user(g.user, limit, offset)
    return jsonify({"quantum_tasks": [task_json(rec) for rec in page], "total": total,
                    "limit": limit, "offset": offset})


@bp.get("/quantum-tasks/<task_id>")
@token_required
def get_task(task_id: str) -> Response:
    return jsonify(task_json(_tasks().get(task_id, g.user)))


@bp.get("/quantum-tasks/<task_id>/result")
@token_required
def task_result(task_id: str) -> Response:
    """200 with the result JSON once ended; 202 while queued or running (after up to `wait` s).

    A task that failed before simulating answers its error; a canceled one 409.
    """
    wait = float_arg("wait", 0.0, 0.0, d.LONG_POLL_MAX_S)
    rec, text = _tasks().wait_for_result(services().store, task_id, g.user, wait)
    if text is None:
        return Response(json.dumps(task_json(rec)), status=202, mimetype="application/json")
    head = json.dumps({"task_id": rec["id"], "status": rec["status"]})[:-1]
    return Response(f'{head},"result":{text}}}', mimetype="application/json")  # not re-parsed


@bp.post("/quantum-tasks/<task_id>/cancel")
@token_required
def cancel_task(task_id: str) -> Response:
    return jsonify(task_json(_tasks().cancel(services().store, task_id, g.user)))


@bp.get("/jobs/<job_id>/quantum-tasks")
@token_required
def job_tasks(job_id: str) -> Response:
    services().registry.get_job(job_id, g.user)   # another user's job: 404
    return jsonify({"job_id": job_id,
                    "quantum_tasks": [task_json(rec) for rec in _tasks().for_job(job_id)]})
