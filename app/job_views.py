"""More pages: programs, devices and queues, and what the job page adds (metrics, downloads,
rerun, readable results). Same session login as app.pages; the domain calls are app.jobs'.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from app import jobs
from app.auth import login_required, services
from app.params import iso
from qhybrid import codec
from qhybrid.errors import Conflict, InvalidInput, NotFound
from storage import keys
from tasks.core import defaults as d
from tasks.core.queues import jobs_queue, tasks_queue
from tasks.core.registry import display_status
from tasks.devices.catalog import device_registry
from tasks.devices.line import queue_position
from tasks.devices.status import device_status
from tasks.jobs import metrics
from tasks.jobs.hybrid import KIND as HYBRID

bp = Blueprint("job_views", __name__)
MAX_SHOWN_ITEMS = 2000          # ndarray elements shown before only the shape is
MAX_DRAWN_QUBITS = 40


# --- readable values ----------------------------------------------------------------------
def readable(encoded_text: str) -> tuple[str, list[tuple[str, str]]]:
    """Encoded JSON (codec envelopes) as indented JSON a person reads: arrays as lists, numpy
    scalars as numbers, circuits named in place and drawn apart. Returns (text, drawings)."""
    drawings: list[tuple[str, str]] = []
    try:
        value = codec.decode(json.loads(encoded_text))
    except Exception:
        return encoded_text, []

    def plain(v: Any) -> Any:
        import sys

        np = sys.modules.get("numpy")
        if np is not None and isinstance(v, np.ndarray):
            if v.size <= MAX_SHOWN_ITEMS:
                return plain(v.tolist())
            return f"<ndarray shape={list(v.shape)} dtype={v.dtype}>"
        if np is not None and isinstance(v, np.generic):
            return plain(v.item())
        if isinstance(v, complex):
            return f"{v.real:g}{v.imag:+g}j"
        if isinstance(v, bytes | bytearray):
            return f"<{len(v)} bytes>"
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, set | frozenset):
            return sorted((plain(x) for x in v), key=repr)
        if isinstance(v, str | int | float | bool) or v is None:
            return v
        kind = type(v).__name__
        if kind == "QuantumCircuit":
            label = f"circuit {len(drawings) + 1}: {v.name}, {v.num_qubits} qubits, depth {v.depth()}"
            drawn = str(v.draw("text", fold=100)) if v.num_qubits <= MAX_DRAWN_QUBITS else \
                "(too wide to draw)"
            drawings.append((label, drawn))
            return f"<{label}>"
        return f"<{kind}: {v}>"

    return json.dumps(plain(value), indent=2, allow_nan=True), drawings


def job_arguments(svc: Any, rec: dict[str, Any]) -> str | None:
    """The program job's arguments, readable; None for jobs without stored arguments."""
    try:
        text = svc.store.get_bytes(keys.job_arguments(rec["prefix"])).decode()
    except (NotFound, KeyError):
        return None
    return readable(text)[0]


def duration_s(rec: dict[str, Any]) -> float | None:
    started = rec.get("started")
    if not started:
        return None
    return max(0.0, float(rec.get("ended") or time.time()) - float(started))


