"""Reading request parameters and bodies, the same way in every API blueprint."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import request

from qhybrid.errors import InvalidInput
from tasks.core import defaults as d

_RAISE: Any = object()


def load_json(text: str | bytes, field: str, *, not_json: Any = _RAISE,
              parse_constant: Callable[[str], Any] | None = None,
              subject: str | None = None) -> Any:
    """Parse JSON a request sent (its body or a form field), at most MAX_JSON_DEPTH deep.

    Every JSON that comes in is parsed here, so no nesting reaches code that recurses.
    Text that is not JSON raises InvalidInput ("<subject> not valid JSON", the subject being
    "<field> is" unless given), or gives `not_json` when that is passed.
    """
    try:
        value = json.loads(text, parse_constant=parse_constant)
    except RecursionError:
        value, too_deep = None, True
    except ValueError as exc:
        if not_json is not _RAISE:
            return not_json
        raise InvalidInput(f"{subject or field + ' is'} not valid JSON: {exc}",
                           field=field) from None
    else:
        too_deep = _depth_over(value, d.MAX_JSON_DEPTH)
    if too_deep:
        raise InvalidInput(f"{field} nests deeper than {d.MAX_JSON_DEPTH} levels", field=field)
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def json_body() -> Any:
    if not request.is_json:
        raise InvalidInput("send a JSON body with Content-Type: application/json", field="body")
    return load_json(request.get_data(cache=True), "body")


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number", field=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be from {lo} to {hi}", field=name)
    return value


def float_arg(name: str, default: float, lo: float, hi: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number of seconds", field=name) from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be from {lo:g} to {hi:g}", field=name)
    return value


def iso(ts: float | None) -> str | None:
    """A time as the API writes it: ISO 8601 in UTC, to the millisecond (`...Z`)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
