"""Data files through the API against boto3 directly on the same S3 endpoint, in one run.

Starts a moto S3 server (its own process), an embedded Redis and two web processes on that
bucket: one as configured by default (S3 downloads redirect to a presigned URL) and one with
QHYBRID_FILES_REDIRECT=0 (downloads stream through the web process). Then, with one file of
`--size` bytes (default 1 GiB, a tar header and random bytes):

* upload: boto3 `upload_file` (the store's transfer settings) vs `Client.file_upload`
  (requests streams the file, the web process streams it into an S3 multipart upload);
* download: boto3 `get_object` (one streamed GET; with --ranged also `download_file`, whose
  parallel ranged GETs moto serves very slowly) vs `Client.file_download`, redirected and
  streamed; the ratio is against the fastest direct way.

Both web processes are warmed up first with a small upload and download, so the RSS growth
is what a transfer costs a running server, not its first request's imports.

It prints each throughput, the ratio API / direct (goal: at least 0.5x) and the web
process's peak RSS growth during each API transfer (goal: at most 64 MiB), read from
/proc (`VmHWM` after resetting it through `clear_refs`, and sampled `VmRSS`).

    python -m benchmarks.file_transfer [--size 1073741824] [--repeats 3] [--ranged]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

from app.service import Service, free_port, start_redis
from qhybrid import Client
from storage.store import MULTIPART
from tasks.core.redis_client import connect
from tasks.core.registry import Registry

MiB = 1024 * 1024
GiB = 1024 * MiB
BUCKET = "qh-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}


# --- the web process's memory -----------------------------------------------------------------
def _status(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


@dataclass
class RssWatch:
    """Peak RSS of one process during a block, relative to its RSS when the block began."""

    pid: int
    baseline: int = 0
    peak: int = 0
    hwm_reset: bool = False

    @contextlib.contextmanager
    def during(self) -> Iterator[RssWatch]:
        try:   # reset the kernel's high-water mark (Linux >= 4.0, own processes)
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = self.peak = _status(self.pid, "VmRSS")
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                self.peak = max(self.peak, _status(self.pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            stop.set()
            sampler.join()
            self.peak = max(self.peak, _status(self.pid, "VmRSS"))
            if self.hwm_reset:
                self.peak = max(self.peak, _status(self.pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# --- the parts ------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[str]:
    """moto's S3 in a process of its own, so it does not share this process's GIL."""
    port = free_port()
    log = open(tmp / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **CREDENTIALS}, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto did not start; see {tmp / 'moto.log'}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def web(env: dict[str, str], tmp: Path, name: str) -> Service:
    svc = Service(host="127.0.0.1", port=free_port(), env=env, classes=[], log_dir=tmp / name)
    svc.start_web()
    svc.wait_ready(timeout=60)
    return svc


def web_worker_pid(svc: Service) -> int:
    """The gunicorn worker (one, with threads) that serves the requests."""
    master = svc.procs["web"].pid
    deadline = time.monotonic() + 10
    while not (kids := _children(master)):
        if time.monotonic() > deadline:
            raise RuntimeError("gunicorn has no worker")
        time.sleep(0.05)
    return kids[0]


def make_file(path: Path, size: int) -> None:
    """A tar header (so the API accepts it) followed by random bytes, `size` bytes in all."""
    info = tarfile.TarInfo("payload.bin")
    info.size = size - 512
    block = os.urandom(8 * MiB)
    with open(path, "wb") as fh:
        fh.write(info.tobuf())
        left = size - 512
        while left > 0:
            fh.write(block[:min(left, len(block))])
            left -= len(block)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def get_object(s3: object, key: str, path: Path) -> None:
    """One streamed GET of the whole object, as the API's redirect or stream does."""
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]  # type: ignore[attr-defined]
    with open(path, "wb") as fh:
        while chunk := body.read(MiB):
            fh.write(chunk)


def same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while chunk := fa.read(8 * MiB):
            if chunk != fb.read(8 * MiB):
                return False
    return True


