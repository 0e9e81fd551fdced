"""Device reservations: the JSON API (/api/v1/reservations) and the HTML page (/reservations).

A reservation gives its user a device for a time window (tasks.devices.reservations has the rules);
hybrid jobs and quantum tasks name it by its arn (`reservation_arn`).
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from app.auth import login_required, services, token_required
from app.params import json_body
from qhybrid.errors import InvalidInput, QhybridError
from tasks.devices import holders
from tasks.devices import reservations as rs
from tasks.devices.catalog import device_registry

api = Blueprint("reservations_api", __name__, url_prefix="/api/v1")
pages = Blueprint("reservation_pages", __name__)

FIELDS = {"device", "start", "end", "user"}


def _create(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("the body is a JSON object: {device, start, end[, user]}", field="body")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}", field=unknown[0])
    for name in ("device", "start", "end"):
        if body.get(name) in (None, ""):
            raise InvalidInput(f"{name} is required", field=name)
    return rs.create_reservation(services(), g.user, body["device"], body["start"],
                                 body["end"], body.get("user"))


@api.post("/reservations")
@token_required
def create() -> tuple[Response, int]:
    """{device, start, end[, user]}: times in seconds since the epoch or ISO 8601."""
    return jsonify(rs.reservation_json(_create(json_body()))), 201


@api.get("/reservations")
@token_required
def index() -> Response:
    rows = rs.list_reservations(services(), g.user)
    return jsonify({"reservations": [rs.reservation_json(rec) for rec in rows]})


@api.get("/reservations/<res_id>")
@token_required
def get(res_id: str) -> Response:
    return jsonify(rs.reservation_json(rs.get_reservation(services(), g.user, res_id)))


@api.post("/reservations/<res_id>/cancel")
@token_required
def cancel(res_id: str) -> Response:
    return jsonify(rs.reservation_json(holders.cancel_reservation(services(), g.user, res_id)))


# --- the page -------------------------------------------------------------------------------
def _page(error: QhybridError | None = None, form: dict[str, str] | None = None) -> str:
    svc = services()
    rows = [rs.reservation_json(rec) for rec in rs.list_reservations(svc, g.user)]
    return render_template("reservations.html", reservations=rows, error=error,
                           devices=device_registry(svc.settings).names(), form=form or {},
                           admin=g.user in svc.settings.admins)


@pages.get("/reservations")
@login_required
def page() -> str:
    return _page()


@pages.post("/reservations")
@login_required
def page_create() -> Any:
    form = {k: request.form.get(k, "").strip() for k in FIELDS}
    body = {k: v for k, v in form.items() if v}
    try:
        rec = _create(body)
    except QhybridError as exc:
        return _page(exc, form), exc.status
    flash(f"Reserved {rec['device']}: {rs.RESERVATION_ARN_PREFIX}{rec['id']}.")
    return redirect(url_for("reservation_pages.page"))


@pages.post("/reservations/<res_id>/cancel")
@login_required
def page_cancel(res_id: str) -> Any:
    try:
        holders.cancel_reservation(services(), g.user, res_id)
    except QhybridError as exc:
        return _page(exc), exc.status
    flash("Canceled the reservation.")
    return redirect(url_for("reservation_pages.page"))


__all__ = ["api", "pages"]
