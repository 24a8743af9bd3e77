"""Real services on this machine, without Docker: PostgreSQL and SeaweedFS (S3).

Used by the tests (throwaway servers) and by ``adapterops stack`` (a local stack that keeps its
data). Every server binds to 127.0.0.1 only.
"""

from .mlflow_server import MlflowServer
from .ports import free_port, port_in_use
from .postgres import PostgresServer
from .seaweedfs import SeaweedS3

__all__ = ["MlflowServer", "PostgresServer", "SeaweedS3", "free_port", "port_in_use"]
