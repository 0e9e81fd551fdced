"""Names that programs written for Qiskit Serverless use, on qhybrid: loggers, `send_error`,
`ServerlessError`. Code that only swaps `qiskit_serverless` for `qhybrid` keeps working."""

from __future__ import annotations

import logging
import sys
from typing import Any

from qhybrid import _channel


class ServerlessError(Exception):
    """An error a function raises on purpose, with a code and details for its users."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" + (f"\n{self.details}" if self.details else "")


class _Prefixed(logging.Formatter):
    """Every line of a record as `<prefix> LEVEL: text` (how the job's log shows it)."""

    def __init__(self, prefix: str) -> None:
        super().__init__("%(levelname)s: %(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        head = f"{record.levelname}: "
        lines = text[len(head):].splitlines() or [""]
        return "\n".join(f"{self.prefix} {head}{line}" for line in lines)


def _logger(name: str, prefix: str) -> logging.Logger:
    logger = logging.getLogger(f"qhybrid.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Prefixed(prefix))
        logger.addHandler(handler)
    return logger


def get_logger() -> logging.Logger:
    """The logger for what the function's users see: lines marked `[PUBLIC]` in the log."""
    return _logger("user", "[PUBLIC]")


def get_provider_logger() -> logging.Logger:
    """The logger for the function's provider: lines marked `[PRIVATE]` in the log."""
    return _logger("provider", "[PRIVATE]")


def send_error(code: str | int, message: str, exception: str, args: Any = None) -> bool:
    """Record an error event with the job (what `job.error_message()` shows); outside a job
    it is only logged."""
    if _channel.in_job():
        return bool(_channel.call("send_error", code=str(code), message=str(message),
                                  exception=str(exception), args=args))
    logging.getLogger("qhybrid").error("Error %s: %s (%s)\n%s", code, message, exception, args)
    return False


__all__ = ["ServerlessError", "get_logger", "get_provider_logger", "send_error"]
