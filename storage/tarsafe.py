"""Packing directories into tars and unpacking user tars without letting them escape.

Every tar that comes from a user is unpacked by `safe_extract`: all members are checked first,
as the stream is read (no absolute paths, no '..', no links out, no devices, a bounded total
size and member count), then tarfile extracts them with its "data" filter as a second line
of defence. `is_tar` / `is_hdf5` sniff a file's first bytes.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip as gzip_mod
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

from qhybrid.errors import InvalidInput, PayloadTooLarge

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SKIP_NAMES = {"__pycache__"}


class _LimitedWriter:
    """Counts bytes on their way to `out` and stops the packing once max_bytes is exceeded."""

    def __init__(self, out: BinaryIO, max_bytes: int | None) -> None:
        self._out = out
        self._max = max_bytes
        self._failed = False
        self.count = 0

    def write(self, data: bytes) -> int:
        if self._failed:  # the tar/gzip trailer written while unwinding goes nowhere
            return len(data)
        self.count += len(data)
        if self._max is not None and self.count > self._max:
            self._failed = True
            raise PayloadTooLarge(f"archive exceeds the limit of {self._max} bytes")
        return self._out.write(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self._out.flush()


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """tar.add filter: skip caches and drop the packing machine's owner names."""
    if Path(info.name).name in SKIP_NAMES:
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _pack(src_dir: Path, out: BinaryIO, gzip: bool, max_bytes: int | None,
          extra: Sequence[tuple[str, Path]]) -> int:
    writer = _LimitedWriter(out, max_bytes)
    fileobj = cast(BinaryIO, writer)
    if gzip:
        tar = tarfile.open(fileobj=fileobj, mode="w:gz", compresslevel=6)
    else:
        tar = tarfile.open(fileobj=fileobj, mode="w")
    with tar:
        names = set()
        for entry in sorted(src_dir.iterdir()):
            tar.add(entry, arcname=entry.name, filter=_clean)
            names.add(entry.name)
        for arcname, path in extra:
            if arcname.split("/")[0] not in names:       # the directory's own files win
                tar.add(path, arcname=arcname, recursive=False, filter=_clean)
    return writer.count


def pack_dir(
    src_dir: Path, dest: Path | BinaryIO, *, gzip: bool = True, max_bytes: int | None = None,
    extra: Sequence[tuple[str, Path]] = (),
) -> int:
    """Pack the contents of src_dir (names relative to it) into dest; return the archive size.

    `extra` adds single files as (name in the archive, path). Links are stored as links,
    never followed. Raises PayloadTooLarge as soon as the archive grows past max_bytes; a
    file dest is removed.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise NotADirectoryError(f"{src_dir} is not a directory")
    if not isinstance(dest, str | os.PathLike):
        return _pack(src_dir, dest, gzip, max_bytes, extra)
    path = Path(dest)
    try:
        with open(path, "wb") as out:
            return _pack(src_dir, out, gzip, max_bytes, extra)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _walk(start: list[str], rel: str, links: set[str]) -> list[str] | None:
    """Resolve rel from start lexically; None if it climbs above the root or goes through a link.

    Refusing to go *through* a symlink member keeps the lexical answer equal to the real one.
    """
    out = list(start)
    for seg in rel.split("/"):
        if seg in ("", "."):
            continue
        if out and "/".join(out) in links:
            return None
        if seg == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(seg)
    return out


def _check(member: tarfile.TarInfo, links: set[str]) -> str:
    """Return the member's normalised name, or raise InvalidInput saying what is wrong."""

    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"refusing tar member {member.name!r}: {why}", member=member.name)

    name = member.name
    if name.startswith("/"):
        raise refuse("absolute path")
    if ".." in name.split("/"):
        raise refuse("path contains '..'")
    if "\x00" in name:
        raise refuse("NUL in name")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise refuse("device, fifo or other special file")
    parts = _walk([], name, links)
    if parts is None:
        raise refuse("path goes through a symlink")
    if member.issym() or member.islnk():
        target = member.linkname
        if not target or target.startswith("/"):
            raise refuse(f"link to absolute or empty path {target!r}")
        # a symlink is relative to its own directory, a hardlink to the archive root
        start = parts[:-1] if member.issym() else []
        if _walk(start, target, links) is None:
            raise refuse(f"link {target!r} points outside the destination or through a link")
    return "/".join(parts)


# What one user tar may unpack to and hold (the service passes its settings; these defaults
# equal tasks.core.defaults.TAR_MAX_UNPACKED_BYTES / TAR_MAX_MEMBERS).
DEFAULT_MAX_BYTES = 1024**3
DEFAULT_MAX_MEMBERS = 20_000
_BLOCK = 512
# Headers, long-name and pax records around one member, in the decompressed stream.
_MEMBER_OVERHEAD = 8 * _BLOCK


