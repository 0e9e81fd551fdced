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


_UNSAVED = object()
_saved: Any = _UNSAVED          # what save_result / save_job_result saved in this process


def save_result(result: Any) -> bool:
    """Store the job's result; it is in storage when this returns. Call again to replace it.
    In a hybrid job, a return value other than None takes its place (merged if both are
    dicts), and the log says so."""
    global last_result, _saved
    text = codec.dumps(result)
    _saved = codec.loads(text)
    if _channel.in_job():
        return bool(_channel.call("save_result", result=text))
    local = _local_result_file()
    if local is not None:
        _write_local(local, text)
    last_result = _saved
    return True


def save_job_result(result_data: Any, data_format: Any = None) -> None:
    """Braket's save_job_result: merge `result_data` (a dict, or any value as
    {"result": value}) into the job's result, stored before this returns. The function's
    return value, if not None, is merged over it at the end."""
    fmt = str(getattr(data_format, "value", data_format) or "plaintext").lower()
    if fmt not in ("plaintext", "json"):
        from qhybrid.errors import InvalidInput

        raise InvalidInput("save_job_result keeps JSON data (the codec: numbers, strings, "
                           "arrays, circuits ...); data_format is 'plaintext'",
                           field="data_format")
    data = result_data if isinstance(result_data, dict) else {"result": result_data}
    current = _saved if isinstance(_saved, dict) else {}
    save_result({**current, **data})


def final_result(value: Any) -> Any:
    """A hybrid job's result: its return value, with what it saved along the way."""
    if _saved is _UNSAVED:
        return value
    if value is None:
        return _saved
    if isinstance(_saved, dict) and isinstance(value, dict):
        return {**_saved, **value}
    import sys

    print("[qhybrid: the function's return value replaces the result it saved]",
          file=sys.stderr, flush=True)
    return value


def _local_result_file() -> str | None:
    """A local-mode job keeps a saved result in its directory (result.json)."""
    if not os.environ.get("QHYBRID_LOCAL_MODE"):
        return None
    results = os.environ.get("QHYBRID_RESULTS_DIR")
    return os.path.join(os.path.dirname(results), "result.json") if results else None


def _write_local(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def update_status(status: str) -> bool:
    """Show `RUNNING: <status>` while the job runs (one of `Job.MAPPING` ... or any short text)."""
    if _channel.in_job():
        return bool(_channel.call("update_status", status=status))
    return False
