"""`python -m tasks.worker jobs|tasks CLASS[,CLASS...]`: a Celery worker for resource classes.

Its concurrency is worked out on the host it starts on (the class's `concurrency`, else
the host's cores divided by the class's cpu), so one command line serves every host. One
worker may consume several classes' queues (what `qhybrid up` does on one small host): the
supervisor applies each job's own class limits, and the worker runs as many at once as the
smallest of its classes allows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from qhybrid.resources import load_classes
from tasks.core.presence import note_starting
from tasks.core.queues import jobs_queue, tasks_queue
from tasks.core.settings import MissingSharedSettings, Settings, require_shared


def worker_options(kind: str, resource_class: str, concurrency: int,
                   name: str | None = None) -> dict[str, Any]:
    """The Celery worker's options (`app.Worker`); `resource_class` is one class or several,
    comma-separated."""
    from celery.utils.nodenames import default_nodename, host_format

    classes = [c for c in resource_class.split(",") if c]
    queue_of = jobs_queue if kind == "jobs" else tasks_queue
    # jobs workers keep the bare class name as node name: `small@host` consumes jobs.small
    joined = "-".join(classes)
    node = name or (joined if kind == "jobs" else f"tasks-{joined}")
    # With task events on (Flower, `celery events`), workers also send heartbeats, so
    # monitors see them online; without, neither.
    events = Settings.from_env().task_events
    return {"queues": [queue_of(c) for c in classes],
            "hostname": host_format(default_nodename(f"{node}@%h")),
            "pool_cls": "threads", "concurrency": concurrency, "loglevel": "WARNING",
            "without_gossip": True, "without_mingle": True,
            "task_events": events, "without_heartbeat": not events}


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
    options = worker_options(args.kind, args.resource_class, slots, args.name)
    note_starting(Settings.from_env().redis_url, options["queues"])
    # Celery's worker itself, in this process: its command line would first load every
    # installed Celery plugin (Flower's web app among them) and start a second interpreter.
    from tasks.core.celery_app import app

    worker = app.Worker(**options)
    worker.start()
    sys.exit(worker.exitcode)


if __name__ == "__main__":
    main()
