"""The HTTP client: upload programs, run them, follow and fetch jobs."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from qhybrid import _channel, codec, config, http_devices
from qhybrid.errors import (
    InvalidInput,
    JobCanceled,
    JobFailed,
    QhybridError,
    ServiceUnreachable,
    Timeout,
    error_from_problem,
)
from qhybrid.files import FilesMixin
from qhybrid.runtime import SubStatus

if TYPE_CHECKING:
    from qhybrid.backend import QhybridBackend

TERMINAL = frozenset({"DONE", "ERROR", "CANCELED"})
WAIT_STEP_S = 30.0


class Client(FilesMixin):
    """A connection to a qhybrid service (`Client()` finds the local one by itself)."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 60.0) -> None:
        # Inside a job, Client() acts as the job's user through its supervisor (file calls).
        self.in_job = url is None and token is None and _channel.in_job()
        self.url, self.token = config.resolve(url, token)
        self.timeout = timeout
        self.session = requests.Session()
        # Proxies and the CA bundle from the environment, read once for the service's URL
        # rather than on every request (a quantum task is two requests).
        found = self.session.merge_environment_settings(self.url, {}, None, None, None)
        self.session.trust_env = False
        self.session.proxies.update(found["proxies"])
        self.session.verify = found["verify"]
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    def __repr__(self) -> str:
        return f"<qhybrid.Client {self.url}>"

    # --- transport -------------------------------------------------------------------------
    def request(self, method: str, path: str, *, timeout: float | None = None,
                ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> requests.Response:
        try:
            resp = self.session.request(method, f"{self.url}/api/v1{path}",
                                        timeout=timeout or self.timeout, **kwargs)
        except requests.ConnectionError:
            raise ServiceUnreachable(unreachable_message(self.url)) from None
        if resp.status_code not in ok:
            raise _error(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- programs --------------------------------------------------------------------------
    def upload(self, program: Program) -> Program:
        """Pack the program's working_dir and upload it (a new upload replaces the old)."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "source.tar.gz"
            _pack(Path(program.working_dir), archive)
            with open(archive, "rb") as fh:
                data = {"title": program.title, "entrypoint": program.entrypoint}
                if program.resources is not None:
                    data["resources"] = codec.dumps(program.resources)
                if program.device:
                    data["device"] = program.device
                if program.dependencies:
                    data["dependencies"] = codec.dumps(list(program.dependencies))
                if program.env_vars:
                    data["env_vars"] = codec.dumps(dict(program.env_vars))
                body = self._json("POST", "/programs", data=data,
                                  files={"source": ("source.tar.gz", fh, "application/gzip")})
        return Program.from_api(body, self)

    def programs(self) -> list[Program]:
        return [Program.from_api(p, self) for p in self._json("GET", "/programs")["programs"]]

    def program(self, title: str) -> Program:
        return Program.from_api(self._json("GET", f"/programs/{title}"), self)

    # Qiskit Serverless' names for the same calls
    def functions(self) -> list[Program]:
        return self.programs()

    def function(self, title: str) -> Program:
        return self.program(title)

    def get(self, title: str) -> Program:
        return self.program(title)

    def get_job_by_id(self, job_id: str) -> Job:
        return self.job(job_id)

    def run(self, title: str, arguments: dict[str, Any] | None = None, *,
            resources: str | dict[str, Any] | None = None, max_runtime: int | None = None,
            device: str | None = None, reservation_arn: str | None = None) -> Job:
        """Run an uploaded program with `arguments` (any values the codec can carry).

        `reservation_arn`: a device reservation of yours (`qhybrid.reservations`): the job
        waits until its window opens and holds the reservation's device in it."""
        body: dict[str, Any] = {"arguments": codec.encode(arguments or {})}
        if reservation_arn is not None:
            body["reservation_arn"] = reservation_arn
        if resources is not None:
            body["resources"] = resources
        if max_runtime is not None:
            body["max_runtime"] = max_runtime
        if device is not None:
            body["device"] = device
        return Job(self._json("POST", f"/programs/{title}/run", json=body), self)

    # --- jobs ------------------------------------------------------------------------------
    def jobs(self, status: str | None = None, program: str | Program | None = None,
             created_after: float | str | None = None, limit: int = 10,
             offset: int = 0, function: str | Program | None = None) -> list[Job]:
        """The newest jobs first; `status` in our names or Qiskit Serverless' (SUCCEEDED ...);
        `function` is Qiskit Serverless' name for `program`."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        program = program or function
        if program:
            params["program"] = program.title if isinstance(program, Program) else program
        if created_after is not None:
            params["created_after"] = created_after
        return [Job(j, self) for j in self._json("GET", "/jobs", params=params)["jobs"]]

    def job(self, job_id: str) -> Job:
        return Job(self._json("GET", f"/jobs/{job_id}"), self)

    # --- devices ---------------------------------------------------------------------------
    def backends(self) -> list[QhybridBackend]:
        """Every device as a Qiskit BackendV2 (`.device["status"]`: online, queue depth ...)."""
        return http_devices.backends(self)

    def backend(self, name: str) -> QhybridBackend:
        """The named device as a Qiskit BackendV2: run() sends a quantum task to its queue."""
        return http_devices.backend(self, name)


@dataclass
class Program:
    """A program: an entrypoint in a working directory (the Qiskit Serverless model)."""

    title: str
    entrypoint: str
    working_dir: str | os.PathLike[str] = "./"
    resources: str | dict[str, Any] | None = None
    device: str | None = None
    dependencies: list[str] | None = None     # installed for its jobs (pip requirement strings)
    env_vars: dict[str, str] | None = None    # set in its jobs' environment
    created: str | None = None
    _client: Client | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_api(cls, body: dict[str, Any], client: Client) -> Program:
        return cls(title=body["title"], entrypoint=body["entrypoint"], working_dir="",
                   resources=body.get("resources"), device=body.get("device"),
                   dependencies=body.get("dependencies"), created=body.get("created"),
                   _client=client)

    def run(self, **arguments: Any) -> Job:
        if self._client is None:
            raise QhybridError("upload the program with Client.upload() before running it")
        return self._client.run(self.title, arguments)

    def jobs(self, **filters: Any) -> list[Job]:
        """This program's jobs (the filters of `Client.jobs`)."""
        if self._client is None:
            raise QhybridError("upload the program with Client.upload() first")
        return self._client.jobs(program=self.title, **filters)


class Job(SubStatus):
    """A handle on a job: status, logs, result, cancel; `Job.MAPPING` ... name sub-statuses."""

    def __init__(self, body: dict[str, Any], client: Client) -> None:
        self._client = client
        self._body = body
        self.job_id: str = body["job_id"]

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self._body.get('status')}>"

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._body)

    def refresh(self) -> dict[str, Any]:
        self._body = self._client._json("GET", f"/jobs/{self.job_id}")
        return self._body

    def status(self) -> str:
        """`QUEUED`, `INITIALIZING`, `RUNNING`, `RUNNING: MAPPING` ..., `DONE`, `ERROR`, `CANCELED`."""
        return str(self.refresh()["status"])

    def in_terminal_state(self) -> bool:
        return self.refresh()["state"] in TERMINAL

    def events(self) -> list[dict[str, Any]]:
        return list(self.refresh()["events"])

    def error_message(self) -> str:
        return str(self.refresh().get("error") or "")

    def queue_position(self) -> int | None:
        """Jobs ahead of this one for its device (1: next); None unless it waits for one."""
        position = self.refresh().get("queue_position")
        return None if position is None else int(position)

    def quantum_tasks(self) -> list[dict[str, Any]]:
        """The quantum tasks the job sent (id, device, status, priority, times), oldest first."""
        body = self._client._json("GET", f"/jobs/{self.job_id}/quantum-tasks")
        return list(body["quantum_tasks"])

    def cancel(self) -> bool:
        body = self._client._json("POST", f"/jobs/{self.job_id}/cancel")
        self._body = body
        return body["state"] in ("CANCELED", "CANCELING")

    def stop(self) -> bool:
        """Qiskit Serverless' older name for `cancel`."""
        return self.cancel()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends (server-side long-poll) or `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = WAIT_STEP_S if deadline is None else max(0.0, min(WAIT_STEP_S, deadline - time.monotonic()))
            self._body = self._client._json("GET", f"/jobs/{self.job_id}/wait",
                                            params={"timeout": step}, timeout=step + 30)
            if self._body["state"] in TERMINAL:
                return self._body
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"job {self.job_id} still {self._body['status']} after {timeout} s")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return what it saved; raises JobFailed if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = WAIT_STEP_S if deadline is None else max(0.0, min(WAIT_STEP_S, deadline - time.monotonic()))
            resp = self._client.request("GET", f"/jobs/{self.job_id}/result", ok=(200, 202),
                                        params={"wait": step}, timeout=step + 30)
            if resp.status_code == 200:
                return codec.decode(resp.json()["result"])
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"job {self.job_id} has not finished after {timeout} s")

    def logs(self, offset: int = 0) -> str:
        return str(self._client._json("GET", f"/jobs/{self.job_id}/logs",
                                      params={"offset": offset})["logs"])

    def follow_logs(self, poll_s: float = 0.5) -> Iterator[str]:
        """Yield log text as the job writes it, until the job ends."""
        offset = 0
        while True:
            body = self._client._json("GET", f"/jobs/{self.job_id}/logs",
                                      params={"offset": offset, "wait": poll_s})
            if body["logs"]:
                yield body["logs"]
            offset = body["next_offset"]
            if body["complete"]:
                return

    def tasks(self, status: str | None = None, limit: int = 1000,
              offset: int = 0) -> list[dict[str, Any]]:
        """The job's distributed tasks in submission order: status, class, worker, times."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        body = self._client._json("GET", f"/jobs/{self.job_id}/tasks", params=params)
        return list(body["tasks"])

    def resource_usage(self) -> dict[str, dict[str, float]]:
        """CPU (and QPU) seconds per stage: `{"RUNNING: MAPPING": {"CPU_TIME": ...}}`."""
        return dict(self.refresh().get("resource_usage") or {})

    def download_result(self, path: str | os.PathLike[str]) -> Path:
        """Save the job's `model.tar.gz` to `path`."""
        resp = self._client.request("GET", f"/jobs/{self.job_id}/model", stream=True)
        target = Path(path)
        with open(target, "wb") as fh:
            for chunk in resp.iter_content(1024 * 1024):
                fh.write(chunk)
        return target


def unreachable_message(url: str) -> str:
    return f"no qhybrid service at {url} — start one with `qhybrid up`"


def _pack(working_dir: Path, archive: Path) -> None:
    if not working_dir.is_dir():
        raise InvalidInput(f"working_dir {str(working_dir)!r} is not a directory", field="working_dir")
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(working_dir.rglob("*")):
            if "__pycache__" in entry.parts or entry.is_symlink():
                continue
            tar.add(entry, arcname=str(entry.relative_to(working_dir)), recursive=False)


def _error(resp: requests.Response) -> QhybridError:
    try:
        problem = resp.json()
    except ValueError:
        problem = {"detail": resp.text[:500] or resp.reason}
    if not isinstance(problem, dict):
        problem = {"detail": str(problem)}
    err = error_from_problem(problem, resp.status_code)
    return err


__all__ = ["Client", "Program", "Job", "JobFailed", "JobCanceled"]
