"""Server configuration, read from `QHYBRID_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core import defaults


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "qhybrid"


def embedded_redis_url(data_dir: Path) -> str:
    """The URL `qhybrid up` wrote for its embedded Redis, else the usual local default."""
    try:
        return (data_dir / "redis" / "url").read_text().strip()
    except OSError:
        return "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    redis_url: str
    storage_url: str
    s3_endpoint_url: str | None
    data_dir: Path
    resource_classes_path: Path | None
    max_program_bytes: int = defaults.MAX_PROGRAM_TAR_BYTES
    max_runtime_s: int = defaults.DEFAULT_MAX_RUNTIME_S
    server_max_runtime_s: int = defaults.SERVER_MAX_RUNTIME_S
    secret_key: str = field(default="", repr=False)
    # Where job and task directories are made; user code must be able to enter it.
    work_dir_override: str = ""
    files_max_bytes: int = defaults.FILES_MAX_BYTES    # per-user quota of the flat file store
    files_max_count: int = defaults.FILES_MAX_COUNT
    files_redirect: bool = True    # S3 downloads: redirect to a presigned URL, else stream through
    devices_path: Path | None = None   # TOML of extra devices (backends.registry.load_devices)
    device_threads: int = 0            # simulator threads per quantum task; 0: cores / slots
    allow_installs: bool = True        # jobs' `dependencies` are installed (tasks.sandbox.dependencies)
    package_index: str = defaults.PACKAGE_INDEX   # where they come from: index URL or wheel dir
    tar_max_bytes: int = defaults.TAR_MAX_UNPACKED_BYTES   # what one user tar may unpack to
    tar_max_members: int = defaults.TAR_MAX_MEMBERS        # members one user tar may hold
    admins: frozenset[str] = frozenset()   # users who may reserve devices for other users
    task_events: bool = True           # Celery task events and worker heartbeats (Flower)
    public_url: str = ""               # the web front end's URL, for in-job gateway calls

    @property
    def work_dir(self) -> Path:
        """Job and task directories: QHYBRID_WORK_DIR, else `<data dir>/work`."""
        return Path(self.work_dir_override) if self.work_dir_override else self.data_dir / "work"

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("QHYBRID_DATA_DIR") or default_data_dir()).expanduser()
        storage_url = env.get("QHYBRID_STORAGE_URL") or (data_dir / "storage").resolve().as_uri()
        classes = env.get("QHYBRID_RESOURCE_CLASSES")
        return cls(
            redis_url=env.get("QHYBRID_REDIS_URL") or embedded_redis_url(data_dir),
            storage_url=storage_url,
            s3_endpoint_url=env.get("QHYBRID_S3_ENDPOINT_URL") or None,
            data_dir=data_dir,
            resource_classes_path=Path(classes) if classes else None,
            max_program_bytes=int(env.get("QHYBRID_MAX_PROGRAM_BYTES", defaults.MAX_PROGRAM_TAR_BYTES)),
            max_runtime_s=int(env.get("QHYBRID_MAX_RUNTIME", defaults.DEFAULT_MAX_RUNTIME_S)),
            server_max_runtime_s=int(env.get("QHYBRID_SERVER_MAX_RUNTIME", defaults.SERVER_MAX_RUNTIME_S)),
            secret_key=env.get("QHYBRID_SECRET_KEY", ""),
            work_dir_override=env.get("QHYBRID_WORK_DIR", ""),
            files_max_bytes=int(env.get("QHYBRID_FILES_MAX_BYTES", defaults.FILES_MAX_BYTES)),
            files_max_count=int(env.get("QHYBRID_FILES_MAX_COUNT", defaults.FILES_MAX_COUNT)),
            files_redirect=env.get("QHYBRID_FILES_REDIRECT", "1").lower() not in ("0", "false", "no"),
            devices_path=Path(env["QHYBRID_DEVICES"]) if env.get("QHYBRID_DEVICES") else None,
            device_threads=int(env.get("QHYBRID_DEVICE_THREADS") or 0),
            allow_installs=env.get("QHYBRID_ALLOW_INSTALLS", "1").lower() not in ("0", "false", "no"),
            package_index=env.get("QHYBRID_PACKAGE_INDEX") or defaults.PACKAGE_INDEX,
            tar_max_bytes=int(env.get("QHYBRID_TAR_MAX_BYTES") or defaults.TAR_MAX_UNPACKED_BYTES),
            tar_max_members=int(env.get("QHYBRID_TAR_MAX_MEMBERS") or defaults.TAR_MAX_MEMBERS),
            admins=frozenset(u.strip() for u in env.get("QHYBRID_ADMINS", "").split(",")
                             if u.strip()),
            task_events=env.get("QHYBRID_TASK_EVENTS", "1").lower() not in ("0", "false", "no"),
            public_url=(env.get("QHYBRID_PUBLIC_URL") or "").rstrip("/"),
        )


# What every web and worker host must share; `qhybrid up` sets both for the processes it starts.
SHARED_ENV = ("QHYBRID_REDIS_URL", "QHYBRID_STORAGE_URL")


class MissingSharedSettings(RuntimeError):
    """A web or worker process was started without the Redis and storage every host shares."""


def require_shared(env: os._Environ[str] | dict[str, str] | None = None, role: str = "") -> None:
    """Refuse to start a web or worker process that would fall back to a local Redis or local
    storage: on a host of its own it would run jobs nobody else sees, or lose what it stores."""
    env = os.environ if env is None else env
    missing = [name for name in SHARED_ENV if not env.get(name)]
    if missing:
        raise MissingSharedSettings(
            f"qhybrid {role or 'process'}: {' and '.join(missing)} not set. Every web and "
            "worker host must point at the same Redis and storage (e.g. "
            "QHYBRID_REDIS_URL=redis://:password@redis:6379/0, "
            "QHYBRID_STORAGE_URL=s3://bucket/prefix); on one machine, `qhybrid up` sets them.")


# Environment variables that hold credentials or the way to them: never given to user code.
SECRET_ENV_PREFIXES = ("QHYBRID_REDIS", "QHYBRID_STORAGE", "QHYBRID_S3", "QHYBRID_SECRET",
                       "AWS_", "QHYBRID_TOKEN", "QHYBRID_URL")
