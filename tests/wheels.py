"""Pure-Python wheels built by hand, and the directory of them that the test services use as
their package index (QHYBRID_PACKAGE_INDEX): jobs' dependencies install offline."""

from __future__ import annotations

import base64
import hashlib
import tempfile
import zipfile
from pathlib import Path

INDEX = Path(tempfile.gettempdir()) / "qhybrid-test-wheels"


def wheel(where: Path, name: str, version: str, files: dict[str, str],
          requires: tuple[str, ...] = (), scripts: dict[str, str] | None = None) -> Path:
    """A py3-none-any wheel of `files`, with its Requires-Dist and console scripts."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    content = {path: text.encode() for path, text in files.items()}
    content[f"{info}/METADATA"] = meta.encode()
    content[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: qhybrid-tests\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    if scripts:
        content[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{p},sha256={digest(data)},{len(data)}" for p, data in content.items()]
    content[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = where / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in content.items():
            zf.writestr(p, data)
    return path


def build_index(where: Path = INDEX) -> Path:
    """The test index: a package with a console script, one that needs numpy (the workers'
    base environment has it), one that wants a numpy the base cannot give."""
    where.mkdir(parents=True, exist_ok=True)
    wheel(where, "qh-tiny-dep", "0.1",
          {"qh_tiny_dep.py": "VALUE = 42\n\ndef main():\n    print('tiny-dep cli', VALUE)\n"},
          scripts={"qh-tiny-cli": "qh_tiny_dep:main"})
    wheel(where, "qh-tiny-dep", "0.2", {"qh_tiny_dep.py": "VALUE = 43\n"})
    wheel(where, "qh-needs-numpy", "1.0",
          {"qh_needs_numpy.py": "import numpy\n\ndef total(xs):\n    return float(numpy.sum(xs))\n"},
          requires=("numpy>=1.20",))
    wheel(where, "qh-wants-old-numpy", "1.0", {"qh_wants_old_numpy.py": ""},
          requires=("numpy<1.0",))
    return where
