"""The per-user flat file store (tar and HDF5), shared by the API, the pages and the supervisor.

Files live under `users/<user>/data/` or, with `function=`, under a program's
`users/<user>/programs/<title>/data/` (see storage/keys.py). Content is recognised by its
first bytes, never by its name. An upload streams into the store, which commits atomically,
so an interrupted or refused upload leaves the old file, if any, as it was. The quota (bytes
and files, over all of a user's stores) is checked before anything is written and again as
bytes arrive; one upload per user runs at a time so two uploads cannot both fit alone and
overflow together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from qhybrid.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from qhybrid.files import ACCEPTED, check_name
from storage import keys
from storage.store import ObjectStore
from storage.tarsafe import is_hdf5, is_tar
from tasks.core import defaults as d
from tasks.core.registry import Registry
from tasks.core.settings import Settings
from tasks.supervisor.extension import JobExtension

if TYPE_CHECKING:
    from tasks.supervisor.supervisor import Supervisor

CHUNK = 1024 * 1024
_PROGRAM_FILE = re.compile(r"^[^/]+/data/[^/]+$")   # <title>/data/<file> under users/<u>/programs/

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    modified: float
    function: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "modified": self.modified,
                "function": self.function}


@dataclass(frozen=True)
class Usage:
    """What a user's files take, against the quota."""

    bytes: int
    files: int
    max_bytes: int
    max_files: int

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "files": self.files,
                "max_bytes": self.max_bytes, "max_files": self.max_files}


class UploadInterrupted(InvalidInput):
    """The client stopped sending before the end of the upload; nothing was stored."""


class _UploadReader:
    """The upload as the store reads it: the sniffed head, then the rest of the stream.

    It counts bytes against what the quota leaves and raises PayloadTooLarge past it, and
    UploadInterrupted if the stream ends before its declared length: either aborts the
    store's write. `tick` runs now and then (to keep the user's lock).
    """

    def __init__(self, head: bytes, rest: IO[bytes], limit: int, tick: Callable[[], None],
                 expected: int | None = None) -> None:
        self._head = memoryview(head)
        self._rest = rest
        self._limit = limit
        self._expected = expected
        self._tick = tick
        self._last_tick = time.monotonic()
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        if self._head:
            n = len(self._head) if size is None or size < 0 else min(size, len(self._head))
            data = bytes(self._head[:n])
            self._head = self._head[n:]
        else:
            try:
                # at most a chunk at a time: the store fills its parts from short reads, and
                # the web server then never buffers a whole part on its side as well
                data = self._rest.read(CHUNK if size is None or size < 0 else min(size, CHUNK))
            except Exception as exc:
                # The client went away (a reset, or the end before Content-Length). Raised as
                # our own error: an OSError would make the store's S3 client take it for a
                # failure of its own connection and hang on the parts in flight.
                raise UploadInterrupted(f"the upload was interrupted: {exc}") from None
            if not data and self._expected is not None and self.count < self._expected:
                # gunicorn ends a body cut short quietly; the store must not commit it
                raise UploadInterrupted(f"the upload ended after {self.count} of "
                                        f"{self._expected} bytes")
        self.count += len(data)
        if self.count > self._limit:
            raise PayloadTooLarge(f"the upload exceeds your file quota (at most {self._limit} "
                                  "more bytes fit)", field="file")
        now = time.monotonic()
        if now - self._last_tick > d.FILES_LOCK_TTL_S / 4:
            self._last_tick = now
            self._tick()
        return data


def read_head(stream: IO[bytes], size: int = d.FILE_SNIFF_BYTES) -> bytes:
    """The first `size` bytes of a stream (fewer only at its end)."""
    parts: list[bytes] = []
    want = size
    while want > 0:
        chunk = stream.read(want)
        if not chunk:
            break
        parts.append(chunk)
        want -= len(chunk)
    return b"".join(parts)


def check_content(head: bytes) -> str:
    """'tar' or 'hdf5' by the first bytes; anything else is 415 naming what is accepted."""
    if is_tar(head):
        return "tar"
    if is_hdf5(head):
        return "hdf5"
    raise UnsupportedMediaType(f"the file is not {ACCEPTED} (recognised by content, not by "
                               "name)", field="file", accepted=["tar", "tar+gzip", "hdf5"])


