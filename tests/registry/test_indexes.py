"""Queries are indexed: SQLite's plans for the hot lookups search indexes, never scan tables."""

from __future__ import annotations

from sqlalchemy import select, text

from registry.db import Database
from registry.orm import AdapterRow, AliasRow, BaseModelRow, MetricRow, VersionRow
from registry.store import _versions_query


def plan(database: Database, query) -> str:
    sql = str(query.compile(database.engine, compile_kwargs={"literal_binds": True}))
    with database.engine.connect() as connection:
        return "\n".join(
            str(row[-1]) for row in connection.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
        )


def test_hot_lookups_use_indexes(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'r.db'}")
    find = (
        _versions_query()
        .where(BaseModelRow.name == "b", AdapterRow.task == "t", AdapterRow.language == "en")
        .outerjoin(
            MetricRow, (MetricRow.version_id == VersionRow.id) & (MetricRow.key == "accuracy")
        )
    )
    by_alias = (
        _versions_query()
        .where(AdapterRow.name == "a")
        .join(AliasRow, AliasRow.version_id == VersionRow.id)
        .where(AliasRow.alias == "champion")
    )
    by_version = _versions_query().where(AdapterRow.name == "a", VersionRow.version == 3)
    aliases_of = select(AliasRow.alias).where(AliasRow.version_id.in_([1, 2, 3]))
    for query in (find, by_alias, by_version, aliases_of):
        steps = plan(database, query)
        scans = [
            line
            for line in steps.splitlines()
            if line.startswith("SCAN") and "base_models" not in line
        ]
        assert not scans, f"full table scan in:\n{steps}"
    database.dispose()
