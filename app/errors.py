"""Every error leaves as `application/problem+json` naming what was wrong.

Browsers asking for HTML pages still get HTML error pages; the API, `/healthz` and any
client that does not prefer HTML get problem+json, for every 4xx and 5xx. While Redis is
unreachable (restarting), calls answer 503 with Retry-After instead of failing.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from kombu.exceptions import OperationalError as BrokerUnavailable
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    RequestHeaderFieldsTooLarge,
    RequestURITooLarge,
)

from qhybrid.errors import QhybridError, ServiceUnavailable
from tasks.core import defaults as d
from tasks.core.redis_client import RedisUnavailable

log = logging.getLogger(__name__)


def problem(body: dict[str, object], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def wants_problem() -> bool:
    """The API and /healthz always; pages only for a client that does not prefer HTML."""
    if request.path.startswith("/api/") or request.path == "/healthz":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/problem+json",
                                                "application/json"])
    return best != "text/html"


def check_request_size() -> None:
    """414 and 431 for request lines and header fields over the limits (defined once).

    gunicorn's own limits are set above these, so that these answers come from here.
    """
    line = (request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
            or request.full_path)
    if len(request.method) + len(line) + len(" HTTP/1.1") + 1 > d.MAX_REQUEST_LINE_BYTES:
        raise RequestURITooLarge(f"the request line is longer than {d.MAX_REQUEST_LINE_BYTES} "
                                 "bytes")
    for name, value in request.headers.items():
        if len(name) + len(value) + 2 > d.MAX_HEADER_FIELD_BYTES:
            raise RequestHeaderFieldsTooLarge(f"header {name[:64]!r} is longer than "
                                              f"{d.MAX_HEADER_FIELD_BYTES} bytes")


def register(app: Flask) -> None:
    app.before_request(check_request_size)

    @app.errorhandler(QhybridError)
    def _qhybrid(exc: QhybridError) -> Response:
        resp = problem(exc.to_problem(), exc.status)
        if exc.status == 503:
            resp.headers["Retry-After"] = str(d.REDIS_RETRY_AFTER_S)
        return resp

    @app.errorhandler(RedisUnavailable)
    @app.errorhandler(BrokerUnavailable)
    def _redis_down(exc: Exception) -> Response:
        log.warning("Redis is unreachable: %s", exc)
        return _qhybrid(ServiceUnavailable("the job registry (Redis) is unreachable; it is "
                                           "being restarted: try again shortly",
                                           retry_after=d.REDIS_RETRY_AFTER_S))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response | HTTPException:
        if not wants_problem() and exc.code not in (413,):
            return exc
        slug = (exc.name or "error").lower().replace(" ", "-")
        resp = problem({"type": f"https://qhybrid.dev/problems/{slug}", "title": exc.name,
                        "status": exc.code, "detail": exc.description}, exc.code or 500)
        for header, value in exc.get_headers():
            if header in ("Allow", "Retry-After", "WWW-Authenticate"):
                resp.headers[header] = value
        return resp

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _http(exc)  # type: ignore[return-value]
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not wants_problem():
            return InternalServerError()  # type: ignore[return-value]
        return problem({"type": "https://qhybrid.dev/problems/internal-error",
                        "title": "Internal error", "status": 500,
                        "detail": "the server failed; the error is in its log"}, 500)
