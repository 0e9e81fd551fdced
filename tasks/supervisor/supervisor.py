"""The supervisor: runs one job's user code in a child process and keeps its record.

It holds what the child must not (Redis, storage credentials), serves the child's calls
over the local channel, streams its output into the live log, enforces cancel and the
maximum run time, and at the end stores logs, results and `model.tar.gz`.
"""

from __future__ import annotations

import codecs
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from qhybrid.errors import InvalidInput, NotFound, PayloadTooLarge
from qhybrid.resources import ResourceClass
from storage import keys
from storage.store import ObjectStore
from storage.tarsafe import pack_dir, safe_extract
from tasks.core import defaults as d
from tasks.core.channel import ChannelServer
from tasks.core.registry import Registry
from tasks.core.settings import Settings
from tasks.core.usage import UsageMeter
from tasks.sandbox import box as sandbox
from tasks.sandbox import dependencies
from tasks.sandbox.child import ChildSpec
from tasks.sandbox.environment import THREAD_ENV, clean_env, warm_parent
from tasks.sandbox.isolation import hand_over, job_account, open_job_file
from tasks.sandbox.ready import Place
from tasks.supervisor.extension import JobExtension, merge_ops

INTERRUPTED = "INTERRUPTED"     # not a job status: the worker stopped under the job


