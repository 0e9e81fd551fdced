"""What user code may see of the worker's environment, and the warm parent it is forked from."""

from __future__ import annotations

import os

from tasks.core.settings import SECRET_ENV_PREFIXES
from tasks.sandbox import box

# The zygote starts with these, so libraries loaded there do not start a thread per core; a
# job's or executor's child gets its class's thread count in them.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment user code may see: ours minus anything that leads to credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_ENV_PREFIXES)}
    env.update(extra or {})
    return env


def zygote_env() -> dict[str, str]:
    """The zygote's environment: no credentials, one thread per library until a job says."""
    env = clean_env({k: "1" for k in THREAD_ENV})
    env["QISKIT_PARALLEL"] = "FALSE"
    return env


def warm_parent(wait: bool = True) -> box.Zygote:
    """The zygote that job processes are forked from, started once with qiskit imported.

    It gets its own explicit environment (`zygote_env`), so neither it nor the children it
    forks ever hold the Redis URL or storage credentials, not even in memory; the worker's
    own environment is never touched.
    """
    z = box.zygote(zygote_env())
    z.ensure(wait)
    return z


__all__ = ["THREAD_ENV", "clean_env", "warm_parent", "zygote_env"]
