"""The retraining cascade: a member's new champion reaches the fusions built over its old one,
through the same gate, recorded as events; one failing fusion does not stop the others."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from flows import pipelines, tracking
from flows.mlflow_models import mlflow_aliases
from registry import Registry
from tests.flows.test_pipelines import write_spec
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("prefect_server", "embedded_home")


def build(tmp_path: Path, spec: Path) -> dict:
    return pipelines.build(str(spec), output=str(tmp_path / "out" / spec.stem))


def pfeiffer(
    tmp_path: Path, sst2: Path, name: str, language: str, seed: int = 0, **promote: object
) -> Path:
    return write_spec(
        tmp_path, sst2, name=name,
        method={"type": "pfeiffer", "reduction_factor": 32},
        data__train=str(sst2 / language / "train.tsv"),
        train__seed=seed, train__max_steps=6, train__batch_size=8, train__max_length=32,
        promote=promote or {"alias": "champion"},
    )  # fmt: skip


def cascade_json(name: str, *flags: str) -> tuple[int, dict]:
    done = run_cli("cascade", name, "--json", *flags)
    assert done.stderr == "" or done.returncode != 0, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_new_champion_cascades_into_the_fusions_over_its_old_version(
    tmp_path: Path, sst2_dir: Path, embedded_home: Path
):
    build(tmp_path, pfeiffer(tmp_path, sst2_dir, "lang-en", "en"))
    build(tmp_path, pfeiffer(tmp_path, sst2_dir, "lang-pt", "pt"))
    members = ["lang-en@champion", "lang-pt@1"]
    fused = write_spec(
        tmp_path, sst2_dir, name="fused", method={"type": "fusion", "members": members}
    )
    assert build(tmp_path, fused)["ref"] == "fused@1"
    # a second fusion whose validation data is gone by the time the cascade runs: it must fail
    # alone, with its reason, while the first goes through the gate
    moved = tmp_path / "moved-validation.tsv"
    shutil.copy(sst2_dir / "en" / "validation.tsv", moved)
    doomed = write_spec(
        tmp_path, sst2_dir, name="fused-doomed",
        method={"type": "fusion", "members": members}, data__validation=str(moved),
    )  # fmt: skip
    assert build(tmp_path, doomed)["ref"] == "fused-doomed@1"
    registry = Registry()
    scored_on = yaml.safe_load(pfeiffer(tmp_path, sst2_dir, "lang-pt", "pt").read_text())
    madx = registry.register_composition(
        "madx", {"type": "stack"}, ["lang-en@1", "lang-pt@1"], evaluation=scored_on
    )
    assert madx.evaluation == scored_on
    assert registry.set_composition_alias("madx@1", "champion").aliases == ("champion",)
    registry.register_composition("bare", {"type": "stack"}, ["lang-en@1", "lang-pt@1"])

    code, nothing = cascade_json("lang-en", "--dry-run")
    assert (code, nothing["champion"], nothing["stale"]) == (0, "lang-en@1", [])

    # built without the automatic cascade, to look at the stale compositions first
    build(tmp_path, pfeiffer(tmp_path, sst2_dir, "lang-en", "en", seed=7, cascade=False))
    assert registry.get("lang-en@2").ref == "lang-en@2"
    promoted_now = run_cli("promote", "lang-en@2", "--force", "--json")
    assert promoted_now.returncode == 0, promoted_now.stderr
    stale_now = json.loads(promoted_now.stdout)["stale_compositions"]
    assert sorted(stale_now) == ["fused-doomed@1", "fused@1", "stack:bare@1", "stack:madx@1"]

    code, planned = cascade_json("lang-en", "--dry-run")
    assert code == 0 and planned["champion"] == "lang-en@2"
    by_ref = {s["ref"]: s for s in planned["stale"]}
    assert set(by_ref) == {"fused@1", "fused-doomed@1", "stack:madx@1", "stack:bare@1"}
    assert by_ref["fused@1"]["members"] == ["lang-en@1", "lang-pt@1"]
    assert by_ref["fused@1"]["candidate_members"] == ["lang-en@2", "lang-pt@1"]
    assert by_ref["stack:madx@1"]["evaluable"] is True
    assert by_ref["stack:bare@1"]["evaluable"] is False
    assert [v.ref for v in registry.find(name="fused")] == ["fused@1"]  # a dry run builds nothing

    moved.unlink()
    outcomes = {o["composition"]: o for o in pipelines.cascade("lang-en", str(tmp_path / "c"))}
    assert outcomes["fused-doomed@1"]["status"] == "failed"
    assert "moved-validation.tsv" in outcomes["fused-doomed@1"]["reason"]
    assert outcomes["stack:bare@1"]["status"] == "not evaluated"
    stack = outcomes["stack:madx@1"]
    assert stack["status"] != "failed", stack["reason"]
    runs = tracking.client().search_runs(
        [e.experiment_id for e in tracking.client().search_experiments()],
        filter_string="tags.`adapterops.cascade` = 'lang-en@2'",
    )
    assert len(runs) == 1 and runs[0].data.params["composition"] == "stack:madx@1"
    current, candidate_score = (
        runs[0].data.metrics[f"{k}_accuracy"] for k in ("current", "candidate")
    )
    madx_promoted = candidate_score >= current  # min_delta 0: ties go to the candidate
    # both scores on the composition's MLflow versions, where reviewers compare them
    scored = {
        int(v.tags["adapterops.version"]): v.tags.get("adapterops.metric.accuracy")
        for v in tracking.client().search_model_versions("name='composition.madx'")
    }
    assert scored[1] == f"{current:.4f}"
    assert scored.get(2) == (f"{candidate_score:.4f}" if candidate_score >= current else None)
    assert stack["status"] == ("promoted" if madx_promoted else "not promoted")
    newest = registry.composition("madx")
    if madx_promoted:
        assert (newest.version, stack["candidate"]) == (2, "stack:madx@2")
        assert newest.members == ("lang-en@2", "lang-pt@1") and newest.evaluation == scored_on
        assert newest.metrics == {"accuracy": candidate_score}  # the score the gate weighed
        # mirrored for reviewers: both versions, the champion moved there first
        assert mlflow_aliases(tracking.client(), "composition.madx") == {"champion": 2}
    else:
        assert (newest.version, stack["candidate"]) == (1, None)
    # the champion follows the gate: on the candidate if it passed, where it was if not
    assert registry.composition("madx@champion").version == newest.version
    trigger_events = [
        e.detail["composition"] for e in registry.history("lang-en") if e.kind == "cascade"
    ]
    assert trigger_events == ["stack:madx@1"]
    # the scored version's own history says what both scored, also when the candidate lost
    (scored_event,) = [
        e for e in registry.composition_history("madx") if e.kind == "composition_cascade"
    ]
    assert (scored_event.version, scored_event.origin) == (1, "cascade")
    assert scored_event.detail["scores"] == {
        "current_accuracy": current, "candidate_accuracy": candidate_score
    }  # fmt: skip
    assert stack["scores"] == scored_event.detail["scores"]
    assert scored_event.summary().startswith(f"{stack['status']} (lang-en@2)")
    assert "composition_cascade" not in [e.kind for e in registry.history("lang-en")]
    shown = run_cli("composition", "show", "madx@1", "--json")
    assert json.loads(shown.stdout)["last_cascade"]["detail"]["scores"] == stack["scores"]
    card = run_cli("composition", "show", "madx@1", env={**os.environ, "COLUMNS": "300"}).stdout
    assert f"last cascade  {scored_event.at:%Y-%m-%d %H:%M}, {scored_event.summary()}" in card

    outcome = outcomes["fused@1"]
    candidate = registry.get("fused@2")
    assert outcome["candidate"] == "fused@2"
    assert candidate.lineage["fusion_members"] == ["lang-en@2", "lang-pt@1"]
    promoted = outcome["status"] == "promoted"
    assert outcome["status"] in ("promoted", "not promoted")
    assert registry.get("fused@champion").ref == ("fused@2" if promoted else "fused@1")
    # the gate compared the candidate with the champion re-evaluated on the same data
    assert f"vs champion {registry.get('fused@1').metrics['accuracy']:.4f}" in outcome["reason"]
    events = [e for e in registry.history("fused") if e.kind == "cascade"]
    assert [(e.version, e.detail["trigger"], e.detail["candidate"]) for e in events] == [
        (1, "lang-en@2", "fused@2")
    ]
    failed = [e for e in registry.history("fused-doomed") if e.kind == "cascade"]
    assert [e.detail["status"] for e in failed] == ["failed"]

    # from the CLI: the doomed fusion fails again (exit 1, the others still reported); a fused
    # candidate that lost the gate is still stale and its rebuild reuses fused@2
    code, again = cascade_json("lang-en")
    assert (code, again["ok"]) == (1, False)
    statuses = {o["composition"]: o["status"] for o in again["outcomes"]}
    assert statuses["fused-doomed@1"] == "failed"
    assert statuses.get("fused@1") == (None if promoted else "not promoted")
    assert statuses.get("stack:madx@1") == (None if madx_promoted else "not promoted")
    assert sorted(v.ref for v in registry.find(name="fused")) == ["fused@1", "fused@2"]


def test_a_build_that_promotes_cascades_by_itself(tmp_path: Path, sst2_dir: Path):
    build(tmp_path, pfeiffer(tmp_path, sst2_dir, "lang-en", "en"))
    fused = write_spec(
        tmp_path, sst2_dir, name="fused", method={"type": "fusion", "members": ["lang-en"]}
    )
    build(tmp_path, fused)
    # min_delta -1: the new version wins the gate whatever it scores
    second = build(tmp_path, pfeiffer(tmp_path, sst2_dir, "lang-en", "en", seed=3, min_delta=-1))
    assert (second["ref"], second["alias"]) == ("lang-en@2", "champion")
    assert [(o["composition"], o["candidate"]) for o in second["cascade"]] == [
        ("fused@1", "fused@2")
    ]
    assert Registry().get("fused@2").lineage["fusion_members"] == ["lang-en@2"]


def test_an_adapter_without_a_champion_is_one_clear_line(tmp_path: Path):
    Registry().close()  # an existing registry without it
    done = run_cli("cascade", "nobody")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "nobody" in done.stderr
