"""Start a throw-away service (embedded Redis, local storage, web, workers) for a benchmark."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.service import Service, free_port, start_redis
from tasks.core.redis_client import connect
from tasks.core.registry import Registry


@contextlib.contextmanager
def running_service(classes: list[str] | None = None,
                    extra_env: dict[str, str] | None = None) -> Iterator[tuple[Service, str, str]]:
    """Yields (service, redis_url, token of a fresh user); stops everything afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="qh-bench-"))
    redis_proc, redis_url = start_redis(tmp / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    env.update({"QHYBRID_REDIS_URL": redis_url, "QHYBRID_DATA_DIR": str(tmp / "data"),
                "QHYBRID_STORAGE_URL": (tmp / "storage").as_uri(),
                "QHYBRID_SECRET_KEY": "bench", **(extra_env or {})})
    service = Service(host="127.0.0.1", port=free_port(), env=env,
                      classes=classes or ["small"], log_dir=tmp / "logs")
    try:
        service.start_web()
        service.start_workers()
        service.wait_ready(timeout=120)
        token = Registry(connect(redis_url)).create_user("bench")
        yield service, redis_url, token
    finally:
        service.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


@contextlib.contextmanager
def bare_celery_worker(redis_url: str, concurrency: int = 1,
                       pool: str = "threads") -> Iterator[subprocess.Popen[bytes]]:
    """A worker of benchmarks.bare_celery on the same Redis."""
    env = {**os.environ, "BARE_REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchmarks.bare_celery", "worker", "-Q", "bare",
         "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(15)
