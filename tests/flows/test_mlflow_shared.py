"""Several registries on one MLflow server (staging and production, several teams): each
mirrors only into registered models it owns; another registry's adapter of the same name is
refused before anything is stored, or kept apart by ``ADAPTEROPS_MLFLOW_PREFIX``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import registry as rg
from flows import tracking
from flows.build_job import build_from_spec
from flows.errors import MlflowNameError
from flows.mlflow_compositions import ensure_composition_versions, sync_from_mlflow
from flows.mlflow_models import mlflow_aliases, sync_aliases
from flows.promotion import promote
from flows.push_job import push_folder
from flows.quickstart import minilm_sst2_spec
from registry import Registry
from tests.helpers import run_cli
from tests.registry.workers import write_fake_adapter

IDENTITY = {"name": "x", "base_model": "b", "task": "sst2", "language": "en"}


@pytest.fixture
def shared(embedded_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One MLflow store for every registry of the test; no prefix to start with."""
    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("ADAPTEROPS_MLFLOW_PREFIX", raising=False)
    return uri


def registry_at(tmp_path: Path, name: str) -> Registry:
    return Registry(f"sqlite:///{tmp_path / name}.db", tmp_path / f"{name}-artifacts")


def pushed(registry: Registry, tmp_path: Path, seed: int, accuracy: float) -> str:
    folder = write_fake_adapter(tmp_path / f"adapter-{seed}", seed)
    result = push_folder(registry, folder, identity=IDENTITY, metrics={"accuracy": accuracy})
    assert result.warnings == []
    return result.version.ref


def test_another_registrys_adapter_of_the_same_name_is_refused_before_anything_is_stored(
    shared, tmp_path
):
    production, staging = registry_at(tmp_path, "production"), registry_at(tmp_path, "staging")
    promote(production, tracking.client(), pushed(production, tmp_path, 1, 0.5))
    with pytest.raises(MlflowNameError) as refused:
        pushed(staging, tmp_path, 2, 0.9)
    assert str(refused.value).startswith(
        f"MLflow model 'x' at {shared} mirrors an adapter of registry {production.identity}, "
        f"not of this registry ({staging.identity}; ADAPTEROPS_MLFLOW_PREFIX unset)"
    )
    assert staging.find() == []  # refused before the registration
    # the other's champion was not read into this registry, nor moved in MLflow
    stored = registry_at(tmp_path, "staging")
    stored.register(write_fake_adapter(tmp_path / "v3", 3), **IDENTITY)  # from Python, no MLflow
    with pytest.warns(RuntimeWarning, match="Set ADAPTEROPS_MLFLOW_PREFIX for this registry"):
        assert sync_aliases(stored, tracking.client()) == []
    assert stored.get("x@1").aliases == ()
    with pytest.raises(MlflowNameError):
        promote(stored, tracking.client(), "x@1")
    assert mlflow_aliases(tracking.client(), "x") == {"champion": 1}
    assert production.get("x@1").aliases == ("champion",)


def test_a_prefix_keeps_registries_apart_on_one_server(shared, tmp_path, monkeypatch):
    production, staging = registry_at(tmp_path, "production"), registry_at(tmp_path, "staging")
    promote(production, tracking.client(), pushed(production, tmp_path, 1, 0.5))
    monkeypatch.setenv("ADAPTEROPS_MLFLOW_PREFIX", "staging.")
    promote(staging, tracking.client(), pushed(staging, tmp_path, 2, 0.9))
    promote(staging, tracking.client(), pushed(staging, tmp_path, 3, 0.95))
    client = tracking.client()
    assert mlflow_aliases(client, "staging.x") == {"champion": 2, "previous": 1}
    assert mlflow_aliases(client, "x") == {"champion": 1}
    assert client.get_experiment_by_name("staging.adapterops") is not None
    assert sync_from_mlflow(staging, client) == ([], [])
    monkeypatch.delenv("ADAPTEROPS_MLFLOW_PREFIX")
    assert sync_from_mlflow(production, tracking.client()) == ([], [])  # staging.x: not its
    assert [v.aliases for v in production.find()] == [("champion",)]
    assert [v.aliases for v in staging.find()] == [("previous",), ("champion",)]


def test_a_sync_passes_over_models_no_adapter_could_be_named(shared, tmp_path):
    """Another team's ``team.model`` on the server: every sync failed on it (invalid name)."""
    registry = registry_at(tmp_path, "production")
    promote(registry, tracking.client(), pushed(registry, tmp_path, 1, 0.5))
    tracking.client().create_registered_model("team.model")
    assert sync_from_mlflow(registry, tracking.client()) == ([], [])


def test_a_model_mirrored_before_registries_were_told_apart_is_claimed_if_its_versions_agree(
    shared, tmp_path
):
    production, staging = registry_at(tmp_path, "production"), registry_at(tmp_path, "staging")
    promote(production, tracking.client(), pushed(production, tmp_path, 1, 0.5))
    client = tracking.client()
    client.delete_registered_model_tag("x", "adapterops.registry")  # as an older release left it
    staging.register(write_fake_adapter(tmp_path / "other", 7), **IDENTITY)  # other files
    with pytest.warns(RuntimeWarning, match="mirrors an adapter of a registry whose versions"):
        assert sync_aliases(staging, client) == []
    assert "adapterops.registry" not in client.get_registered_model("x").tags
    newcomer = registry_at(tmp_path, "newcomer")  # no version of x yet: none of them agrees
    with pytest.raises(MlflowNameError, match="a registry whose versions have other files"):
        pushed(newcomer, tmp_path, 8, 0.9)
    promote(production, client, "x@1", "staging")  # its own versions: claimed
    assert client.get_registered_model("x").tags["adapterops.registry"] == production.identity