class _CappedReader:
    """Reads the decompressed tar stream and stops it once it passes `cap` bytes.

    A bomb is refused after reading at most `cap` bytes of it, never unpacked to find out:
    tarfile's own pax and long-name records are bounded the same way as member data.
    """

    def __init__(self, raw: BinaryIO, cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._cap + 1 - self.count
        data = self._raw.read(max(0, min(n, self._cap + 1 - self.count)))
        self.count += len(data)
        if self.count > self._cap:
            raise PayloadTooLarge(f"archive unpacks to more than {self._cap} bytes")
        return data


def _decompressed(fileobj: BinaryIO, stack: contextlib.ExitStack) -> BinaryIO:
    """The tar stream inside a plain, gzip, bzip2 or xz file, decompressed as it is read."""
    head = fileobj.read(6)
    rest = cast(BinaryIO, _Prefixed(head, fileobj))
    if head[:2] == b"\x1f\x8b":
        return cast(BinaryIO, stack.enter_context(gzip_mod.GzipFile(fileobj=rest, mode="rb")))
    if head[:3] == b"BZh":
        return cast(BinaryIO, stack.enter_context(bz2.BZ2File(rest, "rb")))
    if head[:6] == b"\xfd7zXZ\x00":
        return cast(BinaryIO, stack.enter_context(lzma.LZMAFile(rest, "rb")))
    return rest


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                out, self._head = self._head + self._raw.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._raw.read(n)

    def readable(self) -> bool:
        return True


_CORRUPT = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, KeyError)


def _is_corrupt(exc: BaseException) -> bool:
    """A decoding error (gzip and bzip2 raise OSError without errno), not a failing disk."""
    return isinstance(exc, _CORRUPT) or (isinstance(exc, OSError) and exc.errno is None)


def _seekable(src: BinaryIO, stack: contextlib.ExitStack) -> BinaryIO:
    """The stream is read twice (check, then unpack); spool a non-seekable one to a temp file."""
    seekable = getattr(src, "seekable", None)
    if seekable is not None and seekable():
        return src
    spool = cast(BinaryIO, stack.enter_context(tempfile.TemporaryFile()))
    shutil.copyfileobj(src, spool, 1024 * 1024)
    spool.seek(0)
    return spool


def safe_extract(src: Path | BinaryIO, dest: Path, *, max_bytes: int | None = None,
                 max_members: int | None = None) -> list[str]:
    """Unpack a plain or compressed tar into dest after checking every member.

    Returns the members' normalised relative names. Raises InvalidInput (naming the member)
    if any member is unsafe, and PayloadTooLarge as soon as the members declare more than
    max_bytes in total or number more than max_members, before anything is written. The
    check reads the stream once, as it comes, and stops at the first refusal: a bomb costs
    at most max_bytes of decompression, never disk.
    """
    dest = Path(dest)
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    max_members = DEFAULT_MAX_MEMBERS if max_members is None else max_members
    with contextlib.ExitStack() as stack:
        if isinstance(src, str | os.PathLike):
            fileobj = cast(BinaryIO, stack.enter_context(open(src, "rb")))
        else:
            fileobj = _seekable(src, stack)
        start = fileobj.tell()
        names = _read(fileobj, None, max_bytes, max_members)
        fileobj.seek(start)
        dest.mkdir(parents=True, exist_ok=True)
        _read(fileobj, dest, max_bytes, max_members)
    return [n for n in names if n]


def _read(fileobj: BinaryIO, dest: Path | None, max_bytes: int, max_members: int) -> list[str]:
    """One pass over the tar stream: check each member and return the names; with dest,
    unpack the (checked) stream there instead."""
    cap = max_bytes + (max_members + 2) * _MEMBER_OVERHEAD
    links: set[str] = set()
    seen: set[str] = set()
    names: list[str] = []
    total = 0
    with contextlib.ExitStack() as stack:
        try:
            reader = _CappedReader(_decompressed(fileobj, stack), cap)
            tar = stack.enter_context(tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|"))
            if dest is not None:          # checked already: the same bytes, read again
                tar.extractall(dest, filter="data")
                return names
            for member in tar:
                if len(names) >= max_members:
                    raise PayloadTooLarge(f"archive holds more than {max_members} members")
                if member.issparse():
                    raise InvalidInput(f"refusing tar member {member.name!r}: sparse file",
                                       member=member.name)
                name = _check(member, links)
                if member.issym() and (name in seen
                                       or any(s.startswith(name + "/") for s in seen)):
                    raise InvalidInput(f"refusing tar member {member.name!r}: a link over a "
                                       "path the archive already has", member=member.name)
                if member.isreg():
                    total += member.size
                    if total > max_bytes:
                        raise PayloadTooLarge(f"archive unpacks to more than {max_bytes} bytes "
                                              f"(limit {max_bytes})")
                if member.issym():
                    links.add(name)
                seen.add(name)
                names.append(name)
        except tarfile.FilterError as exc:  # e.g. a symlink already present in dest
            raise InvalidInput(f"refusing tar archive: {exc}") from exc
        except (*_CORRUPT, OSError) as exc:
            if not _is_corrupt(exc):
                raise
            raise InvalidInput(f"not a valid tar archive: {exc}") from exc
    return names


def is_tar(head: bytes) -> bool:
    """Whether the first bytes (1 KiB or more) are a tar, plain or gzip-compressed."""
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 512)
        except zlib.error:
            return False
    return head[257:262] == b"ustar"


def is_hdf5(head: bytes) -> bool:
    """Whether the first bytes hold the HDF5 signature (at 0, 512, 1024, 2048, ...)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(head):
        if head[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False
