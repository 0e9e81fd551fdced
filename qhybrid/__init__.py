"""qhybrid: run hybrid quantum-classical Qiskit jobs on your own machines.

Importing this package loads neither the server (Celery, Flask, boto3) nor qiskit.
"""

from qhybrid.client import Client, Job, Program
from qhybrid.devices import get_backend, get_job_device
from qhybrid.distributed import (
    DistributedTask,
    ObjectRef,
    TaskRef,
    distribute_task,
    get,
    map_reduce,
    put,
    wait,
)
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
from qhybrid.hybrid import HybridJob, create_job, create_local_job, hybrid_job
from qhybrid.hybrid_env import (
    get_checkpoint_dir,
    get_hyperparameters,
    get_input_data_dir,
    get_job_name,
    get_results_dir,
    load_job_checkpoint,
    log_metric,
    save_job_checkpoint,
    save_job_result,
)
from qhybrid.local_job import LocalHybridJob
from qhybrid.metrics import MetricStatistic, MetricType
from qhybrid.runtime import get_arguments, save_result, update_status
from qhybrid.serverless import ServerlessError, get_logger, get_provider_logger, send_error
from qhybrid.tracking import Tracker

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Program",
    "Job",
    "get_arguments",
    "save_result",
    "update_status",
    "get_logger",
    "get_provider_logger",
    "send_error",
    "ServerlessError",
    "get_backend",
    "distribute_task",
    "get",
    "put",
    "wait",
    "map_reduce",
    "TaskRef",
    "ObjectRef",
    "DistributedTask",
    "get_job_device",
    "hybrid_job",
    "create_job",
    "create_local_job",
    "HybridJob",
    "save_job_result",
    "MetricType",
    "MetricStatistic",
    "Tracker",
    "LocalHybridJob",
    "log_metric",
    "get_input_data_dir",
    "get_results_dir",
    "get_checkpoint_dir",
    "get_hyperparameters",
    "get_job_name",
    "save_job_checkpoint",
    "load_job_checkpoint",
    "QhybridError",
    "InvalidInput",
    "NotFound",
    "Unauthorized",
    "JobFailed",
    "JobCanceled",
    "TaskFailed",
    "Timeout",
]
