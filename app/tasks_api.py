"""A job's distributed tasks in the API (`/api/v1/jobs/<id>/tasks`) and on its page.

Also what every job's JSON says about them: CPU seconds per stage (`resource_usage`) and,
while tasks wait in a queue that no worker consumes, `waiting_for`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.auth import services, token_required
from app.params import int_arg, iso
from qhybrid.errors import InvalidInput, NotFound
from tasks.core import defaults as d
from tasks.core.queues import tasks_queue
from tasks.core.services import Services
from tasks.core.usage import usage_json
from tasks.distributed.records import (
    TaskRegistry,
    list_tasks,
    queued_by_class,
    task_json,
    task_log,
    waiting_for,
)

bp = Blueprint("tasks_api", __name__, url_prefix="/api/v1")
PAGE_TASKS_LISTED = 200


def task_fields(svc: Services, job: dict[str, Any], out: dict[str, Any],
                detailed: bool = True) -> None:
    """Add resource usage and task waits to a job's JSON (`app.jobs.job_json`)."""
    if detailed:
        out["resource_usage"] = usage_json(svc.registry.r, job["id"])
    if job["status"] == d.RUNNING and not out.get("waiting_for"):
        why = waiting_for(svc.registry, job["id"])
        if why:
            out["waiting_for"] = why


def tasks_body(svc: Services, job_id: str, status: str | None, offset: int,
               limit: int) -> dict[str, Any]:
    reg = TaskRegistry(svc.registry)
    page, total, counts = list_tasks(reg, job_id, status=status, offset=offset, limit=limit)
    queued = queued_by_class(svc.registry, job_id)
    why = waiting_for(svc.registry, job_id) if queued else None
    rows = []
    for rec in page:
        row = task_json(rec, iso)
        if rec.get("status") == d.QUEUED and why and tasks_queue(rec.get("class") or "") in why:
            row["waiting_for"] = f"no worker consumes {tasks_queue(rec.get('class') or '')}"
        rows.append(row)
    return {"job_id": job_id, "tasks": rows, "total": total, "counts": counts,
            "queued_by_class": queued, "waiting_for": why, "offset": offset, "limit": limit}


@bp.get("/jobs/<job_id>/tasks")
@token_required
def job_tasks(job_id: str) -> Response:
    """The job's distributed tasks in the order they were submitted, filtered by `status`."""
    svc = services()
    svc.registry.get_job(job_id, g.user)
    status = request.args.get("status") or None
    if status is not None and status not in d.TASK_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(d.TASK_STATUSES)}", field="status")
    limit = int_arg("limit", 100, 1, 10000)
    offset = int_arg("offset", 0, 0, 10**9)
    return jsonify(tasks_body(svc, job_id, status, offset, limit))


@bp.get("/jobs/<job_id>/tasks/<task_id>")
@token_required
def job_task(job_id: str, task_id: str) -> Response:
    """One task, with what it printed (the beginning of long output)."""
    svc = services()
    svc.registry.get_job(job_id, g.user)
    reg = TaskRegistry(svc.registry)
    recs = reg.records([task_id]) if len(task_id) == 32 and task_id.isalnum() else []
    if not recs or recs[0].get("job") != job_id:
        raise NotFound(f"no task {task_id!r} in job {job_id}")
    body = task_json(recs[0], iso)
    body["log"] = task_log(svc.registry, task_id)
    return jsonify(body)


@bp.app_template_global("job_tasks")
def job_tasks_for_page(job_id: str) -> dict[str, Any]:
    """For the job page's task section (the page has already checked the job's owner)."""
    return tasks_body(services(), job_id, None, 0, PAGE_TASKS_LISTED)
