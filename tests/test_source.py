"""Shipped code keeps its file name and source lines, whatever cloudpickle writes for them."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qhybrid import _executor, _source

ROOT = Path(__file__).resolve().parent.parent

SOURCE = '''import inspect


def check(x):
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def work(x):
    return [check(y) for y in range(x + 1)]


def source_of_work():
    return inspect.getsource(work)
'''

LOADER = """
import sys, traceback, cloudpickle
work, source_of_work = cloudpickle.loads(sys.stdin.buffer.read())
print(source_of_work(), end="")
try:
    work(3)
except ValueError:
    traceback.print_exc()
"""


@pytest.mark.parametrize("dumps", [_executor.dumps, _source.dumps], ids=["task", "hybrid-job"])
def test_a_function_whose_file_is_gone_keeps_its_traceback_and_source(
        tmp_path: Path, dumps: Callable[[Any], bytes]) -> None:
    # given functions of a user's script, pickled by value, and the script then gone
    path = tmp_path / "src" / "main.py"
    path.parent.mkdir()
    path.write_text(SOURCE)
    script = runpy.run_path(str(path), run_name="qh_user_script")
    blob = dumps((script["work"], script["source_of_work"]))
    path.unlink()
    # when a fresh process (a worker's, with no such file) loads and calls them
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LOADER], input=blob, capture_output=True,
                          cwd=tmp_path, env=env, timeout=60)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    # then the traceback names the user's file, line and source line, nested code included
    assert f'File "{path}", line 6, in check\n    raise ValueError(f"bad value {{x}}")' in err
    assert f'File "{path}", line 11, in <listcomp>' in err
    assert "return [check(y) for y in range(x + 1)]" in err
    # and inspect.getsource() gives the function's own text
    assert out == "def work(x):\n    return [check(y) for y in range(x + 1)]\n"


def test_registered_source_outlives_a_linecache_check(tmp_path: Path) -> None:
    # given text registered for a file name that also exists on disk with other content
    path = tmp_path / "shadow.py"
    path.write_text("on disk\n")
    _source.register_source(str(path), "shipped\nsource\n")
    import linecache

    # then tracebacks' cache check keeps it, and it is what linecache reads
    linecache.checkcache()
    assert linecache.getline(str(path), 2) == "source\n"
    linecache.clearcache()


def test_plain_arguments_pickle_as_the_standard_pickler_does_and_the_rest_by_value() -> None:
    import pickle

    import cloudpickle

    # plain data: the standard pickler's bytes (a task's usual arguments and results)
    plain = ((1, "a", 2.5, None, b"x", True, 1j), {"k": [1, 2], "m": {"n": (3,)}})
    assert _executor.dumps(plain) == pickle.dumps(plain, protocol=5)
    # anything else inside, however deep, still goes by value through cloudpickle
    calls = ((lambda x: x + 1,), {})
    assert cloudpickle.loads(_executor.dumps(calls))[0][0](1) == 2
    deep = [[[[[{"x": 1}]]]]]
    assert pickle.loads(_executor.dumps(deep)) == deep
