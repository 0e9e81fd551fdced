"""What user code calls inside a job: arguments, results, statuses.

Outside a job (a plain `python main.py` on a laptop) the calls still work: arguments come
from `QHYBRID_ARGUMENTS` (JSON) if set, and a saved result is kept in `last_result`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from qhybrid import _channel, codec

last_result: Any = None


class SubStatus:
    """Sub-statuses a running job can report, as Qiskit Serverless shows them (`Job.MAPPING`)."""

    MAPPING = "MAPPING"
    OPTIMIZING_HARDWARE = "OPTIMIZING_FOR_HARDWARE"
    WAITING_QPU = "WAITING_FOR_QPU"
    EXECUTING_QPU = "EXECUTING_QPU"
    POST_PROCESSING = "POST_PROCESSING"


def get_arguments() -> dict[str, Any]:
    """The arguments the job was run with, decoded (circuits, arrays ... as they were sent)."""
    path = os.environ.get("QHYBRID_ARGUMENTS_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            return codec.loads(fh.read()) or {}
    raw = os.environ.get("QHYBRID_ARGUMENTS")
    return codec.decode(json.loads(raw)) if raw else {}


def save_result(result: Any) -> bool:
    """Store the job's result; it is in storage when this returns. Call again to replace it."""
    global last_result
    text = codec.dumps(result)
    if _channel.in_job():
        return bool(_channel.call("save_result", result=text))
    last_result = codec.loads(text)
    return True


def update_status(status: str) -> bool:
    """Show `RUNNING: <status>` while the job runs (one of `Job.MAPPING` ... or any short text)."""
    if _channel.in_job():
        return bool(_channel.call("update_status", status=status))
    return False
