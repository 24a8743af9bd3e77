"""A PostgreSQL server in a data folder of our own, run with the machine's PostgreSQL binaries.

PostgreSQL refuses to run as root, so as root every command runs as the ``postgres`` user. The
superuser has a generated password (``scram-sha-256``, loopback only), kept beside the data
folder in a file only its owner reads; a cluster made by older code with ``trust`` is switched
to the password on its next start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import StackError

__all__ = ["PostgresServer"]


class PostgresServer:
    """``initdb`` once, then ``start``/``stop`` keep the data; connect over TCP on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        superuser: str = "postgres",
        bin_dir: Path | None = None,
    ) -> None:
        """``bin_dir``: the PostgreSQL binaries to run (default: the newest the machine has)."""
        self.data_dir = Path(data_dir)
        self.port = port
        self.superuser = superuser
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _bin_dir()
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.password_file = self.data_dir.parent / f"{self.data_dir.name}.password"
        self._unsaved_password: str | None = None

    @property
    def password(self) -> str:
        """The superuser's password: the saved one, else one generated for this cluster, which
        :meth:`init` saves (mode 0600). Asking for it writes nothing, so that commands that only
        read (``stack status``, ``stack env``) leave a home without a stack as it was."""
        if self.password_file.is_file():
            return self.password_file.read_text().strip()
        if self._unsaved_password is None:
            self._unsaved_password = secrets.token_urlsafe(24)
        return self._unsaved_password

    def _save_password(self) -> None:
        if self.password_file.is_file():
            return
        password = self.password  # before the file exists (empty) and becomes the one read
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password)

    def url(self, database: str, *, password: str | None = None, user: str | None = None) -> str:
        """SQLAlchemy URL (psycopg 3) for ``database`` (the superuser's, password included)."""
        login = user or self.superuser
        secret = password if password is not None else (self.password if user is None else "")
        colon = f":{secret}" if secret else ""
        return f"postgresql+psycopg://{login}{colon}@127.0.0.1:{self.port}/{database}"

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the cluster: the superuser logs in with its password, on loopback only."""
        self._save_password()  # the URLs handed out before now carry this password
        if self.initialised:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir)
        self._check_reachable()
        with tempfile.TemporaryDirectory() as scratch:  # initdb reads the password from a file
            password_file = Path(scratch) / "pw"
            password_file.write_text(self.password + "\n")
            self._hand_over(Path(scratch))
            self._hand_over(password_file)
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", self.superuser,
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
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
        self._require_password()

    def _require_password(self) -> None:
        """A cluster made by older code trusted every local login: give it the password."""
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        if not any(line.split()[-1:] == ["trust"] for line in lines if not line.startswith("#")):
            return
        self.psql(f"ALTER USER \"{self.superuser}\" PASSWORD '{self.password}'")
        rewritten = [
            " ".join([*line.split()[:-1], "scram-sha-256"])
            if not line.startswith("#") and line.split()[-1:] == ["trust"]
            else line
            for line in lines
        ]
        hba.write_text("\n".join(rewritten) + "\n")
        self._hand_over(hba)
        self._run("pg_ctl", "-D", str(self.data_dir), "reload")

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
        environment = {**os.environ, "PGPASSWORD": self.password} if tool == "psql" else None
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=120, env=environment
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def _check_reachable(self) -> None:
        """As root, the ``postgres`` user must be able to enter every folder above the data
        (a home made by ``mktemp -d`` is 0700): say which one, before initdb fails on it."""
        if os.geteuid() != 0:
            return
        for folder in [*reversed(self.data_dir.parents), self.data_dir]:
            entered = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-x", str(folder)], check=False
            )
            if entered.returncode != 0:
                raise StackError(
                    f"PostgreSQL runs as the postgres user here (we are root), and it cannot "
                    f"enter {folder}: let it (chmod o+x {folder}) or choose another "
                    "ADAPTEROPS_HOME"
                )

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
