"""A Prefect server (``prefect server start``) and a process worker, on loopback. The server
takes 10-15 s to start; SQLite under its home by default, PostgreSQL when given a URL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from flows.unresponsive_runs import HEARTBEAT_SECONDS, HEARTBEAT_VARIABLE

from .ports import http_ok, running_or_raise, stop_process_group, wait_until

__all__ = ["PrefectServer", "PrefectWorker", "prefect_environment"]

LEASE_STORAGE_VARIABLE = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILESYSTEM_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def prefect_environment(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Variables every Prefect process of a stack shares (offline: no analytics)."""
    environment = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    }
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    return environment


class PrefectServer:
    """``prefect server start --host 127.0.0.1 --port PORT``."""

    def __init__(
        self,
        *,
        port: int,
        home: Path,
        log: Path,
        database_url: str | None = None,
        ui: bool = True,
        auth_string: str | None = None,
    ) -> None:
        self.port = port
        self.home = home
        self.log = log
        self.database_url = database_url
        self.ui = ui
        self.auth_string = auth_string  # "user:password" its clients must send, if any
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        """``PREFECT_API_URL`` for clients and workers."""
        return f"http://127.0.0.1:{self.port}/api"

    def environment(self) -> dict[str, str]:
        """The server's own environment additions."""
        environment = prefect_environment(self.home)
        environment["PREFECT_UI_ENABLED"] = "true" if self.ui else "false"
        # The UI's browser code calls this API; without it the UI looks for port 4200.
        environment["PREFECT_UI_API_URL"] = self.api_url
        if self.database_url:
            environment["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        if self.auth_string:
            environment["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        # Prefect keeps concurrency leases in memory by default: a restarted server (an
        # upgrade, `stack down` and `up`) forgot them, and every deployed build running then
        # was terminated at its next lease renewal ("410 Gone ... Terminating execution to
        # prevent over-allocation"): hours of training lost. On disk, in its home, they last.
        # A setting of the operator's own (Redis, for servers sharing leases) is kept.
        if LEASE_STORAGE_VARIABLE not in os.environ:
            environment[LEASE_STORAGE_VARIABLE] = FILESYSTEM_LEASE_STORAGE
        return environment

    def start(self, *, timeout: float = 120, attempts: int = 2) -> None:
        """Start the server and wait until ``/api/health`` answers. A server that exits while
        starting is started once more (a port or database race at start-up has been seen in CI);
        the second failure is the error."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except RuntimeError:  # exited while starting (a timeout is not retried)
                if attempt == attempts:
                    raise

    def _start_once(self, timeout: float) -> None:
        command = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.home.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **self.environment()}
        environment.pop("PREFECT_API_URL", None)  # the server must not talk to another server
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                start_new_session=True,
            )  # fmt: skip
        wait_until(
            self.healthy,
            timeout=timeout,
            what=f"Prefect server on {self.api_url}",
            log=str(self.log),
        )

    def healthy(self) -> bool:
        """Whether ``/api/health`` answers OK."""
        running_or_raise(self.process, "Prefect server", self.log)
        return http_ok(f"{self.api_url}/health")

    def stop(self, *, grace: float = 15) -> None:
        """SIGTERM the server's process group; SIGKILL after ``grace`` seconds."""
        stop_process_group(self.process, grace=grace)


class PrefectWorker:
    """``prefect worker start --pool POOL --type process``: runs deployments' flow runs as
    subprocesses with the worker's environment (the stack's URLs and credentials)."""

    def __init__(
        self, *, pool: str, api_url: str, home: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.pool = pool
        self.api_url = api_url
        self.home = home
        self.log = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        # its own name: a worker stopped a minute ago still counts as online on the server
        self.name = f"{pool}-{uuid.uuid4().hex[:8]}"

    def start(self, *, wait: float = 0) -> None:
        """Start polling the pool (the pool is created if missing); with ``wait``, return once
        the server counts this worker online, within that many seconds: a deploy right after
        `stack up` said no worker polled the pool."""
        command = [
            sys.executable, "-m", "prefect", "worker", "start",
            "--pool", self.pool, "--type", "process", "--name", self.name,
        ]  # fmt: skip
        environment = {**os.environ, **prefect_environment(self.home, self.api_url), **self.env}
        # its runs send heartbeats: one whose process died unseen is set Crashed
        # (flows.unresponsive_runs; `adapterops deploy` creates the automation)
        environment.setdefault(HEARTBEAT_VARIABLE, str(HEARTBEAT_SECONDS))
        # Flow runs start `python -m ...` from this interpreter's folder.
        environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                start_new_session=True,
            )  # fmt: skip
        if wait:
            what = f"Prefect worker on pool {self.pool!r}"
            wait_until(self.online, timeout=wait, what=what, log=str(self.log))

    def online(self) -> bool:
        """Whether the server counts this worker online (its heartbeat arrived)."""
        running_or_raise(self.process, "Prefect worker", self.log)
        pool = urllib.parse.quote(self.pool, safe="")
        request = urllib.request.Request(
            f"{self.api_url}/work_pools/{pool}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json", **self._login()},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                workers = json.load(response)
        except (OSError, ValueError):  # no pool yet (404), or no answer yet
            return False
        return any(w.get("name") == self.name and w.get("status") == "ONLINE" for w in workers)

    def _login(self) -> dict[str, str]:
        login = self.env.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_API_AUTH_STRING")
        if not login:
            return {}
        return {"Authorization": f"Basic {base64.b64encode(login.encode()).decode()}"}

    def running(self) -> bool:
        """Whether the worker process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, *, grace: float = 15) -> None:
        """SIGTERM the worker (it finishes cleanly); SIGKILL after ``grace`` seconds."""
        stop_process_group(self.process, grace=grace)
