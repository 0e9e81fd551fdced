"""The Qiskit Serverless gateway's routes, so that its real client works against qhybrid.

`ServerlessClient(host=<qhybrid URL>, token=<qhybrid token>, instance=..., channel=...)` from
the `qiskit-serverless` package calls these: their paths (with the trailing slashes), their
response shapes and their status names (SUCCEEDED, FAILED, STOPPED, PENDING next to our DONE,
ERROR, CANCELED). Three paths are shared with our own API (`/programs`, `/files`,
`/files/<name>`); a request that carries the client's `Service-Channel` or `Service-CRN`
header there is answered in its shape, every other one as before.

Errors are the gateway's body, `{"message": "..."}` (sent as application/problem+json, whose
members are all optional): the client joins every value of an error body into the text it
raises, so one member reads as the gateway's own messages do ("Qiskit Function x doesn't
exist.", "Job [id] not found", "Uploaded file is not a valid type. ...").

Besides a user's token, the in-job calls of the `qiskit_serverless` package (sub_status,
event, runtime_jobs, files) accept the job-scoped token of `tasks.jobs.tokens`.

Longer than 500 lines: every route the Qiskit Serverless client calls, in one blueprint, in
the order of the gateway's own API.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from app import jobs
from app.auth import services
from app.params import iso
from qhybrid.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    QhybridError,
    Unauthorized,
    UnsupportedMediaType,
)
from qhybrid.files import ACCEPTED, check_name
from storage import keys
from tasks.core import defaults as d
from tasks.files.data_files import DataFiles
from tasks.jobs import tokens as job_tokens
from tasks.jobs.serverless import MAX_EVENTS, record_error_event
from tasks.sandbox.dependencies import base_distributions

bp = Blueprint("serverless", __name__, url_prefix="/api/v1")
F = TypeVar("F", bound=Callable[..., Any])

# our status -> theirs (the gateway's Job model); theirs -> ours for filters
PEER_STATUS = {d.QUEUED: "QUEUED", d.INITIALIZING: "PENDING", d.RUNNING: "RUNNING",
               d.CANCELING: "STOPPING", d.DONE: "SUCCEEDED", d.ERROR: "FAILED",
               d.CANCELED: "STOPPED"}
# sub-statuses whose names differ (theirs -> ours)
OUR_SUB_STATUS = {"OPTIMIZING_HARDWARE": "OPTIMIZING_FOR_HARDWARE", "WAITING_QPU": "WAITING_FOR_QPU"}
PEER_SUB_STATUS = {v: k for k, v in OUR_SUB_STATUS.items()}
PEER_HEADERS = ("Service-Channel", "Service-CRN")


def is_peer_request() -> bool:
    return any(h in request.headers for h in PEER_HEADERS)


# --- errors and auth ----------------------------------------------------------------------
def peer_problem(status: int, message: str) -> Response:
    """The gateway's error body: one `message` (the HTTP status says the kind)."""
    return Response(json.dumps({"message": message}), status=status,
                    mimetype="application/problem+json")


def _answer_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except QhybridError as exc:
            return peer_problem(exc.status, str(exc.to_problem().get("detail") or exc))
        except HTTPException as exc:
            return peer_problem(exc.code or 500, exc.description or exc.name or "Error")

    return wrapped


