"""MLflow on the embedded default: tracked runs, mirrored versions, aliases, sync, and a
registration that survives MLflow being down."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import pytest

from flows import build_job, tracking
from flows.build_job import Build, build_from_spec, register_and_gate, run_chain, start_build
from flows.data import load_split
from flows.errors import GateError, TrackingUnavailableError
from flows.mlflow_compositions import (
    ensure_composition_versions,
    move_composition_alias,
    remove_composition_alias,
    sync_composition_aliases,
)
from flows.mlflow_models import (
    delete_model_version,
    drop_deleted_mirrors,
    ensure_model_version,
    mlflow_aliases,
    mlflow_version_of,
    registered_models,
    sync_aliases,
)
from flows.mlflow_names import REGISTRY_TAG
from flows.promotion import promote, rollback
from flows.quickstart import minilm_sst2_spec
from flows.run_attempts import BUILD_KEY_TAG
from flows.spec import load_spec, parse_spec
from flows.train_job import TrainReport
from infra.stack import free_port
from registry import Registry
from tests.helpers import (
    empty_registry,
    held_in_another_thread,
    run_cli,
    run_cli_noting_imports,
    store_from_outside,
    wait_until,
)
from tests.registry.workers import write_fake_adapter

STEPS = 6


@pytest.fixture
def registry(embedded_home) -> Registry:
    return Registry()


class TestBuildIsTrackedAndMirrored:
    def test_two_builds(self, registry, sst2_dir, tmp_path):
        results = []
        for seed in (0, 1):
            spec = minilm_sst2_spec(
                "lora", sst2_dir / "en", steps=STEPS, seed=seed, name="mini-sst2-en-lora"
            )
            spec = spec.model_copy(
                update={"data": spec.data.model_copy(update={"max_eval_samples": 96})}
            )
            if seed == 1:  # the validation loss measured during training, the best kept
                during = {"eval_every": 3, "keep_best": True}
                spec = spec.model_copy(update={"train": spec.train.model_copy(update=during)})
            results.append(build_from_spec(spec, registry, tmp_path / f"out-{seed}"))
        first, second = results
        assert (first.version, first.mlflow_version, first.promoted, first.alias) == (
            1,
            1,
            True,
            "champion",
        )
        assert (second.version, second.mlflow_version) == (2, 2)
        assert second.champion_metric is not None  # the champion was re-evaluated on the same data
        assert second.alias == ("champion" if second.promoted else "challenger")

        client = tracking.client()
        experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        run = client.get_run(second.run_id)
        assert run.data.params["method.rank"] == "8" and run.data.params["train.seed"] == "1"
        assert (
            run.data.tags["adapterops.task"] == "sst2"
            and run.data.tags["adapterops.method"] == "lora"
        )
        assert len(run.data.tags["adapterops.dataset_fingerprint"]) == 64
        assert run.data.tags["adapterops.code_version"]
        assert run.data.tags["adapterops.registry_version"] == "2"
        assert len(run.data.tags["adapterops.base_model_fingerprint"]) == 64
        assert "eval_accuracy" in run.data.metrics and "eval_macro_f1" in run.data.metrics
        assert len(client.get_metric_history(second.run_id, "train_loss")) == STEPS
        assert len(client.get_metric_history(second.run_id, "learning_rate")) == STEPS
        measured = client.get_metric_history(second.run_id, "val_loss")
        assert [m.step for m in measured] == [3, 6]
        report = json.loads(
            Path(client.download_artifacts(second.run_id, "evaluation.json")).read_text()
        )
        assert report["evaluations"] == [[m.step, m.value] for m in measured]
        assert report["best_step"] == min(measured, key=lambda m: m.value).step
        assert "val_loss" not in client.get_run(first.run_id).data.metrics  # not asked for
        artifacts = {a.path for a in client.list_artifacts(second.run_id)}
        assert {
            "adapter",
            "README.md",
            "evaluation.json",
            "loss_curve.png",
            "confusion_matrix.png",
            "trend.png",  # accuracy by version: where this one sits
            "validation_answers.csv",  # each validation row beside the candidate's answer
            "spec.yaml",  # written as the run starts: an unwritable artifact store fails then
        } <= artifacts
        spec_file = Path(client.download_artifacts(second.run_id, "spec.yaml")).read_text()
        assert "name: mini-sst2-en-lora" in spec_file and "keep_best: true" in spec_file
        answers = Path(client.download_artifacts(second.run_id, "validation_answers.csv"))
        with answers.open(newline="") as opened:
            lines = list(csv.DictReader(opened))
        validation = load_split(str(sst2_dir / "en" / "validation.tsv"))
        assert len(lines) == 96 and [int(line["row"]) for line in lines] == sorted(
            int(line["row"]) for line in lines
        )
        assert all(validation[int(line["row"])]["sentence"] == line["text"] for line in lines)
        right = sum(line["correct"] == "true" for line in lines)
        assert right / 96 == pytest.approx(run.data.metrics["eval_accuracy"])
        assert set(line["predicted_name"] for line in lines) <= {"negative", "positive"}
        assert "trend.png" not in {a.path for a in client.list_artifacts(first.run_id)}  # alone
        assert {Path(a.path).name for a in client.list_artifacts(second.run_id, "adapter")} >= {
            "adapter.json",
            "adapter.safetensors",
        }

        for result in results:
            mirrored = client.get_model_version("mini-sst2-en-lora", str(result.mlflow_version))
            assert mirrored.tags["adapterops.version"] == str(result.version)
            assert mirrored.tags["adapterops.digest"] == result.digest
            assert mirrored.source == f"runs:/{result.run_id}/adapter"
            registered = registry.get(result.ref)
            # the versions table shows 32 characters of the description: the score comes first
            score = f"accuracy {registered.metrics['accuracy']:.4f} · lora · sst2 (en)\n\n"
            assert mirrored.description.startswith(score)
            assert "# mini-sst2-en-lora" not in mirrored.description  # the page has the title
            assert mirrored.tags["adapterops.metric.accuracy"] == (
                f"{registered.metrics['accuracy']:.4f}"
            )
            # runs are named as the registry names the versions
            assert client.get_run(result.run_id).info.run_name == result.ref
            assert (
                "peft.PeftModel.from_pretrained" in mirrored.description
            )  # LoRA: how to load with peft
        # the second version's page says what changed since the champion it was gated against
        pages = [
            client.get_model_version("mini-sst2-en-lora", str(r.mlflow_version)).description
            for r in results
        ]
        assert "## Changes since" not in pages[0]  # no champion then
        changes = pages[1].split("## Changes since champion mini-sst2-en-lora@1\n\n", 1)[1]
        rows = changes.splitlines()
        assert rows[0] == "| | field | mini-sst2-en-lora@1 | mini-sst2-en-lora@2 | change |"
        assert "| spec | train.seed | `0` | `1` |  |" in rows  # the spec fields changed
        assert "| spec | train.eval_every | - | `3` |  |" in rows
        assert [row.split(" | ")[1] for row in rows[2:] if row.startswith("| spec")] == [
            "train.eval_every",
            "train.keep_best",
            "train.seed",
        ]
        accuracy = registry.get("mini-sst2-en-lora@2").metrics["accuracy"]
        before = registry.get("mini-sst2-en-lora@1").metrics["accuracy"]
        delta = accuracy - before
        verdict = f"{delta:+.4g}{' better' if delta > 0 else ' worse'}" if delta else ""
        if delta:
            assert f"| metrics | accuracy | `{before:.4g}` | `{accuracy:.4g}` | {verdict} |" in rows
        registry_aliases = {
            a: v.version for v in registry.find(name="mini-sst2-en-lora") for a in v.aliases
        }
        assert mlflow_aliases(client, "mini-sst2-en-lora") == registry_aliases
        assert registry.get("mini-sst2-en-lora@1").lineage["run_id"] == first.run_id


class TestAliasesThroughMlflow:
    @pytest.fixture
    def two_versions(self, registry, tmp_path):
        client = tracking.client()
        for seed in (1, 2):
            folder = write_fake_adapter(tmp_path / f"v{seed}", seed)
            version = registry.register(
                folder, name="sst2-en", base_model="b", task="sst2", language="en"
            )
            ensure_model_version(client, registry, version, run_id=None, description="card")
        return client

    def test_promote_rollback_and_reviewer_moves(self, registry, two_versions):
        client = two_versions
        promote(registry, client, "sst2-en@1")
        promote(registry, client, "sst2-en@2")
        assert mlflow_aliases(client, "sst2-en") == {"champion": 2, "previous": 1}
        assert (
            registry.get("sst2-en@champion").version == 2
            and registry.get("sst2-en@previous").version == 1
        )

        rollback(registry, client, "sst2-en")
        assert mlflow_aliases(client, "sst2-en") == {"champion": 1, "previous": 2}
        assert registry.get("sst2-en@champion").version == 1

        # a reviewer in the MLflow UI moves champion to version 2 and removes `previous`
        client.set_registered_model_alias("sst2-en", "champion", "2")
        client.delete_registered_model_alias("sst2-en", "previous")
        assert registry.get("sst2-en@champion").version == 1  # not yet seen
        changes = sync_aliases(registry, client)
        assert [c.to_dict() for c in changes] == [
            {"adapter": "sst2-en", "alias": "champion", "version": 2},
            {"adapter": "sst2-en", "alias": "previous", "version": None},
        ]
        assert registry.get("sst2-en@champion").version == 2
        assert sync_aliases(registry, client) == []  # in agreement now
        origins = [
            (e.kind, e.alias, e.origin)
            for e in registry.history("sst2-en")
            if e.kind != "registered"
        ]
        assert origins[-2:] == [
            ("alias_set", "champion", "mlflow-ui"),
            ("alias_removed", "previous", "mlflow-ui"),
        ]

    def test_promoting_a_worse_version_by_hand_needs_force(self, registry, tmp_path):
        client = tracking.client()
        for seed, accuracy in ((1, 0.9), (2, 0.8)):
            folder = write_fake_adapter(tmp_path / f"v{seed}", seed)
            version = registry.register(
                folder, name="ranked", base_model="b", task="sst2", language="en",
                metrics={"accuracy": accuracy},
            )  # fmt: skip
            ensure_model_version(client, registry, version, run_id=None, description="card")
        promote(registry, client, "ranked@1")
        env = {**os.environ, "COLUMNS": "80"}  # ADAPTEROPS_HOME: this test's embedded home

        refused = run_cli("promote", "ranked@2", env=env)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == (
            "error: ranked@2 scores accuracy 0.8000, worse than champion ranked@1 (0.9000): "
            "pass --force to make it champion anyway (what changed: adapterops diff ranked@1 "
            "ranked@2)\n"
        )
        assert registry.get("ranked@champion").version == 1  # nothing moved, here or in MLflow
        assert mlflow_aliases(client, "ranked") == {"champion": 1}

        # a version the registry does not have: refused before MLflow loads (it took 2.8 s)
        missing, loaded = run_cli_noting_imports("promote", "ranked@99", env=env)
        assert (missing.returncode, missing.stderr, loaded) == (
            2,
            "error: adapter 'ranked' has no version 99; known versions: 1, 2\n",
            [],
        )
        forced = run_cli("promote", "ranked@2", "--force", "--json", env=env)
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["aliases"] == ["champion"]
        assert "warning: ranked@2 scores accuracy 0.8000, worse than champion ranked@1" in (
            forced.stderr
        )
        assert mlflow_aliases(client, "ranked") == {"champion": 2, "previous": 1}
        # better: no --force needed; MLflow loads, torch never (it took promote 3 s longer)
        better, loaded = run_cli_noting_imports("promote", "ranked@1", "--json", env=env)
        assert better.returncode == 0 and "warning" not in better.stderr
        assert json.loads(better.stdout)["stale_compositions"] == [] and loaded == ["mlflow"]
        assert registry.get("ranked@champion").version == 1
        # the alias as `adapterops alias` takes it, or as --alias; both, differing: refused
        staged = run_cli("promote", "ranked@2", "staging", "--json", env=env)
        assert staged.returncode == 0, staged.stderr
        assert mlflow_aliases(client, "ranked")["staging"] == 2
        twice = run_cli("promote", "ranked@1", "staging", "--alias", "champion", env=env)
        assert twice.returncode == 2 and "the alias is given twice" in twice.stderr
        assert registry.get("ranked@staging").version == 2

    def test_pushed_versions_appear_in_mlflow_when_promoted(self, registry, tmp_path):
        """`adapterops push` registers without MLflow; promoting such a version creates its
        MLflow version (source: the registry's copy) instead of failing with "not registered
        in MLflow yet", which re-running could never fix."""
        client = tracking.client()
        for seed, accuracy in ((1, 0.7), (2, 0.8)):
            registry.register(
                write_fake_adapter(tmp_path / f"v{seed}", seed), name="pushed", base_model="b",
                task="sst2", language="en", metrics={"accuracy": accuracy}, description="by hand",
            )  # fmt: skip
        promote(registry, client, "pushed@1")
        promote(registry, client, "pushed@2")
        assert mlflow_aliases(client, "pushed") == {"champion": 2, "previous": 1}
        for version in registry.find(name="pushed"):
            (mirrored,) = client.search_model_versions(
                f"name='pushed' and tag.`adapterops.version`='{version.version}'"
            )
            assert mirrored.source == version.artifact_uri
            assert mirrored.tags["adapterops.digest"] == version.digest
            score = f"accuracy {version.metrics['accuracy']:.4f} · lora · sst2 (en)\n\nby hand"
            assert mirrored.description == score
        rollback(registry, client, "pushed")
        assert mlflow_aliases(client, "pushed") == {"champion": 1, "previous": 2}
        assert len(client.search_model_versions("name='pushed'")) == 2  # created once each

    def test_moves_made_through_the_registry_alone_reach_mlflow_at_the_next_sync(
        self, registry, two_versions
    ):
        """`reg.set_alias` / `reg.remove_alias` from Python (as the README shows) change the
        registry alone; the next sync (every build runs one) used to undo them, MLflow winning.
        Now a move MLflow has not seen goes to MLflow; one a reviewer overrode there does not."""
        client = two_versions
        promote(registry, client, "sst2-en@1")
        registry.set_alias("sst2-en@2", "champion")  # moved from 1, which MLflow still shows
        registry.set_alias("sst2-en@1", "staging")  # new
        assert sync_aliases(registry, client) == []  # nothing in the registry changes
        assert mlflow_aliases(client, "sst2-en") == {"champion": 2, "staging": 1}
        assert registry.get("sst2-en@champion").version == 2

        registry.remove_alias("sst2-en", "staging")
        registry.set_alias("sst2-en@1", "champion")  # from 2, but a reviewer moves it meanwhile:
        client.delete_registered_model_alias("sst2-en", "champion")  # MLflow's word wins
        changes = sync_aliases(registry, client)
        assert [c.to_dict() for c in changes] == [
            {"adapter": "sst2-en", "alias": "champion", "version": None}
        ]
        assert mlflow_aliases(client, "sst2-en") == {}  # staging's removal reached MLflow too
        assert [v.aliases for v in registry.find(name="sst2-en")] == [(), ()]
        assert sync_aliases(registry, client) == []

    def test_moves_by_hand_wait_while_a_gate_of_the_adapter_decides(
        self, registry, two_versions, tmp_path
    ):
        """`adapterops promote` weighs the version against the champion as a build's gate does,
        so it holds the adapter's alias lock too: a move made meanwhile would go unweighed.
        `alias` waits too, so a gate that read the champion before it cannot undo it. `sync`
        waits too: caught between a gate's move in MLflow and its move in the registry, it
        recorded the gate's move again as one made in the UI. Each says why it waits (a gate
        can take minutes)."""
        adapterops = Path(sys.executable).parent / "adapterops"
        said = [tmp_path / "promote.err", tmp_path / "alias.err", tmp_path / "sync.err"]
        with held_in_another_thread(lambda: Registry().alias_lock("sst2-en")):  # a build's gate
            moving = [
                subprocess.Popen(
                    [str(adapterops), *arguments, "--json"],
                    stdout=subprocess.PIPE,
                    stderr=err.open("w"),
                    text=True,
                )
                for arguments, err in zip(
                    (("promote", "sst2-en@2"), ("alias", "sst2-en@1", "previous"), ("sync",)),
                    said,
                    strict=True,
                )
            ]
            wait_until(lambda: all(f.read_text() for f in said), "all three to say they wait")
            time.sleep(2)  # waiting still: each finishes in ~6 s unhindered
            assert [process.poll() for process in moving] == [None, None, None]
            assert [v.aliases for v in registry.find(name="sst2-en")] == [(), ()]
        answers = [process.communicate(timeout=120)[0] for process in moving]
        assert [process.returncode for process in moving] == [0, 0, 0], [
            err.read_text() for err in said
        ]
        assert [json.loads(out).get("aliases") for out in answers[:2]] == [
            ["champion"],
            ["previous"],
        ]
        assert json.loads(answers[2])["changes"] == []  # the moves were made here, not in the UI
        for err in said:
            assert err.read_text() == (
                "note: a promotion gate of sst2-en is deciding (a build, retrain or promote); "
                "waiting for it to finish\n"
            )
        assert registry.get("sst2-en@champion").version == 2
        assert registry.get("sst2-en@previous").version == 1

    def test_a_new_tracking_store_gets_the_registrys_aliases_and_takes_none_away(
        self, registry, tmp_path, monkeypatch
    ):
        """A registry pointed at another MLflow store (the embedded one, then a server): its
        next build mirrored only the new version there, and the sync after it took champion
        away ("removed in the MLflow UI"), so the build after that was promoted with no
        champion to beat."""
        client = tracking.client()
        for seed in (1, 2):
            registry.register(
                write_fake_adapter(tmp_path / f"v{seed}", seed), name="moved", base_model="b",
                task="sst2", language="en",
            )  # fmt: skip
        promote(registry, client, "moved@1")  # champion, in the first store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
        fresh = tracking.client()
        # what a build registers in the new store: its own version, no alias
        ensure_model_version(
            fresh, registry, registry.get("moved@2"), run_id=None, description="card"
        )
        assert mlflow_aliases(fresh, "moved") == {}
        assert sync_aliases(registry, fresh) == []
        assert registry.get("moved@champion").version == 1
        assert mlflow_aliases(fresh, "moved") == {"champion": 1}  # version 1 mirrored there now
        # from here on MLflow wins, as before: a reviewer's removal there is followed
        fresh.delete_registered_model_alias("moved", "champion")
        assert [c.to_dict() for c in sync_aliases(registry, fresh)] == [
            {"adapter": "moved", "alias": "champion", "version": None}
        ]
        assert registry.get("moved@1").aliases == ()

    def test_removing_an_alias_and_a_version_reaches_mlflow(self, registry, two_versions):
        """`unalias` then `rm` from the command line: the alias and the mirrored version leave
        MLflow too, so no reviewer can point an alias at a deleted version."""
        client, env = two_versions, {**os.environ}  # ADAPTEROPS_HOME: this test's home
        promote(registry, client, "sst2-en@1")
        promote(registry, client, "sst2-en@2")
        held = run_cli("rm", "sst2-en@1", env=env)
        assert held.returncode == 2 and "still referred to by alias 'previous'" in held.stderr
        removed = run_cli("unalias", "sst2-en", "previous", "--json", env=env)
        assert json.loads(removed.stdout) == {
            "ok": True,
            "adapter": "sst2-en",
            "removed": "previous",
        }
        assert mlflow_aliases(client, "sst2-en") == {"champion": 2}
        unknown = run_cli("unalias", "sst2-en", "previous", env=env)
        assert unknown.returncode == 2 and "has no alias 'previous'; aliases: champion" in (
            unknown.stderr
        )
        # a reviewer points an alias at it in the UI: rm sees it (MLflow wins), not the
        # registry's older word, and refuses; taken off there, the next rm goes ahead
        one = str(mlflow_version_of(client, "sst2-en", 1))
        client.set_registered_model_alias("sst2-en", "staging", one)
        seen = run_cli("rm", "sst2-en@1", env=env)
        assert seen.returncode == 2 and "still referred to by alias 'staging'" in seen.stderr
        client.delete_registered_model_alias("sst2-en", "staging")
        assert run_cli("rm", "sst2-en@1", env=env).returncode == 0
        left = client.search_model_versions("name='sst2-en'")
        assert [v.tags["adapterops.version"] for v in left] == ["2"]
        assert [(e.kind, e.alias, e.origin) for e in registry.history("sst2-en")][-4:] == [
            ("alias_removed", "previous", "cli"),
            ("alias_set", "staging", "mlflow-ui"),
            ("alias_removed", "staging", "mlflow-ui"),
            ("deleted", None, "cli"),
        ]

    def test_an_alias_set_in_mlflow_on_a_deleted_version_is_said_not_followed(
        self, registry, two_versions
    ):
        """Deleted from Python (the registry alone), its MLflow version stayed; a reviewer
        pointed an alias at it. Every sync failed on it (so did every build and promotion of
        the adapter): now the alias is left out, with a warning, and the rest syncs."""
        client = two_versions
        promote(registry, client, "sst2-en@1")
        registry.delete("sst2-en@2")
        client.set_registered_model_alias("sst2-en", "staging", "2")
        client.set_registered_model_alias("sst2-en", "review", "1")
        with pytest.warns(RuntimeWarning) as warned:
            changes = sync_aliases(registry, client)
        assert [c.to_dict() for c in changes] == [
            {"adapter": "sst2-en", "alias": "review", "version": 1}
        ]
        assert [str(w.message) for w in warned] == [
            "MLflow alias 'staging' of sst2-en points at sst2-en@2, which the registry has "
            "deleted: not followed; move the alias in the MLflow UI"
        ]
        assert registry.get("sst2-en@champion").version == 1
        # its mirror stays while the alias holds it (a reviewer's to move), then goes
        assert drop_deleted_mirrors(registry, client) == []
        client.delete_registered_model_alias("sst2-en", "staging")
        assert drop_deleted_mirrors(registry, client) == ["sst2-en@2"]
        left = client.search_model_versions("name='sst2-en'")
        assert [v.tags["adapterops.version"] for v in left] == ["1"]

    def test_dropping_deleted_mirrors_reads_the_registry_once_however_many_models(
        self, registry, two_versions
    ):
        """Every sync drops the mirrors of deleted versions: it read each MLflow model's whole
        history from the registry (a shared server holds hundreds of models, most of them
        another registry's); now one query for adapters and one for compositions."""
        from sqlalchemy import event

        client = two_versions
        registry.delete("sst2-en@2")
        seen: list[str] = []

        def count(conn, cursor, statement, *args) -> None:
            seen.append(statement)

        def statements_of_a_drop() -> tuple[int, list[str]]:
            seen.clear()
            event.listen(registry.database.engine, "before_cursor_execute", count)
            try:
                dropped = drop_deleted_mirrors(registry, client)
            finally:
                event.remove(registry.database.engine, "before_cursor_execute", count)
            return len(seen), dropped

        few, dropped = statements_of_a_drop()
        assert dropped == ["sst2-en@2"]
        for number in range(5):  # another registry's models on the same server
            client.create_registered_model(f"elsewhere-{number}")
        many, dropped_again = statements_of_a_drop()
        assert (many, dropped_again) == (few, [])

    def test_a_composition_alias_set_on_a_deleted_version_is_said_not_followed(
        self, registry, two_versions
    ):
        """As for adapters: deleted from Python, the mirror stays, a reviewer points an alias
        at it; the sync leaves it out with a warning (it failed on it at every run)."""
        client = two_versions
        for members in (["sst2-en@1"], ["sst2-en@2"]):
            registry.register_composition("madx", {"type": "stack"}, members)
        ensure_composition_versions(client, registry, "madx")
        registry.delete_composition("madx@2")
        assert ensure_composition_versions(client, registry, "madx") == 0  # not mirrored again
        stale = str(mlflow_version_of(client, "composition.madx", 2))
        client.set_registered_model_alias("composition.madx", "staging", stale)
        with pytest.warns(RuntimeWarning) as warned:
            assert sync_composition_aliases(registry, client) == []
        assert [str(w.message) for w in warned] == [
            "MLflow alias 'staging' of composition madx points at madx@2, which the registry has "
            "deleted: not followed; move the alias in the MLflow UI"
        ]
        assert registry.composition("madx").aliases == ()

    def test_a_name_bound_anew_says_its_new_base_in_mlflow(self, registry, tmp_path):
        """Pushed under the wrong base model, removed, pushed again: the registry binds the name
        anew, and the MLflow model's tags and description follow it when the new version is
        mirrored."""
        client = tracking.client()
        first = registry.register(
            write_fake_adapter(tmp_path / "v1", 1), name="moved", base_model="wrong-base",
            task="sst2", language="en",
        )  # fmt: skip
        ensure_model_version(client, registry, first, run_id=None, description="card")
        registry.delete(first.ref)
        delete_model_version(client, registry, "moved", first.version)
        second = registry.register(
            write_fake_adapter(tmp_path / "v2", 2), name="moved", base_model="right-base",
            task="sst2", language="pt",
        )  # fmt: skip
        ensure_model_version(client, registry, second, run_id=None, description="card")
        model = client.get_registered_model("moved")
        assert (model.tags["adapterops.base_model"], model.tags["adapterops.language"]) == (
            "right-base", "pt",
        )  # fmt: skip
        assert model.description == "lora adapter for sst2 (pt) on right-base"
        assert [v.tags["adapterops.version"] for v in client.search_model_versions(
            "name='moved'"
        )] == ["2"]  # fmt: skip

    def test_versions_are_created_once(self, registry, two_versions):
        version = registry.get("sst2-en@1")
        assert (
            ensure_model_version(two_versions, registry, version, run_id=None, description="again")
            == 1
        )
        assert len(two_versions.search_model_versions("name='sst2-en'")) == 2


def trained_elsewhere(tmp_path: Path, name: str) -> tuple[Any, TrainReport]:
    """A spec and the report of its training, as a build hands them to its gate (the adapter
    a folder of fake weights: the gate never loads it when there is no champion)."""
    folder = write_fake_adapter(tmp_path / name, 7)
    spec = parse_spec(
        {
            "name": name,
            "base_model": "b",
            "task": "sst2",
            "language": "en",
            "head": {"type": "classification", "num_labels": 2},
            "method": {"type": "lora"},
            "data": {"train": str(tmp_path / "t.tsv")},
        }
    )
    report = TrainReport(
        name=spec.name, method="lora", trainable_params=1, total_params=2, adapter_bytes=4, steps=1,
        train_seconds=1.0, median_step_seconds=1.0, final_loss=0.5, metrics={"accuracy": 0.7}, output=str(folder),
    )  # fmt: skip
    return spec, report


def test_a_builds_gate_waits_while_another_gate_of_the_adapter_decides(registry, tmp_path):
    """Two builds of one adapter at once both read "no champion" (or the same one) and both
    moved champion, the later without being weighed against the earlier
    (``tests/registry/test_concurrency.py`` races four gates): a gate now waits for the
    adapter's alias lock; the version is registered before it waits."""
    spec, report = trained_elsewhere(tmp_path, "gated-sst2")
    results: list = []
    phases: list[str] = []
    build = Build(spec, {}, tmp_path, registry, on_phase=phases.append)
    gate = threading.Thread(
        target=lambda: results.append(register_and_gate(build, report, run_id="", card="card"))
    )
    with held_in_another_thread(lambda: Registry().alias_lock(spec.name)):  # another build's
        gate.start()
        wait_until(lambda: phases != [], "the gate to say it waits")
        gate.join(2)
        assert gate.is_alive() and results == []  # waiting, registered but not promoted
        assert phases == ["wait for another gate of gated-sst2 to decide"]
        assert [v.aliases for v in registry.find(name=spec.name)] == [()]
    gate.join(60)
    assert (results[0].version, results[0].alias) == (1, "champion")
    assert registry.get(f"{spec.name}@champion").version == 1


def test_a_gate_whose_champion_is_damaged_keeps_the_candidate_and_says_how_to_go_on(
    registry, tmp_path, monkeypatch
):
    """The champion's files are read back before the base model loads to score it: a damaged
    one failed the build with its download error (as bad input), after the base had loaded,
    saying nothing of the candidate it had registered."""
    spec, report = trained_elsewhere(tmp_path, "damaged-sst2")
    build = Build(spec, {}, tmp_path, registry)
    assert register_and_gate(build, report, run_id="", card="card").alias == "champion"
    tensors = Path(report.output) / "adapter.safetensors"
    digest = hashlib.sha256(tensors.read_bytes()).hexdigest()
    registry.artifacts.delete(digest)
    second = replace(report, output=str(write_fake_adapter(tmp_path / "second", 9)))
    with pytest.raises(GateError) as refused:
        register_and_gate(build, second, run_id="", card="card")
    assert str(refused.value) == (
        "damaged-sst2@2 is registered, not promoted: the gate cannot score champion "
        "damaged-sst2@1, whose files are damaged in the artifact store: adapter.safetensors is "
        f"missing ({registry.artifacts.uri(digest)}). `adapterops promote damaged-sst2@2` makes "
        "it champion if its recorded accuracy is no worse (a build of this spec now returns it "
        "without a gate); pushing the folder damaged-sst2@1 came from again repairs that one "
        "(`adapterops db verify` lists every damaged file)"
    )
    assert [v.aliases for v in registry.find(name=spec.name)] == [("champion",), ()]

    # the same size, altered: only the download the champion's load makes sees it (the gate
    # read every file back before the load too, downloading the champion twice)
    whole = tensors.read_bytes()
    store_from_outside(registry, digest, whole[:-1] + bytes([whole[-1] ^ 0xFF]), tmp_path)
    reads: list[str] = []
    real_get = registry.artifacts.get_file
    monkeypatch.setattr(
        registry.artifacts,
        "get_file",
        lambda key, *a, **k: reads.append(key) or real_get(key, *a, **k),
    )
    loaded = tmp_path / "loaded"

    def champion_loaded(spec, ref, registry, **_):  # what load_registered downloads, no base
        registry.fetch(ref, loaded)
        return {"accuracy": 0.6}

    monkeypatch.setattr(build_job, "evaluate_registered", champion_loaded)
    build = Build(spec, {"dataset_fingerprint": "f"}, tmp_path, registry)  # what scoring reads
    third = replace(report, output=str(write_fake_adapter(tmp_path / "third", 10)))
    with pytest.raises(GateError) as refused:
        register_and_gate(build, third, run_id="", card="card")
    assert str(refused.value).startswith(
        "damaged-sst2@3 is registered, not promoted: the gate cannot score champion "
        "damaged-sst2@1, whose files are damaged in the artifact store: adapter.safetensors is "
        f"corrupted ({registry.artifacts.uri(digest)})"
    )
    store_from_outside(registry, digest, whole, tmp_path)  # repaired
    reads.clear()
    fourth = replace(report, output=str(write_fake_adapter(tmp_path / "fourth", 11)))
    assert register_and_gate(build, fourth, run_id="", card="card").champion_metric == 0.6
    assert reads.count(digest) == 1  # the load's download only


def test_a_build_whose_champion_is_damaged_says_so_before_it_trains(
    registry, tmp_path, monkeypatch, caplog
):
    """The gate found the damage only after training (hours for an LLM); a warning before
    training lets a person push the champion's folder again meanwhile. The build goes on."""
    spec, report = trained_elsewhere(tmp_path, "warned-sst2")
    assert register_and_gate(Build(spec, {}, tmp_path, registry), report, run_id="",
                             card="card").alias == "champion"  # fmt: skip
    digest = hashlib.sha256((Path(report.output) / "adapter.safetensors").read_bytes()).hexdigest()

    def training_starts(build):
        raise RuntimeError("training starts")

    monkeypatch.setattr(build_job, "prepare_data", training_starts)
    monkeypatch.setattr(build_job, "check_against_registry", lambda *_: None)  # base "b": none
    build = Build(spec, {"build_key": "c" * 64}, tmp_path, registry)
    with caplog.at_level("WARNING", logger="flows.build_job"), pytest.raises(RuntimeError):
        run_chain(build)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "flows.build_job"]

    assert said() == []  # whole: nothing said
    registry.artifacts.delete(digest)
    with caplog.at_level("WARNING", logger="flows.build_job"), pytest.raises(RuntimeError):
        run_chain(build)
    assert said() == [
        "champion warned-sst2@1's files are damaged in the artifact store (adapter.safetensors "
        "is missing): this build's gate cannot score it, and will register its candidate "
        "without promoting it, unless the folder warned-sst2@1 came from is pushed again "
        "before training ends (`adapterops db verify warned-sst2`)"
    ]


