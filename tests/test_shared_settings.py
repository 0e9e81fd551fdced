"""Hosts share Redis and storage: a process started without them refuses loudly, and every
web host signs sessions with the same key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from tasks.core.settings import MissingSharedSettings, Settings
from tests.conftest import ROOT


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    return {**env, "QHYBRID_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize("argv", [["-m", "tasks.worker", "jobs", "small"],
                                  ["-m", "tasks.devices"],
                                  # Celery started by hand: refused at worker_init
                                  ["-m", "celery", "-A", "tasks.core.celery_app", "worker",
                                   "--pool", "threads", "--without-mingle"]])
def test_a_worker_without_the_shared_redis_or_storage_refuses_to_start(
        tmp_path: Path, redis_server: str, argv: list[str]) -> None:
    env = _bare_env(tmp_path, QHYBRID_REDIS_URL=f"{redis_server}/9")   # storage missing
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "QHYBRID_STORAGE_URL not set" in done.stderr + done.stdout


def test_a_web_host_without_them_refuses_to_start(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for k in list(os.environ):
        if k.startswith("QHYBRID_"):
            monkeypatch.delenv(k)
    with pytest.raises(MissingSharedSettings, match="QHYBRID_REDIS_URL and QHYBRID_STORAGE_URL"):
        create_app()


def test_every_web_host_signs_sessions_with_the_same_key(tmp_path: Path,
                                                         redis_server: str) -> None:
    def host(name: str) -> Settings:       # its own data directory, the shared Redis
        return Settings.from_env({"QHYBRID_REDIS_URL": f"{redis_server}/9",
                                  "QHYBRID_STORAGE_URL": (tmp_path / "storage").as_uri(),
                                  "QHYBRID_DATA_DIR": str(tmp_path / name)})

    one, two = create_app({"SETTINGS": host("a")}), create_app({"SETTINGS": host("b")})
    assert one.secret_key and one.secret_key == two.secret_key
    with one.test_request_context():
        from flask import session

        session["user"] = "alice"
        cookie = one.session_interface.get_signing_serializer(one).dumps(dict(session))  # type: ignore[attr-defined]
    assert two.session_interface.get_signing_serializer(two).loads(cookie)["user"] == "alice"  # type: ignore[attr-defined]
