"""An MLflow tracking server (``mlflow server``) on loopback: SQL backend, artifacts proxied to S3
or a folder. It takes about 20 s to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .ports import http_ok, running_or_raise, stop_process_group, wait_until

__all__ = ["MlflowServer"]


class MlflowServer:
    """``mlflow server --backend-store-uri DB --artifacts-destination DEST --port PORT``."""

    def __init__(
        self,
        *,
        port: int,
        backend_store_uri: str,
        artifacts_destination: str,
        log: Path,
        env: dict[str, str] | None = None,
        app_name: str | None = None,
        default_artifact_root: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self.port = port
        self.python = python  # an interpreter with another MLflow (the tests' MLflow 2 server)
        # an s3:// root: the server hands runs that location and clients write there themselves
        self.default_artifact_root = default_artifact_root
        self.app_name = app_name  # "basic-auth": MLflow's users and permissions
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.log = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``MLFLOW_TRACKING_URI`` for clients."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 120) -> None:
        """Start the server and wait until ``/health`` answers."""
        # The store URI holds the database password: in the environment, not on the command
        # line (`ps` shows command lines to every local user).
        command = [
            self.python, "-m", "mlflow", "server",
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            *(("--app-name", self.app_name) if self.app_name else ()),
            *(("--default-artifact-root", root) if (root := self.default_artifact_root) else ()),
        ]  # fmt: skip
        environment = {**os.environ, **self.env, "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri}
        if self.artifacts_destination.startswith("s3://") and "AWS_ENDPOINT_URL_S3" in environment:
            environment.setdefault("MLFLOW_S3_ENDPOINT_URL", environment["AWS_ENDPOINT_URL_S3"])
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        wait_until(
            self.healthy, timeout=timeout, what=f"MLflow server on {self.url}", log=str(self.log)
        )

    def healthy(self) -> bool:
        """Whether ``/health`` answers OK."""
        running_or_raise(self.process, "MLflow server", self.log)
        return http_ok(f"{self.url}/health")

    def stop(self, *, grace: float = 15) -> None:
        """SIGTERM the server's process group; SIGKILL after ``grace`` seconds."""
        stop_process_group(self.process, grace=grace)
