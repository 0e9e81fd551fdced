"""Data files: the per-user flat store (tar, h5) over HTTP, inside jobs, in the CLI and pages.

Everything runs against the real web and worker processes of the conftest fixtures, on both
storage back ends where it matters.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import boto3
import h5py
import numpy as np
import pytest
import requests

from app.service import Service, free_port
from qhybrid import Client, Program
from qhybrid.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from qhybrid.files import check_name
from storage.tarsafe import safe_extract
from tests.conftest import RunningService, run_cli, wait_until, write_program

MiB = 1024 * 1024


# --- helpers --------------------------------------------------------------------------------
def make_tar(path: Path, members: dict[str, bytes], gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_h5(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.arange(12.0).reshape(3, 4))
    return path


def tar_head(name: str, size: int) -> bytes:
    """The 512-byte header of a tar member of `size` bytes: enough to be recognised as a tar."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf()


def api(client: Client, method: str, name: str, **kwargs: object) -> requests.Response:
    """A raw API call on /files/<name> (the name percent-encoded as given)."""
    return requests.request(method, f"{client.url}/api/v1/files/{name}",
                            headers={"Authorization": f"Bearer {client.token}"},
                            timeout=30, **kwargs)  # type: ignore[arg-type]


def storage_root(svc: RunningService) -> Path:
    return Path(unquote(urlparse(svc.env["QHYBRID_STORAGE_URL"]).path))


def s3_client(svc: RunningService):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=svc.env["QHYBRID_S3_ENDPOINT_URL"],
                        region_name="us-east-1")


def leftovers(svc: RunningService) -> list[str]:
    """Temp files (directory store) or unfinished multipart uploads (S3) anywhere in storage."""
    if svc.backend == "file":
        return [str(p) for p in storage_root(svc).rglob(".qh-tmp-*")]
    bucket = urlparse(svc.env["QHYBRID_STORAGE_URL"]).netloc
    uploads = s3_client(svc).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


def guide_program(client: Client, tmp_path: Path, title: str, source: str) -> Program:
    return client.upload(Program(title=title, entrypoint="main.py",
                                 working_dir=write_program(tmp_path / title, source)))


# --- names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "x..y", "../x", "a\\b", "bad\x01name",
                                  "del\x7f", "nl\n.tar", "a" * 256, "é" * 128, ".qh-tmp-x"])
