"""The Flask front end: JSON API under /api/v1, HTML pages, health."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask

from tasks.celery_app import make_celery
from tasks.isolation import make_undumpable
from tasks.services import Services
from tasks.settings import Settings


def _secret_key(settings: Settings) -> str:
    """The session-signing key: configured, else kept in the data directory."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    make_undumpable()     # the web process holds credentials: not for other processes to read
    app = Flask(__name__)
    settings: Settings = (test_config or {}).get("SETTINGS") or Settings.from_env()
    app.config.update(
        SECRET_KEY=_secret_key(settings),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k != "SETTINGS"})
    app.extensions["qhybrid"] = Services.from_settings(settings)
    app.extensions["qhybrid.celery"] = make_celery(settings)

    from app import api, errors, health, pages

    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pages.bp)
    pages.init_app(app)

    from app import file_pages, files

    app.register_blueprint(files.bp)
    app.register_blueprint(file_pages.bp)
    file_pages.init_app(app)

    from app import devices

    app.register_blueprint(devices.bp)

    from app import hybrid_api

    app.register_blueprint(hybrid_api.bp)

    from app import tasks_api

    app.register_blueprint(tasks_api.bp)

    from app import serverless_api

    app.register_blueprint(serverless_api.bp)
    return app
