"""Many machines: one web host and three worker hosts sharing only Redis and S3 over loopback.

Each host is its own mount, UTS and PID namespace (tests.simhosts): own hostname, private
/tmp holding its data and work directories, nothing of the filesystem shared with the others
or with the web. Midway, every process of the host running the 1000-task fan-out's parent
is SIGKILLed; everything still ends DONE, its jobs after their one rerun.
"""

from __future__ import annotations

import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.service import free_port
from qhybrid import Client, Program, hybrid_job
from qhybrid.errors import Timeout
from qhybrid.hybrid_env import (
    get_input_data_dir,
    get_results_dir,
    load_job_checkpoint,
    save_job_checkpoint,
)
from tasks.core import defaults as d
from tasks.core.redis_client import connect
from tasks.core.registry import Registry
from tests.conftest import wait_until, write_program
from tests.simhosts import SimHost, can_simulate_hosts

WORKER_HOSTS = ["qh-worker-1", "qh-worker-2", "qh-worker-3"]
FANOUT_TASKS = 1000
PROGRAM_JOBS = 50
MAPS = 200

FANOUT = """
import socket
from qhybrid import distribute_task, get, get_arguments, save_result
print("parent on", socket.gethostname(), flush=True)

@distribute_task(target="small")
def square(i):
    import socket, time
    time.sleep(0.005)
    return i * i, socket.gethostname()

out = get([square(i) for i in range(get_arguments()["n"])])
save_result({"sum": sum(v for v, _ in out), "hosts": sorted({h for _, h in out})})
"""

MAP_REDUCE = """
import os, socket, time
from qhybrid import Client, map_reduce, save_result
print("parent on", socket.gethostname(), flush=True)
stored = os.path.getsize(Client().file_download("table.tar", download_location="."))

def inc(x):
    time.sleep(0.01)
    return x + 1

save_result({"total": map_reduce(inc, range(MAPS), sum), "stored": stored})
"""

PROGRAM = """
import socket, time
from qhybrid import get_arguments, save_result
a = get_arguments()
print("job", a["i"], "on", socket.gethostname(), flush=True)
time.sleep(0.3)
save_result({"i": a["i"], "host": socket.gethostname()})
"""


def train(steps: int) -> dict[str, Any]:
    """A hybrid job: reads its input channel, checkpoints each step, writes results."""
    import os
    import socket
    import time
    from pathlib import Path

    data = np.load(Path(get_input_data_dir()) / "weights.npy")
    for step in range(steps):
        save_job_checkpoint({"step": step, "weights": (data * step).tolist()})
        time.sleep(0.3)
    Path(get_results_dir(), "weights.npy").write_bytes(Path(get_input_data_dir(),
                                                            "weights.npy").read_bytes())
    print("trained on", socket.gethostname(), flush=True)
    return {"steps": steps, "host": socket.gethostname(), "pid": os.getpid()}


@pytest.fixture
def hosts(tmp_path: Path, redis_server: str, moto_endpoint: str) -> Iterator[dict[str, Any]]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)    # moto's request log
    why = can_simulate_hosts()
    if why:
        pytest.skip(why)
    import boto3

    bucket = "qh-multi-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    # only what every host shares: Redis, S3, the session key; no data dir, no local path
    shared = {k: v for k, v in __import__("os").environ.items()
              if not k.startswith(("QHYBRID_", "AWS_"))}
    shared.update({
        "QHYBRID_REDIS_URL": f"{redis_server}/7",
        "QHYBRID_STORAGE_URL": f"s3://{bucket}/qhybrid",
        "QHYBRID_S3_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "QHYBRID_JOB_USER": "",
        # one class per worker host, two jobs and two tasks at a time
        "QH_SIMHOST_CLASSES_TOML": "[classes.small]\ncpu = 1\nmem = 2147483648\nconcurrency = 2\n",
    })
    port = free_port()
    logs = tmp_path / "hosts"
    started = [SimHost.start("qh-web", ["web", str(port)], shared, logs)]
    started += [SimHost.start(name, ["worker", "small"], shared, logs) for name in WORKER_HOSTS]
    registry = Registry(connect(shared["QHYBRID_REDIS_URL"]))
    try:
        def ready() -> bool:
            live = registry.workers_by_queue()
            names = {n.split(":")[0] for q in ("jobs.small", "tasks.small")
                     for n in live.get(q, [])}
            return names >= set(WORKER_HOSTS) and all(
                len([n for n in live.get(q, []) if n.startswith(h + ":")]) == 1
                for q in ("jobs.small", "tasks.small") for h in WORKER_HOSTS)
        wait_until(ready, timeout=180, interval=0.2)
        url = f"http://127.0.0.1:{port}"
        import requests

        wait_until(lambda: _get_ok(requests, url + "/healthz"), timeout=30, interval=0.2)
        token = registry.create_user("multi" + uuid.uuid4().hex[:8])
        yield {"client": Client(url=url, token=token), "registry": registry,
               "hosts": {h.name: h for h in started}}
    except BaseException:
        for h in started:
            print(h.log_tail())
        raise
    finally:
        for h in started:
            if h.proc.poll() is None:
                h.kill()


