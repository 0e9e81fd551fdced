"""Metrics of a hybrid job: one record per `log_metric` call, and the columnar view of them.

`pivot` is what `job.metrics()` returns, on the service and in local mode alike: one row per
timestamp (or iteration number), one column per metric, the max or min where a row has several
values, rows in ascending order.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from qhybrid.errors import InvalidInput

METRIC_TYPES = ("timestamp", "iteration_number")
STATISTICS = ("max", "min")
MAX_METRIC_NAME_CHARS = 255


class MetricType(StrEnum):
    """The row index of `job.metrics()`; the values are Braket's, any spelling is accepted."""

    TIMESTAMP = "Timestamp"
    ITERATION_NUMBER = "IterationNumber"


class MetricStatistic(StrEnum):
    """Which value a row keeps when it has several; the values are Braket's."""

    MAX = "Max"
    MIN = "Min"


Statistic = MetricStatistic

_TYPE_NAMES = {"timestamp": "timestamp", "iterationnumber": "iteration_number",
               "iteration_number": "iteration_number"}


def metric_record(metric_name: Any, value: Any, timestamp: Any = None,
                  iteration_number: Any = None) -> dict[str, Any]:
    """Check one metric and return it as a plain JSON record."""
    if not isinstance(metric_name, str) or not metric_name.strip() \
            or len(metric_name) > MAX_METRIC_NAME_CHARS or metric_name in METRIC_TYPES:
        raise InvalidInput(f"metric_name is 1 to {MAX_METRIC_NAME_CHARS} characters, other than "
                           f"{' and '.join(METRIC_TYPES)}; got {str(metric_name)[:60]!r}",
                           field="metric_name")
    record: dict[str, Any] = {"metric_name": metric_name,
                              "value": _finite(value, "value"),
                              "timestamp": time.time() if timestamp is None
                              else _finite(timestamp, "timestamp")}
    if iteration_number is not None:
        if isinstance(iteration_number, bool) or not isinstance(iteration_number, numbers.Integral):
            raise InvalidInput(f"iteration_number must be a whole number, got "
                               f"{iteration_number!r}", field="iteration_number")
        record["iteration_number"] = int(iteration_number)
    return record


def _finite(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInput(f"{field} must be a real number, got {type(value).__name__}",
                           field=field)
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"{field} must be finite, got {number}", field=field)
    return number


def check_view(metric_type: Any, statistic: Any) -> tuple[str, str]:
    """Accept the names (or enums whose value is the name) of a pivot and a statistic."""
    kind = _TYPE_NAMES.get(str(getattr(metric_type, "value", metric_type)).lower(), "")
    stat = str(getattr(statistic, "value", statistic)).lower()
    if kind not in METRIC_TYPES:
        raise InvalidInput(f"metric_type is one of {', '.join(METRIC_TYPES)}", field="metric_type")
    if stat not in STATISTICS:
        raise InvalidInput(f"statistic is one of {', '.join(STATISTICS)}", field="statistic")
    return kind, stat


def pivot(records: Iterable[dict[str, Any]], metric_type: str = "timestamp",
          statistic: str = "max") -> dict[str, list[Any]]:
    """Columnar metrics: {metric_type: [...], <other index>: [...], <metric>: [...] ...}.

    Columns come in one order whatever order the records arrived in: the pivot, the other
    index (only when some record has it), then the metrics by name. Records without the pivot
    (no iteration number) are left out of an iteration view; a cell no record filled is None.
    """
    kind, stat = check_view(metric_type, statistic)
    other = "iteration_number" if kind == "timestamp" else "timestamp"
    better = max if stat == "max" else min
    rows: dict[Any, dict[str, Any]] = {}
    names: dict[str, None] = {}
    for rec in records:
        key = rec.get(kind)
        if key is None:
            continue
        name = rec["metric_name"]
        names.setdefault(name)
        row = rows.setdefault(key, {})
        for column, value in ((name, rec["value"]), (other, rec.get(other))):
            if value is None:
                continue
            row[column] = value if row.get(column) is None else better(row[column], value)
    order = sorted(rows)
    table: dict[str, list[Any]] = {kind: order}
    has_other = any(row.get(other) is not None for row in rows.values())
    for column in [*([other] if has_other else []), *sorted(names)]:
        table[column] = [rows[k].get(column) for k in order]
    return table


__all__ = ["METRIC_TYPES", "STATISTICS", "MetricStatistic", "MetricType", "Statistic",
           "check_view", "metric_record", "pivot"]