def test_a_build_of_the_same_spec_data_and_code_waits_for_the_one_running_then_reuses_it(
    registry, tmp_path
):
    """Two builds of one spec, data and code at once (a CI build beside a scheduled one)
    trained twice, into one checkpoint folder, and registered twice: the second now waits for
    the first (saying so) and then finds its version."""
    spec, _ = trained_elsewhere(tmp_path, "twice-sst2")
    key = "b" * 64
    phases: list[str] = []
    results: list = []
    build = Build(spec, {"build_key": key}, tmp_path, registry, on_phase=phases.append)
    second = threading.Thread(target=lambda: results.append(run_chain(build)))
    with held_in_another_thread(lambda: Registry().build_lock(key)):  # the first build
        second.start()
        wait_until(lambda: phases != [], "the second build to say it waits")
        second.join(2)
        assert second.is_alive() and results == []
        # the first build registers its version (its lineage holds the build key)
        registry.register(
            write_fake_adapter(tmp_path / "first", 8), name=spec.name, base_model="b",
            task="sst2", language="en", lineage={"build_key": key},
        )  # fmt: skip
    second.join(60)
    assert phases == [
        "wait for another build of twice-sst2 from the same spec, data and code",
        "find earlier build",
    ]
    assert (results[0].ref, results[0].reused) == ("twice-sst2@1", True)
    assert [v.ref for v in registry.find(name=spec.name)] == ["twice-sst2@1"]


