"""The storage key layout (see DESIGN.md, "Storage layout"), defined once.

Every name that goes into a key must be one path segment, so a user-chosen title, file or
channel name can never reach another user's keys.
"""

from __future__ import annotations

from qhybrid.errors import InvalidInput

from .store import TMP_PREFIX


def _seg(value: str, what: str) -> str:
    """Return value if it is a single, safe key segment."""
    if (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or value.startswith(TMP_PREFIX)
    ):
        raise InvalidInput(f"{what} must be one path segment, got {value!r}", field=what)
    return value


def _prefix(prefix: str) -> str:
    return prefix.rstrip("/")


def user_prefix(user: str) -> str:
    """`users/<user>`: everything a user owns."""
    return f"users/{_seg(user, 'user')}"


def program_source(user: str, title: str) -> str:
    """`users/<user>/programs/<title>/source.tar.gz`: an uploaded program."""
    return f"{user_prefix(user)}/programs/{_seg(title, 'title')}/source.tar.gz"


def user_data_prefix(user: str) -> str:
    """`users/<user>/data/`: the user's flat file store."""
    return f"{user_prefix(user)}/data/"


def user_data(user: str, file: str) -> str:
    """`users/<user>/data/<file>`: one file of the user's flat file store."""
    return user_data_prefix(user) + _seg(file, "file")


def program_data_prefix(user: str, title: str) -> str:
    """`users/<user>/programs/<title>/data/`: a program-scoped flat file store.

    It sits beside the program's source, not under `data/`, so listing the user's own store
    never shows a program's files and a file name can never clash with a program title.
    """
    return f"{user_prefix(user)}/programs/{_seg(title, 'title')}/data/"


def program_data(user: str, title: str, file: str) -> str:
    """`users/<user>/programs/<title>/data/<file>`: one file of a program's store."""
    return program_data_prefix(user, title) + _seg(file, "file")


def files_prefix(user: str, function: str | None = None) -> str:
    """The flat file store a call names: the user's own, or one program's (`function`)."""
    return program_data_prefix(user, function) if function else user_data_prefix(user)


def job_prefix(user: str, job_name: str, timestamp: str) -> str:
    """`users/<user>/jobs/<job_name>/<timestamp>`: the root of one job run."""
    return f"{user_prefix(user)}/jobs/{_seg(job_name, 'job_name')}/{_seg(timestamp, 'timestamp')}"


def job_script(prefix: str) -> str:
    """`<prefix>/script/source.tar.gz`: the job's code."""
    return f"{_prefix(prefix)}/script/source.tar.gz"


def job_arguments(prefix: str) -> str:
    """`<prefix>/script/arguments.json`: the job's arguments / hyperparameters."""
    return f"{_prefix(prefix)}/script/arguments.json"


def job_data(prefix: str, channel: str) -> str:
    """`<prefix>/data/<channel>/`: one input data channel (a prefix)."""
    return f"{_prefix(prefix)}/data/{_seg(channel, 'channel')}/"


def job_checkpoints(prefix: str) -> str:
    """`<prefix>/checkpoints/`: the job's checkpoints (a prefix)."""
    return f"{_prefix(prefix)}/checkpoints/"


def job_model(prefix: str) -> str:
    """`<prefix>/output/model.tar.gz`: the packed results directory."""
    return f"{_prefix(prefix)}/output/model.tar.gz"


def job_result(prefix: str) -> str:
    """`<prefix>/output/result.json`: what the job passed to save_result()."""
    return f"{_prefix(prefix)}/output/result.json"


def job_peer_result(prefix: str) -> str:
    """`<prefix>/output/result.serverless.json`: the result as `qiskit_serverless` saved it."""
    return f"{_prefix(prefix)}/output/result.serverless.json"


def job_logs(prefix: str) -> str:
    """`<prefix>/output/logs.txt`: the job's stdout and stderr."""
    return f"{_prefix(prefix)}/output/logs.txt"


def job_task_blob(prefix: str, name: str) -> str:
    """`<prefix>/tasks/<name>`: a distributed task's large function, arguments, result or object."""
    return f"{_prefix(prefix)}/tasks/{_seg(name, 'name')}"


def job_task_blobs(prefix: str) -> str:
    """`<prefix>/tasks/`: everything `job_task_blob` stored for one job (a prefix)."""
    return f"{_prefix(prefix)}/tasks/"


def quantum_task_circuits(user: str, task_id: str) -> str:
    """`users/<user>/quantum-tasks/<task_id>/circuits.qpy`: a large task's QPY payload (text)."""
    return f"{user_prefix(user)}/quantum-tasks/{_seg(task_id, 'task_id')}/circuits.qpy"


def quantum_task_result(user: str, task_id: str) -> str:
    """`users/<user>/quantum-tasks/<task_id>/result.json`: a large task's result."""
    return f"{user_prefix(user)}/quantum-tasks/{_seg(task_id, 'task_id')}/result.json"


def job_function(prefix: str) -> str:
    """`<prefix>/script/function.pkl`: a hybrid job's cloudpickled (function, args, kwargs)."""
    return f"{_prefix(prefix)}/script/function.pkl"


def job_pickled_result(prefix: str) -> str:
    """`<prefix>/output/result.pkl`: a hybrid job's return value when it asked for pickle."""
    return f"{_prefix(prefix)}/output/result.pkl"


def job_metrics(prefix: str) -> str:
    """`<prefix>/output/metrics.jsonl`: a hybrid job's metrics, one JSON record per line."""
    return f"{_prefix(prefix)}/output/metrics.jsonl"
