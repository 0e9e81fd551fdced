"""`python -m tasks.worker jobs|tasks CLASS`: a Celery worker for one resource class.

Its concurrency is worked out on the host it starts on (the class's `concurrency`, else
the host's cores divided by the class's cpu), so one command line serves every host.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tasks.queues import jobs_queue, tasks_queue
from tasks.resources import load_classes
from tasks.settings import MissingSharedSettings, Settings, require_shared


def worker_argv(kind: str, resource_class: str, concurrency: int,
                name: str | None = None) -> list[str]:
    queue = jobs_queue(resource_class) if kind == "jobs" else tasks_queue(resource_class)
    # jobs workers keep the bare class name as node name: `small@host` consumes jobs.small
    node = name or (resource_class if kind == "jobs" else f"tasks-{resource_class}")
    return [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker",
            "--queues", queue, "--hostname", f"{node}@%h", "--pool", "threads",
            "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker",
                                     description="Run a worker for one resource class.")
    parser.add_argument("kind", choices=["jobs", "tasks"],
                        help="whole jobs (jobs.<class>) or distributed tasks (tasks.<class>)")
    parser.add_argument("resource_class")
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
    if args.resource_class not in classes:
        parser.error(f"unknown resource class {args.resource_class!r}; classes: "
                     f"{', '.join(classes)}")
    slots = args.concurrency or classes[args.resource_class].slots()
    command = worker_argv(args.kind, args.resource_class, slots, args.name)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
