"""The real `qiskit-serverless` client (0.37.0 and 0.35.0, unchanged) against a live qhybrid.

Each version runs in its own environment (tests/serverless/envs.py) as a subprocess: one
script per flow drives the client and prints what it saw as JSON; the test checks it. The
programs are written in the Qiskit Serverless style and run with the real `qiskit_serverless`
package on qhybrid's workers.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningService
from tests.serverless_envs import VERSIONS, ensure_env, run_client

PATTERN = '''
import os
import tarfile
import time

from qiskit.primitives import StatevectorSampler
from qiskit_serverless import Job, get_arguments, get_logger, save_result, update_status

logger = get_logger()
args = get_arguments()
update_status(Job.MAPPING)
logger.info("mapping %d shots", args["shots"])
counts = StatevectorSampler(seed=7).run([args["circuit"]], shots=args["shots"]).result()[0]
update_status(Job.POST_PROCESSING)
print("greeting:", os.environ.get("GREETING"), flush=True)
data = os.environ["DATA_PATH"]
seen = sorted(os.listdir(data))
with open("note.txt", "w") as fh:
    fh.write("written in the job")
with tarfile.open(os.path.join(data, "made_in_job.tar"), "w") as tar:
    tar.add("note.txt")
save_result({"counts": counts.data.meas.get_counts(), "circuit": args["circuit"],
             "seen": seen, "token_is_job_scoped": os.environ["ENV_JOB_GATEWAY_TOKEN"].startswith("job_")})
'''

FAILING = '''
from qiskit_serverless import send_error
send_error(code=1000, exception="MyPersonalizedError", message="My error message",
           args={"my-arg-1": 123, "my-arg-2": "hi"})
raise ValueError("the function gave up")
'''

SLEEPING = '''
import time
from qiskit_serverless import Job, update_status
update_status(Job.EXECUTING_QPU)
print("sleeping", flush=True)
time.sleep(120)
'''

# What each client script below starts with: the message of what the client raised.
ERR = r'''
from qiskit_serverless.exception import QiskitServerlessException

def err(fn):
    try:
        fn()
    except QiskitServerlessException as exc:
        return str(exc)
    return None
'''

# Drives the client through every call; prints one JSON object of what it saw.
FLOW = ERR + r'''
import os, tarfile, time, warnings
from qiskit import QuantumCircuit
from qiskit_serverless import QiskitFunction, ServerlessClient


def wait_done(job, timeout=120):
    deadline = time.time() + timeout
    while job.status() not in ("DONE", "ERROR", "CANCELED"):
        if time.time() > deadline:
            raise SystemExit(f"job still {job.status()}")
        time.sleep(0.1)
    return job.status()

out = {}
out["bad_token"] = err(lambda: ServerlessClient(host=P["host"], token="wrong",
                                                instance="an_awesome_crn", channel=P["channel"]))
client = ServerlessClient(host=P["host"], token=P["token"], instance="an_awesome_crn",
                          channel=P["channel"])
fn = client.upload(QiskitFunction(
    title="pattern", entrypoint="pattern.py", working_dir=P["src"], env_vars={"GREETING": "hello"},
    dependencies=[], description="a pattern",
    arguments_schema={"type": "object", "required": ["shots"],
                      "properties": {"shots": {"type": "integer", "minimum": 1}}}))
client.upload(QiskitFunction(title="failing", entrypoint="failing.py", working_dir=P["src"]))
client.upload(QiskitFunction(title="sleeping", entrypoint="sleeping.py", working_dir=P["src"]))
client.upload(QiskitFunction(title="prov/shared", entrypoint="pattern.py", working_dir=P["src"]))
out["uploaded"] = [fn.title, fn.entrypoint, fn.description]
out["functions"] = sorted(f.title for f in client.functions())
got = client.function("pattern")
out["function"] = [got.title, got.arguments_schema]
out["missing_function"] = err(lambda: client.function("nope"))
out["valid"] = client.validate_arguments("pattern", {"shots": 5})
out["invalid"] = err(lambda: client.validate_arguments("pattern", {"shots": 0}))
out["run_invalid"] = err(lambda: fn.run(shots="many"))

with tarfile.open(os.path.join(P["tmp"], "input.tar"), "w") as tar:
    tar.add(os.path.join(P["src"], "pattern.py"), arcname="pattern.py")
out["file_upload"] = client.file_upload(os.path.join(P["tmp"], "input.tar"), fn)

qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
job = fn.run(circuit=qc, shots=64)
out["job_id"] = job.job_id
out["final"] = wait_done(job)
result = job.result(wait=True, cadence=0.1)
out["counts_keys"] = sorted(result["counts"])
out["counts_total"] = sum(result["counts"].values())
out["circuit_back"] = type(result["circuit"]).__name__
out["seen"] = result["seen"]
out["token_is_job_scoped"] = result["token_is_job_scoped"]
out["logs"] = job.logs()
out["filtered"] = job.filtered_logs(include="greeting")
out["provider_logs"] = err(job.provider_logs)
out["events"] = [(e.event_type, e.data.get("status"), e.data.get("sub_status"))
                 for e in job.events()]
out["runtime_jobs"] = job.runtime_jobs()
out["job_status"] = client.job(job.job_id).status()
out["jobs_all"] = len(client.jobs())
out["jobs_done"] = [j.job_id for j in client.jobs(status="DONE")]
out["jobs_limit"] = len(client.jobs(limit=1, offset=0))
out["jobs_of_fn"] = [j.job_id for j in fn.jobs()]
out["jobs_after"] = len(client.jobs(created_after="2100-01-01T00:00:00Z"))
out["files"] = sorted(client.files(fn))
name = client.file_download("made_in_job.tar", fn, target_name="back.tar",
                            download_location=P["tmp"])
with tarfile.open(os.path.join(P["tmp"], name)) as tar:
    out["downloaded"] = tar.extractfile("note.txt").read().decode()
out["file_delete"] = client.file_delete("made_in_job.tar", fn)
out["files_after_delete"] = sorted(client.files(fn))

shared = client.function("prov/shared")
out["provider"] = shared.provider
out["provider_upload"] = client.provider_file_upload(os.path.join(P["tmp"], "input.tar"), shared)
out["provider_files"] = client.provider_files(shared)
out["provider_download"] = client.provider_file_download("input.tar", shared, target_name="p.tar",
                                                         download_location=P["tmp"])
out["provider_delete"] = client.provider_file_delete("input.tar", shared)

bad = client.function("failing").run()
out["bad_final"] = wait_done(bad)
out["bad_error"] = err(lambda: bad.result(wait=True, cadence=0.1))
out["bad_error_message"] = bad.error_message()

slow = client.function("sleeping").run()
deadline = time.time() + 120
while slow.status() != "RUNNING: EXECUTING_QPU" and time.time() < deadline:
    time.sleep(0.1)
out["slow_status"] = slow.status()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out["stop"] = slow.stop()
out["slow_final"] = wait_done(slow)
out["stopped_jobs"] = [j.job_id for j in client.jobs(status="CANCELED")] == [slow.job_id]
out["deps"] = [d for d in client.dependencies_versions() if d.startswith("qiskit==")]
out["unknown_job"] = err(lambda: client.job("0" * 32))
print(json.dumps(out))
'''


LOGGING = '''
from qiskit_serverless import get_logger, get_provider_logger, save_result

get_logger().info("User log")
get_logger().warning("User multiline\\nlog")
print("plain print")
get_provider_logger().info("Provider log")
save_result({"logged": True})
'''

# A provider's function body, as the gateway's default entrypoint runs it: the error it sends
# carries a traceback's message, which ends with a newline.
RUNNER = '''
import traceback
from qiskit_serverless import send_error

try:
    raise ValueError("This is not a ServerlessError")
except Exception as e:
    send_error(1, "\\n".join(traceback.format_exception_only(e)), type(e).__name__, None)
    raise
'''

# Fans out with the package's distributed-task names, which it no longer has (qhybrid's in a job).
PARALLEL = '''
from qiskit.primitives import StatevectorSampler as Sampler
from qiskit_serverless import distribute_task, get, get_arguments, get_refs_by_status, put, save_result


@distribute_task(target={"cpu": 1})
def distributed_sample(circuit):
    return Sampler().run([circuit]).result()[0].data.meas.get_counts()


@distribute_task()
def scale(value, factor):
    return value * factor


circuits = get_arguments()["circuits"]
references = [distributed_sample(circuit) for circuit in circuits]
ready, pending = get_refs_by_status(references)
save_result({"results": get(references), "scaled": get(scale(2, put(3))),
             "seen": len(ready) + len(pending)})
'''

# The data guide's producer and consumer, with the directory's literal path.
PRODUCER = '''
import tarfile
from qiskit_serverless import save_result

with open("./my_file.txt", "w") as f:
    f.write("Hello!")
with tarfile.open("/data/my_file.tar", "w:gz") as tar:
    tar.add("./my_file.txt")
save_result({"Message": "my_file.txt archived into my_file.tar"})
'''

CONSUMER = '''
import tarfile
from qiskit_serverless import save_result

with tarfile.open("/data/my_file.tar", "r:gz") as tar:
    with tar.extractfile("./my_file.txt") as f:
        text = f.read().decode()
save_result({"Message": text})
'''

# What the client raises and reads where the gateway's answers have fixed words.
CONTRACT = ERR + r'''
import os, time
from qiskit_serverless import QiskitFunction, ServerlessClient


client = ServerlessClient(host=P["host"], token=P["token"], instance="an_awesome_crn",
                          channel="ibm_quantum_platform")
own = client.upload(QiskitFunction(title="logging", entrypoint="logging_fn.py",
                                   working_dir=P["src"]))
client.upload(QiskitFunction(title="provided", provider="prov", entrypoint="logging_fn.py",
                             working_dir=P["src"]))
provided = client.function("prov/provided")
runner = client.upload(QiskitFunction(title="runner", entrypoint="runner.py",
                                      working_dir=P["src"]))
out = {}
job = own.run()
job.result(wait=True, cadence=0.1)
out["job_id"] = job.job_id
out["logs"] = job.logs()
out["provider_logs"] = err(job.provider_logs)
pjob = provided.run()
pjob.result(wait=True, cadence=0.1)
out["p_logs"] = pjob.logs()
out["p_provider_logs"] = pjob.provider_logs()

out["missing"] = err(lambda: client.function("wrong-title"))
out["missing_provided"] = err(lambda: client.function("prov/wrong-title"))
out["bad_event_type"] = err(lambda: job.events(type="NotValidJobEventType"))

failed = runner.run()
out["failed"] = err(lambda: failed.result(wait=True, cadence=0.1))
out["error_message"] = failed.error_message()
out["event"] = failed.events(type="ERROR")[0].data

png = os.path.join(P["tmp"], "picture.png")
with open(png, "wb") as fh:
    fh.write(b"\x89PNG\r\n\x1a\n" + bytes(2048))
out["bad_upload"] = err(lambda: client.file_upload(png, own))
out["bad_provider_upload"] = err(lambda: client.provider_file_upload(png, provided))
out["missing_delete"] = err(lambda: client.file_delete("absent.tar", own))

from qiskit.circuit.random import random_circuit
circuits = [random_circuit(2, 2, seed=s) for s in range(3)]
for circuit in circuits:
    circuit.measure_all()
parallel = client.upload(QiskitFunction(title="parallel", entrypoint="parallel.py",
                                        working_dir=P["src"]))
out["parallel"] = parallel.run(circuits=circuits).result(wait=True, cadence=0.1)

producer = client.upload(QiskitFunction(title="file-producer", entrypoint="producer.py",
                                        working_dir=P["src"]))
out["produced"] = producer.run().result(wait=True, cadence=0.1)
consumer = client.upload(QiskitFunction(title="file-consumer", entrypoint="consumer.py",
                                        working_dir=P["src"]))
out["consumed"] = consumer.run().result(wait=True, cadence=0.1)
out["files_after_jobs"] = client.files(consumer)
print(json.dumps(out))
'''


def _sources(directory: Path) -> Path:
    directory.mkdir()
    (directory / "pattern.py").write_text(PATTERN)
    (directory / "failing.py").write_text(FAILING)
    (directory / "sleeping.py").write_text(SLEEPING)
    (directory / "logging_fn.py").write_text(LOGGING)
    (directory / "runner.py").write_text(RUNNER)
    (directory / "parallel.py").write_text(PARALLEL)
    (directory / "producer.py").write_text(PRODUCER)
    (directory / "consumer.py").write_text(CONSUMER)
    return directory


@pytest.fixture(scope="module", params=VERSIONS)
def client_python(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, ensure_env(request.param)


def test_real_client_every_call(service: RunningService, client_python: tuple[str, Path],
                                tmp_path: Path) -> None:
    # given a qhybrid user, and the real client of one version in its own environment
    version, python = client_python
    _, token = service.new_user()

    # when the client goes through every call it offers
    seen: dict[str, Any] = run_client(python, FLOW, host=service.url, token=token,
                                      channel="ibm_quantum_platform",
                                      src=str(_sources(tmp_path / "src")), tmp=str(tmp_path))

    # then each answered as the Qiskit Serverless gateway does
    assert "Credentials couldn't be verified" in seen["bad_token"]
    assert seen["uploaded"] == ["pattern", "pattern.py", "a pattern"]
    assert seen["functions"] == ["failing", "pattern", "shared", "sleeping"]
    assert seen["function"][0] == "pattern" and seen["function"][1]["required"] == ["shots"]
    assert seen["missing_function"].endswith("| Details: Qiskit Function nope doesn't exist.")
    assert seen["valid"] == {"valid": True}
    assert "arguments_schema" in seen["invalid"] and "shots" in seen["invalid"]
    assert "arguments_schema" in seen["run_invalid"]
    assert seen["file_upload"]

    assert seen["final"] == "DONE"
    assert set(seen["counts_keys"]) <= {"00", "11"} and seen["counts_total"] == 64
    assert seen["circuit_back"] == "QuantumCircuit"
    assert seen["seen"] == ["input.tar"]          # DATA_PATH holds the user's files
    assert seen["token_is_job_scoped"] is True
    assert seen["logs"] == "INFO: mapping 64 shots\ngreeting: hello\n"
    assert seen["filtered"].strip() == "greeting: hello"
    # a function without a provider has no provider logs (its user reads the whole log)
    assert f"You don't have access to job [{seen['job_id']}]" in seen["provider_logs"]
    statuses = [e[1] for e in seen["events"]]
    assert statuses[0] == "QUEUED" and statuses[-1] == "SUCCEEDED"
    assert ("SUB_STATUS_CHANGE", "RUNNING", "MAPPING") in [tuple(e) for e in seen["events"]]
    assert seen["runtime_jobs"] == []
    assert seen["job_status"] == "DONE"
    assert seen["jobs_all"] == 1 and seen["jobs_limit"] == 1
    assert seen["jobs_done"] == [seen["job_id"]] and seen["jobs_of_fn"] == [seen["job_id"]]
    assert seen["jobs_after"] == 0
    assert seen["files"] == ["input.tar", "made_in_job.tar"]     # the job's file came back
    assert seen["downloaded"] == "written in the job"
    assert seen["file_delete"] == "Requested file was deleted."
    assert seen["files_after_delete"] == ["input.tar"]

    assert seen["provider"] == "prov"
    assert seen["provider_files"] == ["input.tar"]
    assert seen["provider_download"] == "p.tar"
    assert seen["provider_delete"] == "Requested file was deleted."

    assert seen["bad_final"] == "ERROR"
    assert "My error message" in seen["bad_error"] and "MyPersonalizedError" in seen["bad_error"]
    assert "my-arg-1: 123" in seen["bad_error_message"]

    assert seen["slow_status"] == "RUNNING: EXECUTING_QPU"
    assert seen["stop"] == "Job has been stopped."
    assert seen["slow_final"] == "CANCELED" and seen["stopped_jobs"] is True
    assert seen["deps"] and seen["deps"][0].startswith("qiskit==2.")
    assert seen["unknown_job"].endswith(f"| Details: Job [{'0' * 32}] not found")
    assert version in ("0.37.0", "0.35.0")


def test_real_client_reads_the_gateways_words(service: RunningService,
                                              client_python: tuple[str, Path],
                                              tmp_path: Path) -> None:
    # given a qhybrid user, and the real client of one version in its own environment
    _, python = client_python
    _, token = service.new_user()

    # when it reads logs, meets missing things, a failed job and a refused file
    seen: dict[str, Any] = run_client(python, CONTRACT, host=service.url, token=token,
                                      src=str(_sources(tmp_path / "src")), tmp=str(tmp_path))

    # then logs are parted as the gateway parts them, with the line prefixes dropped:
    # a function without a provider shows its user every line, and has no provider logs
    assert seen["logs"] == ("INFO: User log\nWARNING: User multiline\nWARNING: log\n"
                            "plain print\nINFO: Provider log\n")
    assert seen["provider_logs"].strip().endswith(
        f"| Code: 403\n| Details: You don't have access to job [{seen['job_id']}]")
    # a provider's function shows its user the get_logger() lines, the provider the rest
    assert seen["p_logs"] == "INFO: User log\nWARNING: User multiline\nWARNING: log\n"
    assert seen["p_provider_logs"] == "plain print\nINFO: Provider log\n"
    # and errors read in the gateway's words
    assert seen["missing"] == ("\n| Message: Http bad request.\n| Code: 404\n"
                               "| Details: Qiskit Function wrong-title doesn't exist.")
    assert seen["missing_provided"].endswith("| Details: Qiskit Function prov/wrong-title "
                                             "doesn't exist.")
    assert "| Code: 400\n| Details: Type is not valid. Valid types: ['ERROR']" \
        in seen["bad_event_type"]
    # an error sent with a traceback's message is kept trimmed, as the gateway keeps it
    expected = ("\n| Message: ValueError: This is not a ServerlessError\n| Code: 1\n"
                "| Exception: ValueError")
    assert seen["failed"] == expected and seen["error_message"] == expected
    assert seen["event"]["message"] == "ValueError: This is not a ServerlessError"
    for refused in (seen["bad_upload"], seen["bad_provider_upload"]):
        assert ("| Code: 400\n| Details:\n|   - message: Uploaded file is not a valid type. "
                "qhybrid keeps a tar") in refused
    assert "File absent.tar was not found." in seen["missing_delete"]
    # a program that fans out with the package's distribute_task and get runs
    parallel = seen["parallel"]
    assert len(parallel["results"]) == 3 and all(sum(r.values()) == 1024
                                                 for r in parallel["results"])
    assert parallel["scaled"] == 6 and parallel["seen"] == 3
    # a file a job writes at /data/... is the user's, and the next job reads it there
    assert seen["produced"] == {"Message": "my_file.txt archived into my_file.tar"}
    assert seen["consumed"] == {"Message": "Hello!"}
    assert seen["files_after_jobs"] == ["my_file.tar"]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
