"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx answer of the API is application/problem+json."""
    if response.status_code >= 400:
        ctype = (response.headers.get("content-type") or [""])[0]
        if not ctype.startswith("application/problem+json"):
            raise AssertionError(f"{response.status_code} answered as {ctype!r}, "
                                 "not application/problem+json")
    return None
