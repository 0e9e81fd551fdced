"""Every error leaves as `application/problem+json` naming what was wrong."""

from __future__ import annotations

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from qhybrid.errors import QhybridError


def problem(body: dict[str, object], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def register(app: Flask) -> None:
    @app.errorhandler(QhybridError)
    def _qhybrid(exc: QhybridError) -> Response:
        return problem(exc.to_problem(), exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/api/") and exc.code not in (413,):
            return exc
        slug = (exc.name or "error").lower().replace(" ", "-")
        return problem({"type": f"https://qhybrid.dev/problems/{slug}", "title": exc.name,
                        "status": exc.code, "detail": exc.description}, exc.code or 500)
