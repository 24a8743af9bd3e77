"""A PostgreSQL server in a data folder of our own, run with the machine's PostgreSQL binaries.

PostgreSQL refuses to run as root, so as root every command runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["PostgresServer"]


class PostgresServer:
    """``initdb`` once, then ``start``/``stop`` keep the data; connect over TCP on 127.0.0.1."""

    def __init__(self, data_dir: Path, port: int, *, superuser: str = "postgres") -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.superuser = superuser
        self.bin_dir = _bin_dir()
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database: str, *, password: str | None = None, user: str | None = None) -> str:
        """SQLAlchemy URL (psycopg 3) for ``database``."""
        login = user or self.superuser
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{login}{secret}@127.0.0.1:{self.port}/{database}"

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the cluster (trust authentication on loopback only)."""
        if self.initialised:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir)
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", self.superuser,
            "--auth=trust",
            "-E", "UTF8",
            "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.init()
        self.log.touch()
        self._hand_over(self.log)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir}"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown); the data stays."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        """Whether the server of this data folder runs."""
        if not self.initialised:
            return False
        result = self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False)
        return result.returncode == 0

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """Create ``name`` unless it exists."""
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL statement as the superuser; returns its unaligned output."""
        result = self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.superuser,
            "-d", database, "-tAc", sql,
        )  # fmt: skip
        return result.stdout

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def _hand_over(self, path: Path) -> None:
        """As root, the ``postgres`` user must own its files."""
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")


def _bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<v>/bin)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (initdb, pg_ctl): install them, e.g. "
        "`apt-get install postgresql`"
    )