class Supervisor:
    """Runs one job attempt from INITIALIZING to a terminal status."""

    def __init__(self, job: dict[str, Any], registry: Registry, store: ObjectStore,
                 settings: Settings, resource_class: ResourceClass, worker: str,
                 cpus: list[int] | None = None, stopping: threading.Event | None = None,
                 requeue: Callable[[str], object] | None = None,
                 extensions: Sequence[type[JobExtension]] = (),
                 place: Place | None = None,
                 tidy: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.job = job
        self.tidy = tidy        # runs the removals after the job's end, off its slot
        # Set when the worker shuts down: the child is stopped and the job handed to `requeue`
        # (run again elsewhere) instead of ending in ERROR.
        self.stopping = stopping
        self.requeue = requeue
        self._beating_done = threading.Event()   # set when the job is no longer ours
        self.job_id: str = job["id"]
        self.registry = registry
        self.store = store
        self.settings = settings
        self.rc = resource_class
        self.worker = worker
        self.cpus = cpus or []
        self.prefix: str = job["prefix"]
        # A place made ready before the job came (tasks.sandbox.ready): its job directory,
        # socket directory and sandbox, its process waiting; else they are made here.
        self.place = place
        self.attempt_dir = settings.work_dir / f"{self.job_id}-{job.get('attempt') or 1}"
        self.job_dir = place.job_dir if place else self.attempt_dir
        self.results_dir = self.job_dir / "results"
        self.data_dir = self.job_dir / "data"      # the user's files (DATA_PATH), if asked for
        self.log_path = self.job_dir / "output.log"
        self.arguments_file = self.job_dir / "arguments.json"   # a program job's (prepare)
        self.error_path = self.job_dir / "error.txt"
        # A Unix socket path may be at most 107 bytes: keep it short, in a private directory.
        self._socket_dir = place.socket_dir if place else Path(tempfile.mkdtemp(prefix="qh-"))
        self.socket_path = self._socket_dir / "s"
        self.checkpoint_dir = self.job_dir / "checkpoints"
        self.usage = UsageMeter(registry.r, self.job_id)   # CPU seconds per stage
        # files, devices, distributed tasks, hybrid-job helpers... (tasks.supervisor.extension)
        self.extensions = [ext(self) for ext in extensions]
        self.ops: dict[str, Callable[..., Any]] = merge_ops({
            "update_status": self.op_update_status,
            "save_result": self.op_save_result,
            "job_info": self.op_job_info,
        }, self.extensions)
        self._log_pos = 0
        self._live_bytes = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._result_saved = False
        self._source_snapshot: dict[str, tuple[int, int]] = {}
        self._log: BinaryIO | None = None
        self._earlier_log = b""
        self.sandbox: sandbox.Sandbox | None = place.sandbox if place else None
        self.environment: dependencies.Environment | None = None

    # --- operations the child may call -----------------------------------------------------
    def op_update_status(self, status: str) -> bool:
        status = str(status).strip()
        if not status or len(status) > 200:
            raise InvalidInput("a status is 1 to 200 characters", field="status")
        moved = self.registry.set_sub_status(self.job_id, status)
        if moved:
            self.usage.set_stage(status)
        return moved

    def op_save_result(self, result: str) -> bool:
        if len(result.encode()) > d.MAX_RESULT_BYTES:
            raise PayloadTooLarge(f"a result may be at most {d.MAX_RESULT_BYTES} bytes")
        self.store.put_bytes(keys.job_result(self.prefix), result.encode())
        self.registry.set_fields(self.job_id, has_result=True)
        self._result_saved = True
        return True

    def op_job_info(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "job_name": self.job.get("job_name"),
                "user": self.job["user"], "resource_class": self.rc.name}

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> None:
        # the claim (Registry.claim) gave the job its first heartbeat
        # a rerun: what the earlier attempts wrote, and the marker where this one starts
        # (tasks.jobs.run.requeue_job), stay at the head of the log the job keeps
        if int(self.job.get("attempt") or 1) > 1:
            self._earlier_log = self.registry.read_log(self.job_id) or b""
        # Beats from its own thread for as long as this supervisor has the job: fetching
        # inputs or starting the child can take longer than the heartbeat's lifetime on a
        # loaded host, and a reaper elsewhere would take the job for lost.
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()
        status, error = d.ERROR, ""
        channel = None
        try:
            if self.place is None and self.job_dir.exists():
                shutil.rmtree(self.job_dir)
            self.results_dir.mkdir(parents=True)
            if self.place is not None:
                # where other processes of this host find the attempt's directory (the
                # job's task executors show its code where the job has it)
                self.attempt_dir.unlink(missing_ok=True)
                self.attempt_dir.symlink_to(self.job_dir.name)
                self.place.sandbox.relabel(self.attempt_dir.name)   # the job's cgroup, by name
            # Opened now, and read through this handle: what is written before the child
            # starts (the install of the job's dependencies) is in the job's log too, and the
            # job's account owns the directory once the child runs.
            self._log = open(self.log_path, "a+b")  # noqa: SIM115 - closed in finish()
            self.environment = self.install_dependencies()
            if self.sandbox is None:
                self.data_dir.mkdir()
                # made first: it shows the job directory, which must keep its inode from
                # here on; the data directory also at /data, where Qiskit Serverless
                # programs name it
                self.sandbox = sandbox.Sandbox(
                    [self.job_dir, self._socket_dir], mem=self.rc.mem, cpu=self.rc.cpu,
                    label=self.job_dir.name, rw_at=[(self.data_dir, Path(d.JOB_DATA_MOUNT))],
                    ro_at=self.environment.mount() if self.environment else None)
            spec = self.prepare()
            if self.environment is not None:
                self.environment.apply(spec, sandboxed=self.sandbox.on)
            channel = ChannelServer(self.socket_path, self.ops).start()
            status, error = self.watch(spec)
        except dependencies.InstallCanceled:
            status, error = d.CANCELED, ""
        except Exception as exc:  # a failure of ours, not of the user's code
            status, error = d.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            if channel:
                channel.close()
            self.finish(status, error)

    def install_dependencies(self) -> dependencies.Environment | None:
        """The job's `dependencies` on this host (tasks.sandbox.dependencies); pip's output
        shows in the live log as it comes."""
        requirements = list(self.job.get("dependencies") or [])
        if not requirements:
            return None
        assert self._log is not None

        def tick() -> bool:
            self.pump_log()
            return self.registry.job_field(self.job_id, "status") == d.CANCELING

        try:
            return dependencies.ensure(requirements, self.settings, self._log, tick)
        finally:
            self.pump_log()

    def prepare(self) -> ChildSpec:
        """Fetch code and arguments into a fresh job directory; the child's spec."""
        src = self.job_dir / "src"
        src.mkdir()
        with self.store.open(keys.job_script(self.prefix)) as fh:
            safe_extract(fh, src, max_bytes=self.settings.tar_max_bytes,
                         max_members=self.settings.tar_max_members)
        args_file = self.arguments_file
        try:
            self.store.download_file(keys.job_arguments(self.prefix), args_file)
        except NotFound:
            args_file.write_text("{}")
        self._source_snapshot = _snapshot(src)
        entry = (src / self.job["entrypoint"]).resolve()
        if not entry.is_relative_to(src.resolve()) or not entry.is_file():
            raise InvalidInput(f"entrypoint {self.job['entrypoint']!r} is not in the program")
        threads = str(self.rc.threads())
        offered: dict[str, str] = {}
        for ext in self.extensions:
            offered.update(ext.env())
        env = clean_env({
            **offered,
            "QHYBRID_JOB_ID": self.job_id,
            "QHYBRID_JOB_NAME": self.job.get("job_name") or "",
            "QHYBRID_SUPERVISOR_SOCKET": str(self.socket_path),
            "QHYBRID_ARGUMENTS_FILE": str(args_file),
            "PYTHONUNBUFFERED": "1",
            "QISKIT_PARALLEL": "FALSE",
            **{k: threads for k in THREAD_ENV},
        })
        spec = ChildSpec(cwd=str(src), argv=[str(entry)], env=env, log_path=str(self.log_path),
                         error_path=str(self.error_path), sys_path=[str(src)], cpus=self.cpus,
                         mem_bytes=self.rc.mem, tail_lines=d.ERROR_TRACEBACK_LINES)
        for ext in self.extensions:
            ext.prepare(spec)
        return spec

    def watch(self, spec: ChildSpec) -> tuple[str, str]:
        """Start the child in the sandbox, follow it to its end: (final status, error)."""
        account = job_account()
        if account is not None:
            hand_over(account, self.job_dir, self._socket_dir)
            spec.run_as = (account.uid, account.gid)
            spec.env["HOME"] = str(self.job_dir)
        box = self.sandbox
        assert box is not None
        warm_parent()
        # RUNNING before the user's first line runs: what that line asks for (a sub-status,
        # `RUNNING: MAPPING`) is only taken from a running job
        if not self.registry.transition(self.job_id, d.RUNNING, allowed=[d.INITIALIZING],
                                        started=time.time()):
            return d.CANCELED, ""      # canceled while it was prepared: it never starts
        proc = box.spawn(spec)
        self.usage.follow(proc.pid)
        self.registry.set_fields(self.job_id, pid=proc.pid)
        deadline = time.monotonic() + int(self.job.get("max_runtime") or self.settings.max_runtime_s)
        last_beat = 0.0
        outcome: tuple[str, str] | None = None
        while proc.is_alive():
            proc.join(d.SUPERVISOR_TICK_S)
            self.pump_log()
            now = time.monotonic()
            if now - last_beat >= d.HEARTBEAT_INTERVAL_S:
                self.registry.heartbeat(self.job_id, self.worker)
                last_beat = now
            if self.registry.job_field(self.job_id, "status") == d.CANCELING:
                # stopped by the service, not by its user (a reservation's window opened)
                reason = self.registry.job_field(self.job_id, "stop_reason")
                outcome = (d.ERROR, reason) if reason else (d.CANCELED, "")
            elif now > deadline:
                limit = int(self.job.get("max_runtime") or self.settings.max_runtime_s)
                outcome = (d.ERROR, f"the job exceeded its maximum run time of {limit} s")
            elif self.stopping is not None and self.stopping.is_set():
                outcome = (INTERRUPTED, "the worker running the job stopped")
            elif (hit := box.limit_hit()) is not None:
                outcome = (d.ERROR, hit)
            if outcome:
                break
        box.kill()     # the job's process tree, whatever it left running, and its /tmp
        self.pump_log()
        if outcome:
            return outcome
        hit = box.limit_hit(final=True)
        if hit is not None:       # a process of the job was killed at a limit
            return d.ERROR, hit
        if proc.exitcode == 0:
            return d.DONE, ""
        error_file = open_job_file(self.error_path)
        if error_file is not None:
            with error_file:
                return d.ERROR, error_file.read(1024**2).decode("utf-8", errors="replace")
        code = proc.exitcode or 0
        if code == -signal.SIGXFSZ:
            return d.ERROR, box.disk_message()
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return d.ERROR, f"the job's process was killed by {name}{hint}"
        return d.ERROR, f"the job's process exited with code {code}"

    def pump_log(self) -> None:
        """Append what the child wrote since the last call to the live log."""
        if self._log is None:
            return
        for ext in self.extensions:
            made = ext.output()
            if made:
                self._log.write(made)
                self._log.flush()
        chunk = os.pread(self._log.fileno(), 4 * 1024**2, self._log_pos)
        if not chunk:
            return
        self._log_pos += len(chunk)
        text = self._decoder.decode(chunk)
        if self._live_bytes < d.MAX_LIVE_LOG_BYTES:
            self._live_bytes += len(text)
            if self._live_bytes >= d.MAX_LIVE_LOG_BYTES:
                text += "\n[qhybrid: live log truncated; the full log is stored with the job]\n"
            self.registry.append_log(self.job_id, text)

    def _beat(self) -> None:
        while not self._beating_done.wait(d.HEARTBEAT_INTERVAL_S):
            try:
                self.registry.heartbeat(self.job_id, self.worker)
            except Exception:   # Redis away for a moment: the next beat tries again
                pass

    def finish(self, status: str, error: str) -> None:
        """Store logs and outputs, then record the final status (in that order)."""
        if self.sandbox is not None:
            self.sandbox.kill()     # already done when the job ran; its cgroup goes at the end
        self.end_tasks(status)
        try:
            self.pump_log()      # what the tasks printed last
        except Exception:        # Redis away: the log keeps what the job's own process wrote
            pass
        for ext in self.extensions:
            try:
                ext.keep(status)
            except Exception as exc:
                if status == d.DONE:
                    status, error = d.ERROR, f"storing the job's {ext.keeps} failed: {exc}"
        if status == INTERRUPTED and self.requeue is not None:
            self._beating_done.set()
            self.requeue(error)
            if self.sandbox is not None:
                self.sandbox.close()
            if self.environment is not None:
                self.environment.release()
            self._remove_dirs()
            return
        if status == INTERRUPTED:
            status = d.ERROR
        for ext in self.extensions:
            ext.end()
        try:
            if self._log is not None:
                self._log.seek(0)
                if self._earlier_log:
                    with tempfile.TemporaryFile() as whole:
                        whole.write(self._earlier_log)
                        shutil.copyfileobj(self._log, whole)
                        whole.seek(0)
                        self.store.put_stream(keys.job_logs(self.prefix), whole)
                else:
                    self.store.put_stream(keys.job_logs(self.prefix), self._log)
            if self.results_dir.is_dir() and not self.results_dir.is_symlink():
                # built in a private file, never in the directory the job's account owns
                with tempfile.TemporaryFile() as archive:
                    pack_dir(self.results_dir, archive, extra=self.changed_sources())
                    archive.seek(0)
                    self.store.put_stream(keys.job_model(self.prefix), archive)
        except Exception as exc:
            if status == d.DONE:
                status, error = d.ERROR, f"storing the job's outputs failed: {exc}"
        if self._log is not None:
            self._log.close()
        fields: dict[str, Any] = {"ended": time.time(), "error": error[-20000:] if error else ""}
        self._beating_done.set()
        # only this attempt's end: a supervisor judged lost (its job run again elsewhere)
        # must not end the newer attempt
        attempt = ("attempt", str(self.job.get("attempt") or 1))
        moved = self.registry.transition(self.job_id, status,
                                         allowed=[d.INITIALIZING, d.RUNNING, d.CANCELING],
                                         require=attempt,
                                         detail=error.splitlines()[0] if error else None, **fields)
        if not moved and status != d.CANCELED:
            # a cancel raced with the end: the cancel wins, as the user asked for it
            self.registry.transition(self.job_id, d.CANCELED, allowed=[d.CANCELING],
                                     require=attempt, **fields)
        self.registry.expire_log(self.job_id)
        # Nothing of the job runs any more (watch killed it before its end was recorded):
        # what is left is removing its cgroup and directories, which need not hold its slot.
        if self.tidy is not None:
            self.tidy(self._tidy_up)
        else:
            self._tidy_up()

    def _tidy_up(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
        if self.environment is not None:
            self.environment.release()
        self._remove_dirs()

    def _remove_dirs(self) -> None:
        if self.place is not None:
            self.attempt_dir.unlink(missing_ok=True)
        shutil.rmtree(self.job_dir, ignore_errors=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def end_tasks(self, status: str) -> None:
        """Charge the child's last CPU time; no task of this attempt stays queued or running."""
        self.usage.stop()
        for ext in self.extensions:
            try:
                ext.stop(status)
            except Exception as exc:   # workers also drop tasks of a job no longer running
                self.registry.append_log(self.job_id, f"\n[qhybrid: stopping the job's tasks "
                                         f"failed: {exc}]\n")

    def changed_sources(self) -> list[tuple[str, Path]]:
        """Files the job wrote or changed in its working directory: they join model.tar.gz."""
        src = self.job_dir / "src"
        if not src.is_dir() or src.is_symlink():
            return []
        return [(rel, src / rel) for rel, stamp in _snapshot(src).items()
                if self._source_snapshot.get(rel) != stamp]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Regular files under `root` with (size, mtime in ns), by relative path."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


__all__ = ["INTERRUPTED", "Supervisor"]
