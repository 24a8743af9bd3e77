"""Move a registry to another database and artifact store (``adapterops db move``).

Teams start on the embedded defaults (SQLite and a local folder) and later want the registry
on the production PostgreSQL and S3, with its versions' numbers, aliases, metrics, lineage,
compositions and histories as they were. The copy keeps the registry's id, so the MLflow models
it mirrors into, the artifact store's marker and the Prefect deployments made for it all go on
naming it; the old database records where it went and refuses writes from the moment the move
starts (:mod:`registry.move_marker`), since two databases writing under one id would give two
different versions one number.

Order, so that a failure loses nothing and a stopped move can be finished:

1. the target is opened (a new database is migrated) and must hold no registry yet;
2. the old database records the move as running (writes refused from here);
3. every file the versions list is copied into the target store, each verified against its
   digest (files the target store holds already are skipped: a store kept as it was copies
   nothing);
4. every record is written into the target in one transaction (all or nothing);
5. the old database records the move as finished.

A failure in 3 or 4 clears the record of step 2 (the old registry takes writes again); a move
killed in between is finished by running it again with the same target.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, Table, delete, func, insert, inspect, select
from sqlalchemy.orm import Session

from .artifacts import ArtifactStore, open_store
from .artifacts.base import BytesMoved
from .bundles import Manifest, copy_blob
from .db import Database, hide_password
from .errors import CorruptArtifactError, NoRegistryError, RegistryError, RegistryMovedError
from .move_marker import moved_to, now, record_move, where_it_went
from .orm import AdapterRow, Base, CompositionRow, EventRow, RegistryIdentityRow, VersionRow
from .store import registry_identity

if TYPE_CHECKING:
    from .client import Registry

__all__ = ["MoveReport", "move_registry"]

COPIES_AT_ONCE = 8  # files copied at once: a store far away answers each request slowly
_ROWS_PER_INSERT = 1000
_MANIFEST_FILES = "manifest_files"
_RECORDS = [t for t in Base.metadata.sorted_tables if t.name != RegistryIdentityRow.__tablename__]


@dataclass(frozen=True)
class MoveReport:
    """What a move copied, and where the registry is now."""

    identity: str  # the registry's id, the same in its new place
    database: str  # the new database's URL, without its password
    artifacts: str  # the new artifact store's URL
    adapters: int
    versions: int
    compositions: int  # composition versions
    events: int
    files: int  # distinct files (manifests included) the versions need
    copied: int  # of those, copied by this move (the rest were in the store already)
    copied_bytes: int
    finished_earlier_move: bool = False  # a stopped move to this target, finished now
    abandoned: str | None = None  # an earlier move's database, stopped and given up for this
    dry_run: bool = False  # nothing was changed: copied and copied_bytes are what would be


def move_registry(
    source: Registry,
    database_url: str,
    artifacts_url: str | None = None,
    *,
    on_wait: Callable[[], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_bytes: BytesMoved | None = None,
    dry_run: bool = False,
) -> MoveReport:
    """Copy ``source`` into the empty registry at ``database_url`` and ``artifacts_url`` (default:
    the source's own store, kept as it is), then leave ``source`` refusing writes and naming its
    new place. ``on_total`` is told the bytes the files take, ``on_bytes`` each file's bytes as
    it is copied or found there already; ``on_wait`` is called when another move of this
    registry runs (this one waits for it). Raises :class:`RegistryError` subclasses, with
    nothing changed, for a target that holds a registry already or a registry moved before.
    ``dry_run``: the same checks and counts, nothing changed (``copied``: what would be)."""
    from .client import Registry  # noqa: PLC0415 - the client imports this module's marker

    with source._named_lock("move of the registry", on_wait):
        with source.database.session() as session:
            identity = registry_identity(session)
            earlier = moved_to(session)
        if earlier is not None and earlier.get("finished"):
            raise RegistryMovedError(f"nothing to move: {where_it_went(earlier)}")
        with _naming_the_options():
            # the store first: one that cannot be used leaves no new database behind
            store = open_store(artifacts_url or source.artifacts.url)
            store.writers()  # reached (a move lists the store), nothing written
            if dry_run:
                found = _target_state(database_url)
            else:
                target = Registry(database_url, store.url, auto_migrate=True, create=True)
        if dry_run:
            return _plan(source, store, found, identity, earlier)
        try:
            return _move(source, target, identity, earlier, on_total=on_total, on_bytes=on_bytes)
        finally:
            target.close()


@contextmanager
def _naming_the_options() -> Iterator[None]:
    """The target's errors name the environment's variables (their words are the registry's
    own), where the user gave ``--to`` and ``--artifacts``."""
    try:
        yield
    except RegistryError as exc:
        words = str(exc).replace("ADAPTEROPS_REGISTRY_URL", "the new database's URL (--to)")
        raise type(exc)(words.replace("ADAPTEROPS_ARTIFACTS_URL", "--artifacts")) from None


def _move(
    source: Registry,
    target: Registry,
    identity: str,
    earlier: dict[str, Any] | None,
    *,
    on_total: Callable[[int], None] | None,
    on_bytes: BytesMoved | None,
) -> MoveReport:
    where = target.database.safe_url
    with target.database.session() as session:
        target_identity = registry_identity(session)
        held = _holdings(session)
    resuming = _check_target(where, target_identity, held, identity, earlier)
    if resuming and earlier is not None:  # a move to this target, stopped: made again, or
        record = earlier  # (killed after the one transaction of records) checked and finished
    else:
        record = {"database": where, "artifacts": target.artifacts.url, "started": now()}
    if target_identity == identity:  # the records were written: the same registry is there
        report = _check_finished(source, target, identity)
    else:
        with source.database.session() as session:
            moved_to(session, lock=True)
            record_move(session, {**record, "finished": None})
        try:
            report = _copy(source, target, identity, on_total, on_bytes)
        except BaseException:  # Ctrl-C too: the old registry takes writes again
            with source.database.session() as session:
                record_move(session, None)
            raise
    with source.database.session() as session:
        record_move(session, {**record, "finished": now()})
    abandoned = earlier["database"] if earlier is not None and not resuming else None
    return replace(report, abandoned=abandoned)


def _check_target(
    where: str,
    target_identity: str | None,
    held: dict[str, int],
    identity: str,
    earlier: dict[str, Any] | None,
) -> bool:
    """Refuse a target that holds a registry (this one included, unless a stopped move to it
    is being finished); returns whether this finishes a stopped move to it."""
    resuming = earlier is not None and earlier["database"] == where
    if target_identity == identity and not resuming:
        raise RegistryError(
            f"{where} already holds this registry ({identity}): it is this registry's own "
            "database, or a copy of it; nothing was moved. Give --to a new, empty database"
        )
    if any(held.values()) and target_identity != identity:
        raise RegistryError(
            f"{where} holds a registry already ({_described(held)}): a registry moves only into "
            "an empty one (a new database: `createdb NAME`, or a new SQLite file); nothing was "
            "moved"
        )
    return resuming


def _target_state(database_url: str) -> tuple[str, str | None, dict[str, int]]:
    """The target database as a dry run finds it, changing nothing: its URL without the
    password, its registry id (None: no registry schema yet, or none at all) and the rows its
    tables hold (a table an older schema lacks holds none)."""
    try:
        database = Database(database_url, auto_migrate=False, verify=False, create=False)
    except NoRegistryError:  # a SQLite file not made yet: the move makes it
        return hide_password(database_url), None, {}
    try:
        if database.revision() is None:
            return database.safe_url, None, {}
        with database.session() as session:
            tables = set(inspect(session.connection()).get_table_names())
            held = _holdings(session, tables)
            identity = None
            if RegistryIdentityRow.__tablename__ in tables:  # schema 0006 and later
                identity = session.scalar(select(RegistryIdentityRow.id))
        return database.safe_url, identity, held
    finally:
        database.dispose()


def _plan(
    source: Registry,
    store: ArtifactStore,
    target: tuple[str, str | None, dict[str, int]],
    identity: str,
    earlier: dict[str, Any] | None,
) -> MoveReport:
    """What a move would do, changing nothing: the ``target`` (:func:`_target_state`) checked as
    a move checks it, the files counted that the target store lacks."""
    where, target_identity, held = target
    resuming = _check_target(where, target_identity, held, identity, earlier)
    with source.database.session() as session:
        records = {table.name: _rows(session, table) for table in _RECORDS}
    sizes = _sizes(_manifests(source.artifacts, records))
    present = set(sizes) if store.url == source.artifacts.url else {b.digest for b in store.blobs()}
    missing = {digest: size for digest, size in sizes.items() if digest not in present}
    return _report(
        identity,
        (where, store.url),
        _row_counts(records),
        files=len(sizes),
        copied=missing,
        finished_earlier_move=resuming and target_identity == identity,
        dry_run=True,
    )


def _row_counts(records: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {table: len(rows) for table, rows in records.items()}


def _report(
    identity: str,
    place: tuple[str, str],
    rows: dict[str, int],
    *,
    files: int,
    copied: dict[str, int],
    finished_earlier_move: bool = False,
    dry_run: bool = False,
) -> MoveReport:
    """The report of a move into ``place`` (database without its password, store) of a
    registry whose tables hold ``rows``; ``copied``: each file copied (or to copy) and its size."""
    return MoveReport(
        identity=identity,
        database=place[0],
        artifacts=place[1],
        adapters=rows[AdapterRow.__tablename__],
        versions=rows[VersionRow.__tablename__],
        compositions=rows[CompositionRow.__tablename__],
        events=rows[EventRow.__tablename__],
        files=files,
        copied=len(copied),
        copied_bytes=sum(copied.values()),
        finished_earlier_move=finished_earlier_move,
        dry_run=dry_run,
    )


def _sizes(manifests: dict[str, tuple[bytes, Manifest]]) -> dict[str, int]:
    """Every file the versions need (their manifests too) and its size."""
    sizes = {digest: len(data) for digest, (data, _) in manifests.items()}
    for _, manifest in manifests.values():
        sizes.update((digest, size) for _, digest, size in manifest.files)
    return sizes


def _copy(
    source: Registry,
    target: Registry,
    identity: str,
    on_total: Callable[[int], None] | None,
    on_bytes: BytesMoved | None,
) -> MoveReport:
    """Steps 3 and 4: the files, then every record in one transaction."""
    with source.database.session() as session:  # nothing writes to it any more
        records = {table.name: _rows(session, table) for table in _RECORDS}
    manifests = _manifests(source.artifacts, records)
    for version in records[VersionRow.__tablename__]:  # where its manifest is now
        version["artifact_uri"] = target.artifacts.uri(version["digest"])
    sizes = _sizes(manifests)
    if on_total is not None:
        on_total(sum(sizes.values()))
    copied: dict[str, int] = {}
    if target.artifacts.url == source.artifacts.url:  # the store stays: nothing to copy
        if on_bytes is not None:
            on_bytes(sum(sizes.values()))
    else:
        # the registry's marker before its first write there, as a registration leaves it
        target.artifacts.mark_writer(identity, f"registry {identity} at {target.database.safe_url}")
        copied = _copy_files(
            source.artifacts,
            target.artifacts,
            sizes,
            manifests,
            refs=_version_refs(records),
            on_bytes=on_bytes,
        )
    # every version's files, those registered before schema 0008 too: gc reads them from SQL
    records[_MANIFEST_FILES] = [
        {"manifest": digest, "file": file}
        for digest, (_, manifest) in sorted(manifests.items())
        for file in sorted({file for _, file, _ in manifest.files})
    ]
    with target.database.session() as session:
        held = _holdings(session)
        if any(held.values()):  # written by someone else since it was checked
            raise RegistryError(
                f"{target.database.safe_url} took records meanwhile ({_described(held)}): "
                "a registry moves only into an empty one; nothing was moved"
            )
        session.execute(delete(RegistryIdentityRow))
        session.add(RegistryIdentityRow(id=identity))
        _insert_all(session, records)
    place = (target.database.safe_url, target.artifacts.url)
    return _report(identity, place, _row_counts(records), files=len(sizes), copied=copied)


def _check_finished(source: Registry, target: Registry, identity: str) -> MoveReport:
    """A move stopped after the target's records were committed: they must all be there."""
    with source.database.session() as session:
        here = _holdings(session)
    with target.database.session() as session:
        there = _holdings(session)
    if here != there:
        raise RegistryError(
            f"{target.database.safe_url} holds {_described(there)}, this registry "
            f"{_described(here)}: it was written to after the move copied it; nothing was changed"
        )
    place = (target.database.safe_url, target.artifacts.url)
    return _report(identity, place, there, files=0, copied={}, finished_earlier_move=True)


def _holdings(session: Session, present: set[str] | None = None) -> dict[str, int]:
    """Rows per table of records (files lists aside: a cache of what the store says); only the
    tables ``present`` where an older schema lacks some."""
    return {
        table.name: session.scalar(select(func.count()).select_from(table)) or 0
        for table in _RECORDS
        if table.name != _MANIFEST_FILES and (present is None or table.name in present)
    }


def _described(held: dict[str, int]) -> str:
    shown = {
        AdapterRow: "adapter(s)",
        VersionRow: "version(s)",
        CompositionRow: "composition version(s)",
        EventRow: "event(s)",
    }
    return ", ".join(f"{held[row.__tablename__]} {words}" for row, words in shown.items())


def _rows(session: Session, table: Table) -> list[dict[str, Any]]:
    """Every row of ``table`` in key order, times in UTC (SQLite keeps them without a zone)."""
    times = [column.name for column in table.columns if isinstance(column.type, DateTime)]
    rows = []
    for row in session.execute(select(table).order_by(*table.primary_key.columns)).mappings():
        values = dict(row)
        for name in times:
            if values[name] is not None and values[name].tzinfo is None:
                values[name] = values[name].replace(tzinfo=UTC)
        rows.append(values)
    return rows


def _insert_all(session: Session, records: dict[str, list[dict[str, Any]]]) -> None:
    """Insert every table's rows, parents first. Row ids are the target's own (its sequences
    give them: the application's database user may use sequences but not set them), so each
    foreign key is translated from the old id to the new."""
    new_ids: dict[str, dict[int, int]] = {}
    for table in _RECORDS:
        rows = records[table.name]
        links = {key.parent.name: key.column.table.name for key in table.foreign_keys}
        for row in rows:
            for column, parent in links.items():
                row[column] = new_ids[parent][row[column]]
        if "id" not in table.primary_key.columns:  # keyed by content: copied as it is
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                session.execute(insert(table), rows[start : start + _ROWS_PER_INSERT])
            continue
        ids = new_ids.setdefault(table.name, {})
        statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            given = session.scalars(statement, [_without_id(row) for row in chunk]).all()
            ids.update(zip((row["id"] for row in chunk), given, strict=True))


def _without_id(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "id"}


def _version_refs(records: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Each version's manifest digest -> its ``name@N`` (one of them, where two share bytes)."""
    names = {row["id"]: row["name"] for row in records[AdapterRow.__tablename__]}
    return {
        row["digest"]: f"{names[row['adapter_id']]}@{row['version']}"
        for row in records[VersionRow.__tablename__]
    }


def _manifests(
    store: ArtifactStore, records: dict[str, list[dict[str, Any]]]
) -> dict[str, tuple[bytes, Manifest]]:
    """Each version's manifest (its bytes and the files it lists), read from ``store`` and
    checked against its digest, several at once."""
    labels = _version_refs(records)

    def read(digest: str) -> tuple[bytes, Manifest]:
        try:
            data = store.read_bytes(digest)
        except FileNotFoundError:
            raise CorruptArtifactError(
                f"{labels[digest]}: its manifest is missing from the artifact store (expected "
                f"sha256 {digest} at {store.uri(digest)}); nothing was moved. Check that "
                "ADAPTEROPS_ARTIFACTS_URL names the store it was registered into"
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptArtifactError(
                f"{labels[digest]}: its manifest at {store.uri(digest)} is corrupted (its "
                f"sha256 is not {digest}); nothing was moved"
            )
        return data, Manifest.from_bytes(data)

    with ThreadPoolExecutor(max_workers=COPIES_AT_ONCE) as pool:
        return dict(zip(labels, pool.map(read, labels), strict=True))


def _copy_files(
    source: ArtifactStore,
    target: ArtifactStore,
    sizes: dict[str, int],
    manifests: dict[str, tuple[bytes, Manifest]],
    *,
    refs: dict[str, str],
    on_bytes: BytesMoved | None,
) -> dict[str, int]:
    """Copy each file the target store lacks, verified against its digest; returns those
    copied (digest -> bytes). Files there already count as moved."""
    owner = {
        digest: (refs[manifest_digest], name)
        for manifest_digest, (_, manifest) in manifests.items()
        for name, digest, _ in manifest.files
    }
    copied: dict[str, int] = {}
    present = {blob.digest for blob in target.blobs()}  # a list request per 1,000, not a HEAD each
    with tempfile.TemporaryDirectory(prefix="adapterops-move-") as scratch:

        def copy_one(digest: str) -> None:
            if digest in present:
                if on_bytes is not None:
                    on_bytes(sizes[digest])
                return
            if digest in manifests:  # read already: no second download
                path = Path(scratch) / digest
                path.write_bytes(manifests[digest][0])
                target.put_file(digest, path, on_bytes)
                path.unlink()
            else:
                ref, name = owner[digest]
                copy_blob(
                    source, target, digest, Path(scratch), size=sizes[digest], label=ref,
                    what=name, on_bytes=on_bytes,
                )  # fmt: skip
            copied[digest] = sizes[digest]

        try:
            with ThreadPoolExecutor(max_workers=COPIES_AT_ONCE) as pool:
                for _ in pool.map(copy_one, sorted(sizes)):
                    pass
        except CorruptArtifactError as exc:
            raise CorruptArtifactError(f"{exc}; nothing was moved") from None
    return copied