def test_bad_names_are_refused_locally(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


@pytest.mark.parametrize("name", ["transpile_demo.tar", "a" * 255, "é" * 127, "data set.h5",
                                  ".hidden.tar", "ünï cödé.tar.gz"])
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("raw", ["a%2Fb", "%2E%2E", "..%2Fx", "x..y.tar", "bad%01name.tar",
                                 "a%5Cb", "a" * 256, "%C3%A9" * 128])
def test_bad_names_answer_400_over_http(service: RunningService, tmp_path: Path,
                                        raw: str) -> None:
    client = service.client()
    body = make_tar(tmp_path / "ok.tar", {"x": b"1"}).read_bytes()
    for method, kwargs in (("PUT", {"data": body}), ("GET", {}), ("DELETE", {})):
        resp = api(client, method, raw, **kwargs)
        assert resp.status_code == 400, (method, raw, resp.text)
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["field"] == "name"
    assert client.files() == []


# --- round trips ----------------------------------------------------------------------------
def test_round_trips_of_tar_tar_gz_and_h5(any_service: RunningService, tmp_path: Path) -> None:
    # given a tar, a tar.gz and an HDF5 file
    client = any_service.client()
    src = tmp_path / "src"
    src.mkdir()
    files = [make_tar(src / "plain.tar", {"a.txt": b"alpha", "dir/b.bin": os.urandom(70_000)}),
             make_tar(src / "packed.tar.gz", {"c.txt": b"gamma" * 1000}, gz=True),
             make_h5(src / "weights.h5"),
             make_tar(src / "ünï cödé; \"x\".tar", {"u": b"unicode name"})]

    # when they are uploaded, listed and downloaded
    for path in files:
        assert client.file_upload(path) == path.name
    assert client.files() == sorted(p.name for p in files)
    sizes = {f["name"]: f["size"] for f in client.file_details()}
    out = tmp_path / "out"
    for path in files:
        got = client.file_download(path.name, download_location=out)
        # then every byte comes back
        assert Path(got).read_bytes() == path.read_bytes()
        assert sizes[path.name] == path.stat().st_size
    with h5py.File(out / "weights.h5") as f:
        np.testing.assert_array_equal(f["weights"][()], np.arange(12.0).reshape(3, 4))
    renamed = client.file_download("plain.tar", target_name="copy.tar", download_location=out)
    assert renamed == os.path.join(out, "copy.tar") and Path(renamed).stat().st_mode & 0o777 == 0o644

    # and an upload under an existing name replaces it (200), a new name creates it (201)
    make_tar(src / "plain.tar", {"new.txt": b"replaced"})
    resp = api(client, "PUT", "plain.tar", data=(src / "plain.tar").read_bytes())
    assert resp.status_code == 200 and resp.json()["size"] == (src / "plain.tar").stat().st_size
    assert api(client, "PUT", "fresh.tar", data=(src / "plain.tar").read_bytes()).status_code == 201
    assert Path(client.file_download("plain.tar", download_location=out)).read_bytes() == \
        (src / "plain.tar").read_bytes()

    # and a deleted file is gone
    client.file_delete("plain.tar")
    client.file_delete("fresh.tar")
    assert client.files() == ["packed.tar.gz", "weights.h5", "ünï cödé; \"x\".tar"]
    with pytest.raises(NotFound):
        client.file_delete("plain.tar")
    with pytest.raises(NotFound):
        client.file_download("plain.tar", download_location=out / "missing")
    assert not (out / "missing" / "plain.tar").exists()


def test_chunked_upload_without_content_length(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    data = make_tar(tmp_path / "c.tar", {"big": os.urandom(3 * MiB)}).read_bytes()
    chunks = (data[i:i + 100_000] for i in range(0, len(data), 100_000))
    resp = api(client, "PUT", "c.tar", data=chunks)
    assert resp.status_code == 201, resp.text
    assert Path(client.file_download("c.tar", download_location=tmp_path / "o")).read_bytes() == data


# --- content is recognised by its bytes ------------------------------------------------------
def test_content_is_sniffed_not_trusted_by_name(any_service: RunningService,
                                                tmp_path: Path) -> None:
    client = any_service.client()
    fake_tar = tmp_path / "notes.tar"
    fake_tar.write_text("just some text, not a tar\n" * 100)
    fake_h5 = tmp_path / "model.h5"
    with zipfile.ZipFile(fake_h5, "w") as z:
        z.writestr("inside.txt", "zip, not hdf5")
    fake_gz = tmp_path / "text.tar.gz"
    fake_gz.write_bytes(gzip.compress(b"gzip of text, not of a tar\n" * 100))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")

    for path in (fake_tar, fake_h5, fake_gz, empty):
        with pytest.raises(UnsupportedMediaType) as err:
            client.file_upload(path)
        assert "tar" in err.value.detail and "HDF5" in err.value.detail
    resp = api(client, "PUT", "notes.tar", data=fake_tar.read_bytes())
    assert resp.status_code == 415
    assert resp.json()["accepted"] == ["tar", "tar+gzip", "hdf5"]
    # a large refused body is read to its end, so the client gets the answer, not a reset
    resp = api(client, "PUT", "big.h5", data=b"PK\x03\x04" + os.urandom(40 * MiB))
    assert resp.status_code == 415
    assert client.files() == []


# --- namespaces and users -------------------------------------------------------------------
def test_another_users_file_answers_404(any_service: RunningService, tmp_path: Path) -> None:
    alice, bob = any_service.client(), any_service.client()
    alice.file_upload(make_tar(tmp_path / "secret.tar", {"s": b"alice only"}))
    assert bob.files() == []
    for method in ("GET", "DELETE"):
        resp = api(bob, method, "secret.tar")
        assert resp.status_code == 404 and resp.json()["type"].endswith("/not-found")
    with pytest.raises(NotFound):
        bob.file_download("secret.tar", download_location=tmp_path / "bob")
    assert alice.files() == ["secret.tar"]
    assert api(bob, "GET", "secret.tar", params={"function": "anything"}).status_code == 404


def test_program_scoped_store(service: RunningService, tmp_path: Path) -> None:
    # given a program and one file in the user's store, one in the program's
    client = service.client()
    program = guide_program(client, tmp_path, "scoped", "print('hi')\n")
    client.file_upload(make_tar(tmp_path / "mine.tar", {"m": b"user"}))
    client.file_upload(make_tar(tmp_path / "its.tar", {"p": b"program"}), function=program)

    # then each store lists only its own, and a name can exist in both
    assert client.files() == ["mine.tar"]
    assert client.files(function="scoped") == ["its.tar"]
    client.file_upload(tmp_path / "mine.tar", function="scoped")
    assert client.files(function=program) == ["its.tar", "mine.tar"]
    got = client.file_download("its.tar", download_location=tmp_path / "o", function="scoped")
    assert Path(got).read_bytes() == (tmp_path / "its.tar").read_bytes()
    client.file_delete("mine.tar", function="scoped")
    assert client.files() == ["mine.tar"] and client.files(function="scoped") == ["its.tar"]

    # and an unknown program is 404, a malformed title 400
    with pytest.raises(NotFound) as err:
        client.files(function="nope")
    assert err.value.field == "function"
    with pytest.raises(InvalidInput):
        client.files(function="../x")


# --- quota ----------------------------------------------------------------------------------
QUOTA_BYTES, QUOTA_FILES = 4 * MiB, 3


@pytest.fixture(scope="module", params=["file", "s3"])
def quota_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[RunningService]:
    """A second web process beside the session's service, with a small file quota."""
    base: RunningService = request.getfixturevalue(
        "service" if request.param == "file" else "s3_service")
    env = {**base.env, "QHYBRID_FILES_MAX_BYTES": str(QUOTA_BYTES),
           "QHYBRID_FILES_MAX_COUNT": str(QUOTA_FILES)}
    web = Service(host="127.0.0.1", port=free_port(), env=env, classes=[],
                  log_dir=tmp_path_factory.mktemp("quota-logs"))
    web.start_web()
    try:
        web.wait_ready(timeout=60)
        yield RunningService(service=web, env=env, data_dir=base.data_dir, backend=base.backend)
    finally:
        web.stop()


def test_quota_answers_413_and_changes_nothing(quota_service: RunningService,
                                               tmp_path: Path) -> None:
    client = quota_service.client()
    one = make_tar(tmp_path / "one.tar", {"x": os.urandom(MiB)})
    client.file_upload(one)
    before = {f["name"]: f["size"] for f in client.file_details()}

    # a file larger than what is left: refused up front (Content-Length) ...
    big = make_tar(tmp_path / "big.tar", {"x": os.urandom(3 * MiB + 512 * 1024)})
    with pytest.raises(PayloadTooLarge):
        client.file_upload(big)
    # ... even when it is far larger than the socket buffers: the client refuses it before
    # sending, and a raw HTTP client still gets the 413 (the server reads and drops the body)
    huge = tmp_path / "huge.tar"
    with open(huge, "wb") as fh:
        fh.write(tar_head("huge.bin", 100 * MiB))
        fh.truncate(100 * MiB + 1024)
    with pytest.raises(PayloadTooLarge):
        client.file_upload(huge)
    with open(huge, "rb") as fh:
        resp = api(client, "PUT", "huge.tar", data=fh)
    assert resp.status_code == 413 and "quota" in resp.json()["detail"]
    # ... and mid-stream when the length is not declared (chunked)
    data = big.read_bytes()
    resp = api(client, "PUT", "big.tar",
               data=(data[i:i + 65536] for i in range(0, len(data), 65536)))
    assert resp.status_code == 413 and resp.json()["field"] == "file"
    # ... and a replacement that would not fit keeps the old file whole
    (tmp_path / "r").mkdir()
    with pytest.raises(PayloadTooLarge):
        client.file_upload(make_tar(tmp_path / "r" / "one.tar", {"x": os.urandom(5 * MiB)}))
    assert {f["name"]: f["size"] for f in client.file_details()} == before
    got = client.file_download("one.tar", download_location=tmp_path / "o")
    assert Path(got).read_bytes() == one.read_bytes()
    assert wait_until(lambda: not leftovers(quota_service), timeout=10)

    # the file count is a quota too
    client.file_upload(make_tar(tmp_path / "two.tar", {"y": b"2"}))
    client.file_upload(make_tar(tmp_path / "three.tar", {"z": b"3"}))
    with pytest.raises(PayloadTooLarge) as err:
        client.file_upload(make_tar(tmp_path / "four.tar", {"w": b"4"}))
    assert "3 files" in err.value.detail
    client.file_upload(tmp_path / "three.tar")     # replacing is not one more file
    assert client.files() == ["one.tar", "three.tar", "two.tar"]

    # and a program's store counts against the same quota
    guide_program(client, tmp_path, "q", "print(1)\n")
    with pytest.raises(PayloadTooLarge):
        client.file_upload(tmp_path / "four.tar", function="q")
    client.file_delete("two.tar")
    client.file_upload(tmp_path / "four.tar", function="q")
    usage = requests.get(f"{client.url}/api/v1/files", timeout=10,
                         headers={"Authorization": f"Bearer {client.token}"}).json()["usage"]
    assert usage["files"] == 3 and usage["max_files"] == QUOTA_FILES
    assert usage["max_bytes"] == QUOTA_BYTES


def test_two_uploads_at_once_cannot_overflow_the_quota(quota_service: RunningService,
                                                        tmp_path: Path) -> None:
    # given two uploads of one user that each fit the quota, but not together
    client = quota_service.client()
    bodies = {n: make_tar(tmp_path / n, {"x": os.urandom(3 * MiB)}).read_bytes()
              for n in ("a.tar", "b.tar")}

    def slowly(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 256 * 1024):
            time.sleep(0.02)
            yield data[i:i + 256 * 1024]

    # when they are sent at the same time
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda n: api(client, "PUT", n, data=slowly(bodies[n])),
                                bodies))

    # then one is stored and the other refused, as if they had come one after the other
    assert sorted(r.status_code for r in answers) == [201, 413]
    assert len(client.files()) == 1


