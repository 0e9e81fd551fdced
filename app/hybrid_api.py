"""The hybrid-job API: POST /api/v1/hybrid-jobs and what only hybrid jobs have.

Status, logs, result (JSON), cancel and model.tar.gz of a hybrid job are the generic
/api/v1/jobs/<id>/... routes; metrics live there too (`/jobs/<id>/metrics`).
"""

from __future__ import annotations

from typing import BinaryIO, cast

from flask import Blueprint, Response, current_app, g, jsonify, request, send_file

from app import hybrid
from app.auth import services, token_required

bp = Blueprint("hybrid_api", __name__, url_prefix="/api/v1")

CHANNEL_PART = "channel."


@bp.post("/hybrid-jobs")
@token_required
def submit() -> tuple[Response, int]:
    """multipart/form-data: `metadata` (JSON), `function` (cloudpickle), `channel.<name>` tars."""
    function = request.files.get("function")
    uploads = {name[len(CHANNEL_PART):]: cast(BinaryIO, f.stream) for name, f in request.files.items()
               if name.startswith(CHANNEL_PART)}
    svc = services()
    job = hybrid.submit_hybrid_job(svc, current_app.extensions["qhybrid.celery"], g.user,
                                   request.form.get("metadata"),
                                   cast(BinaryIO, function.stream) if function else None,
                                   uploads)
    return jsonify(hybrid.hybrid_job_json(svc, job)), 201


@bp.get("/hybrid-jobs/<job_id>")
@token_required
def get(job_id: str) -> Response:
    svc = services()
    return jsonify(hybrid.hybrid_job_json(svc, hybrid.get_hybrid_job(svc, g.user, job_id)))


@bp.get("/hybrid-jobs/<job_id>/checkpoints")
@token_required
def checkpoints(job_id: str) -> Response:
    """The checkpoint files the job has in storage (its own and those it copied)."""
    return jsonify({"job_id": job_id,
                    "checkpoints": hybrid.list_checkpoints(services(), g.user, job_id)})


@bp.get("/hybrid-jobs/<job_id>/pickled-result")
@token_required
def pickled_result(job_id: str) -> Response:
    """The return value of a job submitted with result_format="pickle", as the bytes it wrote."""
    return send_file(hybrid.pickled_result(services(), g.user, job_id),
                     mimetype="application/octet-stream", download_name="result.pkl")


@bp.get("/jobs/<job_id>/metrics")
@token_required
def metrics(job_id: str) -> Response:
    """Columnar metrics, recorded as the job logs them: rows by timestamp or iteration number."""
    return jsonify(hybrid.job_metrics(services(), g.user, job_id,
                                      request.args.get("metric_type", "timestamp"),
                                      request.args.get("statistic", "max")))
