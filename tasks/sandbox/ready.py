"""Sandboxes made ready before their jobs come, so that a job starts without waiting for one.

A worker keeps, per resource class it serves, as many ready places as that class has job
slots. A place is what the supervisor would otherwise make first: a fresh job directory
(with its `data` directory, shown at /data), a private socket directory, the sandbox
(bubblewrap's namespaces and the class's cgroup) and, in it, the job's process already
forked from the zygote and waiting for its spec (tasks.sandbox.box.Sandbox.make_ready).
Taking one costs nothing on the job's path; a thread makes its replacement meanwhile.

A place serves exactly one job and is closed with it, as a sandbox made for the job would
be: nothing a job leaves behind reaches another. A job whose sandbox must show more (its
`dependencies`) gets a sandbox made for it instead.

The same thread also removes what an ended job leaves (its emptied cgroup, its
directories), so that the job's slot is free for the next one as soon as its end is
recorded; nothing of the job runs by then.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qhybrid.resources import ResourceClass
from tasks.core import defaults as d
from tasks.sandbox.box import Sandbox
from tasks.sandbox.environment import warm_parent

log = logging.getLogger("qhybrid.worker")


@dataclass
class Place:
    """A job directory, a socket directory and the sandbox that shows them, made ready."""

    job_dir: Path
    socket_dir: Path
    sandbox: Sandbox

    def discard(self) -> None:
        self.sandbox.close()
        shutil.rmtree(self.job_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def make_place(work_dir: Path, rc: ResourceClass) -> Place:
    """A place as the supervisor makes one for a job (tasks.supervisor.supervisor)."""
    job_dir = work_dir / f"box-{uuid.uuid4().hex[:16]}"
    data_dir = job_dir / "data"
    data_dir.mkdir(parents=True)
    socket_dir = Path(tempfile.mkdtemp(prefix="qh-"))   # a socket path is at most 107 bytes
    try:
        box = Sandbox([job_dir, socket_dir], mem=rc.mem, cpu=rc.cpu, label=job_dir.name,
                      rw_at=[(data_dir, Path(d.JOB_DATA_MOUNT))])
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    place = Place(job_dir, socket_dir, box)
    try:
        box.make_ready()
    except BaseException:
        place.discard()
        raise
    return place


class ReadyPlaces:
    """The ready places of one worker process, by resource class, refilled by one thread
    (which also does the removals ended jobs leave, `later`)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._places: dict[str, list[Place]] = {}
        self._wanted: dict[str, tuple[ResourceClass, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._later: list[Callable[[], None]] = []

    def keep(self, rc: ResourceClass, count: int) -> None:
        """Have `count` places of `rc` ready from now on (made in the background)."""
        with self._lock:
            if self._closed:
                return
            self._wanted[rc.name] = (rc, max(0, count))
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill, name="ready-sandboxes",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def later(self, removal: Callable[[], None]) -> None:
        """Run `removal` (what an ended job leaves: its cgroup, its directories) on this
        thread, before the next place is made; at once when the worker is ending."""
        with self._lock:
            if not self._closed:
                self._later.append(removal)
                self._wake.set()
                return
        _run(removal)

    def take(self, rc: ResourceClass) -> Place | None:
        """A ready place of `rc`, or None (none is ready yet: the job makes its own)."""
        with self._lock:
            places = self._places.get(rc.name) or []
            while places:
                place = places.pop()
                if place.sandbox.ready:
                    self._wake.set()
                    return place
                place.discard()     # its process is gone (killed from outside): not for a job
        self._wake.set()
        return None

    def ready_count(self, name: str) -> int:
        with self._lock:
            return len(self._places.get(name) or [])

    def _missing(self) -> ResourceClass | None:
        with self._lock:
            for name, (rc, count) in self._wanted.items():
                if len(self._places.get(name) or []) < count:
                    return rc
        return None

    def _tidy(self) -> None:
        with self._lock:
            removals, self._later = self._later, []
        for removal in removals:
            _run(removal)

    def _fill(self) -> None:
        failures = 0
        while not self._closed:
            self._tidy()
            rc = self._missing()
            if rc is None:
                self._wake.wait()
                self._wake.clear()
                continue
            if self._later:
                continue        # an ended job's removals first: they free what it held
            try:
                warm_parent()
                place = make_place(self.work_dir, rc)
                failures = 0
            except Exception:
                # jobs make their own sandboxes meanwhile, and say why if they cannot
                failures += 1
                if failures == 1:
                    log.exception("making a sandbox ready failed")
                self._wake.wait(min(30.0, 0.5 * 2 ** failures))
                self._wake.clear()
                continue
            with self._lock:
                if self._closed:
                    place.discard()
                    return
                self._places.setdefault(rc.name, []).append(place)

    def close(self) -> None:
        """Close every place not taken and finish the removals due (at the worker's end)."""
        with self._lock:
            self._closed = True
            places = [p for ps in self._places.values() for p in ps]
            self._places.clear()
        self._wake.set()
        for place in places:
            place.discard()
        self._tidy()


def _run(removal: Callable[[], None]) -> None:
    try:
        removal()
    except Exception:
        log.exception("removing what an ended job left failed")


__all__ = ["Place", "ReadyPlaces", "make_place"]
