"""``diff_compositions``: what changed between two versions of a composition, pinned row by row."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from registry import Composition, diff_compositions

EVALUATION = {"base_model": "tiny-bert", "evaluate": {"metric": "accuracy"}, "data": {"rows": 50}}
BEFORE = Composition(
    name="madx", version=1, members=("lang-pt@2", "sst2@1"),
    definition={"type": "stack", "children": ["lang-pt@2", "sst2@1"]}, description="first",
    created_at=datetime(2026, 12, 1), evaluation=EVALUATION,
)  # fmt: skip


def test_members_by_adapter_then_blocks_evaluation_and_description():
    after = replace(
        BEFORE,
        version=2,
        members=("lang-pt@3", "topic@1"),
        definition={"type": "average", "weights": [0.7, 0.3], "children": ["lang-pt@3", "topic@1"]},
        evaluation={**EVALUATION, "data": {"rows": 80}},
        description="weighted",
    )
    changes = diff_compositions(BEFORE, after)
    assert (changes.before, changes.after, changes.same_load) == ("madx@1", "madx@2", False)
    assert [c.to_dict() for c in changes.changes] == [
        {"section": "members", "field": "lang-pt", "before": 2, "after": 3},
        {"section": "members", "field": "sst2", "before": 1, "after": None},
        {"section": "members", "field": "topic", "before": None, "after": 1},
        {
            "section": "definition",
            "field": "blocks",
            "before": "stack(lang-pt, sst2)",
            "after": "average(lang-pt, topic; weights=[0.7, 0.3])",
        },
        {"section": "evaluation", "field": "data.rows", "before": 50, "after": 80},
        {"section": "record", "field": "description", "before": "first", "after": "weighted"},
    ]
    assert changes.member_diffs() == [("lang-pt@2", "lang-pt@3")]  # what `adapterops diff` takes


def test_a_new_member_version_alone_keeps_the_blocks_and_changes_what_loads():
    """What a cascade saves: the same structure over the new champion."""
    after = replace(
        BEFORE,
        version=2,
        members=("lang-pt@3", "sst2@1"),
        definition={"type": "stack", "children": ["lang-pt@3", "sst2@1"]},
    )
    changes = diff_compositions(BEFORE, after)
    assert [c.to_dict() for c in changes.changes] == [
        {"section": "members", "field": "lang-pt", "before": 2, "after": 3}
    ]
    assert not changes.same_load
    same = diff_compositions(BEFORE, replace(BEFORE, version=2, description="renamed"))
    assert same.same_load and [c.field for c in same.changes] == ["description"]
    assert diff_compositions(BEFORE, BEFORE).to_dict() == {
        "before": "madx@1", "after": "madx@1", "same_load": True, "changes": [],
    }  # fmt: skip
