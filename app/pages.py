"""HTML pages: login, the submission form, job pages.

The pages call the same domain functions as the API (`app.jobs`); a browser session holds the
user's token. Every form is CSRF-protected; the JSON API (bearer tokens, no cookies) is not.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect

from app import jobs
from app.auth import log_in, login_required, services
from app.params import iso, load_json
from qhybrid import codec
from qhybrid.errors import Conflict, InvalidInput, PayloadTooLarge, QhybridError
from qhybrid.resources import pick_class
from storage import keys
from tasks.core import defaults as d
from tasks.core.registry import display_status

bp = Blueprint("pages", __name__)
csrf = CSRFProtect()
F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/api/"


def init_app(app: Flask) -> None:
    """Attach CSRF protection to every form, leaving out the JSON API.

    Flask-WTF's own check exempts blueprints one by one; ours exempts by path instead, so an
    API blueprint added later under /api/ needs nothing (bearer tokens, no cookies).
    """
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False             # our hook below checks instead
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)       # valid for the session: long jobs
    csrf.init_app(app)

    @app.before_request
    def _csrf_protect() -> None:
        if app.config.get("WTF_CSRF_ENABLED", True) and not request.path.startswith(API_PREFIX):
            csrf.protect(apply_exemptions=True)


@bp.errorhandler(QhybridError)
def _error_page(exc: QhybridError) -> tuple[str, int]:
    return render_template("error.html", title=exc.title, detail=exc.detail), exc.status


@bp.app_errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> tuple[str, int]:
    return render_template("error.html", title="The form was refused",
                           detail=f"{exc.description} Reload the page and try again."), 400


# --- login --------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    nxt = request.values.get("next", "")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = url_for("pages.index")
    if request.method == "GET":
        return render_template("login.html", next=nxt)
    if not log_in(request.form.get("token", "").strip()):
        return render_template("login.html", next=nxt,
                               error="That token is not valid. `qhybrid user create NAME` "
                                     "makes one."), 401
    return redirect(nxt)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("pages.login"))


# --- submission form and job list ---------------------------------------------------------
@bp.get("/")
@login_required
def index() -> str:
    return _index({"arguments": "{}"})


def _index(form: dict[str, str], error: QhybridError | None = None) -> str:
    from app.job_views import duration_s, human, list_filters
    from tasks.devices.catalog import device_registry

    svc = services()
    filters = list_filters(request.args)
    size = d.PAGE_JOBS_LISTED
    page, total = svc.registry.list_jobs(
        g.user, status=filters["status"], program=filters["program"],
        created_after=filters["created_after"], limit=size, offset=(filters["page"] - 1) * size)
    rows = [{"id": j["id"], "program": j.get("program") or j.get("job_name") or "",
             "kind": j.get("kind") or "program",
             "status": display_status(j["status"], j.get("sub_status")), "state": j["status"],
             "created": iso(j.get("created")), "duration": human(duration_s(j))}
            for j in page]
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("index.html", classes=list(svc.classes.values()), form=form,
                           error=error, jobs=rows, total=total, filters=filters,
                           pages=max(1, -(-total // size)), page_args=args,
                           statuses=d.ALL_STATUSES,
                           programs=[p["title"] for p in svc.registry.list_programs(g.user)],
                           devices=device_registry(svc.settings).names(),
                           max_runtime=svc.settings.server_max_runtime_s,
                           live=any(j["state"] not in d.TERMINAL_STATUSES for j in rows))


@bp.post("/")
@login_required
def submit() -> Any:
    """Validate the whole form before anything is stored, then save and run the program."""
    form = {k: request.form.get(k, "") for k in ("title", "entrypoint", "arguments",
                                                   "resource_class", "device", "max_runtime",
                                                   "pending", "pending_name")}
    try:
        _keep_source(form)
        job = _submit(form)
    except QhybridError as exc:     # a form field is wrong (415 would blame the multipart body)
        return _index(form, exc), 413 if isinstance(exc, PayloadTooLarge) else 400
    return redirect(url_for("pages.job", job_id=job["id"]))


def _submit(form: dict[str, str]) -> dict[str, Any]:
    svc = services()
    jobs.check_title(form["title"].strip())
    arguments = load_json(form["arguments"] or "{}", "arguments", parse_constant=_no_constant,
                          subject="arguments are")
    if not isinstance(arguments, dict):
        raise InvalidInput("arguments must be a JSON object", field="arguments")
    codec.validate(arguments, path="arguments")
    if len(json.dumps(arguments, separators=(",", ":"))) > d.MAX_ARGUMENTS_BYTES:
        raise PayloadTooLarge(f"arguments are larger than {d.MAX_ARGUMENTS_BYTES} bytes",
                              field="arguments")
    rc = pick_class(form["resource_class"] or None, svc.classes, field="resource_class")
    if not form.get("pending"):
        raise InvalidInput("choose a .py file or a tar of the working directory", field="source")
    title = form["title"].strip()
    pending = _pending_key(form["pending"])
    stream = svc.store.open(pending)
    try:
        jobs.save_program(svc, g.user, title=title, entrypoint=form["entrypoint"].strip() or None,
                          source=stream, filename=form["pending_name"], resources=rc.name)
    finally:
        stream.close()
    svc.store.delete_prefix(_pending_key(""))   # this upload and any left by earlier tries
    body: dict[str, Any] = {"arguments": arguments, "resources": rc.name}
    if form.get("device"):
        body["device"] = form["device"]
    if form.get("max_runtime", "").strip():
        try:
            body["max_runtime"] = int(form["max_runtime"])
        except ValueError:
            raise InvalidInput("max run time is a whole number of seconds",
                               field="max_runtime") from None
    return jobs.run_program(svc, current_app.extensions["qhybrid.celery"], g.user, title, body)


def _pending_key(token: str) -> str:
    """Where a form's chosen file waits while the form is corrected (the user's own space)."""
    if token and (len(token) != 32 or any(c not in "0123456789abcdef" for c in token)):
        raise InvalidInput("the kept file is no longer known: choose it again", field="source")
    return f"{keys.user_prefix(g.user)}/pending-uploads/{token}"


def _keep_source(form: dict[str, str]) -> None:
    """Store a newly chosen file at once, so a form sent back with an error still has it."""
    import secrets

    source = request.files.get("source")
    if source is None or not source.filename:
        if form.get("pending") and not services().store.exists(_pending_key(form["pending"])):
            form["pending"] = form["pending_name"] = ""
        return
    token = secrets.token_hex(16)
    svc = services()
    limit = svc.settings.max_program_bytes
    try:
        svc.store.put_stream(_pending_key(token), io.BufferedReader(_Limited(source.stream, limit)))
    except PayloadTooLarge:
        svc.store.delete(_pending_key(token))
        raise
    form["pending"], form["pending_name"] = token, source.filename[-200:]


class _Limited(io.RawIOBase):
    """A stream that refuses to give more than `limit` bytes (PayloadTooLarge)."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream, self._left, self._limit = stream, limit, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        self._left -= len(data)
        if self._left < 0:
            raise PayloadTooLarge(f"the program is larger than {self._limit} bytes",
                                  field="source")
        buffer[:len(data)] = data
        return len(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- one job ------------------------------------------------------------------------------
@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str) -> str:
    svc = services()
    rec = svc.registry.get_job(job_id, g.user)
    info = jobs.job_json(svc, rec)
    logs, offset = jobs.read_logs(svc, rec, 0)
    cut = len(logs) - d.PAGE_LOG_CHARS
    if cut > 0:
        logs = f"[... the first {cut} characters are left out ...]\n" + logs[cut:]
    from app import job_views

    result, result_cut = None, False
    drawings: list[tuple[str, str]] = []
    if rec["status"] == d.DONE and info["has_result"]:
        result = jobs.result_text(svc, rec)
        result_cut = len(result) > d.PAGE_RESULT_CHARS
        if result_cut:
            result = result[:d.PAGE_RESULT_CHARS]
        else:
            result, drawings = job_views.readable(result)
    has_model = rec["status"] in d.TERMINAL_STATUSES and \
        svc.store.exists(keys.job_model(rec["prefix"]))
    hybrid = job_views.hybrid_context(svc, rec) if rec.get("kind") == "hybrid" else None
    return render_template("job.html", job=info, logs=logs, offset=offset, result=result,
                           result_cut=result_cut, has_model=has_model, drawings=drawings,
                           terminal=rec["status"] in d.TERMINAL_STATUSES, hybrid=hybrid,
                           arguments=job_views.job_arguments(svc, rec) if rec.get("program")
                           else None,
                           quantum_tasks=job_views.quantum_tasks(svc, job_id),
                           duration=job_views.human(job_views.duration_s(rec)),
                           has_metrics=hybrid is not None)


