"""Moving a registry (``Registry.move_to``, ``adapterops db move``): from the embedded defaults to
a real PostgreSQL and SeaweedFS S3, everything as it was, and the old database refusing writes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import registry as rg
from registry import Registry, store
from registry.artifacts.base import blob_key
from registry.bundles import Manifest
from registry.db import Database
from registry.move_marker import record_move
from tests.registry.conftest import fresh_bucket_url, fresh_postgres_url
from tests.registry.test_registry import recorded_manifests, register


def embedded(tmp_path: Path, name: str = "old") -> tuple[str, str]:
    return f"sqlite:///{tmp_path / f'{name}.db'}", (tmp_path / f"{name}-artifacts").as_uri()


def populated(reg: Registry, make_adapter) -> None:
    """Versions with gaps (a deleted one), metrics, lineage, two base models, aliases moved by
    hand and by a gate, a composition with an alias, and their histories."""
    for seed in (1, 2, 3):
        register(
            reg, make_adapter(seed), metrics={"accuracy": 0.7 + seed / 100}, lineage={"s": seed}
        )
    reg.delete("tiny-sst2-en-lora@2")
    register(reg, make_adapter(4), name="lang-pt", language="pt")
    register(reg, make_adapter(5), name="big-en", base_model="other-bert")
    reg.set_alias("tiny-sst2-en-lora@1", "previous")
    reg.set_alias("tiny-sst2-en-lora@3", "champion", origin="gate")
    reg.register_composition("pt-sst2", {"type": "stack"}, ["lang-pt@1", "tiny-sst2-en-lora@3"])
    reg.register_composition("pt-sst2", {"type": "stack"}, ["lang-pt@1", "tiny-sst2-en-lora@1"])
    reg.set_composition_alias("pt-sst2@2", "champion")


def utc(moment: datetime) -> datetime:
    """SQLite gives times back without their zone (UTC), PostgreSQL in the server's zone."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def everything(reg: Registry) -> dict:
    """What a user can ask of a registry, in comparable form."""
    versions = {
        v.ref: (v.digest, v.size, v.metrics, v.lineage, sorted(v.aliases), utc(v.created_at))
        for v in reg.find()
    }
    histories = {
        name: [
            (utc(e.at), e.kind, e.version, e.alias, e.origin, e.detail) for e in reg.history(name)
        ]
        for name in ("tiny-sst2-en-lora", "lang-pt", "big-en")
    }
    compositions = [
        (c.ref, c.definition, c.members, sorted(c.aliases))
        for c in reg.composition_versions("pt-sst2")
    ]
    return {
        "versions": versions,
        "histories": histories,
        "compositions": compositions,
        "composition history": [
            (e.kind, e.version, e.alias) for e in reg.composition_history("pt-sst2")
        ],
        "deleted": reg.deleted_versions(),
    }


def needed(reg: Registry) -> set[str]:
    """The blobs the registry's versions need: their manifests and the files they list."""
    manifests = {v.digest for v in reg.find()}
    listed = [Manifest.from_bytes(reg.artifacts.read_bytes(d)).files for d in manifests]
    return manifests | {digest for files in listed for _, digest, _ in files}


@pytest.mark.usefixtures("seaweed")
def test_an_embedded_registry_moves_to_postgres_and_s3(tmp_path, make_adapter, postgres):
    old = Registry(*embedded(tmp_path))
    populated(old, make_adapter)
    before = everything(old)
    database, artifacts = fresh_postgres_url(postgres), fresh_bucket_url()

    totals: list[int] = []
    moved: list[int] = []
    report = old.move_to(database, artifacts, on_total=totals.append, on_bytes=moved.append)

    new = Registry(database, artifacts)
    assert everything(new) == before
    assert new.identity == old.identity == report.identity
    assert {v.artifact_uri for v in new.find()} == {
        f"{artifacts}/{blob_key(v.digest)}" for v in new.find()
    }
    assert (report.adapters, report.versions, report.compositions) == (3, 4, 2)
    assert report.events == sum(map(len, before["histories"].values())) + len(
        before["composition history"]
    )
    # each version's manifest and the files it lists (versions share equal files), all copied
    assert (report.files, report.copied) == (len(needed(old)), len(needed(old)))
    assert sum(moved) == totals[0] == report.copied_bytes
    assert "password" not in report.database and report.database.startswith("postgresql")
    # the files themselves, verified against their digests on the way out of S3
    pulled = new.fetch("tiny-sst2-en-lora@champion", tmp_path / "pulled")
    assert sorted(p.name for p in pulled.iterdir()) == ["adapter.json", "adapter.safetensors"]
    assert new.artifacts.writers() == {
        report.identity: f"registry {report.identity} at {report.database}"
    }
    assert recorded_manifests(new) == {digest for digest, *_ in before["versions"].values()}
    # numbers go on past the highest ever given (3; 2 was deleted), in the new place
    assert register(new, make_adapter(5)).version == 4

    # the old one reads as before and refuses every write, saying where the registry went
    assert everything(old) == before
    with pytest.raises(rg.RegistryMovedError) as refused:
        register(old, make_adapter(6))
    assert str(refused.value).startswith(f"this registry was moved to {report.database} ")
    assert "point ADAPTEROPS_REGISTRY_URL and ADAPTEROPS_ARTIFACTS_URL at its new place" in str(
        refused.value
    )
    for write in (
        lambda: old.set_alias("tiny-sst2-en-lora@1", "champion"),
        lambda: old.delete("tiny-sst2-en-lora@1"),
        lambda: old.gc(older_than=timedelta(0)),
        old.check_writable,
    ):
        with pytest.raises(rg.RegistryMovedError):
            write()
    assert everything(old) == before
    with pytest.raises(rg.RegistryMovedError, match=r"^nothing to move: this registry was moved"):
        old.move_to(fresh_postgres_url(postgres), fresh_bucket_url())


