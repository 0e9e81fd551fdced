"""The local channel between a job's user code and its supervisor.

JSON lines over a Unix socket in the job directory: the child sends `{"op", "args"}` and
gets `{"ok": true, "value"}` or `{"ok": false, "error": <problem>}`. JSON, never pickle,
because the supervisor holds credentials and must not run what user code sends it.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qhybrid.errors import InvalidInput, QhybridError

Handler = Callable[..., Any]
MAX_LINE = 256 * 1024**2


class ChannelServer:
    """Serves one job's channel on a thread; `ops` maps op names to handlers."""

    def __init__(self, path: Path, ops: dict[str, Handler]) -> None:
        self.path = path
        self.ops = ops
        outer = self

        class _Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_LINE)
                    if not line:
                        return
                    reply = outer.dispatch(line)
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        if path.exists():
            path.unlink()
        self._server = socketserver.ThreadingUnixStreamServer(str(path), _Handler)
        self._server.daemon_threads = True
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="channel",
                                        daemon=True)

    def start(self) -> ChannelServer:
        self._thread.start()
        return self

    def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            op = self.ops.get(msg.get("op"))
            if op is None:
                raise InvalidInput(f"unknown operation {msg.get('op')!r}")
            return {"ok": True, "value": op(**(msg.get("args") or {}))}
        except QhybridError as exc:
            return {"ok": False, "error": exc.to_problem()}
        except TypeError as exc:
            return {"ok": False, "error": InvalidInput(str(exc)).to_problem()}
        except Exception as exc:  # the supervisor must answer whatever happens
            return {"ok": False, "error": QhybridError(f"{type(exc).__name__}: {exc}").to_problem()}

    def close(self) -> None:
        """Stop serving without waiting for the serve loop's next poll (up to 0.5 s)."""
        self.path.unlink(missing_ok=True)
        server = self._server

        def _shutdown() -> None:
            server.shutdown()
            server.server_close()

        threading.Thread(target=_shutdown, name="channel-close", daemon=True).start()