def human(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def hybrid_context(svc: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a hybrid job beyond a program job's facts."""
    base = keys.job_checkpoints(rec["prefix"])
    checkpoints = [{"name": o.key[len(base):], "size": o.size, "modified": iso(o.modified)}
                   for o in svc.store.list(base)]
    return {"hyperparameters": rec.get("hyperparameters") or {},
            "checkpoints": checkpoints,
            "channels": sorted((rec.get("input_data") or {}).keys())}


def quantum_tasks(svc: Any, job_id: str) -> list[dict[str, Any]]:
    from app.devices import task_json
    from tasks.devices.quantum_tasks import QuantumTasks

    return [task_json(t) for t in QuantumTasks(svc.registry.r).for_job(job_id)]


# --- job page additions -------------------------------------------------------------------
@bp.get("/jobs/<job_id>/metrics.json")
@login_required
def job_metrics(job_id: str) -> Response:
    """The job's metric records from index `since` (the page's plot asks for what is new)."""
    svc = services()
    rec = svc.registry.get_job(job_id, g.user)
    try:
        since = max(0, int(request.args.get("since", "0")))
    except ValueError:
        raise InvalidInput("since is a whole number", field="since") from None
    records = metrics.read(svc.registry, svc.store, rec)
    return jsonify({"records": records[since:], "next": len(records),
                    "terminal": rec["status"] in d.TERMINAL_STATUSES,
                    "status": display_status(rec["status"], rec.get("sub_status"))})


@bp.get("/jobs/<job_id>/logs.txt")
@login_required
def job_logs(job_id: str) -> Response:
    svc = services()
    rec = svc.registry.get_job(job_id, g.user)
    text, _ = jobs.read_logs(svc, rec, 0)
    name = rec.get("job_name") or rec.get("program") or job_id
    return Response(text, mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{name}-{job_id[:8]}-logs.txt"'})


@bp.post("/jobs/<job_id>/rerun")
@login_required
def rerun(job_id: str) -> ResponseReturnValue:
    """Run the same program again with the same arguments, class, run time and device."""
    svc = services()
    rec = svc.registry.get_job(job_id, g.user)
    if rec.get("kind") == HYBRID or not rec.get("program"):
        raise Conflict("a hybrid job is run again from Python: call the decorated function")
    try:
        arguments = json.loads(svc.store.get_bytes(keys.job_arguments(rec["prefix"])))
    except NotFound:
        arguments = {}
    body: dict[str, Any] = {"arguments": arguments, "resources": rec.get("resource_class"),
                            "max_runtime": rec.get("max_runtime")}
    if rec.get("device"):
        body["device"] = rec["device"]
    new = jobs.run_program(svc, current_app.extensions["qhybrid.celery"], g.user,
                           rec["program"], body)
    return redirect(url_for("pages.job", job_id=new["id"]))


# --- programs and devices -----------------------------------------------------------------
@bp.get("/programs")
@login_required
def programs() -> str:
    svc = services()
    rows = []
    for p in svc.registry.list_programs(g.user):
        _, runs = svc.registry.list_jobs(g.user, program=p["title"], limit=1)
        rows.append({"title": p["title"], "entrypoint": p.get("entrypoint") or "",
                     "resources": p.get("resources") or "", "created": iso(p.get("created")),
                     "runs": runs})
    return render_template("programs.html", programs=rows)


@bp.get("/devices")
@login_required
def devices() -> str:
    """Every device with its queue and holder, every class queue, and where your jobs wait."""
    svc = services()
    r = svc.registry.r
    live = svc.registry.workers_by_queue()
    mine_waiting = [j for j in svc.registry.list_jobs(g.user, status=d.QUEUED, limit=1000)[0]]
    rows = []
    for spec in device_registry(svc.settings):
        status = device_status(r, spec, live, g.user)
        waiting_mine = [{"id": j["id"], "name": j.get("program") or j.get("job_name") or "",
                         "position": queue_position(r, j)}
                        for j in mine_waiting if j.get("device") == spec.name]
        rows.append({"name": spec.name, "qubits": spec.num_qubits, "kind": spec.kind,
                     "shared": spec.shared, "status": status,
                     "depth": sum(status["queue_depth"].values()), "mine": waiting_mine})
    celery = current_app.extensions["qhybrid.celery"]
    queues = []
    from kombu.exceptions import ChannelError

    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        for rc in svc.classes:
            for q in (jobs_queue(rc), tasks_queue(rc)):
                try:
                    depth = channel.queue_declare(queue=q, passive=True)[1]
                except ChannelError:        # an empty queue is no key at all on Redis
                    depth = 0
                queues.append({"name": q, "depth": depth, "workers": len(live.get(q, []))})
    return render_template("devices.html", devices=rows, queues=queues)


# --- the job list's filters ---------------------------------------------------------------
def list_filters(args: Any) -> dict[str, Any]:
    """status, program, since (a date, in the browser's time zone via `tz` minutes), page."""
    status = (args.get("status") or "").strip().upper() or None
    if status and status.split(":")[0] not in d.ALL_STATUSES:
        raise InvalidInput(f"status is one of {', '.join(d.ALL_STATUSES)}", field="status")
    since = (args.get("since") or "").strip()
    after = None
    if since:
        try:
            day = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
            tz = int(args.get("tz") or 0)               # minutes, as JS getTimezoneOffset()
        except ValueError:
            raise InvalidInput("since is a date (YYYY-MM-DD)", field="since") from None
        after = (day + timedelta(minutes=tz)).timestamp() - 0.001
    try:
        page = max(1, int(args.get("page") or 1))
    except ValueError:
        raise InvalidInput("page is a whole number", field="page") from None
    return {"status": status, "program": (args.get("program") or "").strip() or None,
            "since": since, "created_after": after, "page": page, "tz": args.get("tz") or ""}
