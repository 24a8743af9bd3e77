"""Engines, sessions and schema migrations for SQLite and PostgreSQL.

SQLite (the embedded default) is created and migrated on first use. A server database is migrated
explicitly (``adapterops db upgrade``); opening one that is behind is a clear error.

SQLite writers take the database lock when their transaction begins (``BEGIN IMMEDIATE``), so
concurrent processes that register versions queue instead of failing half-way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from .errors import (
    DatabaseUnavailableError,
    ForeignDatabaseError,
    InvalidNameError,
    NewerSchemaError,
    NoRegistryError,
    NotMigratedError,
    RegistryError,
)
from .locks import lock_key, take_xact_lock
from .orm import Base

__all__ = ["Database", "hide_password", "holds_registry_schema", "schema_head"]

MIGRATIONS = Path(__file__).parent / "migrations"


class Database:
    """One registry database: an engine, a session factory and its migrations."""

    def __init__(
        self,
        url: str,
        *,
        auto_migrate: bool | None = None,
        create: bool = True,
        verify: bool = True,
    ) -> None:
        """Open the database at ``url``. ``create=False`` refuses a SQLite file that does not
        exist (:class:`NoRegistryError`) instead of creating an empty registry there: reading a
        mistyped path must not look like reading a registry with nothing in it.
        ``verify=False`` (with ``auto_migrate=False``) opens a schema that is behind, to report
        it (``adapterops db status``)."""
        try:
            parsed = _with_our_driver(make_url(url))
        except ArgumentError as exc:
            raise DatabaseUnavailableError(
                f"invalid database URL {url!r}: {exc}; write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (three slashes, then the path), or "
                "postgresql+psycopg://USER@HOST:5432/DB"
            ) from None
        url = parsed.render_as_string(hide_password=False)
        self.url = url
        self.safe_url = hide_password(url)  # for messages and markers: no password
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path = parsed.database if self.is_sqlite else None  # the file, or :memory:
        if self.is_sqlite and parsed.host:  # sqlite://dir/file.db: "dir" is read as a host
            raise DatabaseUnavailableError(
                f"invalid SQLite URL {url!r}: a SQLite URL has no host ({parsed.host!r}); write "
                f"sqlite:///{parsed.host}/{parsed.database} (three slashes, then the path; four "
                "for an absolute one)"
            )
        if self.is_sqlite and parsed.database and Path(parsed.database).is_dir():
            raise DatabaseUnavailableError(
                f"{url} names a folder, not a database file: write "
                f"{url.rstrip('/')}/registry.db (nothing was written)"
            )
        if self.is_sqlite and not create and not _sqlite_file_exists(parsed.database):
            where = Path(parsed.database or "").absolute()
            raise NoRegistryError(f"no registry at {where}: nothing was registered there")
        try:
            self.engine = _engine(url, sqlite=self.is_sqlite, path=parsed.database)
        except (ImportError, NoSuchModuleError) as exc:  # postgresql+psycopg2 without psycopg2
            raise DatabaseUnavailableError(
                f"cannot use the registry database {hide_password(url)}: its driver is not "
                f"installed ({exc}); write postgresql+psycopg://... (psycopg 3, installed with "
                "adapterops)"
            ) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if auto_migrate if auto_migrate is not None else self.is_sqlite:
            self.upgrade()
        elif verify:
            self.check_current()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with translate_db_errors(self.url), self.sessions.begin() as session:
            yield session

    def upgrade(self, revision: str = "head") -> str | None:
        """Migrate the schema to ``revision``, the newest by default (idempotent); returns the
        revision it found (None: an empty database). Several processes at once (replicas' init
        containers, CI jobs) migrate one after the other: the later ones find it done."""
        with translate_db_errors(self.url), self.engine.begin() as connection:
            _one_migration_at_a_time(connection)
            found = self._refuse_foreign_schema(connection)
            command.upgrade(_alembic_config(connection), revision)
        return found

    def downgrade(self, revision: str) -> None:
        """Migrate the schema back to ``revision`` (data rewritten as each step says)."""
        with translate_db_errors(self.url), self.engine.begin() as connection:
            _one_migration_at_a_time(connection)
            self._refuse_foreign_schema(connection)
            command.downgrade(_alembic_config(connection), revision)

    def revision(self) -> str | None:
        """The schema revision the database is at (None: no registry schema yet)."""
        with translate_db_errors(self.url), self.engine.connect() as connection:
            return self._refuse_foreign_schema(connection)

    def check_current(self) -> None:
        """Raise :class:`NotMigratedError` unless the schema is at the newest revision."""
        head = schema_head()
        current = self.revision()
        if current != head:
            raise NotMigratedError(
                f"registry database {hide_password(self.url)} is at schema {current or 'empty'}, "
                f"this code needs {head}: run `adapterops db upgrade` (with "
                "ADAPTEROPS_REGISTRY_URL set)"
            )

    def _refuse_foreign_schema(self, connection: Any) -> str | None:
        """The schema revision, refused when it is not one of ours: another application's
        database (MLflow and Prefect keep their schemas with Alembic too, often on the same
        server, a likely mix-up), which migrating would write our tables into.

        A database with no revision but tables of its own is refused too: a SQLite file always
        (nobody shares one file between applications), a PostgreSQL database when a table
        already has one of the registry's names (the migration would fail half-way; a
        database shared with other applications' tables is otherwise allowed)."""
        current = MigrationContext.configure(connection).get_current_revision()
        if current is not None and current not in _our_revisions():
            if _newer_than_ours(current, set(inspect(connection).get_table_names())):
                raise NewerSchemaError(
                    f"{hide_password(self.url)} holds a registry at schema {current}, newer than "
                    f"this adapterops knows ({schema_head()}): a newer release migrated it; "
                    "upgrade adapterops here (nothing was written)"
                )
            raise ForeignDatabaseError(
                f"{hide_password(self.url)} is not a registry database: its schema revision "
                f"{current!r} is none of adapterops' (another application's database? MLflow "
                "and Prefect keep theirs with Alembic too); point ADAPTEROPS_REGISTRY_URL at the "
                "registry's own database (nothing was written)"
            )
        if current is None:
            present = set(inspect(connection).get_table_names())
            clashing = sorted(present if self.is_sqlite else present & _our_tables())
            if clashing:
                where = "a new file" if self.is_sqlite else "a database of its own"
                raise ForeignDatabaseError(
                    f"{hide_password(self.url)} is not a registry database: it holds tables of "
                    f"another application ({_listed(clashing)}) and no registry schema; point "
                    f"ADAPTEROPS_REGISTRY_URL at the registry's own database, or at {where} "
                    "for a new registry (nothing was written)"
                )
        return current

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def holds_registry_schema(url: str) -> bool:
    """Whether the database at ``url`` holds a registry (one of our schema revisions): another
    tool pointed at it (MLflow's tracking URI) would write its own tables into the registry.
    False when it cannot tell (a SQLite file that does not exist, a server that does not
    answer): that tool then reports its own error."""
    try:
        parsed = _with_our_driver(make_url(url))
    except (ArgumentError, DatabaseUnavailableError):
        return False
    if parsed.get_backend_name() == "sqlite" and not (
        parsed.database and Path(parsed.database).is_file()
    ):
        return False
    try:
        engine = create_engine(parsed)
        try:
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        finally:
            engine.dispose()
    except (ImportError, SQLAlchemyError):
        return False
    return current in _our_revisions()


