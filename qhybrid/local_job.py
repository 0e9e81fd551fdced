"""Local mode: a hybrid job in a local child process, with no server, Redis or Docker.

`./<job_name>/` holds what the service would keep in storage::

    job.json            what to run: the job's name, device, channels, result format
    function.pkl        the cloudpickled (function, args, kwargs)
    hyperparameters.json
    input/<channel>/    copies of the local input data
    checkpoints/        checkpoints (also those copied from copy_checkpoints_from_job)
    results/            the working directory, packed into model.tar.gz at the end
    log.txt  metrics.jsonl  result.json (or result.pkl)  model.tar.gz  status.json

The child runs `qhybrid.local_job.run(<dir>)` with the caller's interpreter and import path, so
the function finds the same packages it would find in the caller. A device named in the job
runs in the child, on qiskit-aer with the device's target and noise (the same registry the
service's device workers use); an unknown name is refused at creation, as the service does.
Its tasks get no priority. `max_runtime` is enforced by the child itself, so a job stops on
time even when nobody holds its handle.

Longer than 500 lines: the parent (the handle) and the child (the runner) of a local job
share its directory layout, which is defined once here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from qhybrid import codec
from qhybrid.errors import InvalidInput, JobCanceled, JobFailed, Timeout
from qhybrid.hybrid_env import (
    ENV_CHECKPOINT_DIR,
    ENV_HYPERPARAMETERS_FILE,
    ENV_INPUT_DIR,
    ENV_JOB_DEVICE,
    ENV_JOB_ID,
    ENV_JOB_NAME,
    ENV_LOCAL_MODE,
    ENV_LOCAL_TASKS_FILE,
    ENV_METRICS_FILE,
    ENV_RESULTS_DIR,
    braket_env,
)
from qhybrid.hybrid_rules import (
    LOCAL_ARN_PREFIX,
    RETURN_HINT,
    QueuePosition,
    braket_metadata,
    braket_state,
)
from qhybrid.metrics import pivot
from qhybrid.processes import pid_alive

TERMINAL = frozenset({"DONE", "ERROR", "CANCELED"})
POLL_S = 0.05
ERROR_TAIL_LINES = 15


# --- archives -------------------------------------------------------------------------------
def pack_results(results: Path, archive: Path) -> None:
    """model.tar.gz of the results directory (links are stored as links, never followed)."""
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for entry in sorted(results.iterdir()):
            tar.add(entry, arcname=entry.name,
                    filter=lambda info: None if "__pycache__" in info.name.split("/") else info)
    os.replace(tmp, archive)


def extract_model(archive: Path, dest: Path) -> Path:
    """Unpack model.tar.gz into `dest` with tarfile's data filter (no escapes, no devices)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _copy_input(source: Path, dest: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=False, dirs_exist_ok=True)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / source.name)


