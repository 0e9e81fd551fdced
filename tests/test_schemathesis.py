"""The OpenAPI document and the server agree: schemathesis against /api/v1/openapi.json.

A bounded run (a few examples per operation, a time budget) with a token: no 5xx, no response
outside its documented schema, status or content type, no request that violates the schema
accepted, and every error as application/problem+json (tests/schemathesis_hooks.py).
Requests valid by the schema may still be refused for what the schema cannot say (a file's
content must be a tar, a program must exist), so `positive_data_acceptance` is left out.
/healthz is left out: it answers 503 by design while a queue has no worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, RunningService


def test_schemathesis_finds_no_disagreement(service: RunningService, tmp_path: Path) -> None:
    _, token = service.new_user()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run",
         f"{service.url}/api/v1/openapi.json", "--header", f"Authorization: Bearer {token}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--exclude-path", "/healthz", "--max-examples", "5", "--max-time", "20",
         "--seed", "1", "--no-shrink", "--workers", "1", "--request-timeout", "30",
         "--report-dir", str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = run.stdout
    assert "Failures:" not in out and " passed" in out, out[-6000:] + run.stderr[-2000:]
    # schemathesis' own errors (it cannot serialize a few generated multipart bodies) are
    # not disagreements; any other error is
    errors = out.split("Errors:", 1)[1].split("\n\n", 1)[0] if "Errors:" in out else ""
    assert all("Serialization not possible" in line for line in errors.strip().splitlines()), out
    assert run.returncode == 0 or errors, out[-6000:]
