"""The Flask front end: JSON API under /api/v1, HTML pages, health.

Importing the package loads none of it (`qhybrid` commands import `app.cli`): `create_app`
does.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from tasks.core.services import Services
    from tasks.core.settings import Settings


def _secret_key(settings: Settings, services: Services) -> str:
    """The session-signing key: QHYBRID_SECRET_KEY, else one kept in the shared Redis, made
    once (SET NX) by the first web process, so that every web host accepts every session."""
    from tasks.core import defaults as d

    if settings.secret_key:
        return settings.secret_key
    r = services.registry.r
    r.set(d.WEB_SECRET_KEY, secrets.token_hex(32), nx=True)
    return str(r.get(d.WEB_SECRET_KEY))


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    from flask import Flask

    from tasks.core.celery_app import make_celery
    from tasks.core.defaults import WEB_REDIS_RETRY_S
    from tasks.core.redis_client import set_retry_window
    from tasks.core.services import Services
    from tasks.core.settings import Settings, require_shared
    from tasks.sandbox.isolation import make_undumpable

    make_undumpable()     # the web process holds credentials: not for other processes to read
    app = Flask(__name__)
    settings: Settings | None = (test_config or {}).get("SETTINGS")
    if settings is None:
        require_shared(role="web")
        settings = Settings.from_env()
    # the web answers 503 while Redis restarts instead of holding requests (app.errors)
    set_retry_window(WEB_REDIS_RETRY_S)
    svc = Services.from_settings(settings)
    app.config.update(
        SECRET_KEY=_secret_key(settings, svc),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k != "SETTINGS"})
    app.extensions["qhybrid"] = svc
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

    from app import reservations

    app.register_blueprint(reservations.api)
    app.register_blueprint(reservations.pages)

    from app import job_views, prometheus

    app.register_blueprint(prometheus.bp)
    app.register_blueprint(job_views.bp)

    from app import serverless_api

    app.register_blueprint(serverless_api.bp)
    return app