def test_keeping_the_store_copies_no_file(tmp_path, make_adapter):
    old_url, store = embedded(tmp_path)
    old = Registry(old_url, store)
    populated(old, make_adapter)
    before = everything(old)
    new_url = f"sqlite:///{tmp_path / 'new.db'}"

    report = old.move_to(new_url)  # the store stays where it is

    assert (report.files, report.copied, report.artifacts) == (len(needed(old)), 0, store)
    assert everything(Registry(new_url, store)) == before


def test_a_target_holding_a_registry_is_refused_and_nothing_changes(tmp_path, make_adapter):
    old = Registry(*embedded(tmp_path))
    populated(old, make_adapter)
    taken = Registry(*embedded(tmp_path, "taken"))
    register(taken, make_adapter(9), name="theirs")

    with pytest.raises(rg.RegistryError, match=r"holds a registry already \(1 adapter\(s\), 1 "):
        old.move_to(*embedded(tmp_path, "taken"))
    assert [v.ref for v in taken.find()] == ["theirs@1"]
    old.check_writable()  # still takes writes
    with pytest.raises(rg.RegistryError, match="already holds this registry"):
        old.move_to(*embedded(tmp_path))  # its own database


def test_a_move_that_fails_leaves_the_registry_writable_and_the_target_empty(
    tmp_path, make_adapter
):
    old_url, store = embedded(tmp_path)
    old = Registry(old_url, store)
    populated(old, make_adapter)
    lost = old.get("lang-pt@1")
    manifest = next(Path(store.removeprefix("file://")).rglob(lost.digest))
    manifest.unlink()  # removed from the store outside adapterops

    with pytest.raises(rg.CorruptArtifactError, match=r"^lang-pt@1: its manifest is missing"):
        old.move_to(*embedded(tmp_path, "new"))

    assert register(old, make_adapter(7)).version == 4  # writable again
    new = Registry(*embedded(tmp_path, "new"))
    assert new.find() == [] and new.identity != old.identity


def test_a_move_stopped_half_way_is_finished_by_running_it_again(tmp_path, make_adapter):
    old = Registry(*embedded(tmp_path))
    populated(old, make_adapter)
    before = everything(old)
    target = embedded(tmp_path, "new")
    report = old.move_to(*target)
    where = {"database": report.database, "artifacts": report.artifacts, "started": "2026-12-06"}
    # as if killed after the records were written, before the old database heard it was done
    with old.database.session() as session:
        record_move(session, {**where, "finished": None})
    with pytest.raises(
        rg.RegistryMovedError, match=r"^this registry is being moved to .* If no move"
    ):
        old.check_writable()

    again = old.move_to(*target)

    assert again.finished_earlier_move and again.versions == 4
    with pytest.raises(rg.RegistryMovedError, match=r"^this registry was moved to"):
        old.check_writable()
    assert everything(Registry(*target)) == before

    # killed before the records were written: the move is made again from the start
    other = Registry(*embedded(tmp_path, "other"))
    register(other, make_adapter(8), name="solo")
    target = embedded(tmp_path, "other-new")
    with other.database.session() as session:
        record_move(session, {**where, "database": target[0], "finished": None})
    redone = other.move_to(*target)
    assert not redone.finished_earlier_move and [v.ref for v in Registry(*target).find()] == [
        "solo@1"
    ]


def test_a_move_to_another_target_gives_up_a_stopped_one(tmp_path, make_adapter):
    old = Registry(*embedded(tmp_path))
    register(old, make_adapter(1))
    with old.database.session() as session:
        record_move(
            session,
            {
                "database": "postgresql://gone/x",
                "artifacts": "s3://gone",
                "started": "x",
                "finished": None,
            },
        )
    report = old.move_to(*embedded(tmp_path, "new"))
    assert report.abandoned == "postgresql://gone/x"
    assert [v.ref for v in Registry(*embedded(tmp_path, "new")).find()] == ["tiny-sst2-en-lora@1"]