def peer_auth(scope: str = "user") -> Callable[[F], F]:
    """A user's token anywhere; a job-scoped token only for its own job ('job') or files."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header.startswith("Bearer ") else ""
            reg = services().registry
            user = reg.user_for_token(token) if token else None
            g.job_scope = None
            if user is None and token:
                job = job_tokens.lookup(reg, token)
                if job is not None:
                    if scope == "job" and kwargs.get("job_id") != job["id"]:
                        raise Forbidden("a job's token is valid only for that job's own routes")
                    if scope not in ("job", "files", "functions"):
                        raise Forbidden("a job's token is valid only for that job's own routes "
                                        "and its user's files")
                    user, g.job_scope = job["user"], job["id"]
            if not user:
                raise Unauthorized("send Authorization: Bearer <token> (a qhybrid token)")
            g.user = user
            return view(*args, **kwargs)

        return _answer_errors(wrapped)  # type: ignore[return-value]

    return decorate


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


# --- functions ----------------------------------------------------------------------------
def function_json(rec: dict[str, Any]) -> dict[str, Any]:
    schema = rec.get("arguments_schema")
    return {"id": rec["title"], "title": rec["title"], "provider": rec.get("provider"),
            "entrypoint": rec.get("entrypoint"), "artifact": None,
            "dependencies": rec.get("dependencies") or [],
            "description": rec.get("description") or "", "documentation_url": None,
            "type": rec.get("type") or "GENERIC", "version": rec.get("version") or "",
            "runner": "ray", "image": None,
            "arguments_schema": json.dumps(schema) if schema is not None else "{}"}


def _form_json(name: str, default: Any, kind: type) -> Any:
    raw = request.form.get(name)
    if raw in (None, ""):
        return default
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput(f"{name} is not valid JSON", field=name) from None
    if value is None:
        return default
    if not isinstance(value, kind):
        raise InvalidInput(f"{name} must be a JSON {kind.__name__}", field=name)
    return value


def _function(title: str, provider: str | None = None) -> dict[str, Any]:
    """The user's function `title`, or 404 in the gateway's words."""
    try:
        return services().registry.get_program(g.user, title)
    except NotFound:
        name = f"{provider}/{title}" if provider else title
        raise NotFound(f"Qiskit Function {name} doesn't exist.", field="title") from None


@bp.get("/programs/")
@peer_auth("functions")
def list_functions() -> Response:
    """The user's functions; under a job's token only that job's own (ServerlessClient() in a
    job checks its credentials here)."""
    listed = services().registry.list_programs(g.user)
    if g.job_scope:
        own = services().registry.get_job(g.job_scope).get("program")
        listed = [p for p in listed if p["title"] == own]
    return _json([function_json(p) for p in listed])


@bp.get("/programs/get_by_title/<title>")
@peer_auth()
def function_by_title(title: str) -> Response:
    return _json(function_json(_function(jobs.check_title(title),
                                          request.args.get("provider") or None)))


@bp.post("/programs/upload/")
@peer_auth()
def upload_function() -> Response:
    form = request.form
    if form.get("image"):
        raise InvalidInput("qhybrid runs functions from an entrypoint and working_dir, not "
                           "container images", field="image")
    provider = form.get("provider") or None
    if provider is not None:
        jobs.check_title(provider, field="provider")
    artifact = request.files.get("artifact")
    if artifact is None:
        raise InvalidInput("attach the working directory as 'artifact' (a tar)", field="artifact")
    extras = jobs.program_extras(services(), form.get("dependencies"), form.get("env_vars"))
    dependencies, env_vars = extras.get("dependencies", []), extras.get("env_vars", {})
    schema = _form_json("arguments_schema", None, object)
    if schema is not None and not isinstance(schema, dict | bool):
        raise InvalidInput("arguments_schema is a JSON Schema (an object or a boolean)",
                           field="arguments_schema")
    if isinstance(schema, dict) and schema:
        _check_schema(schema)
    extra = {"provider": provider, "dependencies": dependencies, "env_vars": env_vars,
             "description": form.get("description") or "", "version": form.get("version") or "",
             "arguments_schema": schema if schema not in (None, {}) else None}
    rec = jobs.save_program(services(), g.user, title=form.get("title", ""),
                            entrypoint=form.get("entrypoint"), source=artifact.stream,
                            filename=artifact.filename or "artifact.tar", extra=extra)
    out = function_json(rec)
    out["env_vars"] = {k: "" for k in env_vars}     # names only: values are secrets
    return _json(out)


def _check_schema(schema: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidInput(f"arguments_schema is not a valid JSON Schema: {exc.message}",
                           field="arguments_schema") from None


def _peer_arguments(program: dict[str, Any], text: Any) -> str:
    """The arguments text as the client sent it, checked to be an object that fits the schema."""
    if text in (None, ""):
        text = "{}"
    if not isinstance(text, str):
        raise InvalidInput("arguments is the client's JSON text of an object", field="arguments")
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidInput("arguments is not valid JSON", field="arguments") from None
    if not isinstance(value, dict):
        raise InvalidInput("arguments must be a JSON object", field="arguments")
    schema = program.get("arguments_schema")
    if schema is False:
        raise InvalidInput("the function's arguments_schema accepts no arguments",
                           field="arguments")
    if isinstance(schema, dict) and schema:
        import jsonschema

        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise InvalidInput(f"arguments do not match the function's arguments_schema"
                               f"{' at ' + where if where else ''}: {error.message}",
                               field="arguments")
    return text


def _function_of(body: dict[str, Any]) -> dict[str, Any]:
    """The function a run or validate_arguments body names (`title`, `provider/title`)."""
    title, provider = body.get("title"), body.get("provider")
    if isinstance(title, str) and "/" in title:
        provider, title = title.split("/", 1)
    title = jobs.check_title(title if isinstance(title, str) else "")
    return _function(title, provider if isinstance(provider, str) and provider else None)


@bp.post("/programs/validate_arguments/")
@peer_auth()
def validate_arguments() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object with title and arguments", field="body")
    _peer_arguments(_function_of(body), body.get("arguments"))
    return _json({"valid": True})


@bp.post("/programs/run/")
@peer_auth()
def run_function() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object with title, arguments and config", field="body")
    svc = services()
    program = _function_of(body)
    text = _peer_arguments(program, body.get("arguments"))
    job = jobs.run_program(svc, current_app.extensions["qhybrid.celery"], g.user,
                           program["title"], {}, peer_arguments=text)
    out = job_json(job)
    out.update(result=None, arguments=text)
    return _json(out)


# --- jobs ---------------------------------------------------------------------------------
def job_json(job: dict[str, Any]) -> dict[str, Any]:
    sub = job.get("sub_status") if job["status"] == d.RUNNING else None
    return {"id": job["id"], "status": PEER_STATUS.get(job["status"], job["status"]),
            "sub_status": PEER_SUB_STATUS.get(sub, sub) if sub else None,
            "program": {"id": job.get("program"), "title": job.get("program"),
                        "provider": job.get("provider")},
            "created": iso(job.get("created")), "compute_profile": None, "fleet_id": None,
            "business_model": None}


def _list_jobs() -> Response:
    q = jobs.job_query(request.args, default_limit=10, min_limit=0)
    page, total = services().registry.list_jobs(
        g.user, status=q.status, program=request.args.get("function") or None,
        created_after=q.created_after, limit=max(q.limit, 1), offset=q.offset, kind="program")
    page = page[:q.limit]
    return _json({"count": total, "next": None, "previous": None,
                  "results": [job_json(j) for j in page]})


@bp.get("/jobs/")
@peer_auth()
def list_jobs() -> Response:
    return _list_jobs()


@bp.get("/jobs/provider/")
@peer_auth()
def list_provider_jobs() -> Response:
    return _list_jobs()


def _job(job_id: str) -> dict[str, Any]:
    try:
        return services().registry.get_job(job_id, g.user)
    except NotFound:
        raise NotFound(f"Job [{job_id}] not found", field="job_id") from None


@bp.get("/jobs/<job_id>/")
@peer_auth("job")
def get_job(job_id: str) -> Response:
    return _json(job_json(_job(job_id)))


@bp.get("/jobs/<job_id>/result/")
@peer_auth("job")
def job_result(job_id: str) -> Response:
    svc = services()
    job = _job(job_id)
    if job["status"] == d.ERROR:
        return _json({"result": json.dumps(job.get("error") or "the job failed")})
    if job["status"] != d.DONE:
        return _json({"result": None})
    try:
        if job.get("result_format") == "serverless":
            text = svc.store.get_bytes(keys.job_peer_result(job["prefix"])).decode()
        else:   # saved with qhybrid's codec: in the encoding this client reads
            from tasks.sandbox.serverless_codec import to_peer

            text = to_peer(svc.store.get_bytes(keys.job_result(job["prefix"])).decode())
    except NotFound:
        return _json({"result": None})
    return _json({"result": text})


_PUBLIC, _PRIVATE = "[PUBLIC] ", "[PRIVATE] "


def split_logs(text: str, provider: bool) -> tuple[str, str]:
    """The log as the gateway parts it: (the user's, the provider's), line prefixes dropped.

    A job of a function without a provider: every line is the user's. With one: the
    `get_logger()` lines ([PUBLIC]) are the user's, every other line the provider's.
    """
    public: list[str] = []
    private: list[str] = []
    for line in text.splitlines(keepends=True):
        head = line[:len(_PRIVATE)].upper()
        if head.startswith(_PUBLIC):
            public.append(line[len(_PUBLIC):])
        elif head.startswith(_PRIVATE):
            (private if provider else public).append(line[len(_PRIVATE):])
        else:
            (private if provider else public).append(line)
    return "".join(public), "".join(private)


def _logs(job_id: str, provider_side: bool) -> Response:
    job = _job(job_id)
    provider = bool(job.get("provider"))
    if provider_side and not provider:
        raise Forbidden(f"You don't have access to job [{job_id}]")
    text, _ = jobs.read_logs(services(), job, 0)
    public, private = split_logs(text, provider)
    return _json({"logs": private if provider_side else public})


@bp.get("/jobs/<job_id>/logs/")
@peer_auth("job")
def job_logs(job_id: str) -> Response:
    return _logs(job_id, provider_side=False)


@bp.get("/jobs/<job_id>/provider-logs/")
@peer_auth("job")
def job_provider_logs(job_id: str) -> Response:
    """The provider's part of the log; a function's user is its own provider on qhybrid."""
    return _logs(job_id, provider_side=True)


@bp.post("/jobs/<job_id>/stop/")
@peer_auth()
def stop_job(job_id: str) -> Response:
    svc = services()
    job = _job(job_id)
    if job["status"] in d.TERMINAL_STATUSES:
        return _json({"message": f"Job has already ended ({PEER_STATUS[job['status']]})."})
    jobs.cancel_job(svc, g.user, job_id)
    return _json({"message": "Job has been stopped."})


def _status_events(job: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for e in services().registry.events(job["id"]):
        sub = e.get("sub_status")
        out.append({"event_type": "SUB_STATUS_CHANGE" if sub else "STATUS_CHANGE",
                    "origin": "SCHEDULER", "context": "RUN", "created": iso(e.get("at")),
                    "data": {"status": PEER_STATUS.get(e.get("status", ""), e.get("status")),
                             **({"sub_status": PEER_SUB_STATUS.get(sub, sub)} if sub else {})}})
    return out


@bp.get("/jobs/<job_id>/events/")
@peer_auth("job")
def job_events(job_id: str) -> Response:
    job = _job(job_id)
    kind = (request.args.get("type") or "").upper() or None
    if kind not in (None, "ERROR"):
        raise InvalidInput("Type is not valid. Valid types: ['ERROR']", field="type")
    errors = [json.loads(e) for e in services().registry.r.lrange(
        d.JOB_PEER_EVENTS_KEY.format(job_id=job_id), 0, -1)]
    events = errors if kind == "ERROR" else sorted(_status_events(job) + errors,
                                                    key=lambda e: e["created"] or "")
    return _json(events)


@bp.post("/jobs/<job_id>/event/")
@peer_auth("job")
def create_event(job_id: str) -> Response:
    job = _job(job_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object with type, code, message and exception", field="body")
    if str(body.get("type", "")).strip().upper() != "ERROR":
        raise InvalidInput("Type is not valid. Valid types: ['ERROR']", field="type")
    record_error_event(services().registry, job["id"], body.get("code"), body.get("message"),
                       body.get("exception"), body.get("args"))
    return _json(None)


@bp.patch("/jobs/<job_id>/sub_status/")
@peer_auth("job")
def set_sub_status(job_id: str) -> Response:
    job = _job(job_id)
    sub = (request.form.get("sub_status") or (request.get_json(silent=True) or {}).get("sub_status")
           if request.form or request.is_json else None)
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 200:
        raise InvalidInput("'sub_status' not provided or is not valid", field="sub_status")
    sub = OUR_SUB_STATUS.get(sub.strip(), sub.strip())
    if not services().registry.set_sub_status(job["id"], sub):
        raise InvalidInput(f"the job is not running ({PEER_STATUS.get(job['status'])})",
                           field="sub_status")
    return _json({"message": "Sub status updated correctly"})


@bp.get("/jobs/<job_id>/runtime_jobs/")
@peer_auth("job")
def runtime_jobs(job_id: str) -> Response:
    job = _job(job_id)
    items = [json.loads(x) for x in services().registry.r.lrange(
        d.JOB_RUNTIME_JOBS_KEY.format(job_id=job["id"]), 0, -1)]
    return _json({"runtime_jobs": items})


@bp.post("/jobs/<job_id>/runtime_jobs/")
@peer_auth("job")
def add_runtime_job(job_id: str) -> Response:
    job = _job(job_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("runtime_job"), str) \
            or not body["runtime_job"] or len(body["runtime_job"]) > 200:
        raise InvalidInput("runtime_job is the id of a Qiskit Runtime job", field="runtime_job")
    session = body.get("runtime_session")
    if session is not None and (not isinstance(session, str) or len(session) > 200):
        raise InvalidInput("runtime_session is a session id", field="runtime_session")
    r = services().registry.r
    key = d.JOB_RUNTIME_JOBS_KEY.format(job_id=job["id"])
    if r.llen(key) >= MAX_EVENTS:
        raise InvalidInput(f"a job keeps at most {MAX_EVENTS} runtime jobs", field="runtime_job")
    r.rpush(key, json.dumps({"runtime_job": body["runtime_job"], "runtime_session": session}))
    return _json({"message": "Runtime job associated."})


@bp.get("/dependencies-versions/")
@peer_auth()
def dependencies_versions() -> Response:
    # the same reading of the base environment that jobs' dependencies are layered over
    return _json([f"{name}=={version}" for name, version in base_distributions()])


# --- files --------------------------------------------------------------------------------
def _files() -> DataFiles:
    svc = services()
    return DataFiles(svc.store, svc.registry, svc.settings)


def _store_of(provider_route: bool) -> str | None:
    """Their (function, provider) as our store: the user's own, or the function's for providers."""
    function = request.args.get("function") or None
    provider = request.args.get("provider") or None
    if provider_route or provider:
        if not function:
            raise InvalidInput("function names the function whose files are meant",
                               field="function")
        _function(jobs.check_title(function, field="function"), provider)
        return function
    return None


def _list_files(provider_route: bool) -> Response:
    listed = _files().list(g.user, _store_of(provider_route))
    return _json({"results": [f.name for f in listed]})


def _download(provider_route: bool) -> Any:
    from app.files import file_response

    name = check_name(request.args.get("file") or "", field="file")
    store = _store_of(provider_route)
    try:
        return file_response(_files(), g.user, name, store)
    except NotFound:
        raise NotFound(f"File {name} was not found.", field="file") from None


def _upload(provider_route: bool) -> Response:
    upload = request.files.get("file")
    if upload is None:
        raise InvalidInput("attach the file as 'file'", field="file")
    name = check_name(upload.filename or "", field="file")
    store = _store_of(provider_route)
    try:
        info, _ = _files().put(g.user, name, upload.stream, store)
    except UnsupportedMediaType:   # the gateway answers a refused type with 400
        raise InvalidInput(f"Uploaded file is not a valid type. qhybrid keeps {ACCEPTED} "
                           "(recognised by content, not by name).", field="file") from None
    return _json({"message": info.name})


def _delete(provider_route: bool) -> Response:
    name = check_name(request.args.get("file") or "", field="file")
    store = _store_of(provider_route)
    try:
        _files().delete(g.user, name, store)
    except NotFound:
        raise NotFound(f"File {name} was not found.", field="file") from None
    return _json({"message": "Requested file was deleted."})


@bp.get("/files/")
@peer_auth("files")
def list_files() -> Response:
    return _list_files(False)


@bp.get("/files/provider/")
@peer_auth("files")
def list_provider_files() -> Response:
    return _list_files(True)


@bp.get("/files/provider/download")
@peer_auth("files")
def download_provider_file() -> Any:
    return _download(True)


@bp.post("/files/upload/")
@peer_auth("files")
def upload_file() -> Response:
    return _upload(False)


@bp.post("/files/provider/upload/")
@peer_auth("files")
def upload_provider_file() -> Response:
    return _upload(True)


@bp.delete("/files/provider/delete")
@peer_auth("files")
def delete_provider_file() -> Response:
    return _delete(True)


# Paths our own API also has: answered here only for the client's requests (its headers).
_SHARED: dict[tuple[str, str], Callable[[], Any]] = {
    ("GET", "/api/v1/programs"): lambda: list_functions(),
    ("GET", "/api/v1/files"): lambda: list_files(),
    ("GET", "/api/v1/files/provider"): lambda: list_provider_files(),
    ("GET", "/api/v1/files/download"): peer_auth("files")(lambda: _download(False)),
    ("DELETE", "/api/v1/files/delete"): peer_auth("files")(lambda: _delete(False)),
}


@bp.before_app_request
def _shared_paths() -> Any:
    view = _SHARED.get((request.method, request.path))
    if view is not None and (is_peer_request() or "file" in request.args):
        return view()
    return None


__all__ = ["bp", "PEER_STATUS"]
