"""The flat data-file store from the client: `files`, `file_upload`, `file_download`, `file_delete`.

The same four calls work on a laptop (HTTP, streamed both ways) and inside a job, where
`Client()` acts as the job's own user through its supervisor: the job holds neither the user's
token nor storage credentials, and file contents move between storage and the job's directory
without passing through the channel. Names are checked here and again by the server.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from qhybrid import _channel
from qhybrid.errors import InvalidInput, NotFound, PayloadTooLarge, QhybridError

if TYPE_CHECKING:
    import requests

MAX_NAME_BYTES = 255
CHUNK = 1024 * 1024
ACCEPTED = "a tar (plain or gzip-compressed) or an HDF5 file"


def check_name(name: Any, field: str = "name") -> str:
    """Return `name` if it is a flat file name: no '/', no '..', no control characters, <=255 bytes."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a file name must be a non-empty string", field=field)
    if "/" in name or "\\" in name:
        raise InvalidInput(f"file names are flat: {name!r} contains a path separator", field=field)
    if ".." in name or name == ".":
        raise InvalidInput(f"file name {name!r} must not be '.' or contain '..'", field=field)
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidInput(f"file name {name!r} contains a control character", field=field)
    if len(name.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidInput(f"a file name is at most {MAX_NAME_BYTES} bytes (UTF-8)", field=field)
    if name.startswith(".qh-"):
        raise InvalidInput("file names starting with '.qh-' are reserved", field=field)
    return name


def function_title(function: Any) -> str | None:
    """The program a `function=` argument names: a title, a Program (or anything with .title)."""
    if function is None:
        return None
    title = function if isinstance(function, str) else getattr(function, "title", None)
    if not isinstance(title, str) or not title:
        raise InvalidInput("function is a program title or a Program", field="function")
    return title


class FilesMixin:
    """The file calls of `Client` (Qiskit Serverless names and arguments)."""

    in_job: bool = False

    if TYPE_CHECKING:   # provided by Client
        timeout: float

        def request(self, method: str, path: str, *, timeout: float | None = None,
                    ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> requests.Response: ...

        def _json(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def files(self, function: Any = None) -> list[str]:
        """Names of the files in your store (or in program `function`'s store), sorted."""
        return [f["name"] for f in self.file_details(function)]

    def file_details(self, function: Any = None) -> list[dict[str, Any]]:
        """Each file's name, size in bytes and modification time."""
        title = function_title(function)
        if self.in_job:
            return list(_channel.call("files_list", function=title))
        params = {"function": title} if title else {}
        return list(self._json("GET", "/files", params=params)["files"])

    def file_upload(self, file: str | os.PathLike[str], function: Any = None) -> str:
        """Store a local tar or HDF5 file under its own name, replacing one of that name."""
        path = Path(file)
        name = check_name(path.name, "file")
        title = function_title(function)
        if self.in_job:
            body = _channel.call("file_upload", path=os.path.abspath(path), function=title)
            return str(body["name"])
        params = {"function": title} if title else {}
        # Over quota is refused before any byte is sent: the server would refuse it too, but
        # only after the client had pushed the whole file at it.
        _check_quota(self._json("GET", "/files", params=params), name, path.stat().st_size)
        with open(path, "rb") as fh:
            body = self._json("PUT", f"/files/{quote(name, safe='')}", data=fh, params=params,
                              headers={"Content-Type": "application/octet-stream"})
        return str(body["name"])

    def file_download(self, file: str, function: Any = None, target_name: str | None = None,
                      download_location: str | os.PathLike[str] = "./") -> str:
        """Save a stored file as `download_location/target_name` (default: its own name).

        The file appears whole or not at all; the path is returned.
        """
        name = check_name(file, "file")
        target = check_name(target_name or name, "target_name")
        title = function_title(function)
        os.makedirs(download_location, exist_ok=True)
        dest = os.path.join(download_location, target)
        if self.in_job:
            _channel.call("file_download", name=name, path=os.path.abspath(dest), function=title)
            return dest
        params = {"function": title} if title else {}
        resp = self.request("GET", f"/files/{quote(name, safe='')}", params=params, stream=True,
                            allow_redirects=False, ok=(200, 302, 303, 307))
        if resp.is_redirect:   # S3: a presigned URL, fetched without our token
            import requests

            resp.close()
            resp = requests.get(resp.headers["Location"], stream=True, timeout=self.timeout)
            if resp.status_code == 404:
                raise NotFound(f"no file {name!r}", field="file")
            if not resp.ok:
                raise QhybridError(f"storage answered {resp.status_code} for {name!r}")
        with resp:
            # the bytes as stored: never undo a Content-Encoding (iter_content would); without
            # one, iter_content is the faster reader
            chunks = resp.raw.stream(CHUNK, decode_content=False) \
                if resp.headers.get("Content-Encoding", "identity") != "identity" \
                else resp.iter_content(CHUNK)
            _save_atomically(chunks, Path(dest))
        return dest

    def file_delete(self, file: str, function: Any = None) -> None:
        """Delete a stored file; a missing one raises NotFound."""
        name = check_name(file, "file")
        title = function_title(function)
        if self.in_job:
            _channel.call("file_delete", name=name, function=title)
            return
        params = {"function": title} if title else {}
        self.request("DELETE", f"/files/{quote(name, safe='')}", params=params, ok=(204,))


def _check_quota(listing: dict[str, Any], name: str, size: int) -> None:
    """Raise PayloadTooLarge if a file of `size` bytes named `name` would not fit the quota."""
    usage = listing["usage"]
    old = next((f["size"] for f in listing["files"] if f["name"] == name), None)
    if old is None and usage["files"] + 1 > usage["max_files"]:
        raise PayloadTooLarge(f"you have {usage['files']} files, the quota is "
                              f"{usage['max_files']}; delete some first", field="file")
    room = usage["max_bytes"] - (usage["bytes"] - (old or 0))
    if size > room:
        raise PayloadTooLarge(f"the file ({size} bytes) does not fit your quota: "
                              f"{max(room, 0)} bytes are free", field="file")


def _save_atomically(chunks: Any, dest: Path) -> None:
    """Write chunks to a temp file beside dest, then rename: no partial file on failure."""
    fd, tmp = tempfile.mkstemp(prefix=".qh-download-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)   # mkstemp makes it 0600; a download is an ordinary file
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = ["FilesMixin", "check_name", "function_title", "ACCEPTED", "MAX_NAME_BYTES"]