# --- atomic uploads -------------------------------------------------------------------------
def cut_upload(client: Client, name: str, sent: bytes, declared: int,
               svc: RunningService, reset: bool) -> None:
    """Start an upload that declares `declared` bytes, send `sent`, wait until storage holds
    the partial object (temp file / multipart upload), then reset or close the connection."""
    u = urlparse(client.url)
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall((f"PUT /api/v1/files/{quote(name)} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                  f"Authorization: Bearer {client.token}\r\n"
                  "Content-Type: application/octet-stream\r\n"
                  f"Content-Length: {declared}\r\n\r\n").encode())
    sock.sendall(sent)
    wait_until(lambda: leftovers(svc), timeout=20)    # the server is writing the partial file
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                                      # RST or FIN: the upload is cut


def test_an_interrupted_upload_leaves_no_trace(any_service: RunningService,
                                               tmp_path: Path) -> None:
    # given a stored file
    client = any_service.client()
    old = make_tar(tmp_path / "data.tar", {"v": b"version 1"})
    client.file_upload(old)

    # when a new version is cut off half way (after enough for an S3 multipart upload),
    # and a new file's upload too
    body = tar_head("big.bin", 60 * MiB) + os.urandom(20 * MiB)
    cut_upload(client, "data.tar", body, 60 * MiB + 1024, any_service, reset=True)
    assert wait_until(lambda: not leftovers(any_service), timeout=20)
    cut_upload(client, "new.tar", body, 60 * MiB + 1024, any_service, reset=False)

    # then the next upload gets through (the cut ones let go of the user's lock) ...
    client.file_upload(make_tar(tmp_path / "after.tar", {"a": b"after"}))
    # ... the old file is whole, the new one absent, and storage holds no partial object
    assert client.files() == ["after.tar", "data.tar"]
    got = client.file_download("data.tar", download_location=tmp_path / "o")
    assert Path(got).read_bytes() == old.read_bytes()
    assert wait_until(lambda: not leftovers(any_service), timeout=20)


