"""How a capability plugs into a job's supervisor.

The supervisor knows a job's run: its child process, logs, limits and end. What else a job's
code can do (data files, devices, distributed tasks, the hybrid-job helpers, the Serverless
calls) comes from extensions, the way Flask blueprints or dramatiq middleware plug in: the
worker lists them (`tasks.jobs.run.EXTENSIONS`), and each attempt makes one of each with its
supervisor, then asks them, in this order:

- `ops()`: at the start, the channel operations by name (a name offered twice is an error);
- `env()`: program jobs, before the child starts: variables for it (the supervisor's own win);
- `prepare(spec)`: program jobs, the child's spec, to change (files to convert, say);
- `output()`: while the job runs and at its end, output it made elsewhere (its distributed
  tasks' prints), appended to its log;
- `stop(status)`: the child is gone: stop what still runs for the job (a failure is logged);
- `keep(status)`: store what the attempt made (status is INTERRUPTED when the job will run
  again); raising ends a DONE job in ERROR, "storing the job's <keeps> failed: ...";
- `end()`: the job ends with this attempt: last bookkeeping; it never raises.

Every hook does nothing unless the extension says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.sandbox.child import ChildSpec
    from tasks.supervisor.supervisor import Supervisor


class JobExtension:
    """One capability's part in one job attempt."""

    keeps = "outputs"       # what `keep` stores, for the error of a failed store

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {}

    def env(self) -> dict[str, str]:
        return {}

    def prepare(self, spec: ChildSpec) -> None:
        return None

    def output(self) -> bytes:
        return b""

    def stop(self, status: str) -> None:
        return None

    def keep(self, status: str) -> None:
        return None

    def end(self) -> None:
        return None


def merge_ops(base: dict[str, Callable[..., Any]],
              extensions: Iterable[JobExtension]) -> dict[str, Callable[..., Any]]:
    """The supervisor's operations plus every extension's; a name may be offered once."""
    ops = dict(base)
    for ext in extensions:
        for name, op in ext.ops().items():
            if name in ops:
                raise RuntimeError(f"the channel operation {name!r} is offered twice "
                                   f"({type(ext).__name__})")
            ops[name] = op
    return ops