@bp.get("/jobs/<job_id>/state")
@login_required
def job_state(job_id: str) -> Response:
    """What the job page needs to refresh itself: status, events and the log after `offset`.

    Answers at once when there is news, else waits up to `wait` seconds for some.
    """
    svc = services()
    try:
        offset = max(0, int(request.args.get("offset", "0")))
        seen = int(request.args.get("events", "-1"))
        wait = min(max(0.0, float(request.args.get("wait", "0"))), d.PAGE_POLL_WAIT_S)
    except ValueError:
        raise InvalidInput("offset, events and wait are numbers") from None
    deadline = time.monotonic() + wait
    with svc.registry.subscription(job_id) as pubsub:
        while True:
            rec = svc.registry.get_job(job_id, g.user)
            events = svc.registry.events(job_id)
            text, next_offset = jobs.read_logs(svc, rec, offset)
            terminal = rec["status"] in d.TERMINAL_STATUSES
            remaining = deadline - time.monotonic()
            if text or terminal or len(events) != seen or remaining <= 0:
                break
            pubsub.get_message(timeout=min(remaining, 1.0))
    return jsonify({"status": display_status(rec["status"], rec.get("sub_status")),
                    "state": rec["status"], "terminal": terminal, "logs": text,
                    "next_offset": next_offset,
                    "events": [{**e, "at": iso(e["at"])} for e in events]})


@bp.post("/jobs/<job_id>/cancel")
@login_required
def cancel(job_id: str) -> ResponseReturnValue:
    try:
        jobs.cancel_job(services(), g.user, job_id)
    except Conflict as exc:             # it ended meanwhile: the page shows how
        flash(exc.detail)
    return redirect(url_for("pages.job", job_id=job_id))


@bp.get("/jobs/<job_id>/model.tar.gz")
@login_required
def model(job_id: str) -> Any:
    """The job's results directory, like the API's /jobs/<id>/model."""
    svc = services()
    return jobs.model_response(svc, svc.registry.get_job(job_id, g.user))


@bp.get("/jobs/<job_id>/result.json")
@login_required
def result(job_id: str) -> Response:
    """The whole saved result (encoded JSON), for results too long to show on the page."""
    svc = services()
    text = jobs.result_text(svc, svc.registry.get_job(job_id, g.user))
    return Response(text, mimetype="application/json")
