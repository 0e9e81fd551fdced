"""CSRF protection covers every form and leaves out every API route, present and future."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Blueprint, Flask

from app import create_app
from tasks.core.settings import Settings


def make_app(tmp: Path, **config: object) -> Flask:
    """The real app; these requests are decided before anything talks to Redis."""
    settings = Settings(redis_url="redis://127.0.0.1:1/0", storage_url=tmp.as_uri(),
                        s3_endpoint_url=None, data_dir=tmp, resource_classes_path=None,
                        secret_key="test")
    return create_app({"SETTINGS": settings, **config})


def test_a_form_post_without_the_token_is_refused(tmp_path: Path) -> None:
    resp = make_app(tmp_path).test_client().post("/logout")
    assert resp.status_code == 400
    assert b"CSRF token is missing" in resp.data


@pytest.mark.parametrize("config", [{}, {"WTF_CSRF_CHECK_DEFAULT": True}])
def test_api_blueprints_added_later_need_no_token(tmp_path: Path, config: dict) -> None:
    # given an API blueprint another module registers after the pages set up CSRF
    app = make_app(tmp_path, **config)
    later = Blueprint("devices_api", __name__, url_prefix="/api/v1/devices")
    later.add_url_rule("/ping", "ping", lambda: "pong", methods=["POST"])
    app.register_blueprint(later)
    # when it is posted to without a CSRF token, then CSRF does not stand in the way
    resp = app.test_client().post("/api/v1/devices/ping")
    assert (resp.status_code, resp.data) == (200, b"pong")
