"""``metric_trend``: one adapter's metric across its versions, and the plot of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from flows.errors import DataError
from flows.plots import trend_plot
from flows.trend import metric_trend
from registry import AdapterVersion

FIRST = AdapterVersion(
    name="lang-pt", version=1, base_model="tiny-gpt2", task="lm", language="pt", method="lora",
    head="causal-lm", digest="a" * 64, size=1000, artifact_uri="file:///x",
    created_at=datetime(2026, 12, 1), spec={"evaluate": {"metric": "perplexity"}},
    metrics={"perplexity": 20.0, "eval_loss": 3.0, "tokens": 500.0},
)  # fmt: skip


def versions(*perplexities: float | None) -> list[AdapterVersion]:
    """Versions 1..n of lang-pt with these perplexities (None: not recorded)."""
    return [
        replace(
            FIRST,
            version=i,
            metrics={"eval_loss": 3.0} | ({"perplexity": p} if p is not None else {}),
            aliases=("champion",) if i == 2 else (),
        )
        for i, p in enumerate(perplexities, start=1)
    ]


def test_the_gates_metric_by_default_oldest_first_and_lower_perplexity_is_best():
    found = metric_trend(list(reversed(versions(20.0, 15.0, None, 12.5))))
    assert found.to_dict() == {
        "name": "lang-pt",
        "metric": "perplexity",
        "higher_is_better": False,
        "best": 4,
        "points": [
            {"version": 1, "value": 20.0, "aliases": []},
            {"version": 2, "value": 15.0, "aliases": ["champion"]},
            {"version": 3, "value": None, "aliases": []},  # registered without it: a gap
            {"version": 4, "value": 12.5, "aliases": []},
        ],
    }
    assert metric_trend(versions(20.0, 15.0), "eval_loss").best().version == 2  # ties: newest


def test_without_a_gate_the_only_quality_metric_else_a_line_asking_for_one():
    spec_less = [replace(v, spec={}) for v in versions(20.0, 15.0)]
    with pytest.raises(DataError) as ambiguous:
        metric_trend(spec_less)
    assert str(ambiguous.value) == (
        "lang-pt's versions recorded eval_loss, perplexity: give --metric, one of them"
    )
    only = [
        replace(v, metrics={"accuracy": 0.5 + v.version / 10, "examples": 872.0}) for v in spec_less
    ]
    assert metric_trend(only).metric == "accuracy"  # examples is a count, not a score
    with pytest.raises(DataError) as missing:
        metric_trend(only, "f1")
    assert (
        str(missing.value)
        == "no version of lang-pt recorded 'f1'; they recorded: accuracy, examples"
    )


def test_the_plot_is_written_in_the_format_its_name_asks(tmp_path):
    found = metric_trend(versions(20.0, 15.0, None, 12.5))
    png = trend_plot(found, tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert trend_plot(found, tmp_path / "trend.pdf").read_bytes()[:5] == b"%PDF-"
