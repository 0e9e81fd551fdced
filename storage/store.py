"""The one adapter to object storage: a local directory or an S3 bucket behind one interface.

Everything else in qhybrid stores bytes through `ObjectStore`, so boto3 is imported here only,
and only when an S3 store is opened.
Keys are '/'-separated, relative to the store's root or prefix, and validated the same way on
both back ends, so a key that works on a laptop works on S3 and nothing escapes a local root.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlparse

from qhybrid.errors import Conflict, InvalidInput, NotFound, QhybridError, ServiceUnavailable

CHUNK = 1024 * 1024
MULTIPART = 8 * 1024 * 1024
# LocalStore writes into temp files named like this next to their target; keys may not use it.
TMP_PREFIX = ".qh-tmp-"


def validate_key(key: str) -> str:
    """Refuse keys that are empty, absolute, have empty/'.'/'..' segments or reserved names."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("storage key must be a non-empty string")
    if "\\" in key or "\x00" in key:
        raise InvalidInput(f"storage key {key!r} contains a backslash or NUL")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or seg.startswith(TMP_PREFIX):
            raise InvalidInput(f"invalid storage key {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is '' (everything), a key, or a key followed by '/'."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: key relative to the store's prefix, size in bytes, mtime (epoch)."""

    key: str
    size: int
    modified: float


class _CountingReader:
    """Reads full chunks from a stream and counts them.

    boto3 takes a short read for the end of a part or of the stream, so each read is filled.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data = self._stream.read()
        else:
            parts: builtins.list[bytes] = []
            want = size
            while want > 0:
                chunk = self._stream.read(want)
                if not chunk:
                    break
                parts.append(chunk)
                want -= len(chunk)
            data = b"".join(parts)
        self.count += len(data)
        return data


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> int:
    """Copy in CHUNK-sized pieces and return the number of bytes copied."""
    total = 0
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        total += len(chunk)
    return total


def _mkstemp_near(path: Path) -> tuple[int, str]:
    """Create a temp file next to path, making its directory (again, if a delete pruned it)."""
    for _ in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        except FileNotFoundError:
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)


def _atomic_write(path: Path, stream: BinaryIO, durable: bool = True) -> int:
    """Write `stream` to `path` through a fsynced temp file in the same directory + os.replace.

    A failure at any point removes the temp file and leaves a previous file at `path` intact.
    Not `durable`: the same without the fsyncs (a working copy a crash makes worthless anyway).
    """
    fd, tmp = _mkstemp_near(path)
    try:
        with os.fdopen(fd, "wb") as out:
            written = _copy_stream(stream, cast(BinaryIO, out))
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)     # make the rename itself durable
    return written


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ObjectStore(ABC):
    """Object storage interface; missing keys raise `qhybrid.errors.NotFound`."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO) -> int:
        """Store a stream without holding it in memory; atomic; return the bytes written."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open a streaming reader; the caller closes it."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose key starts with prefix (which must not be empty)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with prefix, recursively, sorted by key."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy one object inside the store."""

    @abstractmethod
    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        """A time-limited GET URL, or None where the back end has none."""

    @abstractmethod
    def check(self) -> None:
        """Health check: raise `ServiceUnavailable` if the store cannot be used."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small payload."""
        self.put_stream(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path | str) -> None:
        """Store a local file."""
        with open(path, "rb") as f:
            self.put_stream(key, f)

    def get_bytes(self, key: str) -> bytes:
        """Read a whole (small) object."""
        reader = self.open(key)
        try:
            return reader.read()
        finally:
            reader.close()

    def download_file(self, key: str, path: Path | str) -> None:
        """Stream an object into a local file, replacing it atomically.

        The file is a working copy (a job's inputs): it is not fsynced, the object stays
        the durable one."""
        reader = self.open(key)
        try:
            _atomic_write(Path(path), reader, durable=False)
        finally:
            reader.close()


class LocalStore(ObjectStore):
    """Objects as files under a root directory (the embedded default)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        path = self._path(key)
        try:
            return _atomic_write(path, stream)
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
            raise Conflict(f"key {key!r} clashes with an object or prefix already stored") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no object {key!r}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key!r}")
        return path.stat().st_size

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove now-empty directories up to (not including) the root."""
        while directory != self.root:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def delete_prefix(self, prefix: str) -> None:
        if not validate_prefix(prefix):
            raise InvalidInput("refusing to delete the whole store (empty prefix)")
        for info in builtins.list(self.list(prefix)):
            self.delete(info.key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base = self.root.joinpath(*[s for s in prefix.rpartition("/")[0].split("/") if s])
        found: builtins.list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort(key=lambda info: info.key)
        return iter(found)

    def copy(self, src_key: str, dst_key: str) -> None:
        """A hard link, where the file system allows: an object's file is never written in
        place (a put replaces it with a new file), so both keys keep their own contents."""
        src, dst = self._path(src_key), self._path(dst_key)
        if not src.is_file():
            raise NotFound(f"no object {src_key!r}")
        fd, tmp = _mkstemp_near(dst)
        os.close(fd)
        try:
            os.unlink(tmp)
            os.link(src, tmp)
        except FileNotFoundError as exc:
            raise NotFound(f"no object {src_key!r}") from exc
        except OSError:         # no links here (another file system, a FAT volume...)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            with self.open(src_key) as stream:
                self.put_stream(dst_key, stream)
            return
        try:
            os.replace(tmp, dst)
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
            os.unlink(tmp)
            raise Conflict(f"key {dst_key!r} clashes with an object or prefix already stored") from exc
        _fsync_dir(dst.parent)      # the source's contents are durable already: the new name

    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        validate_key(key)
        return None

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise ServiceUnavailable(f"storage directory {self.root} is missing or not writable")


def _client_error() -> type[Exception]:
    """botocore's ClientError, imported on first use: boto3 loads only for S3 storage."""
    from botocore.exceptions import ClientError

    return ClientError


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def _is_missing(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


class S3Store(ObjectStore):
    """Objects in an S3 (or S3-compatible: MinIO, moto) bucket under a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = validate_key(prefix) + "/" if prefix else ""
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(
            signature_version="s3v4",
            # custom endpoints (MinIO, moto server) rarely resolve bucket.host names
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._client: Any = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART, max_concurrency=4
        )
        # A stream (not a file) is read part by part into memory; boto3 would hold up to 10
        # parts (80 MiB) when storage is slower than the sender. Three keep a web process
        # streaming an upload well under 64 MiB (benchmarks/file_transfer.py), still in parallel.
        self._transfer.max_in_memory_upload_chunks = 3

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, {self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        # upload_fileobj reads part by part (at most a few parts in memory); a failed multipart
        # upload is aborted, and S3 only shows an object once the upload completes.
        reader = _CountingReader(stream)
        self._client.upload_fileobj(reader, self.bucket, self._key(key), Config=self._transfer)
        return reader.count

    def put_file(self, key: str, path: Path | str) -> None:
        self._client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)

    def open(self, key: str) -> BinaryIO:
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except _client_error() as exc:
            if _is_missing(exc):
                raise NotFound(f"no object {key!r}") from exc
            raise
        return cast(BinaryIO, resp["Body"])

    def download_file(self, key: str, path: Path | str) -> None:
        # boto3 downloads into a temp name and renames it, so the result is atomic too.
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer)
        except _client_error() as exc:
            if _is_missing(exc):
                raise NotFound(f"no object {key!r}") from exc
            raise

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self._client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except _client_error() as exc:
            if _is_missing(exc):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise NotFound(f"no object {key!r}")
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        if not validate_prefix(prefix):
            raise InvalidInput("refusing to delete the whole store (empty prefix)")
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if not objects:
                continue
            resp = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise QhybridError(f"could not delete {first.get('Key')}: {first.get('Message')}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # S3 lists keys in UTF-8 byte order, which is the order of Python's str sort.
        validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][len(self.prefix):], int(obj["Size"]), obj["LastModified"].timestamp()
                )

    def copy(self, src_key: str, dst_key: str) -> None:
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        try:
            self._client.copy(source, self.bucket, self._key(dst_key), Config=self._transfer)
        except _client_error() as exc:
            if _is_missing(exc):
                raise NotFound(f"no object {src_key!r}") from exc
            raise

    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        return cast(
            str,
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s,
            ),
        )

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except _s3_errors() as exc:
            raise ServiceUnavailable(f"bucket {self.bucket!r} is unreachable: {exc}") from exc


def open_store(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """Open the store a URL names: `file:///abs/path` or `s3://bucket/prefix`."""
    parts = urlparse(url)
    if parts.query or parts.fragment or parts.params:
        raise ValueError(f"storage URL {url!r} must not have a query or fragment")
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ValueError(f"storage URL {url!r} must be file:///absolute/path")
        return LocalStore(Path(path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} must name a bucket: s3://bucket/prefix")
        try:
            return S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url)
        except InvalidInput as exc:
            raise ValueError(f"storage URL {url!r} has an invalid prefix") from exc
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "open_store",
    "validate_key",
    "validate_prefix",
]
