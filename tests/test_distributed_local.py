"""Local mode: the same distributed calls without a service, on a pool of local processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import inspect, json, os
import time
from qhybrid import TaskFailed, Timeout, distribute_task, get, map_reduce, put, wait
from qhybrid.errors import NoResourceClass

offset = 10          # a global of the script: shipped by value with the function

@distribute_task(target={"cpu": 1, "mem": 2 * 1024**3})
def add(x, table=None):
    return x + offset + (sum(table) if table is not None else 0)

@distribute_task(target="small")
def fail(x):
    raise KeyError(f"no {x}")

@distribute_task
def fan(n):
    return sum(get([add(i) for i in range(n)]))     # nested: runs inline in the worker

@distribute_task
def pid(_):
    return os.getpid()

@distribute_task
def nap(seconds):
    time.sleep(seconds)
    return seconds

@distribute_task
def source_of(task):
    return inspect.getsource(task)

out = {}
refs = [add(i) for i in range(50)]
out["ordered"] = get(refs) == [i + 10 for i in range(50)]
table = put(list(range(100)))
out["put"] = get([add(0, table) for _ in range(20)]) == [10 + 4950] * 20
try:
    get([add(1), fail(2)])
except TaskFailed as exc:
    out["error"] = str(exc)
    out["remote_type"] = exc.extra["remote_type"]
out["nested"] = get(fan(4))
done, pending = wait([add(1), add(2), add(3)], num_returns=2, timeout=30)
out["wait"] = [len(done), len(pending)]
out["map_reduce"] = map_reduce(lambda x: x * 2, range(200), reduce=sum)
out["map_only"] = map_reduce(lambda x: -x, range(3))
out["processes"] = len(set(get([pid(i) for i in range(16)])))
out["parent"] = os.getpid() not in get([pid(0)])
out["source"] = get(source_of(fail))
slow = nap(0.5)
try:
    get(slow, timeout=0.05)
except Timeout:
    out["timeout"] = True
out["after_timeout"] = get(slow)
try:
    distribute_task(target={"cpu": 64})(abs)(1)
except NoResourceClass as exc:
    out["no_class"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the script once as a plain `python script.py` (no job, no service)."""
    tmp = tmp_path_factory.mktemp("local")
    (tmp / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHYBRID_")}
    env.update({"PYTHONPATH": str(ROOT), "QHYBRID_LOCAL_WORKERS": "2"})
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_local_mode_keeps_order_and_shares_put_objects(local_run: dict) -> None:
    assert local_run["ordered"] is True and local_run["put"] is True


def test_local_mode_raises_task_failed_with_the_remote_traceback(local_run: dict) -> None:
    assert "KeyError: 'no 2'" in local_run["error"]
    assert 'script.py", line 15, in fail' in local_run["error"]
    assert local_run["remote_type"] == "KeyError"


def test_local_mode_tasks_read_the_source_of_shipped_functions(local_run: dict) -> None:
    assert local_run["source"] == ('@distribute_task(target="small")\n'
                                   'def fail(x):\n    raise KeyError(f"no {x}")\n')


def test_local_mode_nests_waits_and_map_reduces(local_run: dict) -> None:
    assert local_run["nested"] == sum(i + 10 for i in range(4))
    assert local_run["wait"] == [2, 1]
    assert local_run["map_reduce"] == 2 * sum(range(200))
    assert local_run["map_only"] == [0, -1, -2]


def test_local_mode_runs_in_other_processes(local_run: dict) -> None:
    assert local_run["parent"] is True and 1 <= local_run["processes"] <= 2


def test_local_mode_get_times_out_and_the_task_goes_on(local_run: dict) -> None:
    assert local_run["timeout"] is True and local_run["after_timeout"] == 0.5


def test_local_mode_refuses_a_target_no_class_fits(local_run: dict) -> None:
    assert "no resource class fits cpu=64" in local_run["no_class"]
