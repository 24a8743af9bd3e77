"""The local stack: every service a team runs, on this machine, without Docker.

``adapterops stack up`` starts, bound to 127.0.0.1:

- PostgreSQL (the machine's server binaries) with databases for the registry, MLflow and Prefect;
- SeaweedFS as the S3 server, with the buckets created;
- an MLflow tracking server (PostgreSQL backend, artifacts proxied to S3);
- a Prefect server (PostgreSQL backend) and a Prefect worker on a process work pool;

then writes the client configuration to ``$ADAPTEROPS_HOME/stack.env``, which every
``adapterops`` command reads (variables already set in the environment win). ``down`` stops the
services and keeps their data; ``up`` again finds everything where it was. State (ports, process
ids) lives in ``$ADAPTEROPS_HOME/stack/stack.json``.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from registry.settings import adapterops_home

from .errors import StackError
from .mlflow_server import MlflowServer
from .ports import http_ok, pid_alive, port_in_use, start_time, stop_pid_group
from .postgres import PostgresServer
from .prefect_server import PrefectServer, PrefectWorker
from .seaweedfs import SeaweedS3

__all__ = ["ENV_FILE", "LocalStack", "ServiceStatus", "StackError", "StackPorts", "env_file"]

ENV_FILE = "stack.env"
REGISTRY_DB, MLFLOW_DB, PREFECT_DB = "adapterops_registry", "mlflow", "prefect"
REGISTRY_BUCKET, MLFLOW_BUCKET = "adapterops", "mlflow"
WORK_POOL = "adapterops"
# SeaweedFS accepts any key pair when no identities are configured; clients still need one.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "adapterops",
    "AWS_SECRET_ACCESS_KEY": "adapterops-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# Seconds each service gets to exit after SIGTERM before SIGKILL. SeaweedFS's volume server has
# written everything within a second of SIGTERM, then idles ~15 s more before it exits. An idle
# Prefect worker exits in under a second, but after a test session's builds it was seen to wait
# out the whole grace (20.0 s of a 30 s `stack down`); the state it keeps is the server's, and a
# flow run it is still running would be cut off either way, so waiting longer saves nothing.
_STOP_GRACE = {"worker": 5, "prefect": 20, "mlflow": 20, "seaweedfs": 5}


@dataclass(frozen=True)
class StackPorts:
    """Loopback ports. SeaweedFS's master, volume and filer take the three ports after ``s3``,
    and each of its four ports + 10000 for gRPC."""

    postgres: int = 15432
    s3: int = 18333
    mlflow: int = 15000
    prefect: int = 14200

    @property
    def seaweed(self) -> dict[str, int]:
        """SeaweedFS's internal ports, next to the S3 port."""
        return {"master": self.s3 + 1, "volume": self.s3 + 2, "filer": self.s3 + 3}

    def all(self) -> dict[str, int]:
        """Every port the stack listens on, by purpose (gRPC ports included)."""
        ports = asdict(self)
        internal = {f"s3 {name}": port for name, port in self.seaweed.items()}
        grpc = {f"{k} grpc": v + 10000 for k, v in {"s3": self.s3, **internal}.items()}
        return {**ports, **internal, **grpc}

    def check_distinct(self) -> None:
        """Refuse two purposes on one port (``--s3-port`` equal to ``--postgres-port``, or
        within SeaweedFS's own range): the second server failed to start after the first."""
        by_port: dict[int, list[str]] = {}
        for purpose, port in self.all().items():
            by_port.setdefault(port, []).append(purpose)
        shared = [
            f"{port} ({' and '.join(names)})" for port, names in by_port.items() if len(names) > 1
        ]
        if shared:
            raise StackError(
                f"two services on one port: {'; '.join(shared)}. Give each its own (SeaweedFS "
                "also takes the three ports after --s3-port, and each of its four + 10000)"
            )


@dataclass
class ServiceStatus:
    """One line of ``adapterops stack status``."""

    name: str
    url: str
    running: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class _State:
    ports: StackPorts = field(default_factory=StackPorts)
    pids: dict[str, int] = field(default_factory=dict)
    # Each PID's start time: a PID from an old stack.json may name another program by now.
    started: dict[str, int] = field(default_factory=dict)


