"""Which compositions a new champion leaves behind, and which of them the cascade can score,
read from the registry alone (``cascade --dry-run``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from flows.stale import find_stale
from registry import Registry
from tests.registry.workers import write_fake_adapter


def test_each_stale_composition_says_whether_the_cascade_can_score_it(tmp_path: Path):
    registry = Registry(f"sqlite:///{tmp_path}/r.db", (tmp_path / "artifacts").as_uri())
    for seed, name in ((1, "lang"), (2, "task"), (3, "task")):
        registry.register(
            write_fake_adapter(tmp_path / f"{name}{seed}", seed), name=name, base_model="b",
            task=name, language="pt",
        )  # fmt: skip
    scoring = {"name": "scoring", "evaluate": {"metric": "accuracy"}}
    registry.register_composition("scored", {"type": "stack"}, ["lang", "task@1"], evaluation=scoring)  # fmt: skip
    registry.register_composition("bare", {"type": "stack"}, ["lang", "task@1"])
    registry.register_composition("both", {"type": "parallel"}, ["lang", "task@1"])
    with registry.database.engine.begin() as connection:  # saved so before Parallel was refused
        connection.execute(
            sa.text("UPDATE compositions SET evaluation = :e WHERE name = 'both'"),
            {"e": '{"name": "scoring"}'},
        )
    registry.set_alias("task@2", "champion")
    champion, stale = find_stale(registry, "task")
    assert champion.ref == "task@2"
    assert {s.ref: (s.evaluable, s.reason) for s in stale} == {
        "stack:scored@1": (True, ""),
        "stack:bare@1": (
            False, "saved without an evaluation spec (register_composition(evaluation=))"
        ),
        "stack:both@1": (
            False, "a Parallel composition answers once per member: no one score to gate on"
        ),
    }  # fmt: skip
    assert {s.ref: s.candidate_members for s in stale}["stack:scored@1"] == ["lang@1", "task@2"]
