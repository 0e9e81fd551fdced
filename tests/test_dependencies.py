"""Jobs' `dependencies`: installed into a cached environment per set on the worker host,
layered over the base environment, seen by the job, its subprocesses and its distributed
tasks, from the configured index only, never as root.

The test services' index is a directory of hand-made wheels (tests/wheels.py).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from qhybrid import Client, Program
from qhybrid.errors import InvalidInput
from qhybrid.hybrid import hybrid_job
from tests.conftest import RunningService, write_program

USES = """
import os, subprocess, sys
import numpy, qh_needs_numpy, qh_tiny_dep
from qhybrid import distribute_task, get, save_result

@distribute_task(target="small")
def in_a_task():
    import qh_tiny_dep
    return qh_tiny_dep.VALUE

site = os.path.dirname(qh_tiny_dep.__file__)
try:
    open(os.path.join(site, "mine.py"), "w").write("x")
    writable = True
except OSError:
    writable = False
child = subprocess.run([sys.executable, "-c", "import qh_tiny_dep; print(qh_tiny_dep.VALUE)"],
                       capture_output=True, text=True)
cli = subprocess.run(["qh-tiny-cli"], capture_output=True, text=True)
save_result({"value": qh_tiny_dep.VALUE, "total": qh_needs_numpy.total([1, 2]),
             "numpy_in_env": numpy.__file__.startswith(site), "writable": writable,
             "subprocess": child.stdout.strip() or child.stderr[-500:],
             "cli": cli.stdout.strip() or cli.stderr[-500:], "task": get(in_a_task())})