# --- the run --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=GiB, help="bytes in the file [1 GiB]")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each transfer [3]")
    parser.add_argument("--ranged", action="store_true",
                        help="also time boto3 download_file (parallel ranged GETs; slow on moto)")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)

    tmp = Path(tempfile.mkdtemp(prefix="qh-bench-files-"))
    redis_proc = None
    webs: list[Service] = []
    try:
        with moto_server(tmp) as endpoint:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            redis_proc, redis_url = start_redis(tmp / "data")
            env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
            env.update({"QHYBRID_REDIS_URL": redis_url, "QHYBRID_DATA_DIR": str(tmp / "data"),
                        "QHYBRID_STORAGE_URL": f"s3://{BUCKET}/qhybrid",
                        "QHYBRID_S3_ENDPOINT_URL": endpoint, "QHYBRID_SECRET_KEY": "bench",
                        "QHYBRID_FILES_MAX_BYTES": str(4 * args.size + GiB)})
            redirecting = web(env, tmp, "web-redirect")
            webs.append(redirecting)
            streaming = web({**env, "QHYBRID_FILES_REDIRECT": "0"}, tmp, "web-stream")
            webs.append(streaming)
            token = Registry(connect(redis_url)).create_user("bench")
            run(args, tmp, s3, endpoint, token, redirecting, streaming)
    finally:
        for svc in webs:
            svc.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, s3: object, endpoint: str, token: str,
        redirecting: Service, streaming: Service) -> None:
    src = tmp / "payload.tar"
    make_file(src, args.size)
    transfer = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART,
                              max_concurrency=4)   # what storage.store.S3Store uses
    client = Client(url=redirecting.url, token=token, timeout=600)
    client_streaming = Client(url=streaming.url, token=token, timeout=600)
    rss = {"redirect": RssWatch(web_worker_pid(redirecting)),
           "stream": RssWatch(web_worker_pid(streaming))}
    mb = args.size / 1e6
    rows: dict[str, list[float]] = {}
    growth: dict[str, list[int]] = {}

    def measure(label: str, fn: Callable[[], object], watch: RssWatch | None = None) -> None:
        os.sync()   # every transfer starts without the previous one's dirty pages to write back
        if watch is None:
            seconds = timed(fn)
        else:
            with watch.during():
                seconds = timed(fn)
            growth.setdefault(label, []).append(watch.growth)
        rows.setdefault(label, []).append(seconds)

    def one_round(out: Path, direct_key: str) -> None:
        measure("upload direct (boto3)",
                lambda: s3.upload_file(str(src), BUCKET, direct_key, Config=transfer))  # type: ignore[attr-defined]
        measure("upload via API", lambda: client.file_upload(src), rss["redirect"])
        measure("download direct (boto3 one GET)",
                lambda: get_object(s3, direct_key, out / "direct-get"))
        if args.ranged:
            measure("download direct (boto3 ranged)",
                    lambda: s3.download_file(BUCKET, direct_key, str(out / "direct"),  # type: ignore[attr-defined]
                                             Config=transfer))
        measure("download via API (redirect)",
                lambda: client.file_download(src.name, "redirect", download_location=out),
                rss["redirect"])
        measure("download via API (streamed)",
                lambda: client_streaming.file_download(src.name, "streamed",
                                                       download_location=out),
                rss["stream"])
        for name in ("direct-get", "redirect", "streamed") + (("direct",) if args.ranged else ()):
            if not same(src, out / name):
                raise SystemExit(f"{name} download differs from the upload")
        s3.delete_object(Bucket=BUCKET, Key=direct_key)  # type: ignore[attr-defined]
        client.file_delete(src.name)

    # Warm both web processes up first (lazy imports, S3 client internals, thread pools):
    # what is measured below is a server in its steady state, not its first request.
    warm = tmp / "warm.tar"
    make_file(warm, 3 * MULTIPART)
    for c in (client, client_streaming):
        c.file_upload(warm)
        c.file_download(warm.name, "warm-copy", download_location=tmp)
        c.file_delete(warm.name)

    for i in range(args.repeats):
        out = tmp / f"out-{i}"
        out.mkdir()
        one_round(out, f"direct/{uuid.uuid4().hex}")
        shutil.rmtree(out)

    best = {label: min(times) for label, times in rows.items()}
    print(f"# file transfer: {args.size / GiB:g} GiB through the qhybrid API vs boto3 directly, "
          f"S3 = moto server at {endpoint}")
    print(f"# {datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} cores, "
          f"best of {args.repeats} (median in brackets)")
    print("# x direct: throughput / that of the fastest direct way; RSS: the largest growth seen")
    print(f"{'transfer':32} {'seconds':>16} {'MB/s':>8} {'x direct':>9} {'web peak RSS growth':>20}")
    direct_down = min(t for label, t in best.items() if label.startswith("download direct"))
    for label, seconds in best.items():
        direct = best["upload direct (boto3)"] if label.startswith("upload") else direct_down
        ratio = direct / seconds
        peak = f"{max(growth[label]) / MiB:.1f} MiB" if label in growth else ""
        median = statistics.median(rows[label])
        print(f"{label:32} {seconds:7.2f} ({median:6.2f}) {mb / seconds:8.1f} {ratio:8.2f}x "
              f"{peak:>20}")
    up = best["upload direct (boto3)"] / best["upload via API"]
    down = direct_down / best["download via API (streamed)"]
    worst_rss = max(max(v) for v in growth.values()) / MiB
    print(f"goals: upload {up:.2f}x and streamed download {down:.2f}x of direct (>= 0.5x): "
          f"{'met' if min(up, down) >= 0.5 else 'NOT met'}; "
          f"web peak RSS growth {worst_rss:.1f} MiB (<= 64 MiB): "
          f"{'met' if worst_rss <= 64 else 'NOT met'}")


if __name__ == "__main__":
    main()
