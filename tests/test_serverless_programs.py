"""Programs written for Qiskit Serverless run unchanged on qhybrid's workers, with the real
`qiskit_serverless` package there, submitted here with qhybrid's own client."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import requests
from qiskit import QuantumCircuit

from qhybrid import Client, JobFailed, Program
from tests.conftest import RunningService, bell, write_program

# An upstream-style program: the in-job package, its gateway calls, DATA_PATH, and an
# in-job ServerlessClient (with the job-scoped token from the environment).
IN_JOB = '''
import os
import requests
from qiskit_serverless import (Job, QiskitFunction, ServerlessClient, get_arguments, get_logger,
                               save_result, update_status)

args = get_arguments()
logger = get_logger()
assert update_status(Job.OPTIMIZING_HARDWARE)
host, token = os.environ["ENV_JOB_GATEWAY_HOST"], os.environ["ENV_JOB_GATEWAY_TOKEN"]
client = ServerlessClient(channel="ibm_quantum_platform", instance="an_awesome_crn")
me = QiskitFunction(title="in-job")
import tarfile
with open("b.txt", "w") as fh:
    fh.write(args["text"])
with tarfile.open(os.path.join(os.environ["DATA_PATH"], "from_job.tar"), "w") as tar:
    tar.add("b.txt")
auth = {"Authorization": f"Bearer {token}"}
probe = {
    # the job's own routes work
    "own": requests.get(f"{host}/api/v1/jobs/{os.environ['ENV_JOB_ID_GATEWAY']}/", headers=auth).status_code,
    # another job's, the user's job list and our own API do not
    "other_job": requests.get(f"{host}/api/v1/jobs/{args['other_job']}/", headers=auth).status_code,
    "job_list": requests.get(f"{host}/api/v1/jobs/", headers=auth).status_code,
    "native_api": requests.get(f"{host}/api/v1/jobs", headers=auth).status_code,
    "stop_self": requests.post(f"{host}/api/v1/jobs/{os.environ['ENV_JOB_ID_GATEWAY']}/stop/", headers=auth).status_code,
}
logger.info("probed")
# qiskit_ibm_runtime's local mode: its primitives on a fake backend, inside the job
from qiskit import transpile
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
from qiskit_ibm_runtime.fake_provider import FakeManilaV2
backend = QiskitRuntimeService(channel="local").backend("fake_manila")
isa = transpile(args["circuit"], backend, optimization_level=1, seed_transpiler=1)
local = SamplerV2(mode=backend).run([isa], shots=40).result()[0].data.meas.get_counts()
save_result({"local_shots": sum(local.values()), "backend": backend.name,
             "ibm_token": os.environ.get("QISKIT_IBM_TOKEN"),"circuit": args["circuit"], "doubled": args["vector"] * 2,
             "functions": [f.title for f in client.functions()],
             "files": client.files(me), "probe": probe, "token": token})
'''

RAY = '''
import ray
'''


def _tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_upstream_program_with_the_in_job_package(service: RunningService, tmp_path: Path) -> None:
    # given an upstream-style program, a file in the user's store and a job of another user
    client = service.client()
    other = service.client()
    other.upload(Program(title="x", entrypoint="main.py",
                         working_dir=write_program(tmp_path / "o", "print(1)\n")))
    other_job = other.run("x")
    tar_in = tmp_path / "input.tar"
    tar_in.write_bytes(_tar("a.txt", b"hello"))
    client.file_upload(str(tar_in))
    program = client.upload(Program(title="in-job", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "src", IN_JOB),
                                    env_vars={"QISKIT_IBM_TOKEN": "the-users-own"}))
    assert client.function("in-job").title == "in-job"

    # when it runs with typed arguments sent by qhybrid's client
    job = program.run(circuit=bell(), vector=np.arange(3.0), text="job",
                      other_job=other_job.job_id)
    result = job.result(timeout=180)

    # then the package read them typed, and its result comes back typed
    assert isinstance(result["circuit"], QuantumCircuit) and result["circuit"] == bell()
    np.testing.assert_array_equal(result["doubled"], np.arange(3.0) * 2)
    assert result["functions"] == ["in-job"]          # only the job's own function
    # qiskit_ibm_runtime runs in the job; the user's IBM credentials reach it as env_vars
    assert result["local_shots"] == 40 and result["backend"] == "fake_manila"
    assert result["ibm_token"] == "the-users-own"
    assert [j.job_id for j in program.jobs()] == [job.job_id]
    assert [j.job_id for j in client.jobs(status="SUCCEEDED")] == [job.job_id]
    assert result["files"] == ["input.tar"]
    assert result["probe"] == {"own": 200, "other_job": 403, "job_list": 403,
                               "native_api": 401, "stop_self": 403}
    assert "RUNNING: OPTIMIZING_FOR_HARDWARE" in [
        f"{e['status']}: {e['sub_status']}" for e in job.events() if e.get("sub_status")]
    assert "[PUBLIC] INFO: probed" in job.logs()
    # the file the job wrote into DATA_PATH is in the user's store
    assert sorted(client.files()) == ["from_job.tar", "input.tar"]
    # and the job's token died with the job
    dead = requests.get(f"{service.url}/api/v1/jobs/{job.job_id}/",
                        headers={"Authorization": f"Bearer {result['token']}"}, timeout=10)
    assert dead.status_code == 401 and "token" in dead.json()["message"]


def test_import_ray_names_distribute_task(client: Client, tmp_path: Path) -> None:
    program = client.upload(Program(title="ray", entrypoint="main.py",
                                    working_dir=write_program(tmp_path / "src", RAY)))
    job = program.run()
    try:
        job.result(timeout=120)
    except JobFailed as exc:
        assert "distribute_task" in str(exc) and "ModuleNotFoundError" in str(exc)
    else:
        raise AssertionError("import ray should fail")
