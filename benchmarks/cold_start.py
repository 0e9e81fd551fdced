"""`qhybrid up` from cold (fresh data directory, nothing running) to a healthy `/healthz`.

    python benchmarks/cold_start.py [--rounds 3]

Prints, per round and as medians: cold -> healthy (the web answers, Redis and storage are
reachable, every queue has a live worker or one starting: `warming`), and cold -> every worker
live. The baseline is Ray's `ray start --head` to its job API answering, when Ray is
installed in this environment (it is not a dependency of qhybrid); goal: healthy <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except (OSError, ValueError):
        return None


def one_round() -> tuple[float, float]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QHYBRID_DATA_DIR": f"{tmp}/data", "HOME": f"{tmp}/home"}
        env = {k: v for k, v in env.items() if k not in ("QHYBRID_REDIS_URL",
                                                           "QHYBRID_STORAGE_URL")}
        start = time.perf_counter()
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "qhybrid"), "up", "--port",
                                 str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        healthy = ready = 0.0
        try:
            while time.perf_counter() - start < 120:
                body = _health(f"http://127.0.0.1:{port}")
                now = time.perf_counter() - start
                if body and body.get("ok") and not healthy:
                    healthy = now
                if body and body.get("ok") and not body.get("warming"):
                    ready = now
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return healthy, ready


def ray_round() -> float | None:
    if shutil.which("ray") is None:
        return None
    start = time.perf_counter()
    subprocess.run(["ray", "start", "--head", "--dashboard-port", str(_free_port())],
                   check=True, capture_output=True)
    try:
        while time.perf_counter() - start < 120:
            try:
                subprocess.run(["ray", "job", "list"], check=True, capture_output=True)
                return time.perf_counter() - start
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        return None
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round() for _ in range(args.rounds)]
    for i, (healthy, ready) in enumerate(rounds, 1):
        print(f"round {i}: cold -> healthy {healthy:.2f} s, -> every worker live {ready:.2f} s")
    healthy = statistics.median(h for h, _ in rounds)
    ready = statistics.median(r for _, r in rounds)
    print(f"qhybrid up cold -> healthy: median {healthy:.2f} s over {args.rounds} rounds "
          f"(every worker live: {ready:.2f} s)")
    ray = ray_round()
    print(f"baseline ray start -> job API: {ray:.2f} s" if ray is not None else
          "baseline ray start -> job API: Ray is not installed here (pip install ray to compare)")
    print(f"goal: healthy <= 3 s -> {'met' if healthy <= 3.0 else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
