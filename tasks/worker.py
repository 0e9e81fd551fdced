"""`python -m tasks.worker jobs|tasks CLASS[,CLASS...]`: a Celery worker for resource classes.

Its concurrency is worked out on the host it starts on (the class's `concurrency`, else
the host's cores divided by the class's cpu), so one command line serves every host. One
worker may consume several classes' queues (what `qhybrid up` does on one small host): the
supervisor applies each job's own class limits, and the worker runs as many at once as the
smallest of its classes allows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from qhybrid.resources import load_classes
from tasks.core.presence import note_starting
from tasks.core.queues import jobs_queue, tasks_queue
from tasks.core.settings import (
    MissingSharedSettings,
    Settings,
    require_shared,
    worker_event_flags,
)


def worker_argv(kind: str, resource_class: str, concurrency: int,
                name: str | None = None) -> list[str]:
    """`resource_class` is one class or several, comma-separated."""
    classes = [c for c in resource_class.split(",") if c]
    queue_of = jobs_queue if kind == "jobs" else tasks_queue
    # jobs workers keep the bare class name as node name: `small@host` consumes jobs.small
    joined = "-".join(classes)
    node = name or (joined if kind == "jobs" else f"tasks-{joined}")
    return [sys.executable, "-m", "celery", "-A", "tasks.core.celery_app", "worker",
            "--queues", ",".join(queue_of(c) for c in classes), "--hostname", f"{node}@%h",
            "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", *worker_event_flags()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker",
                                     description="Run a worker for one resource class.")
    parser.add_argument("kind", choices=["jobs", "tasks"],
                        help="whole jobs (jobs.<class>) or distributed tasks (tasks.<class>)")
    parser.add_argument("resource_class", help="a class, or several comma-separated")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="jobs or tasks run at once [default: worked out for this host]")
    parser.add_argument("--name", default=None,
                        help="Celery node name, when a host runs several [default: the class]")
    args = parser.parse_args(argv)
    try:
        require_shared(role="worker")
    except MissingSharedSettings as exc:
        parser.exit(2, f"{exc}\n")
    classes = load_classes(Settings.from_env().resource_classes_path)
    wanted = [c for c in args.resource_class.split(",") if c]
    unknown = [c for c in wanted if c not in classes]
    if unknown or not wanted:
        parser.error(f"unknown resource class {','.join(unknown)!r}; classes: "
                     f"{', '.join(classes)}")
    slots = args.concurrency or max(classes[c].slots() for c in wanted)
    command = worker_argv(args.kind, args.resource_class, slots, args.name)
    queue_of = jobs_queue if args.kind == "jobs" else tasks_queue
    note_starting(Settings.from_env().redis_url, [queue_of(c) for c in wanted])
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
