"""HTML pages: login, the submission form, job pages."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("pages", __name__)


def init_app(app: Flask) -> None:
    """Attach what the pages need (CSRF protection)."""