def _newer_than_ours(revision: str, tables: set[str]) -> bool:
    """Whether ``revision`` is one a newer release of ours wrote: our numbering (``0009``),
    past this code's head, over the registry's tables (another application's Alembic
    revisions are hashes)."""
    numbered = re.fullmatch(r"[0-9]{4}", revision) is not None
    return numbered and int(revision) > int(schema_head()) and "registry_identity" in tables


def schema_head() -> str:
    """The newest schema revision this code defines (what ``adapterops db upgrade`` reaches)."""
    return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


@cache
def _our_revisions() -> frozenset[str]:
    """Every schema revision the registry's migrations define."""
    return frozenset(s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions())


def _our_tables() -> set[str]:
    """The tables a registry's schema creates (Alembic's own included)."""
    return set(Base.metadata.tables) | {"alembic_version"}


def _listed(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _alembic_config(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@contextmanager
def translate_db_errors(url: str) -> Iterator[None]:
    """SQLAlchemy errors leave the registry as :class:`RegistryError` subclasses."""
    try:
        yield
    except RegistryError:
        raise
    except DatabaseError as exc:
        if "file is not a database" not in str(exc.orig):
            raise _translated(exc, url) from None
        # Found by SQLite itself: reading the file's header here would open and close it in
        # this process, which drops the POSIX locks SQLite holds on it (and corrupts it).
        path = make_url(url).database
        raise ForeignDatabaseError(
            f"{hide_password(url)} is not a registry database: {path} is not a SQLite file (a data "
            "file or a text file?); point ADAPTEROPS_REGISTRY_URL at the registry's .db file, "
            "or at a path where none exists yet for a new registry (nothing was written)"
        ) from None
    except SQLAlchemyError as exc:
        raise _translated(exc, url) from None
    except UnicodeEncodeError as exc:  # text the API did not check: the driver's own words
        raise InvalidNameError(
            f"{exc.object!r} is not UTF-8 text: {exc.object[exc.start : exc.end]!r} at position "
            f"{exc.start} stands for a byte that was not decoded (a file, terminal or variable "
            "in another encoding?); give it as UTF-8 (nothing was written)"
        ) from None


def _translated(exc: SQLAlchemyError, url: str) -> RegistryError:
    """A SQLAlchemy error as the registry's: a database that cannot be used, or any other."""
    if isinstance(exc, OperationalError):
        reason = " ".join(str(exc.orig).split()).rstrip(".")  # drivers' messages span lines
        check = (
            "Check that the file's folder can be written"
            if url.startswith("sqlite")
            else "Check that the server runs"
        )
        return DatabaseUnavailableError(
            f"cannot use the registry database {hide_password(url)}: {reason}. {check} and that "
            "ADAPTEROPS_REGISTRY_URL is right."
        )
    if getattr(getattr(exc, "orig", None), "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
        return DatabaseUnavailableError(_privilege_message(exc, url))
    return RegistryError(f"registry database error on {hide_password(url)}: {exc}")


_INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for "permission denied"


def _privilege_message(exc: SQLAlchemyError, url: str) -> str:
    """One line for a PostgreSQL user without a privilege the registry needs: the server's
    message was followed by the whole SQL statement, over many lines, saying nothing of what to
    grant. PostgreSQL 15 and later let only a database's owner create tables in ``public``, so
    a least-privilege user given to the application meets this at ``db upgrade``."""
    user = make_url(url).username or "(the URL names none)"
    reason = str(getattr(exc, "orig", exc)).splitlines()[0].rstrip(".")
    return (
        f"the registry database {hide_password(url)} refused user {user}: {reason}. To migrate "
        "(`adapterops db upgrade`), connect as the database's owner or GRANT CREATE ON SCHEMA "
        f"public TO {user}; to use it, GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN "
        f"SCHEMA public TO {user} and GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}"
    )


def _with_our_driver(url: URL) -> URL:
    """``postgres://`` and ``postgresql://`` (as hosting services print them) mean PostgreSQL
    through psycopg 3, the driver adapterops installs (SQLAlchemy's default is psycopg2); only
    SQLite and PostgreSQL hold a registry."""
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql") and url.drivername in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseUnavailableError(
            f"the registry runs on SQLite or PostgreSQL, not {backend} "
            f"({url.render_as_string(hide_password=True)}): set ADAPTEROPS_REGISTRY_URL to "
            "sqlite:///path/registry.db or postgresql+psycopg://USER@HOST:5432/DB"
        )
    return url


def _sqlite_file_exists(path: str | None) -> bool:
    """Whether a SQLite URL's database exists (an in-memory one always does). An empty file is
    none yet: opening it writes SQLite's header (WAL mode), which a reading command must not."""
    if not path or path == ":memory:":
        return True
    file = Path(path)
    return file.is_file() and file.stat().st_size > 0


def _one_migration_at_a_time(connection: Connection) -> None:
    """On PostgreSQL, the schema lock for the migration's transaction: two processes
    migrating a new database at once both created the tables, and all but one failed
    ("duplicate key value violates unique constraint pg_type_typname_nsp_index"); the next one
    now finds the schema current. SQLite's ``BEGIN IMMEDIATE`` already makes them take turns."""
    if connection.dialect.name == "postgresql":
        take_xact_lock(connection, lock_key("registry schema"))


def _engine(url: str, *, sqlite: bool, path: str | None) -> Engine:
    if not sqlite:
        # psycopg prepares a statement run 5 times on a connection; behind PgBouncer in
        # transaction mode (before 1.21, or without max_prepared_statements) the next
        # transaction may get another server connection: "prepared statement _pg3_0 does not
        # exist". Registry statements are small: planning each costs next to nothing.
        return create_engine(url, pool_pre_ping=True, connect_args={"prepare_threshold": None})
    if path and path != ":memory:":
        _make_parent_folder(Path(path))
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _make_parent_folder(database: Path) -> None:
    """The folder a new SQLite registry goes in, made with its parents; a file in the way (a
    URL written one folder too deep) is one clear line instead of FileExistsError."""
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in (database.parent, *database.parent.parents) if p.is_file())
        raise DatabaseUnavailableError(
            f"cannot create the registry database {database}: {blocking} is a file, not a "
            "folder; give the registry URL (ADAPTEROPS_REGISTRY_URL) a path under a folder"
        ) from None


def hide_password(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"
