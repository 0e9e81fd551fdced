"""The set-up scripts: the Python they accept is the one pyproject.toml says works."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_min() -> str:
    match = re.search(r"^PYTHON_MIN=(\S+)", (ROOT / "scripts" / "_uv").read_text(), re.M)
    assert match, "scripts/_uv names PYTHON_MIN"
    return match.group(1)


def _sync_with(python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", '. scripts/_uv && qh_sync --extra test'], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": python}, capture_output=True,
                          text=True, timeout=60)


def _version(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    return tuple(int(p) for p in out.split()) or None


def test_the_scripts_check_the_python_pyproject_requires() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={_python_min()}"
    # 3.11.0-3.11.3 have no tarfile extraction filters, which storage.tarsafe uses
    assert _python_min() == "3.11.4" and sys.version_info >= (3, 11, 4)


def test_an_older_python_is_refused_before_anything_is_installed() -> None:
    # given a real Python older than the minimum (Debian 12's python3 is 3.11.2)
    wanted = tuple(int(p) for p in _python_min().split("."))
    candidates = ["/usr/bin/python3", "/usr/bin/python3.11",
                  *(shutil.which(n) or "" for n in ("python3.10", "python3.9"))]
    old = next((c for c in candidates if c and (v := _version(c)) and v < wanted), None)
    if old is None:
        pytest.skip("no Python older than the minimum on this machine")
    # when set-up runs with it, then it stops at once, saying which Python it found and why
    done = _sync_with(old)
    assert done.returncode != 0
    found = ".".join(map(str, _version(old) or ()))
    assert f"qhybrid needs Python {_python_min()} or newer; {old} ({old}) is {found}." \
        in done.stderr
    assert "tarfile's extraction filters" in done.stderr
    # and a missing interpreter is refused the same way
    missing = _sync_with("/nonexistent/python3")
    assert missing.returncode != 0 and "is not a Python that runs" in missing.stderr


def _imported_roots(*packages: str) -> set[str]:
    """Top-level modules imported anywhere in these packages (absolute imports only)."""
    import ast
    roots: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    roots.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    roots.add(node.module.split(".")[0])
    return roots


def test_the_server_extra_has_everything_the_service_and_its_jobs_import() -> None:
    """`scripts/up` installs `--extra server` alone: every distribution the web, the workers and
    the in-job contract import must come with it, not with another extra."""
    from importlib.metadata import packages_distributions
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is installed by scripts/test; run through it")
    out = subprocess.run([str(uv), "export", "--frozen", "--no-hashes", "--no-emit-project",
                          "--extra", "server"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    pinned = {re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower().replace("_", "-")
              for line in out.splitlines() if line and not line.startswith(("#", " "))}
    dists = packages_distributions()
    ours = {"app", "tasks", "backends", "storage", "qhybrid"}
    missing = {}
    for root in _imported_roots("app", "tasks", "backends", "storage") - ours:
        if root in sys.stdlib_module_names:
            continue
        names = {n.lower().replace("_", "-") for n in dists.get(root, [])}
        if names and not names & pinned:
            missing[root] = sorted(names)
    assert not missing, f"imported by the service, not in the server extra: {missing}"


def _exported(*extras: str) -> set[str]:
    """The distribution names uv.lock pins for these extras (as `uv export` lists them)."""
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is installed by scripts/test; run through it")
    args = [a for extra in extras for a in ("--extra", extra)]
    out = subprocess.run([str(uv), "export", "--frozen", "--no-hashes", "--no-emit-project",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return {re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower()
            for line in out.splitlines() if line and not line.startswith(("#", " "))}


def test_ray_comes_with_the_bench_extra_only() -> None:
    """benchmarks/fanout.py measures Ray beside us; the service and its jobs never install it."""
    assert "ray" in _exported("bench")
    assert "ray" not in _exported("server")
    assert "ray" not in _exported("server", "monitor", "test")
    assert "ray" not in _imported_roots("app", "tasks", "backends", "storage", "qhybrid")