def test_a_composition_of_the_same_name_is_another_registrys_too(shared, tmp_path):
    production, staging = registry_at(tmp_path, "production"), registry_at(tmp_path, "staging")
    for registry, seed in ((production, 1), (staging, 2)):
        registry.register(write_fake_adapter(tmp_path / f"m{seed}", seed), **IDENTITY)
        registry.register_composition("madx", {"type": "stack"}, ["x@1"])
    ensure_composition_versions(tracking.client(), production, "madx")
    with pytest.raises(MlflowNameError, match=r"'composition\.madx'"):
        ensure_composition_versions(tracking.client(), staging, "madx")
    with pytest.warns(
        RuntimeWarning, match=r"'composition\.madx' .* mirrors a composition of registry"
    ):
        assert sync_from_mlflow(staging, tracking.client()) == ([], [])


def test_rm_leaves_another_registrys_mirror_alone(shared, tmp_path):
    production = registry_at(tmp_path, "production")
    promote(production, tracking.client(), pushed(production, tmp_path, 1, 0.5))
    env = {
        **os.environ,
        "ADAPTEROPS_REGISTRY_URL": f"sqlite:///{tmp_path / 'staging.db'}",
        "ADAPTEROPS_ARTIFACTS_URL": str(tmp_path / "staging-artifacts"),
    }
    staging = registry_at(tmp_path, "staging")
    staging.register(write_fake_adapter(tmp_path / "other", 7), **IDENTITY)  # from Python
    removed = run_cli("rm", "x@1", "--json", env=env)
    assert (removed.returncode, json.loads(removed.stdout)) == (0, {"ok": True, "deleted": "x@1"})
    assert [v.version for v in tracking.client().search_model_versions("name='x'")] == [1]


def test_the_cli_refuses_in_one_line_and_a_prefix_written_wrong_too(shared, tmp_path):
    production = registry_at(tmp_path, "production")
    pushed(production, tmp_path, 1, 0.5)
    folder = write_fake_adapter(tmp_path / "other", 7)
    staging_home = {**os.environ, "ADAPTEROPS_HOME": str(tmp_path / "staging-home")}
    args = ("push", str(folder), "--name", "x", "--task", "sst2", "--language", "en")
    refused = run_cli(*args, "--base-model", "b", "--json", env=staging_home)
    assert refused.returncode == 2
    answer = json.loads(refused.stdout)
    assert (answer["ok"], answer["kind"]) == (False, "MlflowNameError")
    assert "Set ADAPTEROPS_MLFLOW_PREFIX for this registry" in answer["error"]
    assert Registry(f"sqlite:///{tmp_path / 'staging-home' / 'registry.db'}").find() == []
    wrong = run_cli(*args, "--base-model", "b", env={**staging_home, "ADAPTEROPS_MLFLOW_PREFIX": "a/b"})  # fmt: skip
    assert wrong.returncode == 2
    assert "error: ADAPTEROPS_MLFLOW_PREFIX='a/b': write it with letters" in wrong.stderr
    fresh_home = {**staging_home, "ADAPTEROPS_HOME": str(tmp_path / "untouched"), "ADAPTEROPS_MLFLOW_PREFIX": "a/b"}  # fmt: skip
    assert run_cli(*args, "--base-model", "b", env=fresh_home).returncode == 2
    assert not (tmp_path / "untouched").exists()  # no registry made for a refused push
    assert "Traceback" not in wrong.stderr
    kept = run_cli(*args, "--base-model", "b", env={**staging_home, "ADAPTEROPS_MLFLOW_PREFIX": "staging-"})  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert sorted(m.name for m in tracking.client().search_registered_models()) == [
        "staging-x",
        "x",
    ]


def test_a_build_is_refused_before_it_trains(shared, tmp_path, sst2_dir):
    production, staging = registry_at(tmp_path, "production"), registry_at(tmp_path, "staging")
    folder = write_fake_adapter(tmp_path / "adapter", 1)
    push_folder(production, folder, identity={**IDENTITY, "name": "x-sst2"})
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=2, name="x-sst2")
    with pytest.raises(MlflowNameError, match="Set ADAPTEROPS_MLFLOW_PREFIX"):
        build_from_spec(spec, staging, tmp_path / "out")
    assert staging.find() == []
    client = tracking.client()
    experiment = client.get_experiment_by_name("adapterops").experiment_id
    assert client.search_runs([experiment]) == []  # no training run was started


def test_a_moved_registry_goes_on_mirroring_into_its_models_and_the_old_one_builds_nothing(
    shared, tmp_path, sst2_dir
):
    """`db move` keeps the registry's id, so MLflow's models still say they are its own: the
    next push from the new place is version 2 in both; a build on the old place is refused
    before it trains."""
    old = registry_at(tmp_path, "laptop")
    promote(old, tracking.client(), pushed(old, tmp_path, 1, 0.5))
    old.move_to(f"sqlite:///{tmp_path / 'production.db'}", tmp_path / "production-artifacts")
    new = registry_at(tmp_path, "production")

    ref = pushed(new, tmp_path, 2, 0.9)

    assert ref == "x@2"
    assert mlflow_aliases(tracking.client(), "x") == {"champion": 1}
    versions = tracking.client().search_model_versions("name='x'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=2, name="x-sst2")
    with pytest.raises(rg.RegistryMovedError, match=r"^this registry was moved to sqlite:///"):
        build_from_spec(spec, old, tmp_path / "out")
    client = tracking.client()
    experiment = client.get_experiment_by_name("adapterops")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