@pytest.mark.usefixtures("seaweed")
def test_on_postgres_a_write_under_way_finishes_before_the_move_starts(
    tmp_path, make_adapter, postgres
):
    """Each write reads the move record FOR SHARE first, so the move's update of it waits for
    writes already running (and is copied with them); later writes see it and are refused."""
    old = Registry(fresh_postgres_url(postgres), fresh_bucket_url())
    register(old, make_adapter(1))
    started, finished = threading.Event(), threading.Event()
    reports = []

    def move() -> None:
        started.set()
        reports.append(old.move_to(*embedded(tmp_path, "new")))
        finished.set()

    def slow_write(session) -> None:  # a registration's transaction, still open
        threading.Thread(target=move).start()
        started.wait()
        assert not finished.wait(2)  # the move waits for this write
        store.log_event(session, "registered", "tiny-sst2-en-lora", 1, origin="test", detail={})

    old._write(slow_write)
    assert finished.wait(60)
    assert reports[0].events == 2  # the write that was under way moved with the rest
    with pytest.raises(rg.RegistryMovedError):
        register(old, make_adapter(2))


def test_an_empty_registry_stopped_after_its_move_is_finished_too(tmp_path):
    """Nothing to copy, so nothing in the target tells the move was made but its id."""
    old = Registry(*embedded(tmp_path))
    target = embedded(tmp_path, "new")
    report = old.move_to(*target)
    with old.database.session() as session:
        record_move(session, {"database": report.database, "artifacts": report.artifacts,
                              "started": "2026-12-06", "finished": None})  # fmt: skip
    assert old.move_to(*target).finished_earlier_move
    with pytest.raises(rg.RegistryMovedError, match=r"^this registry was moved to"):
        old.check_writable()


def test_files_a_failed_move_copied_are_not_copied_again(tmp_path, make_adapter):
    old_url, store = embedded(tmp_path)
    old = Registry(old_url, store)
    populated(old, make_adapter)
    folder = Path(store.removeprefix("file://"))
    lost = Manifest.from_bytes(old.artifacts.read_bytes(old.get("big-en@1").digest)).files
    tensor = next(folder.rglob(dict((n, d) for n, d, _ in lost)["adapter.safetensors"]))
    kept = tensor.read_bytes()
    tensor.unlink()
    with pytest.raises(
        rg.CorruptArtifactError,
        match=r"^big-en@1: adapter.safetensors is missing .* nothing was moved$",
    ):
        old.move_to(*embedded(tmp_path, "new"))
    tensor.write_bytes(kept)  # found again

    report = old.move_to(*embedded(tmp_path, "new"))

    assert report.files == len(needed(old))
    assert 1 <= report.copied < report.files  # the rest were there from the failed move


@pytest.mark.usefixtures("seaweed")
def test_a_dry_run_checks_and_counts_and_changes_nothing(tmp_path, make_adapter, postgres):
    old_url, store = embedded(tmp_path)
    old = Registry(old_url, store)
    populated(old, make_adapter)
    name = f"dry_run_{tmp_path.name}".lower()
    postgres.create_database(name)  # new: no registry schema yet (the move would migrate it)
    artifacts = fresh_bucket_url()

    plan = old.move_to(postgres.url(name), artifacts, dry_run=True)

    assert plan.dry_run and (plan.versions, plan.adapters, plan.compositions) == (4, 3, 2)
    assert plan.files == plan.copied == len(needed(old)) and plan.copied_bytes > 0
    assert Database(postgres.url(name), auto_migrate=False, verify=False).revision() is None
    assert list(Registry(old_url, artifacts).artifacts.blobs()) == []
    old.check_writable()  # no move recorded
    nowhere = tmp_path / "not-yet" / "new.db"
    kept = old.move_to(f"sqlite:///{nowhere}", dry_run=True)  # the store stays: nothing to copy
    assert (kept.copied, kept.copied_bytes, kept.files) == (0, 0, len(needed(old)))
    assert not nowhere.parent.exists()
    taken = Registry(*embedded(tmp_path, "taken"))
    register(taken, make_adapter(9), name="theirs")
    with pytest.raises(rg.RegistryError, match=r"holds a registry already"):
        old.move_to(*embedded(tmp_path, "taken"), dry_run=True)
    assert old.move_to(postgres.url(name), artifacts).copied == plan.copied  # as planned


def test_a_dry_run_reads_an_older_registry_schema_and_names_the_old_stores_variable(
    tmp_path, make_adapter
):
    old_url, store = embedded(tmp_path)
    old = Registry(old_url, store)
    register(old, make_adapter(1))
    older = Registry(*embedded(tmp_path, "older"))
    register(older, make_adapter(2), name="theirs")
    older.close()
    Database(embedded(tmp_path, "older")[0], auto_migrate=False).downgrade("0005")
    with pytest.raises(rg.RegistryError, match=r"holds a registry already \(1 adapter"):
        old.move_to(*embedded(tmp_path, "older"), dry_run=True)  # read, not migrated
    assert (
        Database(embedded(tmp_path, "older")[0], auto_migrate=False, verify=False).revision()
        == "0005"
    )
    manifest = next(
        Path(store.removeprefix("file://")).rglob(old.get("tiny-sst2-en-lora@1").digest)
    )
    manifest.unlink()
    with pytest.raises(rg.CorruptArtifactError) as lost:
        old.move_to(*embedded(tmp_path, "new"), dry_run=True)
    assert "ADAPTEROPS_ARTIFACTS_URL names the store it was registered into" in str(lost.value)
