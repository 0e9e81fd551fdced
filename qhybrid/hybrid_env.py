"""What a hybrid job's function calls inside the job: its directories, hyperparameters,
metrics and checkpoints.

Each helper reads a `QHYBRID_*` variable that the supervisor (or local mode) sets. Outside a
job they return the local defaults: "." for directories, "" for the job name, {} for the
hyperparameters; `log_metric` prints the metric instead of recording it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from qhybrid import _channel, codec
from qhybrid.errors import InvalidInput
from qhybrid.hybrid_rules import DEFAULT_CHANNEL, NO_DEVICE, check_channel, checkpoint_file
from qhybrid.metrics import metric_record
from qhybrid.runtime import save_job_result

ENV_JOB_NAME = "QHYBRID_JOB_NAME"
ENV_JOB_ID = "QHYBRID_JOB_ID"
ENV_RESULTS_DIR = "QHYBRID_RESULTS_DIR"
ENV_CHECKPOINT_DIR = "QHYBRID_CHECKPOINT_DIR"
ENV_INPUT_DIR = "QHYBRID_INPUT_DIR"
ENV_HYPERPARAMETERS_FILE = "QHYBRID_HYPERPARAMETERS_FILE"
ENV_JOB_DEVICE = "QHYBRID_JOB_DEVICE"
ENV_METRICS_FILE = "QHYBRID_METRICS_FILE"       # local mode: metrics are appended here
ENV_LOCAL_MODE = "QHYBRID_LOCAL_MODE"           # set in a local-mode job: devices run locally
ENV_LOCAL_TASKS_FILE = "QHYBRID_LOCAL_TASKS_FILE"  # local mode: quantum tasks are listed here

CHECKPOINT_FORMATS = ("json", "pickle")


def braket_env(*, job_name: str, device: str, results_dir: str, checkpoint_dir: str,
               input_dir: str, hyperparameters_file: str, entry_point: str = "",
               script_uri: str = "", results_uri: str = "",
               reservation: str = "") -> dict[str, str]:
    """The `AMZN_BRAKET_*` variables Braket's job container sets, with the same meanings, so
    code written for Braket (and braket.jobs' own helpers) finds its directories and device.
    The device "ARN" is the qhybrid device name that `get_backend()` takes."""
    env = {
        "AMZN_BRAKET_JOB_NAME": job_name,
        "AMZN_BRAKET_DEVICE_ARN": device or NO_DEVICE,
        "AMZN_BRAKET_JOB_RESULTS_DIR": results_dir,
        "AMZN_BRAKET_CHECKPOINT_DIR": checkpoint_dir,
        "AMZN_BRAKET_INPUT_DIR": input_dir,
        "AMZN_BRAKET_HP_FILE": hyperparameters_file,
    }
    if entry_point:
        env["AMZN_BRAKET_SCRIPT_ENTRY_POINT"] = entry_point
    if script_uri:
        env["AMZN_BRAKET_SCRIPT_S3_URI"] = script_uri
        env["AMZN_BRAKET_SCRIPT_COMPRESSION_TYPE"] = "gzip"
    if results_uri:
        env["AMZN_BRAKET_JOB_RESULTS_S3_PATH"] = results_uri
        env["AMZN_BRAKET_TASK_RESULTS_S3_URI"] = results_uri.rsplit("/output", 1)[0] + "/tasks"
        if results_uri.startswith("s3://"):
            env["AMZN_BRAKET_OUT_S3_BUCKET"] = results_uri[len("s3://"):].split("/", 1)[0]
    if reservation:
        env["AMZN_BRAKET_RESERVATION_DEVICE_ARN"] = device or NO_DEVICE
        env["AMZN_BRAKET_RESERVATION_TIME_WINDOW_ARN"] = reservation
    return env

#: Metrics logged outside any job (a plain run of the function), for a look afterwards.
local_metrics: list[dict[str, Any]] = []


def get_job_name() -> str:
    """The running hybrid job's name ("" outside a job)."""
    return os.environ.get(ENV_JOB_NAME, "")


def get_results_dir() -> str:
    """Where the job writes what comes back in model.tar.gz; also its working directory."""
    return os.environ.get(ENV_RESULTS_DIR) or "."


def get_checkpoint_dir() -> str:
    """The local directory holding the job's checkpoints (and those it copied from a job)."""
    return os.environ.get(ENV_CHECKPOINT_DIR) or "."


def get_input_data_dir(channel: str = DEFAULT_CHANNEL) -> str:
    """The local directory holding input channel `channel` ("." outside a job)."""
    check_channel(channel, field="channel")
    base = os.environ.get(ENV_INPUT_DIR)
    return os.path.join(base, channel) if base else "."


def get_hyperparameters() -> dict[str, str]:
    """The job's hyperparameters: its function's bound arguments, as strings."""
    path = os.environ.get(ENV_HYPERPARAMETERS_FILE)
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        return dict(json.load(fh))


def log_metric(metric_name: str, value: float, timestamp: float | None = None,
               iteration_number: int | None = None) -> None:
    """Record a metric now: it is visible through the API before this returns.

    Inside a job a metric that cannot be recorded (NaN, inf, a bad name) never stops the
    job: it is dropped with a warning in the job's log. Outside a job it raises InvalidInput.
    """
    in_job = _channel.in_job() or bool(os.environ.get(ENV_METRICS_FILE))
    try:
        record = metric_record(metric_name, value, timestamp, iteration_number)
    except InvalidInput as exc:
        if not in_job:
            raise
        print(f"[qhybrid: metric {str(metric_name)[:60]!r}={value!r} not recorded: "
              f"{exc.detail}]", file=sys.stderr, flush=True)
        return
    if _channel.in_job():
        _channel.call("log_metric", **record)
        return
    path = os.environ.get(ENV_METRICS_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return
    local_metrics.append(record)
    parts = [f"timestamp={record['timestamp']}", f"{metric_name}={record['value']}"]
    if "iteration_number" in record:
        parts.append(f"iteration_number={record['iteration_number']}")
    print("Metrics - " + "; ".join(parts), file=sys.stdout)


def save_job_checkpoint(checkpoint_data: dict[str, Any], checkpoint_file_suffix: str = "",
                        data_format: str = "json") -> str:
    """Save `checkpoint_data` as `<job_name>[_<suffix>].json`; in storage when this returns.

    `data_format="json"` takes what the codec carries (JSON data, numpy arrays, circuits ...);
    "pickle" takes any picklable object, and only a job loads it back.
    """
    name = get_job_name()
    if not name:
        raise InvalidInput("save_job_checkpoint works inside a hybrid job (no job name is set)")
    if not isinstance(checkpoint_data, dict) or not checkpoint_data:
        raise InvalidInput("checkpoint_data is a non-empty dict", field="checkpoint_data")
    if data_format not in CHECKPOINT_FORMATS:
        raise InvalidInput(f"data_format is one of {', '.join(CHECKPOINT_FORMATS)}",
                           field="data_format")
    file = checkpoint_file(name, checkpoint_file_suffix)
    if data_format == "json":
        data: Any = codec.encode(checkpoint_data, path="checkpoint_data")
    else:
        import cloudpickle

        data = base64.b64encode(cloudpickle.dumps(checkpoint_data)).decode("ascii")
    content = json.dumps({"data_format": data_format, "data": data}, separators=(",", ":"),
                         allow_nan=False)
    directory = Path(get_checkpoint_dir())
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{file}.tmp"
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, directory / file)
    if _channel.in_job():
        _channel.call("save_checkpoint", file=file, content=content)
    return str(directory / file)


def load_job_checkpoint(job_name: str | None = None, checkpoint_file_suffix: str = "",
                        allow_pickle: bool = False) -> dict[str, Any]:
    """Load the checkpoint this job (or `job_name`, copied with copy_checkpoints_from_job)
    saved; FileNotFoundError when there is none. A checkpoint saved with data_format="pickle"
    is unpickled only with allow_pickle=True (only for checkpoints you trust)."""
    name = job_name or get_job_name()
    if not name:
        raise InvalidInput("name the job whose checkpoint to load (no job name is set)",
                           field="job_name")
    path = Path(get_checkpoint_dir()) / checkpoint_file(name, checkpoint_file_suffix)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path.name} in {path.parent}; a job sees its own "
                                "checkpoints and those of copy_checkpoints_from_job")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("data_format") == "pickle":
        if not allow_pickle:
            raise InvalidInput(f"checkpoint {path.name} is pickled; load_job_checkpoint(..., "
                               "allow_pickle=True) unpickles it (only for checkpoints you "
                               "trust)", field="allow_pickle")
        import cloudpickle

        return dict(cloudpickle.loads(base64.b64decode(saved["data"])))
    return dict(codec.decode(saved["data"], path="checkpoint"))


__all__ = [
    "braket_env",
    "save_job_result",
    "get_checkpoint_dir",
    "get_hyperparameters",
    "get_input_data_dir",
    "get_job_name",
    "get_results_dir",
    "load_job_checkpoint",
    "log_metric",
    "save_job_checkpoint",
]