def _get_ok(requests: Any, url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def _tasks_of(registry: Registry, job_id: str) -> list[dict[str, str]]:
    ids = registry.r.zrange(d.JOB_TASKS_KEY.format(job_id=job_id), 0, -1)
    pipe = registry.r.pipeline(transaction=False)
    for t in ids:
        pipe.hgetall(d.TASK_KEY.format(task_id=t))
    return list(pipe.execute())


def test_four_hosts_share_only_redis_and_s3_and_survive_one_killed(
        hosts: dict[str, Any], tmp_path: Path) -> None:
    client: Client = hosts["client"]
    registry: Registry = hosts["registry"]
    machines: dict[str, SimHost] = hosts["hosts"]

    # given a data file in the user's store and an input channel for a hybrid job
    weights = np.arange(6.0)
    channel = tmp_path / "channel"
    channel.mkdir()
    np.save(channel / "weights.npy", weights)
    with tarfile.open(tmp_path / "table.tar", "w") as tar:
        tar.add(channel / "weights.npy", arcname="weights.npy")
    assert client.file_upload(tmp_path / "table.tar") == "table.tar"

    # when a fan-out, a map_reduce, a hybrid job and 50 program jobs run on the worker hosts
    def upload(title: str, src: str) -> Program:
        return client.upload(Program(title=title, entrypoint="main.py",
                                     working_dir=write_program(tmp_path / title, src)))

    fanout = upload("fanout", FANOUT).run(n=FANOUT_TASKS)
    mapred = upload("mapred", MAP_REDUCE.replace("MAPS", str(MAPS))).run()
    trained = hybrid_job(device=None, input_data=str(channel), client=client)(train)(steps=8)
    program = upload("many", PROGRAM)
    jobs = [program.run(i=i) for i in range(PROGRAM_JOBS)]

    # ... and, midway through the fan-out, every process of the host running its parent dies
    def fanout_midway() -> str | None:
        job = registry.get_job(fanout.job_id)
        done = sum(t.get("status") == d.DONE for t in _tasks_of(registry, fanout.job_id))
        if job["status"] == d.RUNNING and done >= 150:
            return str(job["worker"]).split(":")[0]
        assert job["status"] not in d.TERMINAL_STATUSES, (job.get("error"), fanout.logs(),
                                                          _diagnose(registry, fanout.job_id))
        return None

    t0 = time.monotonic()
    victim = wait_until(fanout_midway, timeout=120, interval=0.1)
    print(f"kill after {time.monotonic() - t0:.1f} s")
    assert victim in WORKER_HOSTS
    killed_at = time.time()
    before = [p.pid for p in machines[victim].processes()]
    assert len(before) >= 3                      # host init, job worker, task worker, ...
    machines[victim].kill()
    assert not any(_alive(pid) for pid in before), "a process of the killed host survived"

    # then everything ends DONE: nothing lost, the jobs of the dead host after one rerun
    ended = fanout.wait(timeout=150)
    print(f"fan-out ended after {time.monotonic() - t0:.1f} s")
    assert ended["status"] == "DONE", (ended.get("error"), _diagnose(registry, fanout.job_id))
    total = fanout.result()
    assert total["sum"] == sum(i * i for i in range(FANOUT_TASKS))
    assert victim not in total["hosts"] and len(total["hosts"]) == 2
    assert fanout.refresh()["attempt"] == 2
    assert sum("worker lost" in (e.get("detail") or "") for e in fanout.events()) == 1
    logs = fanout.logs()
    assert f"parent on {victim}" in logs and re.search(r"parent on qh-worker-\d", logs)

    try:
        mapred_end = mapred.wait(timeout=120)
    except Timeout as exc:
        raise AssertionError(_diagnose(registry, mapred.job_id) + "\n" + mapred.logs()) from exc
    assert mapred_end["status"] == "DONE", _diagnose(registry, mapred.job_id)
    assert mapred.result() == {"total": sum(range(1, MAPS + 1)),
                                          "stored": (tmp_path / "table.tar").stat().st_size}
    results = [j.result(timeout=120) for j in jobs]
    assert [r["i"] for r in results] == list(range(PROGRAM_JOBS))
    for j, r in zip(jobs, results, strict=True):
        raw = j.refresh()
        ran_on = re.findall(r" on (qh-worker-\d)", j.logs())
        if raw["attempt"] == 2:                  # ran again: its first attempt was on the victim
            assert r["host"] != victim and ran_on[-1] == r["host"], (ran_on, r)
            assert set(ran_on[:-1]) <= {victim}
            assert sum("worker lost" in (e.get("detail") or "") for e in j.events()) == 1
        else:
            assert raw["attempt"] == 1 and ran_on == [r["host"]]
            ended_at = registry.get_job(j.job_id)["ended"] or 0
            assert r["host"] != victim or ended_at <= killed_at + 1
        assert j.status() == "DONE"

    print(f"program jobs ended after {time.monotonic() - t0:.1f} s")
    out = trained.result(timeout=120)
    assert out["steps"] == 8 and trained.status() == "DONE"
    # logs, checkpoints, model.tar.gz and data files: all readable through the web host
    assert f"trained on {out['host']}" in trained.logs()
    assert trained.checkpoints() == [f"{trained.name}.json"]
    model = trained.download_result(extract_to=tmp_path / "model")
    np.testing.assert_array_equal(np.load(model / "weights.npy"), weights)
    resumed = hybrid_job(device=None, copy_checkpoints_from_job=trained.name,
                         client=client)(_load_checkpoint)(trained.name)
    assert resumed.result(timeout=120) == {"step": 7, "weights": (weights * 7).tolist()}
    assert client.files() == ["table.tar"]
    client.file_download("table.tar", download_location=str(tmp_path / "back"))
    assert (tmp_path / "back" / "table.tar").read_bytes() == (tmp_path / "table.tar").read_bytes()

    print(f"all read back after {time.monotonic() - t0:.1f} s")
    # and no task or job is stuck anywhere
    for job_id in [fanout.job_id, mapred.job_id, trained.job_id] + [j.job_id for j in jobs]:
        assert registry.get_job(job_id)["status"] == d.DONE
        assert not registry.r.hgetall(d.JOB_QUEUED_TASKS_KEY.format(job_id=job_id))
        stuck = [t for t in _tasks_of(registry, job_id) if t["status"] not in d.TERMINAL_STATUSES]
        assert not stuck, stuck[:3]
    assert not set(registry.active_jobs()) & {fanout.job_id, mapred.job_id}
    current = [t for t in _tasks_of(registry, fanout.job_id) if t["attempt"] == "2"]
    assert len(current) == FANOUT_TASKS and all(t["status"] == d.DONE for t in current)
    attempt = str(mapred.refresh()["attempt"])
    done = [t for t in _tasks_of(registry, mapred.job_id)
            if t["status"] == d.DONE and t["attempt"] == attempt]
    assert len(done) == MAPS + 1                 # every map and the reduce, none lost


def _diagnose(registry: Registry, job_id: str) -> str:
    """What a job and its tasks stand at: for the failure message of a stuck one."""
    from collections import Counter

    job = registry.r.hgetall(d.JOB_KEY.format(job_id=job_id))
    tasks = _tasks_of(registry, job_id)
    counts = Counter((t.get("attempt"), t.get("kind"), t.get("status")) for t in tasks)
    open_ = [{k: t.get(k) for k in ("id", "kind", "status", "worker", "tries", "attempt")}
             for t in tasks if t.get("status") not in d.TERMINAL_STATUSES][:5]
    queues = {q: registry.r.llen(q) for q in ("jobs.small", "tasks.small")}
    return (f"job {job.get('status')} attempt {job.get('attempt')} on {job.get('worker')}; "
            f"tasks {dict(counts)}; open {open_}; queues {queues}; "
            f"unacked {registry.r.hlen('unacked')}")


def _load_checkpoint(name: str) -> dict[str, Any]:
    return load_job_checkpoint(name)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
