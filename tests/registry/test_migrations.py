"""Schema migrations rewrite stored data, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

import registry as rg
from registry import Registry
from registry.db import Database, schema_head
from tests.registry.conftest import EVERY_SERVER
from tests.registry.test_registry import register

pytestmark = EVERY_SERVER  # each migration on SQLite, PostgreSQL 15 and PostgreSQL 18


def definitions(db: Database) -> dict[str, dict]:
    with db.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT name, definition FROM compositions"))
        return {name: d if isinstance(d, dict) else json.loads(d) for name, d in rows}


def test_0002_gives_stored_compositions_the_one_shape(locations, make_adapter):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    register(registry, make_adapter(1), name="lang")
    register(registry, make_adapter(2), name="task")
    registry.register_composition("flat", {"type": "stack"}, ["lang", "task"])
    registry.register_composition("named", {"type": "stack"}, ["lang", "task"])
    registry.close()

    db = Database(url, auto_migrate=False)
    db.downgrade("0001")  # what a registry written before 0002 held
    assert definitions(db)["flat"] == {"type": "stack", "members": ["lang@1", "task@1"]}
    with db.engine.begin() as connection:  # the oldest form: children only in the members table
        connection.execute(
            sa.text("UPDATE compositions SET definition = :d WHERE name = 'flat'"),
            {"d": json.dumps({"type": "stack"})},
        )
    db.upgrade()
    assert definitions(db) == {
        "flat": {"type": "stack", "children": ["lang@1", "task@1"]},
        "named": {"type": "stack", "children": ["lang@1", "task@1"]},
    }
    db.dispose()
    assert Registry(url, artifacts).composition("flat").members == ("lang@1", "task@1")


def test_0003_starts_the_version_counter_past_every_number_ever_given(locations, make_adapter):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    for seed in (1, 2, 3):
        register(registry, make_adapter(seed), name="counted")
    registry.delete("counted@3")  # before 0003 the next registration would reuse 3
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0002")
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    assert register(registry, make_adapter(4), name="counted").version == 4
    registry.close()


def test_0005_adds_composition_aliases_and_its_downgrade_drops_them(locations, make_adapter):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    register(registry, make_adapter(1), name="lang")
    registry.register_composition("stacked", {"type": "stack"}, ["lang"])
    registry.set_composition_alias("stacked@1", "champion")
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0004")
    assert "composition_aliases" not in sa.inspect(db.engine).get_table_names()
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    assert registry.composition("stacked").aliases == ()  # aliases set before are gone
    assert registry.set_composition_alias("stacked", "champion").aliases == ("champion",)
    registry.close()


def test_0006_gives_the_registry_an_identity_and_its_downgrade_drops_it(locations, make_adapter):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    first = registry.identity
    assert len(first) == 36 and registry.identity == first  # one row, read again the same
    register(registry, make_adapter(1), name="lang")  # leaves the store's marker
    assert registry.artifacts.writers() == {
        first: f"registry {first} at {registry.database.safe_url}"
    }
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0005")
    assert "registry_identity" not in sa.inspect(db.engine).get_table_names()
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    assert registry.identity != first  # a new id: gc says the old marker is this database's
    with pytest.raises(
        rg.SharedStoreError,
        match=rf"a registry at this same database .* under another id \({first};",
    ):
        registry.gc()
    registry.close()


def test_0007_gives_composition_versions_metrics_and_its_downgrade_drops_them(
    locations, make_adapter
):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    register(registry, make_adapter(1), name="lang")
    registry.register_composition("scored", {"type": "stack"}, ["lang"], metrics={"accuracy": 0.8})
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0006")
    columns = {c["name"] for c in sa.inspect(db.engine).get_columns("compositions")}
    assert "metrics" not in columns and "evaluation" in columns
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    assert registry.composition("scored").metrics == {}  # written before 0007: none
    again = registry.register_composition("scored", {"type": "stack"}, ["lang"], metrics={"f1": 1})
    assert registry.composition(again.ref).metrics == {"f1": 1.0}
    registry.close()


def test_0008_records_manifests_files_and_gc_fills_in_the_older_ones(
    locations, make_adapter, monkeypatch
):
    """Versions registered before 0008 have no rows: the first gc downloads their manifests
    and records them, so the next reads SQL only; the downgrade drops the table."""
    url, artifacts = locations
    registry = Registry(url, artifacts)
    old = register(registry, make_adapter(1), name="old")
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0007")
    assert "manifest_files" not in sa.inspect(db.engine).get_table_names()
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    new = register(registry, make_adapter(2), name="new")
    downloaded, real_read_bytes = [], registry.artifacts.read_bytes
    monkeypatch.setattr(
        registry.artifacts, "read_bytes", lambda d: downloaded.append(d) or real_read_bytes(d)
    )
    assert registry.gc(older_than=timedelta(0)) == []
    assert downloaded == [old.digest]  # not new's: recorded when it was registered
    downloaded.clear()
    assert registry.gc(older_than=timedelta(0)) == [] and downloaded == []
    assert new.digest != old.digest
    registry.close()


def test_0009_records_a_move_and_its_downgrade_drops_the_record(locations, make_adapter, tmp_path):
    url, artifacts = locations
    registry = Registry(url, artifacts)
    register(registry, make_adapter(1), name="lang")
    registry.move_to(f"sqlite:///{tmp_path / 'moved.db'}")
    with pytest.raises(rg.RegistryMovedError):
        registry.check_writable()
    registry.close()
    db = Database(url, auto_migrate=False)
    db.downgrade("0008")
    columns = {c["name"] for c in sa.inspect(db.engine).get_columns("registry_identity")}
    assert columns == {"id"}
    db.upgrade()
    db.dispose()
    registry = Registry(url, artifacts)
    registry.check_writable()  # the record went with the column: it takes writes again
    assert register(registry, make_adapter(2), name="lang").version == 2
    registry.close()


def test_a_schema_a_newer_release_migrated_is_said_to_need_a_newer_adapterops(
    locations, make_adapter
):
    """A worker left on an older release beside an upgraded database (a rolling upgrade): it
    said 'not a registry database ... another application's database?'."""
    url, artifacts = locations
    registry = Registry(url, artifacts)
    register(registry, make_adapter(1), name="lang")
    registry.close()
    with Database(url, auto_migrate=False).engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(rg.NewerSchemaError) as refused:
        Registry(url, artifacts)
    assert str(refused.value).endswith(
        "holds a registry at schema 0999, newer than this adapterops knows "
        f"({schema_head()}): a newer release migrated it; upgrade adapterops here (nothing was "
        "written)"
    )
    with pytest.raises(rg.NewerSchemaError):
        Database(url, auto_migrate=False, verify=False).revision()  # what db status reads
