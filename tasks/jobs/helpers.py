"""The hybrid-job helpers for every job kind: metrics, checkpoints, hyperparameters, and the
environment (ours and Braket's `AMZN_BRAKET_*`) that `qhybrid.hybrid_env` reads.

A program job gets them as a hybrid job does: `log_metric` goes into Redis at once,
`save_job_checkpoint` is in storage before it returns, and `get_hyperparameters()` answers
the job's arguments as strings. `HelpersExtension` plugs them into a job's supervisor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qhybrid.errors import InvalidInput, PayloadTooLarge
from qhybrid.hybrid_env import (
    ENV_CHECKPOINT_DIR,
    ENV_HYPERPARAMETERS_FILE,
    ENV_INPUT_DIR,
    ENV_JOB_DEVICE,
    ENV_RESULTS_DIR,
    braket_env,
)
from qhybrid.hybrid_rules import check_checkpoint_file
from qhybrid.metrics import metric_record
from storage import keys
from tasks.core import defaults as d
from tasks.jobs import metrics
from tasks.supervisor.extension import JobExtension

if TYPE_CHECKING:
    from tasks.supervisor.supervisor import Supervisor


def supervisor_ops(sup: Supervisor) -> dict[str, Callable[..., Any]]:
    """`log_metric` and `save_checkpoint` for the job's child."""
    full = {"said": False}

    def log_metric(metric_name: Any, value: Any, timestamp: Any = None,
                   iteration_number: Any = None) -> bool:
        record = metric_record(metric_name, value, timestamp, iteration_number)
        if metrics.append(sup.registry, sup.job_id, record):
            return True
        if not full["said"]:
            full["said"] = True
            sup.registry.append_log(sup.job_id, f"\n[qhybrid: the job logged "
                                    f"{d.MAX_METRICS_PER_JOB} metrics; later ones are not "
                                    "recorded]\n")
        return False

    def save_checkpoint(file: Any, content: Any) -> bool:
        check_checkpoint_file(file)
        if not isinstance(content, str):
            raise InvalidInput("checkpoint content is JSON text", field="content")
        data = content.encode()
        if len(data) > d.MAX_CHECKPOINT_BYTES:
            raise PayloadTooLarge(f"a checkpoint may be at most {d.MAX_CHECKPOINT_BYTES} bytes; "
                                  "write bigger state to files in the checkpoint directory "
                                  "and checkpoint their names", field="checkpoint_data")
        sup.store.put_bytes(keys.job_checkpoints(sup.prefix) + file, data)
        return True

    return {"log_metric": log_metric, "save_checkpoint": save_checkpoint}


def hyperparameters_of_arguments(arguments_file: Path) -> dict[str, str]:
    """A program job's arguments as Braket-style hyperparameters: every value a string."""
    try:
        arguments = json.loads(arguments_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(arguments, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}


def job_env(sup: Supervisor, *, hyperparameters_file: Path, input_dir: Path,
            entry_point: str) -> dict[str, str]:
    """The helpers' variables, ours and Braket's, for the job's child."""
    input_dir.mkdir(parents=True, exist_ok=True)
    sup.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    root = sup.settings.storage_url.rstrip("/") + "/"
    script = root + keys.job_script(sup.prefix) if sup.job.get("kind") != "hybrid" else ""
    return {
        ENV_RESULTS_DIR: str(sup.results_dir),
        ENV_CHECKPOINT_DIR: str(sup.checkpoint_dir),
        ENV_INPUT_DIR: str(input_dir),
        ENV_HYPERPARAMETERS_FILE: str(hyperparameters_file),
        ENV_JOB_DEVICE: sup.job.get("device") or "",
        **braket_env(job_name=sup.job.get("job_name") or sup.job_id,
                     device=sup.job.get("device") or "", results_dir=str(sup.results_dir),
                     checkpoint_dir=str(sup.checkpoint_dir), input_dir=str(input_dir),
                     hyperparameters_file=str(hyperparameters_file), entry_point=entry_point,
                     script_uri=script, results_uri=root + sup.prefix + "/output",
                     reservation=sup.job.get("reservation_arn") or ""),
    }


def end(sup: Supervisor) -> None:
    """Keep the job's metrics with its outputs (the Redis copy expires later)."""
    try:
        metrics.store_and_expire(sup.registry, sup.store, sup.job_id, sup.prefix)
    except Exception as exc:
        sup.registry.append_log(sup.job_id, f"\n[qhybrid: storing metrics failed: {exc}]\n")


class HelpersExtension(JobExtension):
    """`log_metric`, checkpoints, hyperparameters and the Braket variables in every job."""

    def ops(self) -> dict[str, Callable[..., Any]]:
        return supervisor_ops(self.sup)

    def env(self) -> dict[str, str]:
        """A program job's: its arguments as hyperparameters, and the helpers' variables."""
        sup = self.sup
        hyperparameters = sup.job_dir / "hyperparameters.json"
        arguments = hyperparameters_of_arguments(sup.job_dir / "arguments.json")
        hyperparameters.write_text(json.dumps(arguments))
        return job_env(sup, hyperparameters_file=hyperparameters, input_dir=sup.job_dir / "input",
                       entry_point=sup.job["entrypoint"])

    def end(self) -> None:
        end(self.sup)


__all__ = ["HelpersExtension", "end", "hyperparameters_of_arguments", "job_env",
           "supervisor_ops"]
