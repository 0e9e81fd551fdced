"""qhybrid: run hybrid quantum-classical Qiskit jobs on your own machines.

Importing this package loads neither the server (Celery, Flask, boto3) nor qiskit.
"""

from qhybrid.client import Client, Job, Program
from qhybrid.errors import (
    InvalidInput,
    JobCanceled,
    JobFailed,
    NotFound,
    QhybridError,
    TaskFailed,
    Timeout,
    Unauthorized,
)
from qhybrid.runtime import get_arguments, save_result, update_status

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Program",
    "Job",
    "get_arguments",
    "save_result",
    "update_status",
    "QhybridError",
    "InvalidInput",
    "NotFound",
    "Unauthorized",
    "JobFailed",
    "JobCanceled",
    "TaskFailed",
    "Timeout",
]
