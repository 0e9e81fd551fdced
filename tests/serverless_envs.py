"""Per-version environments with the real `qiskit-serverless` client, for the drop-in tests.

Two versions of the client cannot share one environment (their pins differ), so each gets its
own `.venv-serverless-<version>` at the repository root, installed by the project's uv from
`tests/serverless/requirements-<version>.txt` (every package pinned; made with
`uv pip compile`), and reused while that file is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "serverless"
VERSIONS = ("0.37.0", "0.35.0")


def uv() -> str:
    path = ROOT / ".tools" / "bin" / "uv"
    return str(path) if path.exists() else "uv"


def ensure_env(version: str) -> Path:
    """The interpreter of the environment for `version`, created or refreshed if needed."""
    reqs = HERE / f"requirements-{version}.txt"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
    venv = ROOT / f".venv-serverless-{version}"
    stamp = venv / "qhybrid-requirements.sha256"
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv(), "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)],
                   check=True, env=env)
    subprocess.run([uv(), "pip", "install", "--quiet", "--python", str(python), "-r", str(reqs)],
                   check=True, env=env)
    stamp.write_text(digest)
    return python


def run_client(python: Path, script: str, **params: Any) -> Any:
    """Run `script` with the real client in that environment; it prints one JSON line last.

    `params` reach the script as the JSON object `P`.
    """
    code = "import json, sys\nP = json.loads(sys.argv[1])\n" + script
    done = subprocess.run([str(python), "-c", code, json.dumps(params)], capture_output=True,
                          text=True, timeout=240, cwd=params.get("cwd") or None,
                          env={k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")})
    if done.returncode != 0:
        raise AssertionError(f"client script failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    for v in VERSIONS:
        print(ensure_env(v))
