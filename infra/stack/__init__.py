"""Real services on this machine, without Docker: PostgreSQL, SeaweedFS (S3), MLflow and Prefect.

Used by the tests (throwaway servers) and by ``adapterops stack`` (a local stack that keeps its
data). Every server binds to 127.0.0.1 only.
"""

from .errors import StackError
from .mlflow_server import MlflowServer
from .ports import free_port, port_in_use
from .postgres import PostgresServer
from .prefect_server import PrefectServer, PrefectWorker
from .seaweedfs import SeaweedS3

__all__ = [
    "MlflowServer",
    "PostgresServer",
    "PrefectServer",
    "PrefectWorker",
    "SeaweedS3",
    "StackError",
    "free_port",
    "port_in_use",
]