# --- the handle -----------------------------------------------------------------------------
class LocalHybridJob:
    """A hybrid job running (or run) locally: the same methods as the service's handle."""

    def __init__(self, directory: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.directory = Path(directory).resolve()
        self._proc = proc
        if proc is not None:
            # reap the child when it ends, whether or not anyone waits on this handle
            threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        self._spec: dict[str, Any] = json.loads((self.directory / "job.json").read_text())
        self.name: str = self._spec["job_name"]
        self.job_id: str = self._spec["job_id"]

    def __repr__(self) -> str:
        return f"<LocalHybridJob {self.name} {self.status()}>"

    @property
    def arn(self) -> str:
        """`local:job/<job_name>`, as Braket's local jobs; copy_checkpoints_from_job takes it."""
        return LOCAL_ARN_PREFIX + self.name

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> LocalHybridJob:
        """The handle of a local job from its directory (`./<job_name>/`)."""
        return cls(Path(directory))

    @classmethod
    def create(cls, *, job_name: str, payload: bytes, hyperparameters: dict[str, str],
               channels: dict[str, str], device: str | None, result_format: str,
               copy_checkpoints_from_job: str | None, base: Path | None = None,
               max_runtime: int | None = None, tags: dict[str, str] | None = None,
               entry_point: str = "") -> LocalHybridJob:
        """Lay out `./<job_name>/` and start the child."""
        base = Path.cwd() if base is None else base
        directory = base / job_name
        if directory.exists():
            raise InvalidInput(f"{directory} exists; choose another job_name or remove it",
                               field="job_name")
        if device:
            _check_local_device(device)
        inputs: dict[str, dict[str, Any]] = {}
        for channel, source in channels.items():
            if "://" in source:
                raise InvalidInput(f"local mode reads local files only; {source!r} is a storage "
                                   "URI (download it first, or run on the service)",
                                   field=f"input_data.{channel}")
            path = Path(source)
            if not path.exists():
                raise InvalidInput(f"input {source!r} does not exist", field=f"input_data.{channel}")
            inputs[channel] = {"path": str(path.resolve()), "is_dir": path.is_dir(),
                               "link": _link_of(source)}
        old_checkpoints = None
        if copy_checkpoints_from_job:
            old_name = copy_checkpoints_from_job.removeprefix(LOCAL_ARN_PREFIX)
            if not (base / old_name).is_dir() and old_name.startswith("local-"):
                old_name = old_name[len("local-"):]          # a local job's id
            old_checkpoints = base / old_name / "checkpoints"
            if not old_checkpoints.is_dir():
                raise InvalidInput(f"no local job {copy_checkpoints_from_job!r} with checkpoints "
                                   f"in {base}", field="copy_checkpoints_from_job")
        directory.mkdir(parents=True)
        for sub in ("input", "checkpoints", "results"):
            (directory / sub).mkdir()
        for channel, info in inputs.items():
            _copy_input(Path(info["path"]), directory / "input" / channel)
        if old_checkpoints is not None:
            shutil.copytree(old_checkpoints, directory / "checkpoints", dirs_exist_ok=True)
        (directory / "function.pkl").write_bytes(payload)
        (directory / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        (directory / "metrics.jsonl").touch()
        (directory / "log.txt").touch()
        (directory / "quantum_tasks.jsonl").touch()
        spec = {"job_name": job_name, "job_id": f"local-{job_name}", "device": device or "",
                "result_format": result_format, "created": time.time(),
                "max_runtime": max_runtime, "tags": tags or {}, "entry_point": entry_point,
                "hyperparameters": hyperparameters,
                "copy_checkpoints_from_job": copy_checkpoints_from_job,
                "input_data": {c: {"is_dir": i["is_dir"], "link": i["link"],
                                   "name": Path(i["path"]).name} for c, i in inputs.items()}}
        (directory / "job.json").write_text(json.dumps(spec))
        return cls(directory, cls._start(directory, spec))

    @staticmethod
    def _start(directory: Path, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update({
            ENV_JOB_NAME: spec["job_name"], ENV_JOB_ID: spec["job_id"],
            ENV_RESULTS_DIR: str(directory / "results"),
            ENV_CHECKPOINT_DIR: str(directory / "checkpoints"),
            ENV_INPUT_DIR: str(directory / "input"),
            ENV_HYPERPARAMETERS_FILE: str(directory / "hyperparameters.json"),
            ENV_METRICS_FILE: str(directory / "metrics.jsonl"),
            ENV_JOB_DEVICE: spec["device"],
            ENV_LOCAL_MODE: "1",
            ENV_LOCAL_TASKS_FILE: str(directory / "quantum_tasks.jsonl"),
            **braket_env(job_name=spec["job_name"], device=spec["device"],
                         results_dir=str(directory / "results"),
                         checkpoint_dir=str(directory / "checkpoints"),
                         input_dir=str(directory / "input"),
                         hyperparameters_file=str(directory / "hyperparameters.json"),
                         entry_point=spec.get("entry_point") or ""),
            "PYTHONUNBUFFERED": "1",
            # the caller's import path: a function pickled by reference finds its module
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        })
        env.pop("QHYBRID_SUPERVISOR_SOCKET", None)
        with open(directory / "log.txt", "ab") as log:
            # run through -c: `-m qhybrid.local_job` would run a second copy of this module
            # (the package imports it), and runpy warns about that in every log
            return subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)],
                                    cwd=directory / "results", env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    # --- state ---------------------------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        path = self.directory / "status.json"
        try:
            status: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {"state": "QUEUED"}
        if status["state"] in TERMINAL:
            return status
        if self._proc is None:
            pid = status.get("pid")
            if pid and not pid_alive(int(pid)):
                status = self._read_final(-signal.SIGKILL)
            return status
        code = self._proc.poll() if self._proc.returncode is None else self._proc.returncode
        if code is not None:
            status = self._read_final(code)
        return status

    def _read_final(self, code: int) -> dict[str, Any]:
        path = self.directory / "status.json"
        try:
            status: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("state") not in TERMINAL:
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with code {code}")
            status = {"state": "ERROR", "error": f"the local job's process {how}",
                      "ended": time.time()}
            _write_json(path, status)
        return status

    def status(self) -> str:
        """Ours: QUEUED, RUNNING, DONE, ERROR or CANCELED."""
        return str(self._status()["state"])

    def state(self, use_cached_value: bool = False) -> str:
        """Braket's: QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED."""
        return braket_state(self.status())

    def queue_position(self) -> QueuePosition:
        """Local jobs start at once: never in a queue."""
        return QueuePosition(None, f"Job is in {self.state()} status. A local job is never "
                             "queued.")

    def hyperparameters(self) -> dict[str, str]:
        return dict(json.loads((self.directory / "hyperparameters.json").read_text()))

    def checkpoints(self) -> list[str]:
        """Names of the checkpoint files in the job's checkpoint directory."""
        return sorted(p.name for p in (self.directory / "checkpoints").iterdir()
                      if p.is_file() and not p.name.startswith("."))

    def quantum_tasks(self) -> list[dict[str, Any]]:
        """The quantum tasks the job ran (locally), oldest first."""
        path = self.directory / "quantum_tasks.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    get_tasks = quantum_tasks

    def metadata(self, use_cached_value: bool = False) -> dict[str, Any]:
        """What the service's metadata() has, for a local job."""
        status = self._status()
        body = {"job_id": self.job_id, "job_name": self.name, "kind": "hybrid",
                "status": status["state"], "state": status["state"],
                "device": self._spec.get("device") or None,
                "hyperparameters": self.hyperparameters(),
                "tags": self._spec.get("tags") or {},
                "max_runtime": self._spec.get("max_runtime"),
                "entry_point": self._spec.get("entry_point") or None,
                "created": _iso(self._spec.get("created")), "started": _iso(status.get("started")),
                "ended": _iso(status.get("ended")), "error": status.get("error") or None,
                "local": True, "directory": str(self.directory)}
        return braket_metadata(body, self.arn)

    def error_message(self) -> str:
        return str(self._status().get("error") or "")

    def wait(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (state := self.status()) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout(f"local job {self.name} still {state} after {timeout} s")
            if self._proc is not None:
                try:
                    self._proc.wait(POLL_S if deadline is None
                                    else max(0.0, min(1.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(POLL_S)
        return state

    def cancel(self) -> bool:
        """Kill the child and everything it started."""
        if self.status() in TERMINAL:
            return self.status() == "CANCELED"
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        _write_json(self.directory / "status.json", {"state": "CANCELED", "ended": time.time()})
        return True

    # --- outputs -------------------------------------------------------------------------------
    def logs(self, wait: bool = False, poll_interval_seconds: float = POLL_S,
             quiet: bool = False, logger: logging.Logger | None = None) -> str:
        """The log; with wait=True it is shown as the job writes it (printed, or given to
        `logger`, or neither when quiet), until the job ends."""
        path = self.directory / "log.txt"
        if not wait:
            return path.read_text(encoding="utf-8", errors="replace")
        out = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            while True:
                done = self.status() in TERMINAL
                chunk = fh.read()
                if chunk:
                    out.append(chunk)
                    show_log(chunk, quiet, logger)
                elif done:
                    return "".join(out)
                else:
                    time.sleep(min(poll_interval_seconds, 1.0))

    def result(self, timeout: float | None = None, allow_pickle: bool = False, *,
               poll_timeout_seconds: float | None = None,
               poll_interval_seconds: float | None = None) -> Any:
        """The function's return value; JobFailed with the error if it raised."""
        state = self.wait(poll_timeout_seconds if timeout is None else timeout)
        if state == "ERROR":
            raise JobFailed(self.error_message() or "the job failed", job_id=self.job_id)
        if state == "CANCELED":
            raise JobCanceled(f"local job {self.name} was canceled", job_id=self.job_id)
        pickled = self.directory / "result.pkl"
        if pickled.exists():
            if not allow_pickle:
                raise InvalidInput("this job's result is pickled; result(allow_pickle=True) "
                                   "unpickles it (only do that for results you trust)")
            import cloudpickle

            return cloudpickle.loads(pickled.read_bytes())
        return codec.loads((self.directory / "result.json").read_text())

    def metrics(self, metric_type: str = "timestamp", statistic: str = "max"
                ) -> dict[str, list[Any]]:
        """Columnar metrics (see qhybrid.metrics.pivot)."""
        lines = (self.directory / "metrics.jsonl").read_text().splitlines()
        return pivot((json.loads(line) for line in lines if line.strip()), metric_type, statistic)

    def download_result(self, extract_to: str | os.PathLike[str] | None = None,
                        timeout: float | None = None, *,
                        poll_timeout_seconds: float | None = None,
                        poll_interval_seconds: float | None = None) -> Path:
        """Wait for the job, then unpack model.tar.gz into `<extract_to>/<job_name>/`."""
        self.wait(poll_timeout_seconds if timeout is None else timeout)
        archive = self.directory / "model.tar.gz"
        if not archive.exists():
            raise InvalidInput(f"local job {self.name} left no model.tar.gz")
        return extract_model(archive, Path(extract_to or ".") / self.name)


def show_log(chunk: str, quiet: bool, logger: logging.Logger | None) -> None:
    """A piece of a followed log: to `logger` line by line, else to stdout (unless quiet)."""
    if quiet:
        return
    if logger is not None:
        for line in chunk.splitlines():
            logger.info(line)
        return
    sys.stdout.write(chunk)
    sys.stdout.flush()


_CHILD = "import sys; from qhybrid.local_job import run; sys.exit(run(sys.argv[1]))"


def _check_local_device(device: str) -> None:
    """Refuse a device the local registry (the service's own list of devices) lacks."""
    from qhybrid.devices import local_simulators

    names = local_simulators().names()
    if device not in names:
        raise InvalidInput(f"unknown device {device!r}; the devices are {', '.join(names)}",
                           field="device")


def _iso(stamp: Any) -> str | None:
    if not stamp:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(stamp), UTC).isoformat().replace("+00:00", "Z")


def _link_of(source: str) -> str:
    """The relative path where the job also finds a local input ('' for absolute ones)."""
    p = Path(source)
    if p.is_absolute() or ".." in p.parts:
        return ""
    return p.as_posix().rstrip("/") if p.parts else ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# --- the child ------------------------------------------------------------------------------
def link_inputs(results: Path, input_dir: Path, inputs: dict[str, dict[str, Any]]) -> list[Path]:
    """Make each local input reachable at its original relative path in the working directory.

    Returns what was made (links, then the directories made for them), to be removed before
    the results are packed.
    """
    made: list[Path] = []
    dirs: list[Path] = []
    for channel, info in inputs.items():
        link = info.get("link")
        if not link:
            continue
        target = input_dir / channel
        if not info.get("is_dir"):
            target = target / info["name"]
        where = results / link
        if where.exists() or where.is_symlink() or not target.exists():
            continue
        parent = where.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            dirs.append(directory)
        where.symlink_to(target, target_is_directory=target.is_dir())
        made.append(where)
    return made + list(reversed(dirs))


def unlink_inputs(made: list[Path]) -> None:
    for path in made:
        try:
            if path.is_symlink():
                path.unlink()
            elif path.is_dir():
                path.rmdir()          # only if the job left it empty
        except OSError:
            pass


def format_error(exc: BaseException) -> str:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return f"{type(exc).__name__}: {exc}\n\n" + "\n".join(lines[-ERROR_TAIL_LINES:])


def _watchdog(directory: Path, limit: int, started: float) -> None:
    """Stop the job at its maximum run time: keep the results, record ERROR, kill the group."""
    time.sleep(max(0.0, started + limit - time.time()))
    status_path = directory / "status.json"
    try:
        pack_results(directory / "results", directory / "model.tar.gz")
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    _write_json(status_path, {"state": "ERROR", "started": started, "ended": time.time(),
                              "error": f"the job exceeded its maximum run time of {limit} s"})
    os.killpg(os.getpgid(0), signal.SIGKILL)


def run(directory: Path | str) -> int:
    """Run the job in this process (the child): what the supervisor does, without a server."""
    directory = Path(directory)
    spec = json.loads((directory / "job.json").read_text())
    status_path = directory / "status.json"
    started = time.time()
    _write_json(status_path, {"state": "RUNNING", "pid": os.getpid(), "started": started})
    if spec.get("max_runtime"):
        threading.Thread(target=_watchdog, args=(directory, int(spec["max_runtime"]), started),
                         name="max-runtime", daemon=True).start()
    results = directory / "results"
    os.chdir(results)
    made = link_inputs(results, directory / "input", spec["input_data"])
    state, error = "DONE", ""
    try:
        import cloudpickle

        with open(directory / "function.pkl", "rb") as fh:
            fn, args, kwargs = cloudpickle.load(fh)
        from qhybrid.runtime import final_result

        value = final_result(fn(*args, **kwargs))
        if spec["result_format"] == "pickle":
            (directory / "result.pkl").write_bytes(cloudpickle.dumps(value))
        else:
            try:
                text = codec.dumps(value, path="return value")
            except InvalidInput as exc:
                raise InvalidInput(f"{exc.detail}. The function's {RETURN_HINT}") from None
            (directory / "result.json").write_text(text)
    except BaseException as exc:  # the job's error, as the service reports it
        traceback.print_exc()
        state, error = "ERROR", format_error(exc)
    finally:
        unlink_inputs(made)
        try:
            pack_results(results, directory / "model.tar.gz")
        except Exception as exc:
            if state == "DONE":
                state, error = "ERROR", f"packing the results failed: {exc}"
        sys.stdout.flush()
        sys.stderr.flush()
    final = {"state": state, "started": started, "ended": time.time()}
    if error:
        final["error"] = error
    _write_json(status_path, final)
    return 0 if state == "DONE" else 1


