"""A catalogue of hostile inputs: each is a 4xx application/problem+json that changes nothing.

Given a user with one program and one finished job, every request below is refused at
submission with a problem document whose status is the HTTP status, and afterwards the
user's Redis keys and stored objects are exactly what they were.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from qhybrid import Client, Program
from tasks.core import defaults as d
from tests.conftest import RunningService, bell, write_program

DEEP = "[" * 100_000 + "]" * 100_000                 # JSON nested 100,000 levels
DEEP_OBJ = '{"a":' * 100_000 + "1" + "}" * 100_000
API = "/api/v1"


# --- tars -----------------------------------------------------------------------------------
def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


MAIN = member("main.py", b"print('hi')\n")


def _header(name: str, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _main_member() -> bytes:
    data = b"print('hi')\n"
    return _header("main.py", len(data)) + data + bytes(-len(data) % 512)


def size_bomb() -> bytes:
    """A .tar.gz whose member declares 1 GiB + 1 MiB (of zeros, mostly never sent): refused
    at its header, before any of it is decompressed."""
    head = _main_member() + _header("zeros.bin", d.TAR_MAX_UNPACKED_BYTES + 1024**2)
    return gzip.compress(head + bytes(4 * 1024**2), compresslevel=1)


def count_bomb() -> bytes:
    """One member more than the limit, all empty: a .tar.gz of about 100 KB."""
    headers = b"".join(_header(f"f{i}") for i in range(d.TAR_MAX_MEMBERS + 1))
    return gzip.compress(_main_member() + headers + bytes(1024), compresslevel=6)


# --- the catalogue ------------------------------------------------------------------------------
@dataclass
class Hostile:
    name: str
    method: str
    path: str
    status: int | None = None                 # None: any 4xx
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    files: dict[str, Any] | None = None
    form: dict[str, str] | None = None
    raw_path: bool = False                     # sent byte for byte (http.client)
    auth: bool = True


def upload(title: str = "p", source: bytes = b"print(1)\n", filename: str = "main.py",
           **form: str) -> dict[str, Any]:
    return {"files": {"source": (filename, source)}, "form": {"title": title, **form}}


def hybrid(metadata: Any, channels: dict[str, bytes] | None = None) -> dict[str, Any]:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    files: dict[str, Any] = {"function": ("function.pkl", b"\x80\x05N.")}
    for name, data in (channels or {}).items():
        files[f"channel.{name}"] = (f"{name}.tar.gz", data)
    return {"files": files, "form": {"metadata": text}}


def catalogue(job_id: str, circuits: str) -> list[Hostile]:
    H = Hostile
    qt = f"{API}/quantum-tasks"
    ok_meta = {"job_name": "hj", "python": None}

    def meta(**kw: Any) -> dict[str, Any]:
        return {**{k: v for k, v in ok_meta.items() if v is not None}, **kw}

    return [
        # query parameters: not numbers, not finite, out of range
        H("created_after=nan", "GET", f"{API}/jobs?created_after=nan", 400),
        H("created_after=inf", "GET", f"{API}/jobs?created_after=inf", 400),
        H("created_after=-inf", "GET", f"{API}/jobs?created_after=-inf", 400),
        H("created_after=1e400", "GET", f"{API}/jobs?created_after=1e400", 400),
        H("created_after=garbage", "GET", f"{API}/jobs?created_after=yesterday", 400),
        H("limit negative", "GET", f"{API}/jobs?limit=-1", 400),
        H("limit huge", "GET", f"{API}/jobs?limit={10**30}", 400),
        H("limit not a number", "GET", f"{API}/jobs?limit=ten", 400),
        H("offset negative", "GET", f"{API}/jobs?offset=-5", 400),
        H("status unknown", "GET", f"{API}/jobs?status=BOGUS", 400),
        H("wait timeout nan", "GET", f"{API}/jobs/{job_id}/wait?timeout=nan", 400),
        H("wait timeout negative", "GET", f"{API}/jobs/{job_id}/wait?timeout=-1", 400),
        H("result wait inf", "GET", f"{API}/jobs/{job_id}/result?wait=inf", 400),
        H("logs offset negative", "GET", f"{API}/jobs/{job_id}/logs?offset=-1", 400),
        H("logs offset 2**80", "GET", f"{API}/jobs/{job_id}/logs?offset={2**80}", 400),
        H("tasks status unknown", "GET", f"{API}/jobs/{job_id}/tasks?status=nope", 400),
        H("quantum-tasks limit float", "GET", f"{qt}?limit=1e3", 400),
        H("metrics type unknown", "GET", f"{API}/jobs/{job_id}/metrics?metric_type=x", 400),
        # paths: traversal, NUL, control characters, unicode tricks, unknown ids
        H("traversal in job id", "GET", f"{API}/jobs/..%2F..%2Fetc%2Fpasswd", 404, raw_path=True),
        H("dot segments", "GET", f"{API}/jobs/../../../etc/passwd", 404, raw_path=True),
        H("file name traversal", "PUT", f"{API}/files/..%2F..%2Fetc%2Fpasswd", 400,
          body=tar_of(MAIN), raw_path=True),
        H("file name NUL", "PUT", f"{API}/files/a%00b.tar", 400, body=tar_of(MAIN),
          raw_path=True),
        H("file name control char", "PUT", f"{API}/files/a%01b.tar", 400, body=tar_of(MAIN),
          raw_path=True),
        H("file name too long", "PUT", f"{API}/files/{'é' * 200}.tar", 400, body=tar_of(MAIN)),
        H("file name reserved", "PUT", f"{API}/files/.qh-x.tar", 400, body=tar_of(MAIN)),
        H("file not tar or hdf5", "PUT", f"{API}/files/notes.tar", 415, body=b"plain text" * 200),
        H("file missing", "GET", f"{API}/files/{quote('nichts‮.tar')}", 404),
        H("delete missing file", "DELETE", f"{API}/files/none.tar", 404),
        H("unknown job", "GET", f"{API}/jobs/{'0' * 32}", 404),
        H("unknown program run", "POST", f"{API}/programs/none/run", 404, json_body={}),
        H("program title traversal", "POST", f"{API}/programs", 400, **upload("../x")),
        H("program title unicode", "POST", f"{API}/programs", 400, **upload("prögram")),
        H("program title control char", "POST", f"{API}/programs", 400, **upload("a\x07b")),
        H("program title too long", "POST", f"{API}/programs", 400, **upload("t" * 200)),
        # program sources: links, devices, traversal, bombs, empty, not code
        H("entrypoint traversal", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN), filename="src.tar.gz", entrypoint="../main.py")),
        H("entrypoint absolute", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN), filename="src.tar.gz", entrypoint="/etc/x.py")),
        H("tar absolute member", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("/etc/cron.d/x")), filename="s.tgz",
                   entrypoint="main.py")),
        H("tar dotdot member", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("a/../../x")), filename="s.tgz",
                   entrypoint="main.py")),
        H("tar symlink out", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("l", kind=tarfile.SYMTYPE, link="/etc/passwd")),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar relative symlink out", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("a/l", kind=tarfile.SYMTYPE, link="../../x")),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar write through symlink", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("d", kind=tarfile.SYMTYPE, link="."),
                                 member("d/x")), filename="s.tgz", entrypoint="main.py")),
        H("tar hardlink out", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("h", kind=tarfile.LNKTYPE, link="/etc/passwd")),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar char device", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("null", kind=tarfile.CHRTYPE)),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar block device", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("sda", kind=tarfile.BLKTYPE)),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar fifo", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, member("fifo", kind=tarfile.FIFOTYPE)),
                   filename="s.tgz", entrypoint="main.py")),
        H("tar size bomb", "POST", f"{API}/programs", 413,
          **upload(source=size_bomb(), filename="s.tgz", entrypoint="main.py")),
        H("tar member-count bomb", "POST", f"{API}/programs", 413,
          **upload(source=count_bomb(), filename="s.tgz", entrypoint="main.py")),
        H("tar truncated", "POST", f"{API}/programs", 400,
          **upload(source=tar_of(MAIN, gz=False)[:700], filename="s.tar", entrypoint="main.py")),
        H("gzip corrupt", "POST", f"{API}/programs", None,
          **upload(source=gzip.compress(tar_of(MAIN, gz=False))[:-40] + b"\0" * 40,
                   filename="s.tgz", entrypoint="main.py")),
        H("source empty", "POST", f"{API}/programs", 400, **upload(source=b"")),
        H("source neither tar nor .py", "POST", f"{API}/programs", 415,
          **upload(source=b"\x7fELF" + bytes(2000), filename="a.out")),
        H("source syntax error", "POST", f"{API}/programs", 400, **upload(source=b"def (:\n")),
        H("source NUL byte", "POST", f"{API}/programs", 400, **upload(source=b"x = 1\0\n")),
        H("resources nested 100,000", "POST", f"{API}/programs", 400,
          **upload(resources=DEEP)),
        H("resources negative cpu", "POST", f"{API}/programs", 400,
          **upload(resources='{"cpu": -1}')),
        H("resources huge cpu", "POST", f"{API}/programs", 400,
          **upload(resources='{"cpu": 1e308}')),
        H("resources huge mem", "POST", f"{API}/programs", 400,
          **upload(resources=json.dumps({"mem": 2**80}))),
        H("resources unknown class", "POST", f"{API}/programs", 400,
          **upload(resources="enormous")),
        H("device unknown", "POST", f"{API}/programs", None, **upload(device="nope")),
        # run bodies
        H("run body nested 100,000", "POST", f"{API}/programs/good/run", 400,
          body=DEEP.encode(), headers={"Content-Type": "application/json"}),
        H("run arguments nested 100,000", "POST", f"{API}/programs/good/run", 400,
          body=b'{"arguments": {"x": ' + DEEP_OBJ.encode() + b"}}",
          headers={"Content-Type": "application/json"}),
        H("run arguments nested 150", "POST", f"{API}/programs/good/run", 400,
          body=b'{"arguments": {"x": ' + b"[" * 150 + b"]" * 150 + b"}}",
          headers={"Content-Type": "application/json"}),
        H("run body not JSON", "POST", f"{API}/programs/good/run", 400, body=b"{nope",
          headers={"Content-Type": "application/json"}),
        H("run body invalid UTF-8", "POST", f"{API}/programs/good/run", 400,
          body=b'{"arguments": "\xff\xfe"}', headers={"Content-Type": "application/json"}),
        H("run body a list", "POST", f"{API}/programs/good/run", 400, json_body=[1, 2]),
        H("run body not declared JSON", "POST", f"{API}/programs/good/run", 400, body=b"{}",
          headers={"Content-Type": "text/plain"}),
        H("run max_runtime 2**70", "POST", f"{API}/programs/good/run", 400,
          json_body={"max_runtime": 2**70}),
        H("run max_runtime negative", "POST", f"{API}/programs/good/run", 400,
          json_body={"max_runtime": -1}),
        H("run max_runtime a string", "POST", f"{API}/programs/good/run", 400,
          json_body={"max_runtime": "10"}),
        H("run max_runtime a float", "POST", f"{API}/programs/good/run", 400,
          json_body={"max_runtime": 1.5}),
        H("run unknown field", "POST", f"{API}/programs/good/run", 400,
          json_body={"argumnets": {}}),
        H("run arguments a string", "POST", f"{API}/programs/good/run", 400,
          json_body={"arguments": "x"}),
        H("run arguments NaN", "POST", f"{API}/programs/good/run", 400,
          body=b'{"arguments": {"x": NaN}}', headers={"Content-Type": "application/json"}),
        H("run device a number", "POST", f"{API}/programs/good/run", 400,
          json_body={"device": 123}),
        H("run resources huge gpu", "POST", f"{API}/programs/good/run", 400,
          json_body={"resources": {"gpu": 10**20}}),
        # quantum tasks
        H("quantum task nested 100,000", "POST", qt, 400, body=DEEP_OBJ.encode(),
          headers={"Content-Type": "application/json"}),
        H("seed_simulator 2**70", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits,
                     "options": {"seed_simulator": 2**70}}),
        H("seed_simulator negative", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits,
                     "options": {"seed_simulator": -1}}),
        H("seed_simulator a float", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits,
                     "options": {"seed_simulator": 1.5}}),
        H("shots zero", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits, "options": {"shots": 0}}),
        H("shots 2**70", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits,
                     "options": {"shots": 2**70}}),
        H("shots a string", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits,
                     "options": {"shots": "100"}}),
        H("circuits garbage", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": "not qpy at all"}),
        H("circuits a number", "POST", qt, 400, json_body={"device": "aer_simulator",
                                                         "circuits": 7}),
        H("quantum task unknown device", "POST", qt, None,
          json_body={"device": "nope", "circuits": circuits}),
        H("options a list", "POST", qt, 400,
          json_body={"device": "aer_simulator", "circuits": circuits, "options": [1]}),
        # hybrid jobs
        H("hybrid metadata nested 100,000", "POST", f"{API}/hybrid-jobs", 400, **hybrid(DEEP)),
        H("hybrid metadata not JSON", "POST", f"{API}/hybrid-jobs", 400, **hybrid("{x")),
        H("hybrid hyperparameters deep", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid('{"job_name": "hj", "hyperparameters": ' + '{"a":' * 5000 + "1"
                   + "}" * 5000 + "}")),
        H("hybrid job name traversal", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(job_name="../x"))),
        H("hybrid max_runtime 2**70", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(max_runtime=2**70))),
        H("hybrid channel name traversal", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(input_data={"..": {"upload": True}}))),
        H("hybrid channel symlink out", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(input_data={"data": {"upload": True, "is_dir": True}}),
                   {"data": tar_of(member("l", kind=tarfile.SYMTYPE, link="/etc/shadow"))})),
        H("hybrid channel device", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(input_data={"data": {"upload": True, "is_dir": True}}),
                   {"data": tar_of(member("zero", kind=tarfile.CHRTYPE))})),
        H("hybrid channel bomb", "POST", f"{API}/hybrid-jobs", 413,
          **hybrid(meta(input_data={"data": {"upload": True, "is_dir": True}}),
                   {"data": count_bomb()})),
        H("hybrid input uri elsewhere", "POST", f"{API}/hybrid-jobs", 400,
          **hybrid(meta(input_data={"data": {"uri": "file:///etc/"}}))),
        # HTTP itself
        H("80 KB Authorization header", "GET", f"{API}/jobs", 431,
          headers={"Authorization": "Bearer " + "a" * 80_000}, auth=False),
        H("request line over 4094 bytes", "GET", f"{API}/jobs?x={'y' * 5000}", 414),
        # refused by gunicorn itself, before the app: problem+json all the same
        H("request line over gunicorn's 8190 bytes", "GET", f"{API}/jobs?x={'y' * 9000}", 414),
        H("POST /healthz", "POST", "/healthz", 405, body=b""),
        H("DELETE /api/v1/jobs", "DELETE", f"{API}/jobs", 405),
        H("unknown API route", "GET", f"{API}/nothing-here", 404),
        H("no token", "GET", f"{API}/jobs", 401, auth=False),
        H("wrong token", "GET", f"{API}/jobs", 401, headers={"Authorization": "Bearer nope"},
          auth=False),
        H("token like an injection", "GET", f"{API}/jobs", 401,
          headers={"Authorization": "Bearer ' OR 1=1 --"}, auth=False),
    ]


# --- the run --------------------------------------------------------------------------------
def send(base: str, token: str, case: Hostile) -> tuple[int, str, bytes]:
    import requests

    headers = dict(case.headers)
    if case.auth:
        headers.setdefault("Authorization", f"Bearer {token}")
    if case.raw_path:
        parts = urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.putrequest(case.method, case.path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(case.body or b"")))
            conn.endheaders(case.body or b"")
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read()
        finally:
            conn.close()
    resp = requests.request(case.method, base + case.path, headers=headers, data=case.body
                            if case.files is None else case.form, files=case.files,
                            json=case.json_body if case.body is None and case.files is None
                            and case.json_body is not None else None, timeout=120)
    return resp.status_code, resp.headers.get("Content-Type", ""), resp.content


def snapshot(service: RunningService, user: str) -> dict[str, Any]:
    """Everything of `user` in Redis and storage, and the job queues."""
    r = service.registry.r
    keys = sorted(k for k in r.scan_iter(match=f"*{user}*", count=1000))
    redis_state = {k: r.dump(k) for k in keys}
    root = Path(service.env["QHYBRID_STORAGE_URL"].removeprefix("file://")) / "users" / user
    stored = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                    if p.is_file()) if root.exists() else []
    queues = {q: r.llen(q) for q in ("jobs.small", "jobs.medium")}
    return {"redis": redis_state, "storage": stored, "queues": queues,
            "sent": r.zcard(d.SENT_JOBS_KEY)}


@pytest.fixture(scope="module")
def prepared(service: RunningService, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Client, str, str]]:
    user, token = service.new_user()
    client = Client(url=service.url, token=token)
    src = write_program(tmp_path_factory.mktemp("good"), "from qhybrid import save_result\n"
                        "save_result({'ok': True})\n")
    program = client.upload(Program(title="good", entrypoint="main.py", working_dir=src))
    job = program.run()
    assert job.result(timeout=90) == {"ok": True}
    yield client, user, job.job_id


def test_catalogue_has_at_least_fifty_entries() -> None:
    from qhybrid.codec import encode_circuits

    assert len(catalogue("0" * 32, encode_circuits([bell()]))) >= 50


def test_every_hostile_input_is_a_4xx_problem_and_changes_nothing(
        service: RunningService, prepared: tuple[Client, str, str]) -> None:
    from qhybrid.codec import encode_circuits

    client, user, job_id = prepared
    cases = catalogue(job_id, encode_circuits([bell()]))
    before = snapshot(service, user)
    wrong: list[str] = []
    for case in cases:
        status, ctype, body = send(service.url, client.token, case)
        why = ""
        if not 400 <= status < 500 or (case.status is not None and status != case.status):
            why = f"answered {status}, expected {case.status or '4xx'}"
        elif not ctype.startswith("application/problem+json"):
            why = f"answered {status} as {ctype!r}"
        else:
            doc = json.loads(body)
            if doc.get("status") != status or not doc.get("detail"):
                why = f"problem document {doc} does not match status {status}"
        if why:
            wrong.append(f"{case.name}: {why}: {body[:200]!r}")
    assert not wrong, "\n".join(wrong)
    assert snapshot(service, user) == before

