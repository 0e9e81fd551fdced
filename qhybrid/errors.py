"""One exception tree for server and client.

Each class maps one-to-one onto an API problem type and HTTP status: the server raises them
and renders `application/problem+json`; the client reads the `type` back into the same class.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://qhybrid.dev/problems/"


class QhybridError(Exception):
    """Base of every qhybrid error."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str = "", *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.field = field
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class InvalidInput(QhybridError, ValueError):
    """Bad input; also a ValueError, so code written for Braket's `except ValueError` works."""

    status, slug, title = 400, "invalid-input", "Invalid input"


class Unauthorized(QhybridError):
    status, slug, title = 401, "unauthorized", "Missing or invalid token"


class Forbidden(QhybridError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(QhybridError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(QhybridError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(QhybridError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(QhybridError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class NoResourceClass(InvalidInput):
    slug, title = "no-resource-class", "No resource class fits the request"


class ServiceUnavailable(QhybridError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class ServiceUnreachable(ServiceUnavailable):
    """No qhybrid service answers at the client's URL (nothing listens, or it is not HTTP)."""

    slug, title = "service-unreachable", "No qhybrid service answers"


class JobFailed(QhybridError):
    """A job ended in ERROR; the message holds the exception and the traceback's last lines."""

    status, slug, title = 409, "job-failed", "Job failed"


class JobCanceled(QhybridError):
    status, slug, title = 409, "job-canceled", "Job was canceled"


class TaskFailed(QhybridError):
    """A distributed task raised; the message holds the remote traceback."""

    status, slug, title = 409, "task-failed", "Task failed"


class Timeout(QhybridError):
    status, slug, title = 408, "timeout", "Timed out"


def _all_subclasses(cls: type[QhybridError]) -> list[type[QhybridError]]:
    out: list[type[QhybridError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_from_problem(problem: dict[str, Any], http_status: int) -> QhybridError:
    """Rebuild the exception a problem document describes (used by the client)."""
    kind = str(problem.get("type", ""))
    slug = kind[len(PROBLEM_BASE):] if kind.startswith(PROBLEM_BASE) else ""
    classes: list[type[QhybridError]] = [QhybridError, *_all_subclasses(QhybridError)]
    for cls in classes:
        if cls.slug == slug:
            extra = {k: v for k, v in problem.items()
                     if k not in {"type", "title", "status", "detail", "field"}}
            err = cls(str(problem.get("detail", "")), field=problem.get("field"), **extra)
            return err
    err = QhybridError(str(problem.get("detail") or problem.get("title") or f"HTTP {http_status}"))
    err.status = http_status
    return err