class DataFiles:
    """The file store of every user, over the object store and the registry."""

    def __init__(self, store: ObjectStore, registry: Registry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings

    # --- names and places -----------------------------------------------------------------
    def prefix(self, user: str, function: str | None) -> str:
        """The store `function` names (a program of the user's, which must exist)."""
        if function is not None:
            if not isinstance(function, str) or not re.match(d.TITLE_PATTERN, function):
                raise InvalidInput("function is the title of one of your programs",
                                   field="function")
            try:
                self.registry.get_program(user, function)
            except NotFound:
                raise NotFound(f"no program {function!r}", field="function") from None
        return keys.files_prefix(user, function or None)

    def key(self, user: str, name: str, function: str | None) -> str:
        return self.prefix(user, function) + check_name(name)

    # --- reading ----------------------------------------------------------------------------
    def list(self, user: str, function: str | None = None) -> list[FileInfo]:
        prefix = self.prefix(user, function)
        return [FileInfo(o.key[len(prefix):], o.size, o.modified, function)
                for o in self.store.list(prefix) if "/" not in o.key[len(prefix):]]

    def usage(self, user: str) -> Usage:
        """Bytes and files over the user's own store and every program's store."""
        total = count = 0
        for o in self.store.list(keys.user_data_prefix(user)):
            total, count = total + o.size, count + 1
        programs = keys.user_prefix(user) + "/programs/"
        for o in self.store.list(programs):
            if _PROGRAM_FILE.match(o.key[len(programs):]):
                total, count = total + o.size, count + 1
        return Usage(total, count, self.settings.files_max_bytes, self.settings.files_max_count)

    def open(self, user: str, name: str, function: str | None = None) -> tuple[BinaryIO, int]:
        """A streaming reader and the size; NotFound names the file."""
        key = self.key(user, name, function)
        try:
            size = self.store.size(key)
            return self.store.open(key), size
        except NotFound:
            raise NotFound(f"no file {name!r}", field="name") from None

    def download_url(self, user: str, name: str, function: str | None = None) -> str | None:
        """A short-lived URL straight to storage (S3), if the store has them and they are on."""
        key = self.key(user, name, function)
        if not self.store.exists(key):
            raise NotFound(f"no file {name!r}", field="name")
        if not self.settings.files_redirect:
            return None
        return self.store.presigned_url(key, d.FILE_URL_EXPIRY_S)

    # --- writing ----------------------------------------------------------------------------
    def put(self, user: str, name: str, stream: IO[bytes], function: str | None = None,
            length: int | None = None) -> tuple[FileInfo, bool]:
        """Check and store an upload; returns its info and whether the name is new.

        Refuses bad names (400), other content than tar/HDF5 (415) and uploads over quota
        (413) with nothing changed.
        """
        key = self.key(user, name, function)
        if length is not None and length > self.settings.files_max_bytes:
            raise PayloadTooLarge(f"the file ({length} bytes) is larger than your whole quota "
                                  f"of {self.settings.files_max_bytes} bytes", field="file")
        try:
            head = read_head(stream)
        except Exception as exc:
            raise UploadInterrupted(f"the upload was interrupted: {exc}") from None
        check_content(head)
        with self._user_lock(user) as tick:
            usage = self.usage(user)
            old = self._size_or_none(key)
            if old is None and usage.files + 1 > usage.max_files:
                raise PayloadTooLarge(f"you have {usage.files} files, the quota is "
                                      f"{usage.max_files}; delete some first", field="file")
            room = usage.max_bytes - (usage.bytes - (old or 0))
            if length is not None and length > room:
                raise PayloadTooLarge(f"the file ({length} bytes) does not fit your quota: "
                                      f"{max(room, 0)} bytes are free", field="file")
            reader = _UploadReader(head, stream, room, tick, expected=length)
            size = self.store.put_stream(key, reader)  # type: ignore[arg-type]
        return FileInfo(name, size, time.time(), function), old is None

    def delete(self, user: str, name: str, function: str | None = None) -> None:
        key = self.key(user, name, function)
        if not self.store.exists(key):
            raise NotFound(f"no file {name!r}", field="name")
        self.store.delete(key)

    def _size_or_none(self, key: str) -> int | None:
        try:
            return self.store.size(key)
        except NotFound:
            return None

    @contextlib.contextmanager
    def _user_lock(self, user: str) -> Iterator[Callable[[], None]]:
        """One upload per user at a time; yields a function that keeps the lock alive."""
        r = self.registry.r
        key = d.FILES_LOCK_KEY.format(user=user)
        token = uuid.uuid4().hex
        ttl_ms = int(d.FILES_LOCK_TTL_S * 1000)
        deadline = time.monotonic() + d.FILES_LOCK_WAIT_S
        while not r.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise Conflict("another upload of yours is still being stored; try again",
                               field="file")
            time.sleep(0.05)
        try:
            yield lambda: r.eval(_REFRESH, 1, key, token, ttl_ms)
        finally:
            r.eval(_RELEASE, 1, key, token)


# --- inside a job: the supervisor's side of the four calls ---------------------------------
def _inside(root: Path, fd: int, what: str) -> None:
    """Refuse an opened file or directory whose real path is outside the job's directory.

    Checking the descriptor, not the name, means a symlink swapped in after a check cannot
    redirect us.
    """
    real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    if not real.is_relative_to(root):
        os.close(fd)
        raise InvalidInput(f"{what} must be inside the job's directory", field="path")


def open_job_file(root: Path, path: str) -> BinaryIO:
    """Open a regular file inside the job's directory for reading."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidInput("path must be an absolute path inside the job's directory",
                           field="path")
    try:
        # O_NONBLOCK: opening a FIFO must not hang the supervisor; cleared below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no file {path}", field="path") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="path") from None
    _inside(root, fd, "the file to upload")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{path} is not a regular file", field="path")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def save_job_file(root: Path, path: str, reader: BinaryIO) -> None:
    """Write `reader` to `path` inside the job's directory: a temp file, then a rename."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidInput("path must be an absolute path inside the job's directory",
                           field="path")
    directory, name = os.path.split(path)
    check_name(name, "target_name")
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(f"cannot write into {directory}: {exc.strerror}", field="path") from None
    _inside(root, dfd, "the download location")
    tmp = f".qh-download-{uuid.uuid4().hex}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def _opt_str(value: Any, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    return value or None


