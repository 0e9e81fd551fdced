"""Where the client finds the service: arguments, then QHYBRID_URL/QHYBRID_TOKEN, then the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qhybrid" / "config.json"


def load() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save(url: str, token: str) -> Path:
    """Write the client's URL and token, readable by this OS user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.replace(tmp, path)
    return path


def resolve(url: str | None, token: str | None) -> tuple[str, str]:
    stored = load()
    url = url or os.environ.get("QHYBRID_URL") or stored.get("url") or DEFAULT_URL
    token = token or os.environ.get("QHYBRID_TOKEN") or stored.get("token") or ""
    return url.rstrip("/"), token
