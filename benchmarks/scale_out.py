"""Scale-out: a 1000-task distribute_task fan-out with 1, 2 and 3 worker hosts, side by side.

    python -m benchmarks.scale_out [--tasks 1000] [--rounds 3] [--hosts 1,2,3]

Needs root (hosts are mount, UTS and PID namespaces, tests.simhosts). For each count of
worker hosts it starts an embedded Redis, moto's S3 server, one web host and that many worker
hosts, each pinned to one core (taskset) with the `small` class sized to it (one job and one
task at a time); they share only Redis and S3 over 127.0.0.1. One job fans out `--tasks`
tasks of ~2 ms of CPU each per round; the figure is the median round, from first call to
last result. The baseline is the one-host figure. On a machine with fewer cores than hosts,
hosts share cores: the figure then shows that adding hosts costs nothing, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FANOUT = """
import time
from qhybrid import distribute_task, get, get_arguments, save_result

@distribute_task(target="small")
def work(i):
    end = time.process_time() + 0.002
    while time.process_time() < end:
        pass
    return i

args = get_arguments()
times = []
for _ in range(args["rounds"]):
    start = time.perf_counter()
    assert get([work(i) for i in range(args["tasks"])]) == list(range(args["tasks"]))
    times.append(time.perf_counter() - start)
save_result(times)
"""

CLASSES = "[classes.small]\ncpu = 1\nmem = 2147483648\nconcurrency = 1\n"


def measure(workers: int, tasks: int, rounds: int) -> list[float]:
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    from app.service import free_port, start_redis
    from qhybrid import Client, Program
    from tasks.core.redis_client import connect
    from tasks.core.registry import Registry
    from tests.simhosts import SimHost

    tmp = Path(tempfile.mkdtemp(prefix="qh-scale-"))
    redis_proc, redis_url = start_redis(tmp / "redis")
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
             "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    bucket = "qh-scale-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    env.update({"QHYBRID_REDIS_URL": redis_url, "QHYBRID_STORAGE_URL": f"s3://{bucket}/q",
                "QHYBRID_S3_ENDPOINT_URL": endpoint, "QHYBRID_JOB_USER": "",
                "QH_SIMHOST_CLASSES_TOML": CLASSES, **creds})
    cores = sorted(os.sched_getaffinity(0))
    port = free_port()
    hosts = [SimHost.start("bench-web", ["web", str(port)], env, tmp / "logs")]
    names = [f"bench-worker-{i + 1}" for i in range(workers)]
    hosts += [SimHost.start(n, ["worker", "small"], env, tmp / "logs", cpus=[cores[i % len(cores)]])
              for i, n in enumerate(names)]
    registry = Registry(connect(redis_url))
    try:
        deadline = time.monotonic() + 300
        while True:
            live = registry.workers_by_queue()
            up = {n.split(":")[0] for n in live.get("tasks.small", [])} & \
                {n.split(":")[0] for n in live.get("jobs.small", [])}
            if up >= set(names):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("worker hosts did not come up:\n"
                                   + "\n".join(h.log_tail() for h in hosts))
            time.sleep(0.2)
        client = Client(url=f"http://127.0.0.1:{port}", token=registry.create_user("bench"))
        while True:
            try:
                if requests.get(client.url + "/healthz?scope=web", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the web host did not come up")
            time.sleep(0.2)
        src = tmp / "src"
        src.mkdir()
        (src / "main.py").write_text(FANOUT)
        program = client.upload(Program(title="scale", entrypoint="main.py", working_dir=src))
        # a warm-up round starts each host's executor; then the measured rounds
        return list(program.run(tasks=tasks, rounds=rounds + 1).result(timeout=1800))[1:]
    finally:
        for h in hosts:
            h.kill()
        moto.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", default="1,2,3")
    args = parser.parse_args()
    from tests.simhosts import can_simulate_hosts

    why = can_simulate_hosts()
    if why:
        sys.exit(why)
    counts = [int(n) for n in args.hosts.split(",")]
    medians = {}
    for n in counts:
        times = measure(n, args.tasks, args.rounds)
        medians[n] = statistics.median(times)
        print(f"  {n} worker host(s): rounds {', '.join(f'{t:.2f}' for t in times)} s",
              flush=True)
    base = medians[counts[0]]
    print(f"\n{args.tasks}-task fan-out, median of {args.rounds} rounds, each host one core "
          f"(this machine: {len(os.sched_getaffinity(0))} cores)")
    print("  hosts  " + "".join(f"{n:>10}" for n in counts))
    print("  time s " + "".join(f"{medians[n]:>10.2f}" for n in counts))
    print("  vs 1   " + "".join(f"{base / medians[n]:>9.2f}x" for n in counts))
    print(f"  baseline: {counts[0]} worker host(s), {base:.2f} s")


if __name__ == "__main__":
    main()
