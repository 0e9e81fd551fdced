"""The data-file API under /api/v1/files: list, upload, download, delete (streamed both ways).

An upload is the raw request body (`PUT /files/<name>`), read from `request.stream` in chunks
straight into the store; form parsing (`request.files`) would spool it first. Downloads
stream from the store, or on S3 redirect to a short-lived presigned URL.
"""

from __future__ import annotations

import time
import unicodedata
from typing import IO, Any
from urllib.parse import quote

from flask import Blueprint, Response, g, jsonify, redirect, request
from werkzeug.routing import PathConverter
from werkzeug.wsgi import wrap_file

from app.auth import services, token_required
from qhybrid.errors import QhybridError
from qhybrid.files import check_name
from tasks.core import defaults as d
from tasks.files.data_files import CHUNK, DataFiles, FileInfo, UploadInterrupted

bp = Blueprint("files", __name__, url_prefix="/api/v1")


def data_files() -> DataFiles:
    svc = services()
    return DataFiles(svc.store, svc.registry, svc.settings)


def function_arg() -> str | None:
    """The `function=` query argument: a program whose store is meant, else the user's own."""
    return request.args.get("function") or None


def drain(stream: IO[bytes]) -> None:
    """Read and drop what is left of a refused upload, so the client gets our answer.

    gunicorn closes a connection with much unread body, and the reset that follows loses
    the response on its way to a client that is still sending.
    """
    deadline = time.monotonic() + d.FILES_DRAIN_MAX_S
    left = d.FILES_DRAIN_MAX_BYTES
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:   # the client went away: nothing to answer
        return


def file_response(files: DataFiles, user: str, name: str, function: str | None) -> Any:
    """A stored file as a download: a redirect to storage (S3) or streamed through."""
    url = files.download_url(user, name, function)
    if url:
        return redirect(url, code=302)
    reader, size = files.open(user, name, function)
    resp = Response(wrap_file(request.environ, reader, CHUNK), mimetype="application/octet-stream",
                    direct_passthrough=True)
    resp.content_length = size
    resp.headers.set("Content-Disposition", "attachment", **_filename(name))
    return resp


def _filename(name: str) -> dict[str, str]:
    """Content-Disposition file name parameters; RFC 5987 `filename*` for non-ASCII names."""
    try:
        name.encode("ascii")
        return {"filename": name}
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        return {"filename": simple or "download", "filename*": "UTF-8''" + quote(name, safe="")}


@bp.get("/files")
@token_required
def list_files() -> Response:
    files = data_files()
    function = function_arg()
    listed = files.list(g.user, function)
    return jsonify({"function": function, "files": [f.to_json() for f in listed],
                    "usage": files.usage(g.user).to_json()})


class FileNameConverter(PathConverter):
    """A file's name in a URL: anything below `/files/` except the Qiskit Serverless
    client's own routes there, which are never a file's name (nor answer as one)."""

    regex = r"(?!upload/$|provider/?$|provider/(?:download|upload/|delete)$)[^/].*?"


@bp.record_once
def _register_converter(state: Any) -> None:
    state.app.url_map.converters["filename"] = FileNameConverter


@bp.put("/files/<filename:name>")
@token_required
def upload_file(name: str) -> tuple[Response, int]:
    """Store the request body as `name`, replacing a file of that name (atomically)."""
    info: FileInfo
    try:
        check_name(name)
        info, created = data_files().put(g.user, name, request.stream, function_arg(),
                                         length=request.content_length)
    except QhybridError as exc:
        if not isinstance(exc, UploadInterrupted):
            drain(request.stream)
        raise
    return jsonify(info.to_json()), 201 if created else 200


@bp.get("/files/<filename:name>")
@token_required
def download_file(name: str) -> Any:
    return file_response(data_files(), g.user, check_name(name), function_arg())


@bp.delete("/files/<filename:name>")
@token_required
def delete_file(name: str) -> tuple[str, int]:
    data_files().delete(g.user, check_name(name), function_arg())
    return "", 204
