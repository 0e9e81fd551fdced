"""The JSON API under /api/v1 (token auth; errors as application/problem+json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, send_file

from app import jobs
from app.auth import services, token_required
from app.params import float_arg, int_arg, json_body, load_json
from qhybrid.errors import InvalidInput
from tasks.core import defaults as d

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def celery() -> Any:
    return current_app.extensions["qhybrid.celery"]


@bp.get("/openapi.json")
def openapi() -> Response:
    return send_file(Path(__file__).with_name("openapi.json"), mimetype="application/json")


# --- programs -----------------------------------------------------------------------------
@bp.post("/programs")
@token_required
def upload_program() -> tuple[Response, int]:
    form = request.form
    source = request.files.get("source")
    if source is None:
        raise InvalidInput("attach the working directory (tar) or a .py file as 'source'",
                           field="source")
    resources: Any = None
    if form.get("resources"):   # a JSON object, or a resource class by name
        resources = load_json(form["resources"], "resources", not_json=form["resources"])
    extra = jobs.program_extras(services(), form.get("dependencies"), form.get("env_vars"))
    rec = jobs.save_program(services(), g.user, title=form.get("title", ""),
                            entrypoint=form.get("entrypoint"), source=source.stream,
                            filename=source.filename or "", resources=resources,
                            device=form.get("device") or None, extra=extra)
    return jsonify(jobs.program_json(rec)), 201


@bp.get("/programs")
@token_required
def list_programs() -> Response:
    return jsonify({"programs": [jobs.program_json(p)
                                 for p in services().registry.list_programs(g.user)]})


@bp.get("/programs/<title>")
@token_required
def get_program(title: str) -> Response:
    return jsonify(jobs.program_json(services().registry.get_program(g.user, title)))


@bp.post("/programs/<title>/run")
@token_required
def run_program(title: str) -> tuple[Response, int]:
    job = jobs.run_program(services(), celery(), g.user, title, json_body())
    return jsonify(jobs.job_json(services(), job)), 201


# --- jobs ---------------------------------------------------------------------------------
@bp.get("/jobs")
@token_required
def list_jobs() -> Response:
    q = jobs.job_query(request.args, default_limit=50, min_limit=1)
    page, total = services().registry.list_jobs(
        g.user, status=q.status, program=request.args.get("program") or None,
        created_after=q.created_after, limit=q.limit, offset=q.offset,
        kind=request.args.get("kind") or None)
    svc = services()
    return jsonify({"jobs": [jobs.job_json(svc, j, events=False) for j in page],
                    "total": total, "limit": q.limit, "offset": q.offset})


@bp.get("/jobs/<job_id>")
@token_required
def get_job(job_id: str) -> Response:
    svc = services()
    return jsonify(jobs.job_json(svc, svc.registry.get_job(job_id, g.user)))


@bp.get("/jobs/<job_id>/wait")
@token_required
def wait_job(job_id: str) -> Response:
    """Long-poll: answers when the job ends or after `timeout` seconds, whichever is first."""
    timeout = float_arg("timeout", 30.0, 0.0, d.LONG_POLL_MAX_S)
    svc = services()
    job = svc.registry.wait_for(job_id, g.user, timeout)
    return jsonify(jobs.job_json(svc, job))


@bp.get("/jobs/<job_id>/result")
@token_required
def job_result(job_id: str) -> Response:
    """200 with the result once DONE; 202 while it runs (after waiting up to `wait` s)."""
    wait = float_arg("wait", 0.0, 0.0, d.LONG_POLL_MAX_S)
    svc = services()
    job = svc.registry.wait_for(job_id, g.user, wait) if wait else svc.registry.get_job(job_id, g.user)
    if job["status"] not in d.TERMINAL_STATUSES:
        return Response(json.dumps(jobs.job_json(svc, job, events=False)), status=202,
                        mimetype="application/json")
    text = jobs.result_text(svc, job)
    # the stored result is already encoded JSON: embed it as it is
    return Response(f'{{"job_id":{json.dumps(job["id"])},"result":{text}}}',
                    mimetype="application/json")


@bp.get("/jobs/<job_id>/logs")
@token_required
def job_logs(job_id: str) -> Response:
    """Log text from byte `offset`; with `wait`, blocks until there is more or the job ends."""
    offset = int_arg("offset", 0, 0, 2**62)
    wait = float_arg("wait", 0.0, 0.0, d.LONG_POLL_MAX_S)
    svc = services()
    job = svc.registry.get_job(job_id, g.user)
    text, next_offset = jobs.read_logs(svc, job, offset)
    if not text and wait and job["status"] not in d.TERMINAL_STATUSES:
        deadline = time.monotonic() + wait
        with svc.registry.subscription(job_id) as pubsub:
            while time.monotonic() < deadline:
                job = svc.registry.get_job(job_id, g.user)
                text, next_offset = jobs.read_logs(svc, job, offset)
                if text or job["status"] in d.TERMINAL_STATUSES:
                    break
                pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
    complete = job["status"] in d.TERMINAL_STATUSES and not text
    if job["status"] in d.TERMINAL_STATUSES and text:
        _, after = jobs.read_logs(svc, job, next_offset)
        complete = after == next_offset
    return jsonify({"logs": text, "offset": offset, "next_offset": next_offset,
                    "complete": complete, "status": job["status"]})


@bp.post("/jobs/<job_id>/cancel")
@token_required
def cancel_job(job_id: str) -> Response:
    svc = services()
    return jsonify(jobs.job_json(svc, jobs.cancel_job(svc, g.user, job_id)))


@bp.get("/jobs/<job_id>/model")
@token_required
def job_model(job_id: str) -> Any:
    """The job's results directory as model.tar.gz."""
    svc = services()
    return jobs.model_response(svc, svc.registry.get_job(job_id, g.user))
