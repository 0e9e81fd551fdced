"""User code cannot reach what the service holds: credentials, Redis, the data directory."""

from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.parse import urlparse

from qhybrid import Program
from tests.conftest import RunningService, write_program

PROBE = r'''
import glob, os, socket, tempfile
from qhybrid import get_arguments, save_result

args = get_arguments()
secrets = args["secrets"]
leaks, readable = [], 0
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        data = open(path, "rb").read().decode(errors="replace")
    except OSError:
        continue
    readable += 1
    leaks += [f"{path}: {s[:6]}..." for s in secrets if s in data]

def refused(path):
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
    except (PermissionError, FileNotFoundError):
        return True
    return False

with socket.create_connection(("127.0.0.1", args["redis_port"])) as sock:
    sock.sendall(b"PING\r\n")
    redis_answer = sock.recv(200).decode()

open("made-by-the-job.txt", "w").write("ok")
with tempfile.NamedTemporaryFile() as scratch, open("/dev/shm/scratch", "w") as shm:
    scratch.write(b"a job uses /tmp and /dev/shm as on any host")
save_result({"tmp": scratch.name,"uid": os.getuid(), "leaks": leaks, "readable": readable,
             "refused": {p: refused(p) for p in args["private"]},
             "redis": redis_answer, "home_writable": os.access(os.environ["HOME"], os.W_OK)})
'''


def _probe(svc: RunningService, tmp_path: Path) -> tuple[dict, object]:  # type: ignore[type-arg]
    client = svc.client()
    redis_url = urlparse(svc.env["QHYBRID_REDIS_URL"])
    assert redis_url.password, "the embedded Redis asks for a password"
    private = [str(svc.data_dir / "storage"), str(svc.data_dir / "redis"),
               str(svc.data_dir / "redis" / "url"), str(svc.data_dir / "secret_key")]
    client.upload(Program(title="probe", entrypoint="main.py",
                          working_dir=write_program(tmp_path / "src", PROBE)))
    job = client.run("probe", {"secrets": [redis_url.password, client.token, "test-secret"],
                               "redis_port": redis_url.port, "private": private})
    seen = job.result(timeout=120)
    job.download_result(tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert "made-by-the-job.txt" in tar.getnames()
    return seen, job


def test_user_code_cannot_read_the_services_environment(service: RunningService,
                                                        tmp_path: Path) -> None:
    # given the service as the tests run it: user code under the workers' own account
    seen, _ = _probe(service, tmp_path)
    # then it looked at every process it could, and found no secret in any environment or
    # command line: server processes are not dumpable, and the child has no capabilities
    assert seen["readable"] > 0
    assert seen["leaks"] == []
    assert "NOAUTH" in seen["redis"]                # and Redis wants the password it lacks


def test_user_code_as_another_account_cannot_read_the_data(isolated_service: RunningService,
                                                           tmp_path: Path) -> None:
    seen, job = _probe(isolated_service, tmp_path)
    assert seen["uid"] != 0
    assert seen["leaks"] == []
    assert all(seen["refused"].values()), seen["refused"]
    assert "NOAUTH" in seen["redis"]
    assert seen["home_writable"]
    assert seen["tmp"].startswith("/tmp/")


LINKS = r'''
import os
results = os.environ["QHYBRID_RESULTS_DIR"]
job_dir = os.path.dirname(results)
target = "{secret}"
os.symlink(target, os.path.join(results, "secret-link"))
print("before the swap", flush=True)
os.unlink(os.path.join(job_dir, "output.log"))
os.symlink(target, os.path.join(job_dir, "output.log"))
os.symlink(target, os.path.join(job_dir, "error.txt"))
raise SystemExit(3)
'''


def test_the_supervisor_never_follows_links_the_job_made(service: RunningService,
                                                         tmp_path: Path) -> None:
    # given a file the job points links at, in place of its log, its error file and a result
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    client = service.client()
    client.upload(Program(title="links", entrypoint="main.py", working_dir=write_program(
        tmp_path / "src", LINKS.replace("{secret}", str(secret)))))
    job = client.run("links")
    job.wait(timeout=60)
    # then the supervisor read what the job wrote, not what the links point at
    assert job.status() == "ERROR"
    assert "TOPSECRET" not in job.error_message() and "code 3" in job.error_message()
    assert "before the swap" in job.logs() and "TOPSECRET" not in job.logs()
    job.download_result(tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        member = tar.getmember("secret-link")
        assert member.issym() and member.linkname == str(secret)