_DIE_AT_STEP_4 = """
import os, signal, sys
from pathlib import Path
from flows.build_job import build_from_spec
from flows.spec import load_spec
from registry import Registry

def die(step, total, loss, learning_rate):
    if step == 4:  # after the checkpoint of step 4: killed as the out-of-memory killer kills
        os.kill(os.getpid(), signal.SIGKILL)

build_from_spec(load_spec(sys.argv[1]), Registry(), Path(sys.argv[2]), on_step=die)
"""


def test_a_killed_build_of_another_spec_is_ended_by_any_build_once_no_process_builds_it(
    registry, sst2_dir, tmp_path
):
    """A build killed for its memory is built next with a smaller batch: another build key, so
    no later attempt of its own came and its run stayed RUNNING for ever. Any build in the
    registry now ends the RUNNING runs whose build key's lock no process holds; a run whose
    build is under way (its lock held), and another registry's, are left alone."""
    client = tracking.client()
    experiment = tracking.configure()
    dead, live, theirs = (
        client.create_run(experiment, tags={BUILD_KEY_TAG: key, REGISTRY_TAG: owner} | more)
        for key, owner, more in (
            ("f" * 64, registry.identity, {"adapterops.name": "batch-64"}),
            ("e" * 64, registry.identity, {}),
            ("d" * 64, "another", {}),
        )
    )
    phases: list[str] = []
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=2, name="batch-16")
    with held_in_another_thread(lambda: registry.build_lock("e" * 64)):
        result = run_chain(
            start_build(spec, tmp_path / "out", registry=registry, on_phase=phases.append)
        )
    assert (
        f"MLflow run {dead.info.run_id} of a killed build of batch-64 (another spec or data, "
        "no process building it): ended KILLED"
    ) in phases
    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["adapterops.ended_by"] == result.run_id
    assert ended.data.tags["mlflow.note.content"].endswith(
        f"Run {result.run_id}, a build of another spec or data in this registry, found no "
        "process building it and ended it KILLED."
    )
    assert client.get_run(live.info.run_id).info.status == "RUNNING"  # its build is under way
    assert client.get_run(theirs.info.run_id).info.status == "RUNNING"  # another registry's
    assert "adapterops.previous_attempt" not in client.get_run(result.run_id).data.tags


