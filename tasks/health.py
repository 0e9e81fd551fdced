"""`python -m tasks.health worker [--queue Q]`: is a worker of this host alive? (exit 0 / 1)

For a container's liveness and readiness probes: a worker's housekeeping thread refreshes
its presence key in Redis (`qh:worker:<host>:<pid>`, WORKER_TTL_S) while its process runs and
reaches Redis; the check looks for one of this host (a pod's hostname is its name) that
consumes `--queue`. Cheap: it imports redis, not Celery or qiskit.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from tasks.core.redis_client import RedisError, connect
from tasks.core.registry import Registry
from tasks.core.settings import MissingSharedSettings, Settings, require_shared


def local_workers(registry: Registry, host: str, queue: str | None = None) -> list[str]:
    """Names of the live workers of `host` (consuming `queue`, if given)."""
    by_queue = registry.workers_by_queue()
    names = {n for q, ns in by_queue.items() if queue is None or q == queue for n in ns}
    return sorted(n for n in names if n.split(":", 1)[0] == host)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.health",
                                     description="Exit 0 if a worker of this host is alive.")
    parser.add_argument("what", choices=["worker"])
    parser.add_argument("--queue", default=None, help="it must consume this queue")
    parser.add_argument("--host", default=None, help="[default: this host's name]")
    args = parser.parse_args(argv)
    try:
        require_shared(role="health check")
        found = local_workers(Registry(connect(Settings.from_env().redis_url)),
                              args.host or socket.gethostname(), args.queue)
    except (MissingSharedSettings, RedisError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if not found:
        print(f"unhealthy: no live worker of {args.host or socket.gethostname()}"
              + (f" consumes {args.queue}" if args.queue else ""), file=sys.stderr)
        return 1
    print(" ".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
