"""Bearer-token authentication: every API call names its user by a token stored hashed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, redirect, request, session, url_for

from qhybrid.errors import Unauthorized
from tasks.core.services import Services

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    return current_app.extensions["qhybrid"]  # type: ignore[no-any-return]


def user_from_request() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return services().registry.user_for_token(header[7:].strip())
    return None


def token_required(view: F) -> F:
    """The API's guard: a valid `Authorization: Bearer <token>` or 401."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = user_from_request()
        if not user:
            raise Unauthorized("send Authorization: Bearer <token>; "
                               "`qhybrid user create NAME` makes one")
        g.user = user
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def session_user() -> str | None:
    """The user of a logged-in browser session, if its token is still valid."""
    digest = session.get("token_hash")
    return services().registry.user_for_token_hash(digest) if digest else None


def log_in(token: str) -> str | None:
    """Start a browser session for `token`'s user; the cookie holds only the token's hash."""
    from tasks.core.registry import hash_token

    user = services().registry.user_for_token(token)
    if user:
        session.clear()
        session["token_hash"] = hash_token(token)
    return user


def login_required(view: F) -> F:
    """Pages need a browser session with a valid token, else the login page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = session_user()
        if not user:
            return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
        g.user = user
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