def test_the_run_of_a_killed_build_is_ended_killed_and_the_next_attempt_holds_the_whole_curve(
    registry, sst2_dir, tmp_path
):
    """A build killed outright (out of memory, a lost machine, ``kill -9``) could not close its
    MLflow run: it stayed RUNNING for ever beside the run of the attempt that finished the build
    from its checkpoint, whose curves began at the restart. The next attempt (holding the
    build key's lock, so no live process owns that run) now ends it KILLED and logs the steps
    the checkpoint brought back. A run of the same build key for another registry sharing the
    server is not touched."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=STEPS, name="killed-sst2-en-lora")
    during = {"eval_every": 2, "checkpoint_every": 2}
    spec = spec.model_copy(update={"train": spec.train.model_copy(update=during)})
    spec_file = tmp_path / "killed.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_AT_STEP_4, str(spec_file), str(tmp_path / "first")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = tracking.client()
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    [dead] = client.search_runs([experiment])
    assert dead.info.status == "RUNNING"  # what the UI showed for ever
    key = dead.data.tags["adapterops.build_key"]
    assert dead.data.tags["adapterops.registry"] == registry.identity
    other = client.create_run(
        experiment, tags={"adapterops.build_key": key, "adapterops.registry": "another"}
    )

    phases: list[str] = []
    spec = load_spec(spec_file)
    result = run_chain(
        start_build(spec, tmp_path / "second", registry=registry, on_phase=phases.append)
    )
    assert result.version == 1
    assert (
        f"MLflow run {dead.info.run_id} of a killed attempt of this build: ended KILLED" in phases
    )
    assert any(
        line.startswith("resuming from the checkpoint an earlier attempt left in")
        for line in phases
    )

    ended = client.get_run(dead.info.run_id)
    assert ended.info.status == "KILLED"
    assert (
        dead.info.start_time <= ended.info.end_time < client.get_run(result.run_id).info.start_time
    )
    assert ended.data.tags["adapterops.ended_by"] == result.run_id
    assert "Its process ended without closing this run" in ended.data.tags["mlflow.note.content"]
    assert client.get_run(other.info.run_id).info.status == "RUNNING"  # another registry's

    finished = client.get_run(result.run_id)
    assert finished.data.tags["adapterops.previous_attempt"] == dead.info.run_id
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    assert report["resumed_from_step"] == 4
    # the whole curve: the checkpoint's four steps and the two trained after the restart
    history = {
        metric: {m.step: m.value for m in client.get_metric_history(result.run_id, metric)}
        for metric in ("train_loss", "learning_rate", "val_loss")
    }
    assert sorted(history["train_loss"]) == sorted(history["learning_rate"]) == list(range(STEPS))
    rates = [history["learning_rate"][step] for step in range(STEPS)]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == STEPS  # the linear decay
    assert history["val_loss"] == {step: loss for step, loss in report["evaluations"]}
    measured = history["val_loss"]
    assert sorted(measured) == [2, 4, 6]


def test_processes_opening_a_new_embedded_store_at_once_all_get_the_experiment(embedded_home):
    """Builds started together on a fresh home (CI jobs, a worker's scheduled runs) raced in
    MLflow's migrations of the new mlflow.db ("Online migration expected to match one row",
    "CircularDependencyError"): at least one of three failed in each of three tries."""
    opening = "from flows import tracking; print(tracking.configure())"
    started = [
        subprocess.Popen(
            [sys.executable, "-c", opening],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        for _ in range(3)
    ]
    finished = [process.communicate(timeout=300) for process in started]
    assert [process.returncode for process in started] == [0, 0, 0], [e for _, e in finished]
    assert [out.strip() for out, _ in finished] == [tracking.configure()] * 3


class TestMlflowDown:
    def test_retries_spent_on_server_errors_name_the_servers_database(self, monkeypatch):
        """A server that lost its database mid-command (after the first call's check): MLflow's
        client retried for four minutes, then the line said to check MLFLOW_TRACKING_URI and
        that the server runs, which it did. (The words are those of a real server's 503s.)"""
        from mlflow.exceptions import MlflowException

        url = "http://mlflow.example:5000"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        spent = (
            f"API request to {url}/api/2.0/mlflow/registered-models/create failed with exception "
            "HTTPConnectionPool(host='mlflow.example', port=5000): Max retries exceeded with url: "
            "/api/2.0/mlflow/registered-models/create (Caused by ResponseError('too many 503 "
            "error responses'))"
        )
        with (
            pytest.raises(TrackingUnavailableError) as caught,
            tracking.mlflow_errors("mirror x@2"),
        ):
            raise MlflowException(spent)
        assert str(caught.value) == (
            f"MLflow at {url} runs but cannot answer now (it answered every try to mirror x@2 "
            "with 503 Service Unavailable): the database it keeps runs and models in (its --backend-store-uri) "
            "is likely down or unreachable from it; check that database and the MLflow server's "
            "log; re-running the command completes the work."
        )

    def test_rerun_completes_without_duplicates(self, registry, tmp_path, monkeypatch):
        spec, report = trained_elsewhere(tmp_path, "offline-sst2")
        folder = Path(report.output)
        embedded = tracking.tracking_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        with pytest.raises(
            TrackingUnavailableError, match="re-running the command completes the work"
        ):
            register_and_gate(Build(spec, {}, folder, registry), report, run_id="", card="card")
        assert [v.version for v in registry.find(name="offline-sst2")] == [
            1
        ]  # recorded, not mirrored

        monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded)
        mlflow.set_tracking_uri(embedded)
        result = register_and_gate(
            Build(spec, {}, folder, registry), report, run_id="", card="card"
        )
        assert (result.version, result.mlflow_version, result.alias) == (1, 1, "champion")
        assert [v.version for v in registry.find(name="offline-sst2")] == [1]
        client = tracking.client()
        assert len(client.search_model_versions("name='offline-sst2'")) == 1
        assert mlflow_aliases(client, "offline-sst2") == {"champion": 1}
        json.dumps(result.to_dict())

    def test_mlflow_numbers_its_versions_as_the_registry_after_a_push_it_missed_and_a_race(
        self, registry, tmp_path, monkeypatch
    ):
        """MLflow numbers versions as they come. A version pushed while MLflow was down, then
        the next one pushed: MLflow's version 1 was the registry's 2 (a reviewer promoting
        "Version 1" in the UI promoted @2). Three pushes of one adapter at once: MLflow's
        numbers came in the order their mirrors raced. Now the versions since the newest MLflow
        has are mirrored first, under the adapter's alias lock."""
        from flows.push_job import push_folder

        def push(seed: int) -> list[str]:
            folder = write_fake_adapter(tmp_path / f"v{seed}", seed)
            identity = {"name": "pushed", "base_model": "b", "task": "t", "language": "en"}
            return push_folder(registry, folder, identity=identity).warnings

        embedded = tracking.tracking_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        assert [w.partition(":")[0] for w in push(1)] == [
            "pushed@1 is registered, but not in MLflow yet"
        ]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", embedded)
        mlflow.set_tracking_uri(embedded)
        assert push(2) == []
        start = threading.Barrier(3)
        racing = [
            threading.Thread(target=lambda seed=seed: (start.wait(), push(seed)))
            for seed in (3, 4, 5)
        ]
        for thread in racing:
            thread.start()
        for thread in racing:
            thread.join(120)
        client = tracking.client()

        def mirrored() -> list[tuple[int, int]]:
            found = client.search_model_versions("name='pushed'")
            return sorted((int(v.version), int(v.tags["adapterops.version"])) for v in found)

        assert mirrored() == [(n, n) for n in range(1, 6)]
        client.delete_model_version("pushed", "2")  # a reviewer's clean-up: not brought back
        assert push(6) == []
        assert mirrored() == [(1, 1), (3, 3), (4, 4), (5, 5), (6, 6)]

    def test_a_server_that_is_not_there_is_one_line_at_once(self, tmp_path):
        """MLflow's client retries a refused connection for about four minutes (its default
        retries): the command looked hung. Now one request finds out."""
        url = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env |= {"ADAPTEROPS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": url}
        empty_registry(tmp_path)
        adapterops = Path(sys.executable).parent / "adapterops"
        result = subprocess.run(
            [str(adapterops), "sync"],
            capture_output=True, text=True, env=env, timeout=90, check=False,
        )  # fmt: skip  # a hang is TimeoutExpired here, not a slow pass
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"error: MLflow at {url} is not reachable (connection refused): check "
            "MLFLOW_TRACKING_URI and that the server runs; re-running the command completes the "
            "work."
        )

    @pytest.mark.parametrize(
        ("uri", "what"),
        [
            ("{tmp}/mlruns", "is a folder (MLflow's file store, which MLflow 3 keeps in maintenance mode and adapterops does not use)"),
            ("file://{tmp}/mlruns", "is a folder (MLflow's file store, which MLflow 3 keeps in maintenance mode and adapterops does not use)"),
            ("sqlite://mlflow.db", "is not a SQLite URI MLflow reads (three slashes, then the path)"),
            ("http://127.0.0.1:5000/#/experiments/1", "is a page of MLflow's UI (from '#' on; the server's root is http://127.0.0.1:5000)"),
        ],
    )  # fmt: skip
    def test_a_uri_mlflow_would_fail_on_is_one_line_saying_what_to_write(self, tmp_path, uri, what):
        """A folder path: MLflow's maintenance-mode error, 400 characters cut mid-sentence;
        sqlite://mlflow.db: SQLAlchemy's traceback."""
        uri = uri.format(tmp=tmp_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env |= {"ADAPTEROPS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
        empty_registry(tmp_path)
        result = run_cli("sync", env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (
            2,
            f"error: MLFLOW_TRACKING_URI {uri} {what}: write sqlite:////absolute/path/mlflow.db "
            "(or sqlite:///relative/path.db) for a local store, or a tracking server's "
            "http://HOST:5000, or unset it for the embedded store under ADAPTEROPS_HOME\n",
        )
        assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    def test_the_registrys_own_database_is_refused_before_mlflow_writes_into_it(self, tmp_path):
        """MLflow created its tables in the registry's SQLite file, then failed on the
        registry's schema revision with a traceback."""
        from sqlalchemy import create_engine, inspect

        registry_db = tmp_path / "registry.db"
        empty_registry(tmp_path)
        engine = create_engine(f"sqlite:///{registry_db}")
        tables = sorted(inspect(engine).get_table_names())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env |= {"ADAPTEROPS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{registry_db}"}
        result = run_cli("sync", env=env)
        assert (result.returncode, result.stderr) == (
            2,
            f"error: MLFLOW_TRACKING_URI sqlite:///{registry_db} is the registry's database: "
            "MLflow would write its own tables into it. Give MLflow a database of its own (unset "
            "MLFLOW_TRACKING_URI for the embedded one under ADAPTEROPS_HOME)\n",
        )
        assert sorted(inspect(engine).get_table_names()) == tables
        engine.dispose()

    @pytest.mark.parametrize("status", [200, 401, 404])
    def test_any_answer_means_the_server_is_there(self, status):
        """Behind a login (the password in the URI) or a proxy without /health: it answered."""
        import http.server
        import threading

        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            tracking.check_reachable(f"http://reviewer:secret@127.0.0.1:{server.server_port}/")
        finally:
            server.shutdown()

    def test_a_web_server_that_is_not_mlflow_is_said_so(self, registry, tmp_path, monkeypatch):
        """MLFLOW_TRACKING_URI at another web server (a port off by one, the UI's page): its 404
        was "check that the server runs; re-running the command completes the work"."""
        site = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port := free_port()), "--bind", "127.0.0.1"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: _answers(f"http://127.0.0.1:{port}/"), timeout=30, what="site")
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
            with pytest.raises(TrackingUnavailableError) as refused:
                tracking.configure()
        finally:
            site.terminate()
            site.wait(30)
        message = str(refused.value)
        assert message.startswith(
            f"MLflow at http://127.0.0.1:{port} could not find the experiment: no MLflow API "
            "answers there (API request to endpoint /api/2.0/mlflow/experiments/get-by-name "
            "failed with error code 404"
        )
        assert message.endswith(
            "MLFLOW_TRACKING_URI must be an MLflow tracking server's root address "
            "(http://host:5000)"
        )


def _answers(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


class TestDivergedTraining:
    def test_a_diverged_adapter_is_registered_but_never_promoted(self, registry, tmp_path):
        folder = write_fake_adapter(tmp_path / "adapter", 8)
        spec = parse_spec(
            {
                "name": "diverged", "base_model": "b", "task": "sst2", "language": "en",
                "head": {"type": "classification", "num_labels": 2}, "method": {"type": "lora"},
                "data": {"train": str(tmp_path / "t.tsv")},
            }
        )  # fmt: skip
        report = TrainReport(
            name=spec.name, method="lora", trainable_params=1, total_params=2, adapter_bytes=4, steps=2,
            train_seconds=1.0, median_step_seconds=1.0, final_loss=float("nan"),
            metrics={"accuracy": 0.5, "loss": float("nan")}, output=str(folder),
            losses=[0.7, float("nan")],
        )  # fmt: skip
        result = register_and_gate(Build(spec, {}, folder, registry), report, run_id="", card="c")
        assert (result.promoted, result.alias) == (False, "challenger")
        assert result.decision == "training diverged (loss nan): not promoted"
        assert registry.get("diverged@1").metrics == {"accuracy": 0.5}  # only finite metrics kept


class TestCompositionsInMlflow:
    """Compositions as MLflow registered models ``composition.NAME``: versions, aliases, sync."""

    def test_saves_of_one_composition_at_once_each_mirror_once_in_order(self, registry, tmp_path):
        """`composition save` twice at once (two CI jobs): both mirrored whatever MLflow
        lacked, and both created the same versions (or one failed creating the registered
        model). The mirror now holds the composition's alias lock."""
        client = tracking.client()
        for seed, name in ((1, "lang-pt"), (2, "sst2-en")):
            folder = write_fake_adapter(tmp_path / name, seed)
            registry.register(folder, name=name, base_model="b", task=name, language="pt")
        start, failures = threading.Barrier(3), []

        def save(order: list[str]) -> None:
            try:
                start.wait()
                registry.register_composition("madx", {"type": "stack"}, order)
                ensure_composition_versions(client, registry, "madx")
            except Exception as exc:  # said below, in the test's thread
                failures.append(exc)

        orders = (["lang-pt", "sst2-en"], ["sst2-en", "lang-pt"], ["lang-pt@1", "sst2-en@1"])
        saving = [threading.Thread(target=save, args=(order,)) for order in orders]
        for thread in saving:
            thread.start()
        for thread in saving:
            thread.join(120)
        assert failures == []
        mirrored = client.search_model_versions("name='composition.madx'")
        assert sorted((int(v.version), int(v.tags["adapterops.version"])) for v in mirrored) == [
            (1, 1), (2, 2), (3, 3)
        ]  # fmt: skip

    def test_mirrored_moved_and_reviewed(self, registry, tmp_path):
        client = tracking.client()
        for seed, name in ((1, "lang-pt"), (2, "sst2-en")):
            folder = write_fake_adapter(tmp_path / name, seed)
            version = registry.register(folder, name=name, base_model="b", task=name, language="pt")
            ensure_model_version(client, registry, version, run_id=None, description="card")
        registry.register_composition("madx", {"type": "stack"}, ["lang-pt", "sst2-en"])
        registry.set_composition_alias("madx@1", "champion")  # from Python: MLflow not told

        assert ensure_composition_versions(client, registry, "madx") == 1
        assert ensure_composition_versions(client, registry, "madx") == 0  # idempotent
        # its aliases came along the first time (else the next sync would take them away)
        assert mlflow_aliases(client, "composition.madx") == {"champion": 1}
        (mirrored,) = client.search_model_versions("name='composition.madx'")
        assert mirrored.tags["adapterops.members"] == "lang-pt@1, sst2-en@1"
        assert mirrored.description.startswith("stack of lang-pt@1, sst2-en@1")
        saved = mlflow.artifacts.load_dict(f"{mirrored.source}/composition.json")
        assert saved["definition"] == {"type": "stack", "children": ["lang-pt@1", "sst2-en@1"]}

        registry.register_composition("madx", {"type": "stack"}, ["sst2-en", "lang-pt"])
        moved = move_composition_alias(registry, client, "madx@2", "champion", origin="cli")
        assert (moved.version, moved.aliases) == (2, ("champion",))
        assert mlflow_aliases(client, "composition.madx") == {"champion": 2}
        # the adapters' sync leaves compositions be, and both leave other registries' models be
        for foreign in ("someone-elses", "composition.someone-elses"):
            client.create_registered_model(foreign)
            client.create_model_version(foreign, source="s3://elsewhere/model")
            client.set_registered_model_alias(foreign, "champion", "1")
        assert sync_aliases(registry, client) == []
        runs = client.search_runs(
            [client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
            filter_string="tags.`adapterops.kind` = 'composition'",
        )
        assert sorted(r.info.run_name for r in runs) == ["composition madx@1", "composition madx@2"]

        # a reviewer moves champion back in the MLflow UI and adds an alias: MLflow wins
        client.set_registered_model_alias("composition.madx", "champion", "1")
        client.set_registered_model_alias("composition.madx", "staging", "2")
        changes = sync_composition_aliases(registry, client)
        assert [c.to_dict() for c in changes] == [
            {"composition": "madx", "alias": "champion", "version": 1},
            {"composition": "madx", "alias": "staging", "version": 2},
        ]
        assert registry.composition("madx@champion").version == 1
        assert sync_composition_aliases(registry, client) == []
        remove_composition_alias(registry, client, "madx", "staging", origin="cli")
        assert mlflow_aliases(client, "composition.madx") == {"champion": 1}
        assert registry.composition("madx@2").aliases == ()
        assert [(e.kind, e.alias, e.origin) for e in registry.composition_history("madx")][-3:] == [
            ("composition_alias_set", "champion", "mlflow-ui"),
            ("composition_alias_set", "staging", "mlflow-ui"),
            ("composition_alias_removed", "staging", "cli"),
        ]
        # from Python again, now that MLflow mirrors it: the next sync takes the move there
        registry.set_composition_alias("madx@2", "candidate")
        assert sync_composition_aliases(registry, client) == []
        assert mlflow_aliases(client, "composition.madx") == {"champion": 1, "candidate": 2}

    def test_every_page_of_registered_models_is_read(self, registry):
        client = tracking.client()
        for name in ("a", "b", "c"):
            client.create_registered_model(name)
        assert sorted(m.name for m in registered_models(client, page_size=1)) == ["a", "b", "c"]


def test_an_experiment_deleted_in_the_mlflow_ui_is_restored(registry, tmp_path):
    """A reviewer tidying the UI deleted the experiment: every run created in it failed, with
    an error that told to check the server and that re-running would complete the work."""
    client = tracking.client()
    client.delete_experiment(tracking.configure())
    for seed, name in ((1, "lang-pt"), (2, "sst2-en")):
        registry.register(
            write_fake_adapter(tmp_path / name, seed), name=name, base_model="b", task=name,
            language="pt",
        )  # fmt: skip
    registry.register_composition("madx", {"type": "stack"}, ["lang-pt", "sst2-en"])
    with pytest.warns(RuntimeWarning, match="MLflow experiment 'adapterops' was deleted"):
        assert ensure_composition_versions(client, registry, "madx") == 1  # its run made
    assert client.get_experiment_by_name("adapterops").lifecycle_stage == "active"


def test_an_alias_on_a_version_made_by_hand_in_mlflow_is_not_followed(registry, tmp_path):
    """A reviewer registered a run's files into the adapter's model from the UI and moved
    champion there: the sync took that MLflow version's number for a registry version's and
    moved the registry's champion onto other files (x@2, never reviewed)."""
    client = tracking.client()
    for seed in (1, 2):
        registry.register(
            write_fake_adapter(tmp_path / f"v{seed}", seed), name="x", base_model="b",
            task="sst2", language="en",
        )  # fmt: skip
    promote(registry, client, "x@1")
    by_hand = client.create_model_version("x", source=str(tmp_path / "v2"))  # no tags
    assert by_hand.version == 2
    client.set_registered_model_alias("x", "champion", "2")
    with pytest.warns(RuntimeWarning, match="'champion' of x points at its version 2, which"):
        assert sync_aliases(registry, client) == []
    assert registry.get("x@champion").ref == "x@1"