# --- extraction -----------------------------------------------------------------------------
def test_a_tar_with_dotdot_members_is_refused_on_extraction(service: RunningService,
                                                            tmp_path: Path) -> None:
    client = service.client()
    evil = make_tar(tmp_path / "evil.tar", {"fine.txt": b"ok", "../escaped.txt": b"gotcha"})
    client.file_upload(evil)          # stored as it is: a tar is a tar
    got = client.file_download("evil.tar", download_location=tmp_path / "dl")
    dest = tmp_path / "dl" / "x"
    with pytest.raises(InvalidInput, match=r"\.\./escaped\.txt"):
        safe_extract(Path(got), dest)
    assert not (tmp_path / "dl" / "escaped.txt").exists() and not dest.exists()


# --- inside jobs ----------------------------------------------------------------------------
GUIDE_JOB = """
import tarfile
from qhybrid import Client, save_result

serverless = Client()
files = serverless.files()
demo_file = files[0]
downloaded_tar = serverless.file_download(demo_file)
with tarfile.open(downloaded_tar, "r") as tar:
    tar.extractall(filter="data")
save_result({"files": files, "downloaded": downloaded_tar,
             "extracted": open("source_files/transpile_remote.py").read()})
"""


def test_qiskit_serverless_guide_flow(any_service: RunningService, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # given a tar of a source file, made as the guide does
    client = any_service.client()
    program = guide_program(client, tmp_path, "extract_tarfile", GUIDE_JOB)
    monkeypatch.chdir(tmp_path)
    write_program(tmp_path / "source_files", "print('transpile remotely')\n",
                  name="transpile_remote.py")
    filename = "transpile_demo.tar"
    file = tarfile.open(filename, "w")
    file.add("./source_files/transpile_remote.py")
    file.close()

    # when it is uploaded and listed
    assert client.file_upload(file=filename) == filename
    assert client.files() == [filename]

    # then a job of the user's downloads it with Client() and extracts it
    result = program.run().result(timeout=90)
    assert result == {"files": [filename], "downloaded": "./transpile_demo.tar",
                      "extracted": "print('transpile remotely')\n"}


SCOPED_JOB = """
import os, tarfile
from qhybrid import Client, save_result

title = os.environ["QHYBRID_JOB_NAME"]
serverless = Client()
files = serverless.files(function=title)
path = serverless.file_download(files[0], download_location="inputs", function=title)
with tarfile.open(path) as tar:
    names = tar.getnames()
save_result({"files": files, "own": serverless.files(), "path": path, "names": names})
"""


def test_guide_flow_with_a_program_scoped_file(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    program = guide_program(client, tmp_path, "transpile_remote_serverless", SCOPED_JOB)
    demo = make_tar(tmp_path / "transpile_demo.tar", {"source_files/t.py": b"print(1)\n"})
    client.file_upload(file=demo, function=program)
    assert client.files(function=program) == ["transpile_demo.tar"]
    assert program.run().result(timeout=90) == {
        "files": ["transpile_demo.tar"], "own": [], "path": "inputs/transpile_demo.tar",
        "names": ["source_files/t.py"]}


WRITER_JOB = """
import os, tarfile
import h5py, numpy as np
from qhybrid import Client, QhybridError, save_result

client = Client()
os.makedirs("out", exist_ok=True)
with h5py.File("out/result.h5", "w") as f:
    f["energies"] = np.linspace(0, 1, 5)
with tarfile.open("out/report.tar.gz", "w:gz") as tar:
    tar.add("out/result.h5", arcname="result.h5")
uploaded = [client.file_upload("out/result.h5"), client.file_upload("out/report.tar.gz")]

refused = {}
def attempt(label, call):
    try:
        call()
        refused[label] = None
    except QhybridError as exc:
        refused[label] = type(exc).__name__

outside = "qh-" + os.environ["QHYBRID_JOB_ID"] + ".h5"
os.symlink("/etc/passwd", "passwd.tar")
os.symlink("/tmp", "tmp_link")
attempt("outside", lambda: client.file_upload("/etc/passwd"))
attempt("symlink", lambda: client.file_upload("passwd.tar"))
attempt("text", lambda: client.file_upload(__file__))
attempt("download_outside",
        lambda: client.file_download("result.h5", target_name=outside, download_location="/tmp"))
attempt("download_symlinked_dir",
        lambda: client.file_download("result.h5", target_name=outside,
                             download_location="tmp_link"))
attempt("missing", lambda: client.file_download("nope.tar"))
client.file_delete("old.tar")
save_result({"uploaded": uploaded, "listed": client.files(), "refused": refused,
             "wrote_outside": os.path.exists("/tmp/" + outside)})
"""


def test_a_job_uploads_files_that_the_laptop_then_sees(any_service: RunningService,
                                                       tmp_path: Path) -> None:
    # given a user with an old file and a program that writes, uploads and deletes files
    client = any_service.client()
    client.file_upload(make_tar(tmp_path / "old.tar", {"o": b"old"}))
    program = guide_program(client, tmp_path, "writer", WRITER_JOB)

    # when it runs
    result = program.run().result(timeout=90)

    # then its uploads are the user's files, and nothing outside its directory was touched
    assert result["uploaded"] == ["result.h5", "report.tar.gz"]
    assert result["listed"] == ["report.tar.gz", "result.h5"]
    assert result["refused"] == {"outside": "InvalidInput", "symlink": "InvalidInput",
                                 "text": "UnsupportedMediaType",
                                 "download_outside": "InvalidInput",
                                 "download_symlinked_dir": "InvalidInput",
                                 "missing": "NotFound"}
    assert result["wrote_outside"] is False
    assert client.files() == ["report.tar.gz", "result.h5"]
    got = client.file_download("result.h5", download_location=tmp_path / "laptop")
    with h5py.File(got) as f:
        np.testing.assert_allclose(f["energies"][()], np.linspace(0, 1, 5))


# --- CLI ------------------------------------------------------------------------------------
def test_cli_files_commands(service: RunningService, tmp_path: Path) -> None:
    client = service.client()
    env = {**os.environ, "QHYBRID_URL": client.url, "QHYBRID_TOKEN": client.token,
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    path = make_tar(tmp_path / "cli.tar", {"c": b"cli"})

    up = run_cli("files", "upload", str(path), env=env)
    assert up.returncode == 0, up.stderr
    listed = run_cli("files", "list", env=env)
    assert listed.returncode == 0 and "cli.tar" in listed.stdout
    down = run_cli("files", "download", "cli.tar", "--to", str(tmp_path / "dl"), env=env)
    assert down.returncode == 0 and (tmp_path / "dl" / "cli.tar").read_bytes() == path.read_bytes()
    bad = run_cli("files", "upload", str(tmp_path / "dl"), env=env)
    assert bad.returncode != 0
    text = tmp_path / "t.tar"
    text.write_text("text")
    refused = run_cli("files", "upload", str(text), env=env)
    assert refused.returncode != 0 and "HDF5" in refused.stderr
    assert run_cli("files", "delete", "cli.tar", env=env).returncode == 0
    assert client.files() == []
    missing = run_cli("files", "delete", "cli.tar", env=env)
    assert missing.returncode != 0 and "cli.tar" in missing.stderr


# --- HTML pages -----------------------------------------------------------------------------
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def browser(svc: RunningService) -> tuple[requests.Session, str]:
    """A logged-in browser session (through the login page) and the page's CSRF token."""
    _, token = svc.new_user()
    s = requests.Session()
    page = s.get(f"{svc.url}/login", timeout=10)
    s.post(f"{svc.url}/login", data={"token": token, "next": "/files",
                                     "csrf_token": CSRF.search(page.text).group(1)}, timeout=10)
    files_page = s.get(f"{svc.url}/files", timeout=10)
    assert files_page.status_code == 200 and "Data files" in files_page.text
    return s, CSRF.search(files_page.text).group(1)


def test_pages_list_upload_download_delete(any_service: RunningService, tmp_path: Path) -> None:
    s, csrf = browser(any_service)
    url = any_service.url
    path = make_h5(tmp_path / "page.h5")

    # upload through the form (fields before the file, as the page sends them)
    resp = s.post(f"{url}/files", data={"csrf_token": csrf, "function": ""},
                  files={"file": ("page.h5", path.read_bytes(), "application/x-hdf5")},
                  timeout=30)
    assert resp.status_code == 200 and "Stored page.h5" in resp.text and "page.h5" in resp.text

    # a refused type is shown on the page with its status
    resp = s.post(f"{url}/files", data={"csrf_token": csrf},
                  files={"file": ("fake.tar", b"text" * 300, "application/x-tar")}, timeout=30)
    assert resp.status_code == 415 and "HDF5" in resp.text

    # without the CSRF token nothing is stored or deleted
    resp = s.post(f"{url}/files", files={"file": ("x.h5", path.read_bytes())}, timeout=30)
    assert resp.status_code == 400
    resp = s.post(f"{url}/files/page.h5/delete", data={}, timeout=30)
    assert resp.status_code == 400

    # download (on S3 through a redirect to a presigned URL, which requests follows)
    resp = s.get(f"{url}/files/page.h5", timeout=30)
    assert resp.status_code == 200 and resp.content == path.read_bytes()
    listing = s.get(f"{url}/files", timeout=10).text
    assert "page.h5" in listing and "x.h5" not in listing and "fake.tar" not in listing

    # delete
    resp = s.post(f"{url}/files/page.h5/delete", data={"csrf_token": csrf}, timeout=30)
    assert resp.status_code == 200 and "Deleted page.h5" in resp.text
    assert s.get(f"{url}/files/page.h5", timeout=10).status_code == 404


def test_a_cut_page_upload_leaves_no_trace(service: RunningService, tmp_path: Path) -> None:
    s, csrf = browser(service)
    head = (b"--XX\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n"
            + csrf.encode() + b"\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"cut.tar\"\r\n\r\n" + tar_head("x", 10 * MiB) + os.urandom(2 * MiB))
    u = urlparse(service.url)
    cookies = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall((f"POST /files HTTP/1.1\r\nHost: {u.netloc}\r\nCookie: {cookies}\r\n"
                  "Content-Type: multipart/form-data; boundary=XX\r\n"
                  f"Content-Length: {len(head) + 9 * MiB}\r\n\r\n").encode() + head)
    wait_until(lambda: leftovers(service), timeout=20)
    sock.close()
    assert wait_until(lambda: not leftovers(service), timeout=20)
    assert "cut.tar" not in s.get(f"{service.url}/files", timeout=10).text


def test_pages_need_a_login(service: RunningService) -> None:
    resp = requests.get(f"{service.url}/files", allow_redirects=False, timeout=10)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_cli_is_documented_in_help() -> None:
    out = subprocess.run([sys.executable, "-m", "qhybrid.cli", "files", "--help"],
                         capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for cmd in ("list", "upload", "download", "delete"):
        assert cmd in out.stdout


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/qhybrid-files-page.png")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_files_page_in_a_real_browser(any_service: RunningService, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    _, token = any_service.new_user()
    url = any_service.url
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            page = chromium.new_context(accept_downloads=True).new_page()
            page.set_default_timeout(15_000)
            page.goto(url + "/files")
            page.fill("#token", token)
            page.click("button:text('Log in')")
            page.wait_for_url(url + "/files")

            # the browser sends the form as it is laid out: the token first, then the file
            tar = make_tar(tmp_path / "browser.tar.gz", {"b": os.urandom(300_000)}, gz=True)
            page.set_input_files("#file", str(tar))
            with page.expect_navigation() as nav:
                page.click("button:text('Upload')")
            assert nav.value.status == 200 and page.locator("text=Stored browser.tar.gz").count()
            page.set_input_files("#file", str(make_h5(tmp_path / "w.h5")))
            page.click("button:text('Upload')")
            page.wait_for_selector("text=Stored w.h5")

            fake = tmp_path / "fake.h5"
            fake.write_text("not hdf5")
            page.set_input_files("#file", str(fake))
            with page.expect_navigation() as nav:
                page.click("button:text('Upload')")
            assert nav.value.status == 415
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            with page.expect_download() as dl:
                page.click("a:text('browser.tar.gz')")
            assert Path(dl.value.path()).read_bytes() == tar.read_bytes()

            row = page.locator("tr", has_text="w.h5")
            with page.expect_navigation():
                row.locator("button:text('Delete')").click()
            assert page.locator("text=Deleted w.h5").count()
        finally:
            chromium.close()
    assert Client(url=url, token=token).files() == ["browser.tar.gz"]
