"""Arguments and results between qhybrid's codec and the one the Qiskit Serverless client and
its in-job package use (qiskit_ibm_runtime's RuntimeEncoder / RuntimeDecoder).

Decoding the peer's encoding runs only inside a job's own process (tasks.sandbox.child), never in the
service: the service reads what the job's user wrote with qhybrid's own codec only.
"""

from __future__ import annotations

import json


def to_peer(text: str) -> str:
    """qhybrid-encoded JSON text as the peer's encoding."""
    from qiskit_ibm_runtime import RuntimeEncoder

    from qhybrid import codec

    return json.dumps(codec.loads(text), cls=RuntimeEncoder)


def from_peer(text: str) -> str:
    """The peer's encoding as qhybrid-encoded JSON text (inside a job only)."""
    from qiskit_ibm_runtime import RuntimeDecoder

    from qhybrid import codec

    return codec.dumps(json.loads(text, cls=RuntimeDecoder))


def convert_file(src: str, dst: str, direction: str) -> bool:
    """Write `src` converted ("to_peer" / "from_peer") to `dst`; False when it cannot be."""
    try:
        with open(src, encoding="utf-8") as fh:
            text = fh.read()
        out = to_peer(text) if direction == "to_peer" else from_peer(text)
    except Exception:
        return False
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(out)
    import os

    os.replace(tmp, dst)
    return True
