"""HTML pages for the data files of the logged-in user: list, upload, download, delete.

The upload form is parsed as a stream (werkzeug's multipart decoder over `request.stream`):
the file part flows into the store chunk by chunk instead of being spooled first. That is
why this one view checks its CSRF token itself, from the form field that precedes the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Flask,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError, validate_csrf
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Field, File, MultipartDecoder
from wtforms.validators import ValidationError

from app.auth import login_required, services
from app.files import data_files, drain, file_response
from app.params import iso
from qhybrid.errors import InvalidInput, QhybridError
from tasks.files.data_files import CHUNK, UploadInterrupted

bp = Blueprint("file_pages", __name__)
MAX_FIELD_BYTES = 4096          # csrf_token and function; the file is the only big part


def init_app(app: Flask) -> None:
    """Leave the streamed upload out of the global CSRF hook; the view checks the token."""
    csrf = app.extensions.get("csrf")
    if csrf is not None:
        csrf.exempt(upload)


def _check_csrf(token: str | None) -> None:
    try:
        validate_csrf(token)
    except ValidationError as exc:
        raise CSRFError(exc.args[0]) from None


def _page(function: str | None, error: QhybridError | None = None) -> str:
    files = data_files()
    programs = [p["title"] for p in services().registry.list_programs(g.user)]
    try:
        listed = files.list(g.user, function)
    except QhybridError as exc:
        listed, error, function = files.list(g.user, None), error or exc, None
    rows = [{"name": f.name, "size": f.size, "modified": iso(f.modified)} for f in listed]
    return render_template("files.html", files=rows, usage=files.usage(g.user),
                           function=function, programs=programs, error=error)


@bp.get("/files")
@login_required
def index() -> str:
    return _page(request.args.get("function") or None)


@bp.post("/files")
@login_required
def upload() -> Any:
    """Stream the form's file into the store; csrf_token and function come before the file."""
    function = request.args.get("function") or None
    try:
        function, name = _stream_upload()
    except (QhybridError, CSRFError) as exc:
        if not isinstance(exc, UploadInterrupted):
            drain(request.stream)
        if isinstance(exc, CSRFError):
            raise
        return _page(function, exc), exc.status
    flash(f"Stored {name}.")
    return redirect(url_for("file_pages.index", function=function))


def _stream_upload() -> tuple[str | None, str]:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        raise InvalidInput("send the form as multipart/form-data", field="file")
    events = _events(options["boundary"].encode("latin-1"))
    fields: dict[str, str] = {}
    for event in events:
        if isinstance(event, Field):
            fields[event.name] = _field_value(events)
        elif isinstance(event, File):
            _check_csrf(fields.get("csrf_token"))
            function = fields.get("function") or None
            if not event.filename:
                raise InvalidInput("choose a tar or HDF5 file to upload", field="file")
            reader = _PartReader(events)
            info, _ = data_files().put(g.user, event.filename, reader, function)  # type: ignore[arg-type]
            return function, info.name
    _check_csrf(fields.get("csrf_token"))
    raise InvalidInput("choose a tar or HDF5 file to upload", field="file")


def _events(boundary: bytes) -> Iterator[Any]:
    """The multipart events of the request body (up to the epilogue), read in chunks."""
    decoder = MultipartDecoder(boundary, max_form_memory_size=CHUNK * 2)
    stream = request.stream
    while True:
        try:
            event = decoder.next_event()
        except ValueError as exc:
            raise InvalidInput(f"the form is malformed: {exc}", field="file") from None
        if event is NEED_DATA:
            if decoder.complete:
                raise InvalidInput("the form ended before its last part", field="file")
            decoder.receive_data(stream.read(CHUNK) or None)
            continue
        if isinstance(event, Epilogue):
            return
        yield event


def _field_value(events: Iterator[Any]) -> str:
    data = b""
    for event in events:
        if not isinstance(event, Data):
            break
        data += event.data
        if len(data) > MAX_FIELD_BYTES:
            raise InvalidInput("a form field is too long", field="form")
        if not event.more_data:
            break
    return data.decode("utf-8", errors="replace")


class _PartReader:
    """The file part's bytes as a stream the store can read."""

    def __init__(self, events: Iterator[Any]) -> None:
        self._events = events
        self._buf = b""
        self._done = False

    def read(self, size: int | None = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while len(self._buf) < want and not self._done:
            event = next(self._events, None)
            if not isinstance(event, Data):
                self._done = True
                break
            self._buf += event.data
            self._done = not event.more_data
        data, self._buf = self._buf[:want], self._buf[want:]
        return data


@bp.get("/files/<name>")
@login_required
def download(name: str) -> Any:
    try:
        return file_response(data_files(), g.user, name, request.args.get("function") or None)
    except QhybridError as exc:
        return _page(request.args.get("function") or None, exc), exc.status


@bp.post("/files/<name>/delete")
@login_required
def delete(name: str) -> Any:
    _check_csrf(request.form.get("csrf_token"))
    function = request.form.get("function") or None
    try:
        data_files().delete(g.user, name, function)
    except QhybridError as exc:
        return _page(function, exc), exc.status
    flash(f"Deleted {name}.")
    return redirect(url_for("file_pages.index", function=function))


__all__ = ["bp", "init_app"]
