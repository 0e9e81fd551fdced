"""Shipped code keeps its file name and source text, whatever the pickler writes for them.

cloudpickle writes its own value into the file name of the code it pickles by value (3.1.3:
`"<dynamic-code>"`), so a traceback raised in a shipped function would name no file and show
no line, and `inspect.getsource()` would fail on it. `SourcePickler` sends every code object
it pickles together with its real file name and the text of that file; loading puts the name
back (`code.replace`) and registers the text with `linecache` in the process that loads it,
so tracebacks and `inspect.getsource()` read the user's own lines there, even where the file
does not exist. Only the standard pickling protocol is used: `reducer_override` sees every
code object before cloudpickle's own reduction does.
"""

from __future__ import annotations

import io
import linecache
import types
from typing import Any

import cloudpickle

__all__ = ["SourcePickler", "dumps", "register_source"]

_registered: dict[str, tuple[str, list[str]]] = {}   # filename: (text, its lines)


class SourcePickler(cloudpickle.Pickler):
    """cloudpickle, with each pickled code object's file name and source text beside it."""

    def __init__(self, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        super().__init__(file, protocol=protocol, **kwargs)
        self._texts: dict[str, str | None] = {}     # one str per file: pickled once (memo)
        self._copies: dict[int, types.CodeType] = {}   # kept alive while pickling: ids stay unique

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType and id(obj) not in self._copies:
            # a copy, so that pickling it goes on to cloudpickle's reduction, not back here
            copy = obj.replace()
            self._copies[id(copy)] = copy
            return _code_with_source, (copy, obj.co_filename, self._text(obj.co_filename))
        return super().reducer_override(obj)

    def _text(self, filename: str) -> str | None:
        if filename not in self._texts:
            linecache.checkcache(filename)      # a file edited since it was read is read again
            self._texts[filename] = "".join(linecache.getlines(filename)) or None
        return self._texts[filename]


def dumps(value: Any, protocol: int | None = None) -> bytes:
    """cloudpickle of `value`, its code carrying file names and source text."""
    buf = io.BytesIO()
    SourcePickler(buf, protocol=protocol).dump(value)
    return buf.getvalue()


def register_source(filename: str, text: str) -> None:
    """Make `text` the lines `linecache` (tracebacks, inspect) gives for `filename` here.

    The entry has no modification time, so `linecache.checkcache()` keeps it (as it does
    for the lines IPython and doctest register), and it wins over a file of that name.
    """
    done = _registered.get(filename)
    entry: tuple[Any, ...] = linecache.cache.get(filename) or ()
    if done is not None and done[0] is text and len(entry) == 4 and entry[2] is done[1]:
        return                  # the code objects of one file share one text: split it once
    lines = text.splitlines(keepends=True)
    linecache.cache[filename] = (len(text), None, lines, filename)
    _registered[filename] = (text, lines)


def _code_with_source(code: types.CodeType, filename: str, text: str | None) -> types.CodeType:
    """Unpickling: the code under its own file name, with that file's text registered."""
    if text is not None:
        register_source(filename, text)
    return code if code.co_filename == filename else code.replace(co_filename=filename)
