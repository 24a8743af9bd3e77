"""``adapterops composition trend NAME``: a composition's metric across its versions, from the
scores each version kept when it was saved (the cascade's gate, or ``save --metric``)."""

from __future__ import annotations

import json
from pathlib import Path

from registry import Registry
from tests.helpers import home_with_fake_adapters, run_cli


def test_a_compositions_scores_by_version_with_its_best(tmp_path: Path, monkeypatch):
    env = home_with_fake_adapters(tmp_path, monkeypatch, ("lang", "task"))
    registry = Registry()
    gated = {"name": "scoring", "evaluate": {"metric": "macro_f1"}}  # what the cascade gates on
    for scores in ({}, {"accuracy": 0.7, "macro_f1": 0.6}, {"accuracy": 0.8, "macro_f1": 0.5}):
        registry.register_composition(
            "madx", {"type": "stack"}, ["lang", "task"], metrics=scores, evaluation=gated
        )
    registry.set_composition_alias("madx@3", "champion")
    registry.close()

    drawn = run_cli("composition", "trend", "madx", "--json", env=env)
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(drawn.stdout) == {
        "name": "madx", "metric": "macro_f1", "higher_is_better": True, "best": 2,
        "points": [
            {"version": 1, "value": None, "aliases": []},
            {"version": 2, "value": 0.6, "aliases": []},
            {"version": 3, "value": 0.5, "aliases": ["champion"]},
        ],
        "plot": None,
    }  # fmt: skip
    plot = tmp_path / "madx.png"
    table = run_cli("composition", "trend", "madx", "--metric", "accuracy", "--out", str(plot), env=env)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert plot.read_bytes().startswith(b"\x89PNG")
    rows = [line.split() for line in table.stdout.splitlines() if line.startswith("│")]
    assert [row[1:4] for row in rows] == [["1", "│", "-"], ["2", "│", "0.7"], ["3", "│", "0.8"]]
    assert rows[2][-2] == "best" and "champion" in rows[2]
    for args, error in [
        (("nope",), "no composition 'nope'"),
        (("madx", "--metric", "bleu"), "no version of madx recorded 'bleu'; they recorded: "
         "accuracy, macro_f1"),
    ]:  # fmt: skip
        refused = run_cli("composition", "trend", *args, env=env)
        assert (refused.returncode, refused.stderr) == (2, f"error: {error}\n")


def test_compositions_listed_best_first_by_a_metric(tmp_path: Path, monkeypatch):
    env = home_with_fake_adapters(tmp_path, monkeypatch, ("a",))
    registry = Registry()
    for name, scores in (("low", {"perplexity": 9.0}), ("none", {}), ("high", {"perplexity": 4})):
        registry.register_composition(name, {"type": "stack"}, ["a"], metrics=scores)
    registry.close()
    listed = run_cli("composition", "ls", "--order-by", "perplexity", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    # lower perplexity is better; one without it last
    assert [c["name"] for c in json.loads(listed.stdout)] == ["high", "low", "none"]
    typo = run_cli("composition", "ls", "--order-by", "perplexty", env=env)
    assert (typo.returncode, typo.stderr) == (
        2,
        "error: no composition here recorded 'perplexty' to order by; did you mean "
        "'perplexity'? they recorded: perplexity\n",
    )
