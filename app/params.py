"""Reading request parameters and bodies, the same way in every API blueprint."""

from __future__ import annotations

from typing import Any

from flask import request

from qhybrid.errors import InvalidInput


def json_body() -> Any:
    if not request.is_json:
        raise InvalidInput("send a JSON body with Content-Type: application/json", field="body")
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("the body is not valid JSON", field="body")
    return body


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
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be from {lo:g} to {hi:g}", field=name)
    return value
