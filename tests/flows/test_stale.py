"""Which compositions a new champion leaves behind, and which of them the cascade can score,
read from the registry alone (``cascade --dry-run``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from flows.cascade import CascadeOutcome
from flows.stale import find_stale, fusion_as_it_stands
from registry import Registry
from tests.helpers import held_in_another_thread
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


def test_a_fusion_promoted_since_it_was_listed_is_cascaded_from_where_it_stands(tmp_path: Path):
    """A cascade builds its fusions one after another (each minutes to hours): another
    cascade (another member's new champion) may promote a candidate meanwhile. The fusion is
    re-read before its candidate is built: from its champion as it stands, or not at all."""
    from flows.pipelines import _cascade_fusion

    registry = Registry(f"sqlite:///{tmp_path}/r.db", (tmp_path / "artifacts").as_uri())
    for seed, name in enumerate(("lang", "lang", "task", "task"), start=1):
        registry.register(
            write_fake_adapter(tmp_path / f"{name}{seed}", seed), name=name, base_model="b",
            task=name, language="pt",
        )  # fmt: skip

    def fusion(seed: int, members: list[str]) -> None:
        folder = write_fake_adapter(tmp_path / f"fused{seed}", seed, method="fusion")
        registry.register(
            folder, name="fused", base_model="b", task="sst2", language="pt",
            lineage={"fusion_members": members},
        )  # fmt: skip

    fusion(10, ["lang@1", "task@1"])
    registry.set_alias("fused@1", "champion")
    registry.set_alias("lang@2", "champion")
    registry.set_alias("task@2", "champion")
    lang, [listed_for_lang] = find_stale(registry, "lang")
    task, [listed_for_task] = find_stale(registry, "task")
    assert (listed_for_lang.ref, listed_for_task.ref) == ("fused@1", "fused@1")
    # a cascade of lang building its candidate (hours for an LLM) holds the fusion's cascade
    # lock; another cascade of lang waits, then re-reads: caught up, it builds nothing (it
    # built a candidate over lang@2 beside the first; one of task, over task@2 alone)
    waited: list[CascadeOutcome] = []
    with held_in_another_thread(lambda: registry.cascade_lock("fused")):
        second = threading.Thread(
            target=lambda: waited.append(
                _cascade_fusion(listed_for_lang, lang, registry, tmp_path / "out")
            )
        )
        second.start()
        time.sleep(1.5)
        assert second.is_alive()  # waiting for the first
        fusion(11, ["lang@2", "task@1"])  # the first cascade's candidate, promoted
        registry.set_alias("fused@2", "champion")
    second.join(60)
    assert [(o.status, o.members) for o in waited] == [("not evaluated", ["lang@2", "task@1"])]

    now = fusion_as_it_stands(registry, "fused", task)
    assert now is not None and now.ref == "fused@2"
    assert now.candidate_members == ["lang@2", "task@2"]  # not ["lang@1", "task@2"]
    assert fusion_as_it_stands(registry, "fused", lang) is None
    done = _cascade_fusion(listed_for_lang, lang, registry, tmp_path / "out")  # builds nothing
    assert (done.composition, done.status, done.members) == (
        "fused@1", "not evaluated", ["lang@2", "task@1"]
    )  # fmt: skip
    assert done.reason == "its champion, fused@2, is over lang@2 already (since fused@1 was listed)"
    assert not (tmp_path / "out").exists()
    registry.close()