"""


def _upload(client: Client, tmp: Path, source: str, deps: list[str], title: str = "deps") -> Program:
    src = write_program(tmp / title, source)
    return client.upload(Program(title=title, entrypoint="main.py", working_dir=src,
                                 dependencies=deps))


def _result(job: Any, timeout: float = 180) -> Any:
    try:
        return job.result(timeout=timeout)
    except Exception:
        print(job.logs(), job.error_message())
        raise


def test_a_programs_dependencies_are_installed_once_and_seen_everywhere_it_runs(
        client: Client, tmp_path: Path) -> None:
    program = _upload(client, tmp_path, USES, ["qh-tiny-dep==0.1", "qh-needs-numpy"])
    first = program.run()
    out = _result(first)
    assert out == {"value": 42, "total": 3.0, "numpy_in_env": False, "writable": False,
                   "subprocess": "42", "cli": "tiny-dep cli 42", "task": 42}
    # pip's own output is in the job's log
    log = first.logs()
    assert "[qhybrid: installing dependencies: qh-tiny-dep==0.1, qh-needs-numpy]" in log
    # numpy came from the base environment, not the index (which has none)
    assert "Requirement already satisfied: numpy" in log
    assert "\nSuccessfully installed qh-needs-numpy-1.0 qh-tiny-dep-0.1\n" in log
    # the same set, spelled and ordered otherwise: nothing is installed again
    again = _upload(client, tmp_path, USES, ["QH_Needs_Numpy", "qh-tiny-dep == 0.1"], "again")
    second = again.run()
    assert _result(second) == out
    assert "[qhybrid: dependencies already installed on this host]" in second.logs()
    assert "Successfully installed" not in second.logs()


def test_another_set_is_another_environment(client: Client, tmp_path: Path) -> None:
    source = "import qh_tiny_dep\nfrom qhybrid import save_result\nsave_result(qh_tiny_dep.VALUE)\n"
    old = _upload(client, tmp_path, source, ["qh-tiny-dep==0.1"], "old").run()
    new = _upload(client, tmp_path, source, ["qh-tiny-dep==0.2"], "new").run()
    plain = _upload(client, tmp_path, "import importlib.util\nfrom qhybrid import save_result\n"
                    "save_result(importlib.util.find_spec('qh_tiny_dep') is None)\n", [], "plain")
    assert (_result(old), _result(new), _result(plain.run())) == (42, 43, True)


def test_jobs_started_together_with_a_new_set_share_one_install(client: Client,
                                                                  tmp_path: Path) -> None:
    # one job keeps the environment in use for a while; another with the same set, started
    # at the same time, must not wait for it to end
    holding = _upload(client, tmp_path, "import time, qh_needs_numpy\ntime.sleep(60)\n",
                      ["qh-needs-numpy==1.0"], "holding").run()
    quick = _upload(client, tmp_path, "import qh_needs_numpy\nfrom qhybrid import save_result\n"
                    "save_result(qh_needs_numpy.total([2, 3]))\n", ["qh-needs-numpy==1.0"],
                    "quick").run()
    try:
        assert _result(quick, timeout=45) == 5.0
        assert holding.status() == "RUNNING"
        logs = holding.logs() + quick.logs()
        assert logs.count("installing dependencies: qh-needs-numpy==1.0") == 1
        assert logs.count("dependencies already installed on this host") == 1
    finally:
        holding.cancel()


def test_a_requirement_the_base_environment_cannot_meet_fails_the_job_with_pips_reason(
        client: Client, tmp_path: Path) -> None:
    job = _upload(client, tmp_path, "print('never')\n", ["qh-wants-old-numpy"]).run()
    job.wait(timeout=180)
    assert job.status() == "ERROR"
    error = job.error_message()
    assert "installing the dependencies failed" in error and "pip said" in error
    assert "numpy" in error
    log = job.logs()
    assert "installing dependencies: qh-wants-old-numpy" in log
    assert "qh-wants-old-numpy" in log.split("]", 1)[1]      # pip's output, not only ours
    assert "never" not in log


def test_a_hybrid_jobs_dependencies_are_installed(client: Client) -> None:
    def value() -> int:
        import qh_tiny_dep
        return int(qh_tiny_dep.VALUE)

    job = hybrid_job(device=None, client=client, dependencies=["qh-tiny-dep==0.2"])(value)()
    assert job.result(timeout=180) == 43
    # installed for it, or by an earlier test's job with the same set on this host
    assert ("installing dependencies: qh-tiny-dep==0.2" in job.logs()
            or "dependencies already installed on this host" in job.logs())


@pytest.mark.parametrize("requirement", [
    "qh-tiny-dep @ https://example.com/qh_tiny_dep-0.1-py3-none-any.whl",
    "qh-tiny-dep @ file:///etc/passwd",
    "-e .", "--index-url=https://example.com/simple qh-tiny-dep", "qh-tiny-dep==0.1\nevil",
    "", "x" * 201,
])
def test_a_requirement_that_is_not_a_name_and_version_is_refused(
        service: RunningService, client: Client, tmp_path: Path, requirement: str) -> None:
    src = write_program(tmp_path / "src", "print(1)\n")
    with pytest.raises(InvalidInput) as err:
        client.upload(Program(title="bad-deps", entrypoint="main.py", working_dir=src,
                              dependencies=[requirement]))
    assert err.value.field == "dependencies"
    if requirement.strip():       # a blank line of a requirements list is skipped there
        with pytest.raises(InvalidInput):
            hybrid_job(device=None, client=client, dependencies=[requirement])(len)([])
    # the answer is problem+json, and nothing was stored
    resp = requests.post(f"{service.url}/api/v1/programs", timeout=30,
                         headers={"Authorization": f"Bearer {client.token}"},
                         data={"title": "bad-deps", "entrypoint": "main.py",
                               "dependencies": json.dumps([requirement])},
                         files={"source": ("main.py", b"print(1)\n")})
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert client.programs() == [] and client.jobs() == []


def test_dependencies_are_refused_when_the_server_does_not_install(
        redis_server: str, tmp_path: Path) -> None:
    from app import create_app
    from tasks.core.settings import Settings

    settings = Settings(redis_url=f"{redis_server}/15", storage_url=(tmp_path / "s").as_uri(),
                        s3_endpoint_url=None, data_dir=tmp_path / "d",
                        resource_classes_path=None, allow_installs=False,
                        secret_key="test-secret")
    web = create_app({"SETTINGS": settings, "TESTING": True}).test_client()
    from tasks.core.redis_client import connect
    from tasks.core.registry import Registry

    token = Registry(connect(settings.redis_url)).create_user(f"u{os.getpid()}")
    resp = web.post("/api/v1/programs", headers={"Authorization": f"Bearer {token}"},
                    data={"title": "deps", "entrypoint": "main.py",
                          "dependencies": json.dumps(["qh-tiny-dep==0.1"]),
                          "source": (tempfile.SpooledTemporaryFile(), "main.py")})
    assert resp.status_code == 400
    assert resp.json is not None and "does not install" in resp.json["detail"]
    assert resp.json["field"] == "dependencies"
    resp = web.get("/api/v1/programs", headers={"Authorization": f"Bearer {token}"})
    assert resp.json == {"programs": []}


def test_an_install_stops_when_the_job_is_canceled(tmp_path: Path) -> None:
    """pip waiting on an index that never answers is killed when `tick` says canceled."""
    import psutil

    from tasks.core.settings import Settings
    from tasks.sandbox import box, dependencies

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    settings = Settings(redis_url="redis://unused", storage_url=(tmp_path / "s").as_uri(),
                        s3_endpoint_url=None, data_dir=tmp_path / "d", resource_classes_path=None,
                        package_index=f"http://127.0.0.1:{silent.getsockname()[1]}/simple")
    envs = dependencies.root(settings)
    cancel = threading.Event()
    seen: set[int] = set()

    def tick() -> bool:            # pip runs in its staging directory below `envs`
        for proc in psutil.process_iter():
            try:
                if proc.cwd().startswith(str(envs)):
                    seen.add(proc.pid)
            except psutil.Error:
                pass
        return cancel.is_set()

    threading.Timer(3.0, cancel.set).start()
    start = time.monotonic()
    try:
        with tempfile.TemporaryFile() as log, pytest.raises(dependencies.InstallCanceled):
            dependencies.ensure(["qh-never==1.0"], settings, log, tick)
        assert time.monotonic() - start < 30
        assert seen, "pip ran"
        assert not [p for p in seen if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert [p.name for p in envs.iterdir() if p.is_dir()] == []
    finally:
        silent.close()
        box.shutdown()


def test_as_root_pip_runs_as_the_job_account_and_the_environment_is_read_only(
        isolated_service: RunningService, tmp_path: Path) -> None:
    client = isolated_service.client()
    source = ("import os, qh_tiny_dep\nfrom qhybrid import save_result\n"
              "site = os.path.dirname(qh_tiny_dep.__file__)\n"
              "save_result({'uid': os.getuid(), 'value': qh_tiny_dep.VALUE,"
              " 'owner': os.stat(qh_tiny_dep.__file__).st_uid})\n")
    job = _upload(client, tmp_path, source, ["qh-tiny-dep==0.1"]).run()
    out = _result(job)
    nobody = __import__("pwd").getpwnam("nobody").pw_uid
    assert out["value"] == 42 and out["uid"] == nobody
    # on the host: the worker's (root's), written by no one else
    work = Path(isolated_service.env["QHYBRID_WORK_DIR"]) / "environments"
    [env] = [p for p in work.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for path in env.rglob("*"):
        st = path.lstat()
        assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), path
    assert out["owner"] != nobody


SERVERLESS_FLOW = r'''
from qiskit_serverless import QiskitFunction, ServerlessClient
client = ServerlessClient(host=P["host"], token=P["token"], instance="an_awesome_crn",
                          channel="ibm_quantum_platform")
# the gateway's object form too: {"name": "version"}
fn = client.upload(QiskitFunction(title="with-deps", entrypoint="uses.py",
                                  working_dir=P["src"], dependencies=[{"qh-tiny-dep": "0.2"}]))
job = fn.run()
result = job.result(wait=True, cadence=0.2)
print(json.dumps({"result": result, "status": job.status(), "logs": job.logs(),
                  "listed": client.function("with-deps").dependencies}))
'''


def test_a_serverless_functions_dependencies_are_installed_for_its_jobs(
        service: RunningService, tmp_path: Path) -> None:
    # one client version: 0.35.0 sends `dependencies` the same way (json.dumps of the list)
    from tests.serverless_envs import ensure_env, run_client

    src = tmp_path / "src"
    src.mkdir()
    (src / "uses.py").write_text("import qh_tiny_dep\nfrom qiskit_serverless import save_result\n"
                                 "save_result({'value': qh_tiny_dep.VALUE})\n")
    _, token = service.new_user()
    seen = run_client(ensure_env("0.37.0"), SERVERLESS_FLOW, host=service.url, token=token,
                      src=str(src))
    assert seen["result"] == {"value": 43} and seen["status"] == "DONE"
    assert ("installing dependencies: qh-tiny-dep==0.2" in seen["logs"]
            or "dependencies already installed on this host" in seen["logs"])
    assert seen["listed"] == ["qh-tiny-dep==0.2"]
