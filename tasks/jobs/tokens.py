"""Job-scoped tokens: the credential a job's own code gets for the in-job gateway calls.

A token names one job. It is accepted only for that job's own routes and its user's files,
and only while the job is INITIALIZING or RUNNING; the supervisor revokes it when the job
ends, and its Redis key expires after the job's maximum run time in any case. It is never
the user's token, and the user routes (`token_required`) never accept it.
"""

from __future__ import annotations

import secrets
from typing import Any

from tasks.core import defaults as d
from tasks.core.registry import Registry, hash_token

ACTIVE = (d.INITIALIZING, d.RUNNING)
GRACE_S = 60


def issue(registry: Registry, job_id: str, ttl_s: int) -> str:
    """A new token for `job_id`, valid for at most `ttl_s` (+ a minute) seconds."""
    token = "job_" + secrets.token_urlsafe(32)
    digest = hash_token(token)
    pipe = registry.r.pipeline()
    pipe.set(d.JOB_TOKEN_KEY.format(token_hash=digest), job_id, ex=ttl_s + GRACE_S)
    pipe.set(d.JOB_TOKEN_OF_KEY.format(job_id=job_id), digest, ex=ttl_s + GRACE_S)
    pipe.execute()
    return token


def lookup(registry: Registry, token: str) -> dict[str, Any] | None:
    """The job a token belongs to, if that job is still running; else None."""
    if not token.startswith("job_"):
        return None
    job_id = registry.r.get(d.JOB_TOKEN_KEY.format(token_hash=hash_token(token)))
    if not job_id:
        return None
    try:
        job = registry.get_job(str(job_id))
    except Exception:
        return None
    return job if job["status"] in ACTIVE else None


def revoke(registry: Registry, job_id: str) -> None:
    digest = registry.r.get(d.JOB_TOKEN_OF_KEY.format(job_id=job_id))
    pipe = registry.r.pipeline()
    if digest:
        pipe.delete(d.JOB_TOKEN_KEY.format(token_hash=digest))
    pipe.delete(d.JOB_TOKEN_OF_KEY.format(job_id=job_id))
    pipe.execute()


__all__ = ["issue", "lookup", "revoke"]
