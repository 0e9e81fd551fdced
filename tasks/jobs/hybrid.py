"""The supervisor of a hybrid job (`kind="hybrid"`): a shipped function instead of a script.

It lays out what the helpers in `qhybrid.hybrid_env` expect: the results directory as the
working directory, input channels under `input/<channel>/` (local inputs also at their
original relative paths), the hyperparameters file and the checkpoint directory. It serves
`log_metric` (into Redis at once) and `save_checkpoint` (in storage before the call returns),
and stores the function's return value as the job's result. The pickled function is only
ever loaded in the child: the supervisor moves its bytes and never unpickles them.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from qhybrid.errors import PayloadTooLarge
from qhybrid.hybrid_rules import RETURN_HINT
from qhybrid.local_job import link_inputs, unlink_inputs
from storage import keys
from tasks.core import defaults as d
from tasks.jobs import helpers as job_helpers
from tasks.jobs import metrics
from tasks.sandbox.child import ChildSpec
from tasks.sandbox.environment import THREAD_ENV, clean_env
from tasks.sandbox.isolation import open_job_file
from tasks.supervisor.supervisor import Supervisor

KIND = "hybrid"


class HybridSupervisor(Supervisor):
    """Runs one attempt of a hybrid job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_dir = self.job_dir / "input"
        self.checkpoint_dir = self.job_dir / "checkpoints"
        self.function_path = self.job_dir / "function.pkl"
        pickled = self.job.get("result_format") == "pickle"
        self.return_path = self.job_dir / ("return.pkl" if pickled else "return.json")
        self._links: list[Path] = []

    # --- the run ---------------------------------------------------------------------------
    def prepare(self) -> ChildSpec:
        """Fetch the function, inputs and checkpoints; heartbeats go on meanwhile."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(d.HEARTBEAT_INTERVAL_S):
                self.registry.heartbeat(self.job_id, self.worker)

        beater = threading.Thread(target=beat, name="prepare-heartbeat", daemon=True)
        beater.start()
        try:
            return self._prepare()
        finally:
            stop.set()

    def _prepare(self) -> ChildSpec:
        if int(self.job.get("attempt") or 1) > 1:
            metrics.clear(self.registry, self.job_id)
        self.store.download_file(keys.job_function(self.prefix), self.function_path)
        inputs = self.job.get("input_data") or {}
        for channel, info in inputs.items():
            self._fetch_channel(channel, info)
        self.checkpoint_dir.mkdir()
        self._copy_checkpoints()
        self.input_dir.mkdir(exist_ok=True)
        hyperparameters = self.job_dir / "hyperparameters.json"
        hyperparameters.write_text(json.dumps(self.job.get("hyperparameters") or {}))
        self._links = link_inputs(self.results_dir, self.input_dir, inputs)
        threads = str(self.rc.threads())
        env = clean_env({
            "QHYBRID_JOB_ID": self.job_id,
            "QHYBRID_JOB_NAME": self.job.get("job_name") or "",
            "QHYBRID_SUPERVISOR_SOCKET": str(self.socket_path),
            **job_helpers.job_env(self, hyperparameters_file=hyperparameters,
                                  input_dir=self.input_dir,
                                  entry_point=self.job.get("entry_point") or ""),
            "PYTHONUNBUFFERED": "1",
            "QISKIT_PARALLEL": "FALSE",
            **{k: threads for k in THREAD_ENV},
        })
        return ChildSpec(cwd=str(self.results_dir), argv=[self.job.get("job_name") or KIND],
                         env=env, log_path=str(self.log_path), error_path=str(self.error_path),
                         cpus=self.cpus, mem_bytes=self.rc.mem,
                         tail_lines=d.ERROR_TRACEBACK_LINES, call_path=str(self.function_path),
                         return_path=str(self.return_path),
                         return_format=self.job.get("result_format") or "json")

    def _fetch_channel(self, channel: str, info: dict[str, Any]) -> None:
        """Download every object under the channel's prefix into input/<channel>/."""
        prefix, base = info["key"], info["base"]
        dest = self.input_dir / channel
        dest.mkdir(parents=True, exist_ok=True)
        for obj in self.store.list(prefix):
            rel = obj.key[len(base):]
            self.store.download_file(obj.key, dest.joinpath(*rel.split("/")))

    def _copy_checkpoints(self) -> None:
        """copy_checkpoints_from_job: the old job's checkpoints, in storage and on disk."""
        old = self.job.get("checkpoints_from")
        if not old:
            return
        source = keys.job_checkpoints(old)
        target = keys.job_checkpoints(self.prefix)
        for obj in self.store.list(source):
            rel = obj.key[len(source):]
            self.store.copy(obj.key, target + rel)
            self.store.download_file(obj.key, self.checkpoint_dir.joinpath(*rel.split("/")))

    def finish(self, status: str, error: str) -> None:
        """Store the return value and the metrics, then what every job stores."""
        unlink_inputs(self._links)
        try:
            if status == d.DONE:
                self._store_return_value()
        except Exception as exc:
            status, error = d.ERROR, f"storing the return value failed: {exc}"
        if status == d.ERROR and error.startswith("InvalidInput: return value"):
            first, _, rest = error.partition("\n")
            error = f"{first}. The function's {RETURN_HINT}\n{rest}"
        super().finish(status, error)

    def _store_return_value(self) -> None:
        returned = open_job_file(self.return_path)     # never through a link the job made
        if returned is None:
            return
        with returned:
            size = os.fstat(returned.fileno()).st_size
            if size > d.MAX_RESULT_BYTES:
                raise PayloadTooLarge(f"the return value takes {size} bytes, more than "
                                      f"{d.MAX_RESULT_BYTES}; write large outputs to files in "
                                      "the results directory (they come back in model.tar.gz)")
            pickled = self.job.get("result_format") == "pickle"
            key = keys.job_pickled_result(self.prefix) if pickled else keys.job_result(self.prefix)
            self.store.put_stream(key, returned)
        self.registry.set_fields(self.job_id, has_result=True)


def supervisor_class(job: dict[str, Any]) -> type[Supervisor]:
    """The supervisor for a job record's kind."""
    return HybridSupervisor if job.get("kind") == KIND else Supervisor


__all__ = ["HybridSupervisor", "KIND", "supervisor_class"]
