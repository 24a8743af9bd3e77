"""``diff_versions``: what changed between two versions, pinned field by field."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from registry import AdapterVersion, diff_versions

SPEC = {
    "name": "lang-pt",
    "base_model": "tiny-gpt2",
    "task": "lm",
    "language": "pt",
    "head": {"type": "causal-lm"},
    "method": {"type": "lora", "rank": 8, "targets": ["q", "v"]},
    "train": {"learning_rate": 0.001, "max_steps": 100},
}
BEFORE = AdapterVersion(
    name="lang-pt", version=3, base_model="tiny-gpt2", task="lm", language="pt", method="lora",
    head="causal-lm", digest="a" * 64, size=1000, artifact_uri="file:///x",
    created_at=datetime(2026, 12, 1), spec=SPEC,
    metrics={"perplexity": 20.0, "eval_loss": 3.0, "tokens": 500.0},
    lineage={"dataset_fingerprint": "d" * 64, "code_version": "abc", "run_id": "r1", "build_key": "k1"},
    base_model_fingerprint="f" * 64,
)  # fmt: skip


def test_every_change_in_order_with_metrics_read_the_way_the_gate_reads_them():
    after = replace(
        BEFORE,
        version=4,
        digest="b" * 64,
        size=2000,
        metrics={"perplexity": 15.0, "eval_loss": 3.5, "tokens": 800.0, "exact_match": 0.4},
        lineage={**BEFORE.lineage, "dataset_fingerprint": "e" * 64, "run_id": "r2"},
        spec={**SPEC, "method": {**SPEC["method"], "rank": 16, "targets": ["q", "k", "v"]}},
    )
    changes = diff_versions(BEFORE, after)
    assert (changes.before, changes.after, changes.same_files, changes.spec_compared) == (
        "lang-pt@3",
        "lang-pt@4",
        False,
        True,
    )
    assert [c.to_dict() for c in changes.changes] == [
        {"section": "record", "field": "size", "before": 1000, "after": 2000},
        {
            "section": "metrics", "field": "eval_loss", "before": 3.0, "after": 3.5, "delta": 0.5,
            "better": False,
        },  # a loss that rose: worse
        {
            "section": "metrics", "field": "exact_match", "before": None, "after": 0.4,
            "delta": None, "better": None,
        },  # only one side has it
        {
            "section": "metrics", "field": "perplexity", "before": 20.0, "after": 15.0,
            "delta": -5.0, "better": True,
        },  # lower perplexity: better
        {
            "section": "metrics", "field": "tokens", "before": 500.0, "after": 800.0,
            "delta": 300.0, "better": None,
        },  # a count, not a score
        {"section": "lineage", "field": "dataset_fingerprint", "before": "d" * 64, "after": "e" * 64},
        {"section": "spec", "field": "method.rank", "before": 8, "after": 16},
        {"section": "spec", "field": "method.targets", "before": ["q", "v"], "after": ["q", "k", "v"]},
    ]  # fmt: skip
    # run_id and build_key differ between any two versions: never listed
    assert [c.field for c in changes.section("lineage")] == ["dataset_fingerprint"]


def test_the_same_record_has_no_change_and_a_spec_less_side_is_not_compared():
    same = diff_versions(BEFORE, BEFORE)
    assert (same.same_files, same.spec_compared, same.changes) == (True, True, ())

    pushed = replace(BEFORE, version=5, spec={}, base_model_revision="main")
    changes = diff_versions(BEFORE, pushed)
    assert changes.spec_compared is False
    assert [c.to_dict() for c in changes.changes] == [
        {"section": "record", "field": "base_model_revision", "before": None, "after": "main"}
    ]


@pytest.mark.parametrize(
    ("field", "before", "after", "better"),
    [
        ("accuracy", 0.8, 0.9, True),
        ("accuracy", 0.9, 0.8, False),
        ("val_loss", 0.5, 0.4, True),
        ("wer", 0.2, 0.3, False),
        ("accuracy", 0.8, 0.8, None),  # recorded twice the same: no change listed
    ],
)
def test_better_follows_the_metrics_direction(field, before, after, better):
    changes = diff_versions(
        replace(BEFORE, metrics={field: before}), replace(BEFORE, metrics={field: after})
    ).section("metrics")
    assert [c.better for c in changes] == ([] if before == after else [better])


def test_the_mlflow_page_section_lists_30_rows_at_most_and_says_when_nothing_changed():
    from flows.changes_markdown import changes_since

    many = replace(BEFORE, version=4, spec={**SPEC, "extra": {f"f{i:02}": i for i in range(35)}})
    lines = changes_since("champion", diff_versions(BEFORE, many)).splitlines()
    assert lines[:4] == [
        "",
        "## Changes since champion lang-pt@3",
        "",
        "| | field | lang-pt@3 | lang-pt@4 | change |",
    ]
    assert lines[5] == "| spec | extra.f00 | - | `0` |  |"
    assert len([line for line in lines if line.startswith("| spec")]) == 30
    assert lines[-1] == "... and 5 more: `adapterops diff lang-pt@3 lang-pt@4`."

    same = changes_since("champion", diff_versions(BEFORE, BEFORE)).splitlines()
    assert same[1:] == [
        "## Changes since champion lang-pt@3",
        "",
        "No recorded difference: the same record, metrics, lineage and spec.",
    ]


def test_cells_are_short_digests_and_commits_cut_sizes_in_bytes():
    from registry import shown

    commit = "115ecd2e78f948f93ad9e8eccb6ff33ed10709b9"
    assert shown(commit) == "115ecd2e78f9..."
    assert shown(commit + "+dirty") == "115ecd2e78f9...+dirty"
    assert shown("d" * 64) == "dddddddddddd..."
    assert shown("d" * 63) == "d" * 63  # neither: whole
    assert shown(316615, "size") == "316,615 bytes"
    assert (shown(0.53751), shown(["q", "v"]), shown(None)) == ("0.5375", "q, v", "-")


def test_a_spec_not_built_yet_is_compared_on_what_a_build_would_record():
    from registry import diff_with_spec

    proposed = {**SPEC, "language": "pt-BR", "train": {**SPEC["train"], "max_steps": 300}}
    lineage = {"dataset_fingerprint": "d" * 64, "code_version": "def", "build_key": "k9"}
    changes = diff_with_spec(BEFORE, proposed, lineage, "specs/lang-pt.yaml")
    assert (changes.after, changes.same_files, changes.spec_compared) == (
        "specs/lang-pt.yaml",
        None,  # no files yet
        True,
    )
    assert [c.to_dict() for c in changes.changes] == [
        {"section": "record", "field": "language", "before": "pt", "after": "pt-BR"},
        {"section": "lineage", "field": "code_version", "before": "abc", "after": "def"},
        {"section": "spec", "field": "train.max_steps", "before": 100, "after": 300},
    ]  # no metrics: not trained; the build key is an identity; run_id is not recorded yet
