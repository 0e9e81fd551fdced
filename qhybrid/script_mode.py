"""Script mode: a source module (a file or a package directory) and an entry point, run as a
hybrid job, as Braket's AwsQuantumJob.create(source_module=, entry_point=) does.

The client packs the source into a tar.gz that travels inside the job's call: the call is
`run_entry_point(entry_point, archive)`, pickled by reference (qhybrid is installed where jobs
run). In the job it unpacks the source, puts its parent on `sys.path`, and imports the entry
point: "pkg.module:function" calls the function with no arguments, "pkg.module" runs the
module as `__main__`. Every hybrid-job helper works there as in a decorated function.
"""

from __future__ import annotations

import io
import os
import re
import runpy
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from qhybrid.errors import InvalidInput

ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                            r"(:[A-Za-z_][A-Za-z0-9_]*)?$")
MAX_SOURCE_BYTES = 40 * 1024**2       # packed; the whole call must stay under the job's limit


def check_entry_point(source: Path, entry_point: str | None) -> str:
    """The entry point (default: the source's name), refused unless its module is a file of
    the source module: `name.py` or `name/__init__.py` under the source's parent."""
    entry = entry_point or (source.stem if source.is_file() else source.name)
    if not isinstance(entry, str) or not ENTRY_POINT_RE.match(entry):
        raise InvalidInput(f"entry_point {entry!r} is 'module' or 'module:function' (dotted "
                           "Python names)", field="entry_point")
    module = entry.partition(":")[0]
    top = module.split(".")[0]
    own = source.stem if source.is_file() else source.name
    if top != own:
        raise InvalidInput(f"entry point module {module!r} is not in the source module "
                           f"{source.name!r}: it starts with {own!r}", field="entry_point")
    base = source.resolve().parent.joinpath(*module.split("."))
    if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
            or (base.is_dir() and (base / "__main__.py").is_file())):
        raise InvalidInput(f"entry point module was not found: {module}", field="entry_point")
    return entry


def pack_source(source: Path) -> bytes:
    """The source module as tar.gz bytes, under its own name (links followed, caches left)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", dereference=True) as tar:
        tar.add(source.resolve(), arcname=source.resolve().name,
                filter=lambda info: None if "__pycache__" in info.name.split("/") else info)
    data = buffer.getvalue()
    if len(data) > MAX_SOURCE_BYTES:
        raise InvalidInput(f"the source module packs to {len(data)} bytes, more than "
                           f"{MAX_SOURCE_BYTES}; send data as input_data instead",
                           field="source_module")
    return data


def run_entry_point(entry_point: str, archive: bytes) -> Any:
    """In the job: unpack the source, import the entry point, run it."""
    code = Path(tempfile.mkdtemp(prefix="qhybrid-script-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(code, filter="data")
        sys.path.insert(0, str(code))
        os.environ.setdefault("AMZN_BRAKET_SCRIPT_ENTRY_POINT", entry_point)
        module, _, function = entry_point.partition(":")
        if not function:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            return None
        import importlib

        loaded = importlib.import_module(module)
        target = getattr(loaded, function, None)
        if not callable(target):
            raise InvalidInput(f"entry point {entry_point!r}: module {module} has no function "
                               f"{function!r}", field="entry_point")
        return target()
    finally:
        try:
            sys.path.remove(str(code))
        except ValueError:
            pass
        shutil.rmtree(code, ignore_errors=True)


__all__ = ["check_entry_point", "pack_source", "run_entry_point"]