def supervisor_ops(sup: Supervisor) -> dict[str, Callable[..., Any]]:
    """The channel operations behind `Client().files()` ... inside a job.

    The supervisor moves the bytes between storage and the job's directory itself; only
    names and paths travel over the channel. The job acts as its own user.
    """
    files = DataFiles(sup.store, sup.registry, sup.settings)
    user: str = sup.job["user"]

    def root() -> Path:
        return sup.job_dir.resolve()

    def files_list(function: str | None = None) -> list[dict[str, Any]]:
        return [f.to_json() for f in files.list(user, _opt_str(function, "function"))]

    def file_upload(path: str, function: str | None = None) -> dict[str, Any]:
        function = _opt_str(function, "function")
        name = check_name(os.path.basename(path) if isinstance(path, str) else path, "file")
        with open_job_file(root(), path) as fh:
            length = os.fstat(fh.fileno()).st_size
            info, _ = files.put(user, name, fh, function, length=length)
        return info.to_json()

    def file_download(name: str, path: str, function: str | None = None) -> str:
        reader, _ = files.open(user, name, _opt_str(function, "function"))
        try:
            save_job_file(root(), path, reader)
        finally:
            reader.close()
        return path

    def file_delete(name: str, function: str | None = None) -> None:
        files.delete(user, name, _opt_str(function, "function"))

    return {"files_list": files_list, "file_upload": file_upload,
            "file_download": file_download, "file_delete": file_delete}


__all__ = ["DataFiles", "FileInfo", "Usage", "check_content", "read_head", "supervisor_ops"]


class FilesExtension(JobExtension):
    """`Client().files()`, `file_upload`, `file_download`, `file_delete` inside a job."""

    def ops(self) -> dict[str, Callable[..., Any]]:
        return supervisor_ops(self.sup)
