"""Tests of the storage package: both store back ends (a directory, S3 in moto), keys, tars."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from moto import mock_aws

from qhybrid.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from storage import (
    LocalStore,
    ObjectStore,
    S3Store,
    is_hdf5,
    is_tar,
    keys,
    open_store,
    pack_dir,
    safe_extract,
)
from storage.store import TMP_PREFIX

BUCKET = "qhybrid-test"
MiB = 1024 * 1024


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials, no real endpoint overrides, and moto intercepting every AWS call."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("aws_env")
    return S3Store(BUCKET, "pfx/")


class PatternStream:
    """A non-seekable stream of `total` pseudo-random bytes, optionally failing at `fail_at`.

    Reads return at most 64 KiB, like a socket, to exercise short reads.
    """

    def __init__(self, total: int, fail_at: int | None = None) -> None:
        self.total, self.fail_at, self.pos = total, fail_at, 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionError("client went away")
        n = min(64 * 1024, self.total - self.pos, size if size >= 0 else self.total)
        block = hashlib.sha256(str(self.pos).encode()).digest() * (n // 32 + 1)
        data = block[:n]
        self.pos += n
        self.digest.update(data)
        return data


def sha256_of(reader: io.IOBase | object) -> str:
    digest = hashlib.sha256()
    while chunk := reader.read(MiB):  # type: ignore[attr-defined]
        digest.update(chunk)
    return digest.hexdigest()


# ---- store ------------------------------------------------------------------------------


def test_round_trips(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.exists("a/b.txt") and not store.exists("a/c.txt") and not store.exists("a")
    assert store.size("a/b.txt") == 5
    with store.open("a/b.txt") as f:
        assert f.read() == b"hello"

    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 1000)
    store.put_file("f/in.bin", src)
    store.download_file("f/in.bin", tmp_path / "out" / "deep" / "copy.bin")
    assert (tmp_path / "out" / "deep" / "copy.bin").read_bytes() == b"x" * 1000

    store.copy("a/b.txt", "c/d.txt")
    assert store.get_bytes("c/d.txt") == b"hello"
    store.put_bytes("a/b.txt", b"replaced")
    assert store.get_bytes("a/b.txt") == b"replaced"
    assert store.get_bytes("c/d.txt") == b"hello"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.size("empty") == 0


def test_put_stream_large_is_streamed(store: ObjectStore) -> None:
    stream = PatternStream(20 * MiB + 123)
    assert store.put_stream("big/blob.bin", stream) == 20 * MiB + 123  # type: ignore[arg-type]
    assert store.size("big/blob.bin") == 20 * MiB + 123
    reader = store.open("big/blob.bin")
    try:
        assert sha256_of(reader) == stream.digest.hexdigest()
    finally:
        reader.close()


def test_failed_stream_leaves_old_object_and_nothing_new(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("data/x.bin", b"old")
    for fail_at in (100 * 1024, 12 * MiB):  # single PUT and multipart on S3
        with pytest.raises(ConnectionError):
            store.put_stream("data/x.bin", PatternStream(20 * MiB, fail_at))  # type: ignore[arg-type]
        with pytest.raises(ConnectionError):
            store.put_stream("data/new.bin", PatternStream(20 * MiB, fail_at))  # type: ignore[arg-type]
    assert store.get_bytes("data/x.bin") == b"old"
    assert not store.exists("data/new.bin")
    assert [i.key for i in store.list()] == ["data/x.bin"]
    if isinstance(store, LocalStore):  # no temp files left behind
        assert [p.name for p in (store.root / "data").iterdir()] == ["x.bin"]
    else:  # the aborted multipart upload is gone too
        client = boto3.client("s3", region_name="us-east-1")
        assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_a_copy_keeps_its_contents_whatever_happens_to_the_original(store: ObjectStore) -> None:
    # given an object and a copy of it (a job's snapshot of its program)
    store.put_bytes("users/u/programs/p/source.tar", b"version 1")
    store.copy("users/u/programs/p/source.tar", "users/u/jobs/j/script.tar")
    # when the original is replaced, then deleted
    store.put_bytes("users/u/programs/p/source.tar", b"version 2")
    assert store.get_bytes("users/u/jobs/j/script.tar") == b"version 1"
    store.delete("users/u/programs/p/source.tar")
    # then the copy still holds what was copied, and a copy of nothing is NotFound
    assert store.get_bytes("users/u/jobs/j/script.tar") == b"version 1"
    with pytest.raises(NotFound):
        store.copy("users/u/programs/p/source.tar", "users/u/jobs/k/script.tar")
    assert not store.exists("users/u/jobs/k/script.tar")


def test_list_sorted_relative_and_prefix_delete(store: ObjectStore) -> None:
    for key in ("b/2", "a/z", "a-b", "a/b/c", "ab", "a/a"):
        store.put_bytes(key, key.encode())
    infos = list(store.list())
    assert [i.key for i in infos] == ["a-b", "a/a", "a/b/c", "a/z", "ab", "b/2"]
    assert all(i.size == len(i.key) and i.modified > 1e9 for i in infos)
    assert [i.key for i in store.list("a/")] == ["a/a", "a/b/c", "a/z"]
    assert [i.key for i in store.list("a")] == ["a-b", "a/a", "a/b/c", "a/z", "ab"]
    assert [i.key for i in store.list("a/b")] == ["a/b/c"]
    assert list(store.list("nothing/")) == []

    store.delete_prefix("a/")
    assert [i.key for i in store.list()] == ["a-b", "ab", "b/2"]
    store.delete("ab")
    store.delete("ab")  # missing is fine
    store.delete_prefix("nothing/")
    assert [i.key for i in store.list()] == ["a-b", "b/2"]
    with pytest.raises(InvalidInput):
        store.delete_prefix("")


def test_missing_keys_raise_not_found(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("dir/file", b"1")
    for call in (
        lambda: store.get_bytes("nope"),
        lambda: store.open("nope"),
        lambda: store.size("nope"),
        lambda: store.copy("nope", "other"),
        lambda: store.download_file("nope", tmp_path / "x"),
        lambda: store.get_bytes("dir"),
    ):
        with pytest.raises(NotFound):
            call()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/", "./a", "a/.", "a\\b", TMP_PREFIX + "x"]
)
def test_bad_keys_are_refused(store: ObjectStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        store.exists(key)
    assert list(store.list()) == []
    assert not (tmp_path / "x").exists()


def test_local_temp_files_never_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/real", b"1")
    (tmp_path / "a" / (TMP_PREFIX + "abc")).write_bytes(b"partial")
    assert [i.key for i in store.list()] == ["a/real"]


def test_local_key_clashing_with_a_prefix_is_a_conflict(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1")
    with pytest.raises(Conflict):
        store.put_bytes("a", b"2")
    with pytest.raises(Conflict):
        store.put_bytes("a/b/c", b"3")
    assert [i.key for i in store.list()] == ["a/b"]


def test_local_delete_prunes_empty_dirs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("users/u/jobs/j/1/output/logs.txt", b"log")
    store.delete_prefix("users/u/jobs/j/1/")
    assert list((tmp_path / "s").iterdir()) == []


def test_presigned_url(store: ObjectStore) -> None:
    store.put_bytes("users/u/data/f.h5", b"x")
    url = store.presigned_url("users/u/data/f.h5", expires_s=60)
    if isinstance(store, LocalStore):
        assert url is None
        return
    assert url is not None
    parts = urlparse(url)
    query = parse_qs(parts.query)
    assert parts.scheme == "https" and BUCKET in url
    assert parts.path.endswith("pfx/users/u/data/f.h5")
    assert query["X-Amz-Expires"] == ["60"] and "X-Amz-Signature" in query


def test_check(store: ObjectStore) -> None:
    store.check()


def test_check_fails_for_missing_bucket(aws_env: None) -> None:
    with pytest.raises(Exception, match="unreachable"):
        S3Store("no-such-bucket", "").check()


def test_open_store(tmp_path: Path, aws_env: None) -> None:
    local = open_store(f"file://{tmp_path}/data")
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "data").resolve()
    s3 = open_store(f"s3://{BUCKET}/some/prefix/")
    assert isinstance(s3, S3Store) and s3.bucket == BUCKET and s3.prefix == "some/prefix/"
    s3.put_bytes("k", b"v")
    assert open_store(f"s3://{BUCKET}").get_bytes("some/prefix/k") == b"v"
    for bad in ("relative/path", "file://host/x", "file:relative", "http://x/y", "s3:///x",
                "s3://b/../x", "file:///x?y=1"):
        with pytest.raises(ValueError):
            open_store(bad)


# ---- keys -------------------------------------------------------------------------------


def test_key_layout() -> None:
    job = keys.job_prefix("alice", "vqe", "20240101T000000Z")
    assert keys.program_source("alice", "p1") == "users/alice/programs/p1/source.tar.gz"
    assert keys.user_data("alice", "f.h5") == "users/alice/data/f.h5"
    assert keys.user_data_prefix("alice") == "users/alice/data/"
    assert job == "users/alice/jobs/vqe/20240101T000000Z"
    assert keys.job_script(job) == job + "/script/source.tar.gz"
    assert keys.job_arguments(job) == job + "/script/arguments.json"
    assert keys.job_data(job, "train") == job + "/data/train/"
    assert keys.job_checkpoints(job) == job + "/checkpoints/"
    assert keys.job_model(job) == job + "/output/model.tar.gz"
    assert keys.job_result(job) == job + "/output/result.json"
    assert keys.job_logs(job) == job + "/output/logs.txt"
    for bad in ("", "..", ".", "a/b", "../bob"):
        with pytest.raises(InvalidInput):
            keys.user_data("alice", bad)


# ---- tarsafe ----------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    (root / "sub" / "__pycache__").mkdir()
    (root / "main.py").write_text("print('hi')\n")
    (root / "sub" / "deeper" / "data.bin").write_bytes(bytes(range(256)) * 10)
    (root / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (root / "sub" / "__pycache__" / "x.pyc").write_bytes(b"junk")


@pytest.mark.parametrize("gz", [True, False])
def test_pack_and_extract_round_trip(tmp_path: Path, gz: bool) -> None:
    make_tree(tmp_path / "src")
    archive = tmp_path / "a.tar"
    size = pack_dir(tmp_path / "src", archive, gzip=gz)
    assert size == archive.stat().st_size
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert sorted(names) == ["main.py", "sub", "sub/deeper", "sub/deeper/data.bin"]
    extracted = safe_extract(archive, tmp_path / "out")
    assert sorted(extracted) == sorted(names)
    assert (tmp_path / "out" / "main.py").read_text() == "print('hi')\n"
    assert (tmp_path / "out/sub/deeper/data.bin").read_bytes() == bytes(range(256)) * 10

    buf = io.BytesIO()
    assert pack_dir(tmp_path / "src", buf, gzip=gz) == len(buf.getvalue())
    buf.seek(0)
    assert sorted(safe_extract(buf, tmp_path / "out2")) == sorted(names)


def test_extract_from_non_seekable_stream(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    buf = io.BytesIO()
    pack_dir(tmp_path / "src", buf)

    class Pipe:
        def __init__(self, data: bytes) -> None:
            self._buf = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._buf.read(min(size, 1000) if size > 0 else size)

        def seekable(self) -> bool:
            return False

    assert "main.py" in safe_extract(Pipe(buf.getvalue()), tmp_path / "out")  # type: ignore[arg-type]


def test_pack_limit(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(b"\0" * 200_000)
    with pytest.raises(PayloadTooLarge):
        pack_dir(tmp_path / "src", tmp_path / "a.tar", gzip=False, max_bytes=100_000)
    assert not (tmp_path / "a.tar").exists()
    assert pack_dir(tmp_path / "src", tmp_path / "a.tgz", max_bytes=100_000) < 100_000


def malicious_tar(evil: tarfile.TarInfo, *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A tar whose first member is harmless and whose last is `evil`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        for info in [*(extra or []), evil]:
            if info.isreg():
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


EVIL = {
    "dotdot": (member("../x"), []),
    "nested-dotdot": (member("a/../../x"), []),
    "absolute": (member("/etc/x"), []),
    "symlink-abs": (member("passwd", tarfile.SYMTYPE, "/etc/passwd"), []),
    "symlink-up": (member("up", tarfile.SYMTYPE, "../.."), []),
    "symlink-deep-up": (member("a/b/up", tarfile.SYMTYPE, "../../../x"), []),
    "hardlink-out": (member("hl", tarfile.LNKTYPE, "../outside"), []),
    "hardlink-abs": (member("hl", tarfile.LNKTYPE, "/etc/passwd"), []),
    "char-device": (member("null", tarfile.CHRTYPE), []),
    "fifo": (member("fifo", tarfile.FIFOTYPE), []),
    # each link looks inside on its own, but t -> d/s/.. -> (d/s = d/..) -> parent of dest
    "symlink-chain": (
        member("t", tarfile.SYMTYPE, "d/s/.."),
        [member("d", tarfile.DIRTYPE), member("d/s", tarfile.SYMTYPE, "..")],
    ),
    "write-through-symlink": (
        member("link/passwd"),
        [member("link", tarfile.SYMTYPE, ".")],
    ),
}


@pytest.mark.parametrize("case", sorted(EVIL))
@pytest.mark.parametrize("gz", [False, True])
def test_malicious_tars_are_refused_before_writing(tmp_path: Path, case: str, gz: bool) -> None:
    evil, extra = EVIL[case]
    data = malicious_tar(evil, extra=extra)
    if gz:
        import gzip

        data = gzip.compress(data)
    dest = tmp_path / "sandbox" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(InvalidInput) as err:
        safe_extract(io.BytesIO(data), dest)
    assert evil.name in str(err.value)
    assert list((tmp_path / "sandbox").rglob("*")) == [dest]  # nothing written anywhere
    assert list(dest.iterdir()) == []


def test_links_inside_are_allowed(tmp_path: Path) -> None:
    data = malicious_tar(
        member("d/same", tarfile.SYMTYPE, "../ok.txt"),
        extra=[member("d", tarfile.DIRTYPE), member("hard", tarfile.LNKTYPE, "ok.txt")],
    )
    names = safe_extract(io.BytesIO(data), tmp_path / "out")
    assert sorted(names) == ["d", "d/same", "hard", "ok.txt"]
    assert (tmp_path / "out" / "d" / "same").read_bytes() == b"ok"
    assert (tmp_path / "out" / "hard").read_bytes() == b"ok"


def test_extract_limit_and_garbage(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    buf = io.BytesIO()
    pack_dir(tmp_path / "src", buf)
    with pytest.raises(PayloadTooLarge):
        safe_extract(io.BytesIO(buf.getvalue()), tmp_path / "out", max_bytes=100)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidInput):
        safe_extract(io.BytesIO(b"this is not a tar" * 100), tmp_path / "out")
    with pytest.raises(InvalidInput):
        safe_extract(io.BytesIO(buf.getvalue()[:200]), tmp_path / "out")


class _Counting(io.BytesIO):
    """Counts the compressed bytes the extractor read."""

    read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.read_bytes += len(data)
        return data


def _zeros_tar_gz(sizes: list[int]) -> bytes:
    """A .tar.gz of members full of zeros, compressed as it is made (a bomb when large)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = []
    for i, size in enumerate(sizes):
        info = tarfile.TarInfo(f"z{i}")
        info.size = size
        out.append(comp.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        for start in range(0, size, 1024**2):
            out.append(comp.compress(bytes(min(1024**2, size - start))))
        out.append(comp.compress(bytes(-size % 512)))
    out.append(comp.compress(bytes(1024)) + comp.flush())
    return b"".join(out)


@pytest.mark.parametrize("sizes", [[64 * 1024**2], [300 * 1024] * 8], ids=["one", "parts"])
def test_a_bomb_is_refused_while_read_and_nothing_is_written(tmp_path: Path,
                                                              sizes: list[int]) -> None:
    bomb = _Counting(_zeros_tar_gz(sizes))
    with pytest.raises(PayloadTooLarge):
        safe_extract(bomb, tmp_path / "out", max_bytes=1024**2)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
    if len(sizes) == 1:      # refused at the header: the rest is never decompressed
        assert bomb.read_bytes < len(bomb.getvalue()) / 4


def test_member_count_is_bounded(tmp_path: Path) -> None:
    files = [member(f"f{i}") for i in range(60)]
    data = malicious_tar(files[-1], extra=files[:-1])
    with pytest.raises(PayloadTooLarge, match="more than 50 members"):
        safe_extract(io.BytesIO(data), tmp_path / "out", max_members=50)
    assert not (tmp_path / "out").exists()
    assert len(safe_extract(io.BytesIO(data), tmp_path / "ok", max_members=100)) == 61


def test_sniffing(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    make_tree(tmp_path / "src")
    samples: dict[str, Path] = {}
    samples["tar"] = tmp_path / "a.tar"
    pack_dir(tmp_path / "src", samples["tar"], gzip=False)
    samples["tgz"] = tmp_path / "a.tar.gz"
    pack_dir(tmp_path / "src", samples["tgz"])
    samples["h5"] = tmp_path / "a.h5"
    with h5py.File(samples["h5"], "w") as f:
        f["x"] = list(range(10))
    samples["h5-userblock"] = tmp_path / "b.h5"
    with h5py.File(samples["h5-userblock"], "w", userblock_size=512) as f:
        f["x"] = [1, 2, 3]
    samples["text"] = tmp_path / "a.txt"
    samples["text"].write_text("ustar is a word, HDF too\n" * 100)
    samples["zip"] = tmp_path / "a.zip"
    with zipfile.ZipFile(samples["zip"], "w") as z:
        z.writestr("x.txt", "hello" * 1000)

    heads = {name: path.read_bytes()[:2048] for name, path in samples.items()}
    assert {n for n, h in heads.items() if is_tar(h)} == {"tar", "tgz"}
    assert {n for n, h in heads.items() if is_hdf5(h)} == {"h5", "h5-userblock"}
    assert not is_tar(b"") and not is_hdf5(b"") and not is_tar(b"\x1f\x8bgarbage")