def _write_whole(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only (stack.env holds the database
    password): staged beside it, then renamed over it, so a write cut short (a full disk, a
    kill) leaves the file before, not half a file no command can read."""
    staged = path.with_name(f"{path.name}.new")
    try:
        staged.touch(mode=0o600)
        staged.chmod(0o600)
        staged.write_text(text)
        staged.replace(path)
    except BaseException:  # a full disk: no half-written copy left beside the file either
        staged.unlink(missing_ok=True)
        raise


def _numbers(value: Any) -> dict[str, int]:
    """One of stack.json's maps (service to port, PID or start time), checked."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    for key, number in value.items():
        if not isinstance(number, int) or isinstance(number, bool):
            raise TypeError(f"{key!r} is {number!r}, not a whole number")
    return dict(value)


@contextmanager
def stack_lock(home: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the stack's lock (``stack.lock`` in ``home``) for the block: ``stack up`` and
    ``stack down`` each read the stack's state, start or stop services and write it back; two
    at once (two terminals, a service manager beside a person) read it half-written, and one
    failed with a port that nothing ran on, or recorded a server that had just failed to bind.
    ``on_wait`` is called first when another holds it."""
    from registry.locks import file_lock_if_writable  # noqa: PLC0415 - SQLAlchemy: not at CLI start

    home.mkdir(parents=True, exist_ok=True)
    with file_lock_if_writable(home / "stack.lock", on_wait=on_wait):
        yield


def env_file(home: Path | None = None) -> Path:
    """``$ADAPTEROPS_HOME/stack.env``: the client configuration ``stack up`` writes."""
    return (home or adapterops_home()) / ENV_FILE


class LocalStack:
    """The stack under ``$ADAPTEROPS_HOME/stack`` (data, logs, state)."""

    def __init__(self, home: Path | None = None, ports: StackPorts | None = None) -> None:
        self.home = home or adapterops_home()
        self.root = self.home / "stack"
        self.state = self._load_state()
        if ports is not None:
            self.state.ports = ports
        p = self.state.ports
        self.postgres = PostgresServer(self.root / "postgres", p.postgres)
        self.seaweed = SeaweedS3(
            self.root / "seaweedfs", s3_port=p.s3, master_port=p.seaweed["master"],
            volume_port=p.seaweed["volume"], filer_port=p.seaweed["filer"],
        )  # fmt: skip
        self.mlflow = MlflowServer(
            port=p.mlflow,
            backend_store_uri=self.postgres.url(MLFLOW_DB),
            artifacts_destination=f"s3://{MLFLOW_BUCKET}/artifacts",
            log=self.root / "logs" / "mlflow.log",
            env=self._s3_env(),
        )
        self.prefect = PrefectServer(
            port=p.prefect,
            home=self.root / "prefect",
            log=self.root / "logs" / "prefect-server.log",
            database_url=self.postgres.url(PREFECT_DB).replace("+psycopg", "+asyncpg"),
        )

    def on_ports(self, **given: int) -> LocalStack:
        """This stack with the services ``given`` (``postgres=``, ``s3=``, ``mlflow=``,
        ``prefect=``) on other ports, for ``up`` to start there and remember. Refused before
        anything starts: two services on one port, and a service that runs on another port
        now (it was taken for running on the new one, and the stack failed to reach it)."""
        ports = replace(self.state.ports, **given)
        ports.check_distinct()
        running = {
            "postgres": self.postgres.running,
            "s3": self._s3_up(),
            "mlflow": self._mlflow_up(),
            "prefect": self._prefect_up(),
        }
        moving = [
            f"{service} runs on port {getattr(self.state.ports, service)}"
            for service, port in given.items()
            if port != getattr(self.state.ports, service) and running[service]
        ]
        if moving:
            raise StackError(
                f"{'; '.join(moving)}: `adapterops stack down` first, then `stack up` with the "
                "new port (remembered from then on)"
            )
        return LocalStack(self.home, ports)

    @property
    def worker_log(self) -> Path:
        """Where the Prefect worker writes (what the flow runs it starts print, too)."""
        return self.root / "logs" / "prefect-worker.log"

    def log_files(self) -> dict[str, Path]:
        """Each service's log file, by the name ``adapterops stack logs`` takes."""
        return {
            "postgresql": self.postgres.log,
            "s3": self.seaweed.log,
            "mlflow": self.mlflow.log,
            "prefect": self.prefect.log,
            "worker": self.worker_log,
        }

    @property
    def exists(self) -> bool:
        """Whether ``stack up`` has set this stack up (its state file is there)."""
        return (self.root / "stack.json").is_file()

    def missing_message(self) -> str:
        """What to say where a command needs a stack that was never set up."""
        return f"no local stack under {self.home} yet: `adapterops stack up` starts one"

    # --- configuration ------------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """What every client (CLI, worker, Python) needs to use this stack."""
        return {
            "ADAPTEROPS_REGISTRY_URL": self.postgres.url(REGISTRY_DB),
            "ADAPTEROPS_ARTIFACTS_URL": f"s3://{REGISTRY_BUCKET}/registry",
            **self._s3_env(),
            "MLFLOW_TRACKING_URI": self.mlflow.url,
            "PREFECT_API_URL": self.prefect.api_url,
        }

    def _s3_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.seaweed.endpoint, **S3_CREDENTIALS}

    # --- up / down / status -------------------------------------------------------------------

    def up(self, *, on_service: Callable[[str], None] | None = None) -> list[ServiceStatus]:
        """Start whatever is not running (ports checked first), then write the client config."""
        announce = on_service or (lambda name: None)
        self._check_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user must reach its data folder
        if not self.postgres.running:
            announce("postgresql")
            self.postgres.start()
            self._save_state()  # a later failure leaves it running: `stack down` must know it
        for database in (REGISTRY_DB, MLFLOW_DB, PREFECT_DB):
            self.postgres.create_database(database)
        self._start_process("seaweedfs", self.seaweed.start, self.seaweed, self._s3_up, announce)
        self._create_buckets()
        self._migrate_registry()
        self._start_process("mlflow", self.mlflow.start, self.mlflow, self._mlflow_up, announce)
        self._start_process("prefect", self.prefect.start, self.prefect, self._prefect_up, announce)
        self._start_worker(announce)
        self._save_state()
        self._write_env_file()
        return self.status()

    def down(self) -> list[ServiceStatus]:
        """Stop every service (the worker first, PostgreSQL last); the data stays. A stack
        that was never set up has nothing to stop (and nothing is written)."""
        if not self.exists:
            return self.status()
        # The worker stops before the server it polls; MLflow and SeaweedFS need neither, so
        # each waits out its own grace meanwhile.
        in_order = (("worker", "prefect"), ("mlflow",), ("seaweedfs",))
        with ThreadPoolExecutor(max_workers=len(in_order)) as pool:
            list(pool.map(self._stop_in_order, in_order))
        self.postgres.stop()  # MLflow and Prefect keep their state there
        self._save_state()
        return self.status()

    def _stop_in_order(self, names: tuple[str, ...]) -> None:
        for name in names:
            self._stop(name)

    def _stop(self, name: str) -> None:
        if self._ours(name):
            stop_pid_group(self.state.pids[name], grace=_STOP_GRACE[name])
        self.state.pids.pop(name, None)
        self.state.started.pop(name, None)

    def status(self) -> list[ServiceStatus]:
        """Each service, its URL and whether it answers."""
        p = self.state.ports
        worker = self.state.pids.get("worker")
        return [
            ServiceStatus(
                "postgresql", f"postgresql://127.0.0.1:{p.postgres}", self.postgres.running
            ),
            ServiceStatus("s3 (seaweedfs)", self.seaweed.endpoint, self._s3_up()),
            ServiceStatus("mlflow", self.mlflow.url, self._mlflow_up()),
            ServiceStatus("prefect", self.prefect.api_url.removesuffix("/api"), self._prefect_up()),
            ServiceStatus(
                "prefect worker",
                f"pool {WORK_POOL}",
                worker is not None and self._ours("worker"),
                f"pid {worker}" if worker else "",
            ),
        ]

    # --- helpers --------------------------------------------------------------------------------

    def _check_ports(self) -> None:
        """A port in use by something other than this stack's own service is an error."""
        ours = {
            "postgres": self.postgres.running,
            "s3": self._s3_up(),
            "mlflow": self._mlflow_up(),
            "prefect": self._prefect_up(),
        }
        busy = []
        for purpose, port in self.state.ports.all().items():
            service = purpose if purpose in ("postgres", "mlflow", "prefect") else "s3"
            if port_in_use(port) and not ours[service]:
                busy.append(f"{purpose} port {port}")
        if busy:
            raise StackError(
                f"in use by another program: {', '.join(busy)}. Stop it, or choose other ports "
                "(see adapterops stack up --help)"
            )

    def _ours(self, name: str) -> bool:
        """Whether the recorded PID of ``name`` is still the process this stack started.

        Without a recorded start time (a stack.json of older code) nothing is signalled.
        """
        pid = self.state.pids.get(name)
        if pid is None or not pid_alive(pid):
            return False
        recorded = self.state.started.get(name)
        return recorded is not None and recorded == start_time(pid)

    def _remember(self, name: str, pid: int) -> None:
        self.state.pids[name] = pid
        started = start_time(pid)
        if started is not None:
            self.state.started[name] = started

    def _start_process(
        self, name: str, start: Callable[[], None], server: Any, up: Callable[[], bool],
        announce: Callable[[str], None],
    ) -> None:  # fmt: skip
        if up():
            return
        announce(name)
        start()
        self._remember(name, server.process.pid)
        self._save_state()

    def _start_worker(self, announce: Callable[[str], None]) -> None:
        if self._ours("worker"):
            return
        announce("prefect worker")
        environment = {
            **self.client_env(),
            "ADAPTEROPS_HOME": str(self.home),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        }
        worker = PrefectWorker(
            pool=WORK_POOL, api_url=self.prefect.api_url, home=self.root / "prefect",
            log=self.worker_log, env=environment,
        )  # fmt: skip
        worker.start(wait=60)  # up means polling: a deploy right after reads the pool's status
        assert worker.process is not None
        self._remember("worker", worker.process.pid)

    def _create_buckets(self) -> None:
        import boto3  # noqa: PLC0415 - only `stack up` needs it here
        from botocore.exceptions import ClientError  # noqa: PLC0415

        client = boto3.client("s3", endpoint_url=self.seaweed.endpoint, **_boto_credentials())
        for bucket in (REGISTRY_BUCKET, MLFLOW_BUCKET):
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:  # idempotent: a second `up` finds them
                if exc.response["Error"]["Code"] not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise

    def _migrate_registry(self) -> None:
        from registry.db import Database  # noqa: PLC0415

        Database(self.postgres.url(REGISTRY_DB), auto_migrate=True).dispose()

    def _s3_up(self) -> bool:
        return http_ok(self.seaweed.endpoint, any_status=True)

    def _mlflow_up(self) -> bool:
        return http_ok(f"{self.mlflow.url}/health")

    def _prefect_up(self) -> bool:
        return http_ok(f"{self.prefect.api_url}/health")

    def _load_state(self) -> _State:
        path = self.root / "stack.json"
        if not path.is_file():
            return _State()
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"expected an object, got {type(data).__name__}")
            port_numbers = _numbers(data["ports"])
            pids, started = _numbers(data.get("pids", {})), _numbers(data.get("started", {}))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            listing = f"pgrep -af {shlex.quote(str(self.root))}"
            raise StackError(
                f"{path} is damaged ({type(exc).__name__}: {exc}): it records the stack's ports "
                "and the processes it started. Move it away and run `adapterops stack up` "
                "again (with the ports given before); services it started that still run are "
                f"not stopped by `stack down` then: `{listing}` lists them"
            ) from None
        known = {f.name for f in fields(StackPorts)}
        ports = StackPorts(**{k: v for k, v in port_numbers.items() if k in known})
        return _State(ports=ports, pids=pids, started=started)

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        document = {
            "ports": asdict(self.state.ports),
            "pids": self.state.pids,
            "started": self.state.started,
        }
        _write_whole(self.root / "stack.json", json.dumps(document, indent=2) + "\n")

    def _write_env_file(self) -> None:
        lines = [f"{key}={value}" for key, value in self.client_env().items()]
        header = "# Written by `adapterops stack up`: the local stack's client configuration.\n"
        _write_whole(env_file(self.home), header + "\n".join(lines) + "\n")


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }
