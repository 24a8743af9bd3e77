"""Registry compositions mirrored as MLflow registered models, so reviewers see a stack's versions
and move its ``champion`` in the MLflow UI as they do for adapters.

Naming scheme: composition ``madx`` is the MLflow registered model ``composition.madx`` (registry
names hold no '.', so it never meets an adapter's model; after ``ADAPTEROPS_MLFLOW_PREFIX``, and
only while it carries this registry's identity: :mod:`flows.mlflow_names`), and registry
version N is the MLflow model version tagged ``adapterops.version`` N, created in order
(usually MLflow's version N too; not once a version was deleted before MLflow mirrored it). A
deleted version's mirror is deleted. Each version's source is a small MLflow run named
``composition madx@N`` whose artifact ``composition/composition.json`` holds the definition, the
exact members and the evaluation spec; the members are also tags, so the versions table lists
them.

Aliases follow the adapters' rule: MLflow wins. Moves made by AdapterOps go to MLflow first, then
to the registry; :func:`sync_composition_aliases` copies moves made in the UI into the registry
(origin ``mlflow-ui``). A composition saved without MLflow (``Registry.register_composition`` from
Python) is mirrored by the next command that touches it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow.entities.model_registry import RegisteredModel
from mlflow.tracking import MlflowClient

from registry import Composition, Registry, diff_compositions
from registry.names import check_alias_case, check_new_alias

from .changes_markdown import composition_changes_since
from .mlflow_models import (
    MEMBERS_TAG,
    NOT_MIRRORED,
    VERSION_TAG,
    AliasChange,
    calling,
    delete_mlflow_alias,
    fit_description,
    mlflow_aliases,
    mlflow_version_of,
    moves_mlflow_has_not_seen,
    ours_or_warned,
    owned_model,
    registered_models,
    set_mlflow_alias,
    sync_aliases,
    warn_not_followed,
)
from .mlflow_names import REGISTRY_TAG, composition_model, mirrored_name, model_prefix
from .tracking import configure, mlflow_errors

__all__ = [
    "ensure_composition_versions",
    "mirror_all",
    "mlflow_name",
    "move_composition_alias",
    "remove_composition_alias",
    "sync_composition_aliases",
    "sync_from_mlflow",
    "tag_score",
]

SEEDED_TAG = "adapterops.aliases"  # "yes": the registry's aliases were copied to MLflow once
ARTIFACT = "composition"  # the run's artifact folder a model version points at


def mlflow_name(name: str) -> str:
    """The MLflow registered model mirroring composition ``name``."""
    return composition_model(name)


def ensure_composition_versions(client: MlflowClient, registry: Registry, name: str) -> int:
    """Mirror every version of composition ``name`` MLflow lacks, in order (idempotent); returns
    how many were created.

    Until a composition is fully mirrored (the model's ``adapterops.aliases`` tag), its registry
    aliases go to MLflow too: they were set before MLflow knew it, and the next sync would
    otherwise take them away. After that, MLflow wins.

    Under the composition's alias lock: two saves at once each mirrored what MLflow lacked, so
    MLflow got every version twice (or one failed creating the registered model)."""
    with registry.composition_alias_lock(name):
        return _mirror_missing(client, registry, name)


def _mirror_missing(client: MlflowClient, registry: Registry, name: str) -> int:
    versions = registry.composition_versions(name)
    model = mlflow_name(name)
    created = 0
    with mlflow_errors(f"mirror composition {name}"):
        seeded = _ensure_registered_model(client, registry, name).tags.get(SEEDED_TAG) == "yes"
        for previous, composition in zip([None, *versions], versions, strict=False):
            if mlflow_version_of(client, model, composition.version) is None:
                _create_version(client, composition, previous)
                created += 1
    if not seeded:
        for alias, version in sorted(_registry_aliases(registry, name).items()):
            set_mlflow_alias(client, model, alias, version)
        with mlflow_errors(f"mirror composition {name}"):
            client.set_registered_model_tag(model, SEEDED_TAG, "yes")
    return created


def tag_score(client: MlflowClient, composition: Composition, metric: str, value: float) -> None:
    """Show a score the cascade measured on the composition's MLflow version (the versions table
    lists tags: a reviewer compares versions there, as adapters show their metrics)."""
    model = mlflow_name(composition.name)
    with mlflow_errors(f"tag composition {composition.ref}"):
        mlflow_version = mlflow_version_of(client, model, composition.version)
        if mlflow_version is not None:
            tag = _score_tag(metric)
            client.set_model_version_tag(model, str(mlflow_version), tag, f"{value:.4f}")


def _score_tag(metric: str) -> str:
    """The model version tag showing a composition's score in MLflow's versions table."""
    return f"adapterops.metric.{metric}"


def move_composition_alias(
    registry: Registry, client: MlflowClient, ref: str, alias: str, *, origin: str
) -> Composition:
    """Point ``alias`` at the composition version ``ref`` names: in MLflow, then the registry."""
    check_new_alias(alias)  # before MLflow sees it
    target = registry.composition(ref)
    held = _registry_aliases(registry, target.name)
    check_alias_case(alias, held, f"composition {target.name!r}")
    ensure_composition_versions(client, registry, target.name)
    set_mlflow_alias(client, mlflow_name(target.name), alias, target.version)
    return registry.set_composition_alias(target.ref, alias, origin=origin)


def remove_composition_alias(
    registry: Registry, client: MlflowClient, name: str, alias: str, *, origin: str
) -> None:
    """Take ``alias`` off composition ``name``: in MLflow, then the registry."""
    registry.composition(name)  # a clear error for an unknown composition, before MLflow
    ensure_composition_versions(client, registry, name)  # and refuses another registry's model
    delete_mlflow_alias(client, mlflow_name(name), alias)
    registry.remove_composition_alias(name, alias, origin=origin)


def sync_composition_aliases(
    registry: Registry,
    client: MlflowClient,
    names: list[str] | None = None,
    *,
    on_wait: Callable[[str], None] | None = None,
) -> list[AliasChange]:
    """Copy composition alias moves made in MLflow into the registry (MLflow wins; moves made
    through the registry alone that MLflow has not seen go to MLflow, as for adapters:
    :func:`~flows.mlflow_models.sync_aliases`); returns what changed. Only compositions MLflow
    already mirrors are compared; :func:`mirror_all` mirrors the others. Each is compared under
    its alias lock (a cascade's gate moves them); ``on_wait(name)`` is called first when it must
    wait for one."""
    with mlflow_errors("list registered models"):
        mirrored = registered_models(client, f"name LIKE '{model_prefix()}composition.%'")
        ours = (None, registry.identity)  # (no tag: claimed on the way, if it is ours)
        listed = [mirrored_name(m.name) for m in mirrored if m.tags.get(REGISTRY_TAG) in ours]
        known = {named[0] for named in listed if named is not None and named[1]}
    known &= {c.name for c in registry.compositions()}  # another registry's are not ours
    changes: list[AliasChange] = []
    for name in sorted(known if names is None else set(names) & known):
        with registry.composition_alias_lock(name, on_wait=calling(on_wait, name)):
            changes += _sync_composition(registry, client, name)
    return changes


def _sync_composition(registry: Registry, client: MlflowClient, name: str) -> list[AliasChange]:
    """:func:`sync_composition_aliases` for one composition MLflow mirrors, under its lock."""
    changes: list[AliasChange] = []
    if not ours_or_warned(client, registry, mlflow_name(name)):
        return changes
    ensure_composition_versions(client, registry, name)  # a half-done mirror is finished
    remote = mlflow_aliases(client, mlflow_name(name))
    local = _registry_aliases(registry, name)
    # moves made through the registry's Python API alone, not yet seen by MLflow, go there
    for alias in moves_mlflow_has_not_seen(registry.composition_history(name), local, remote):
        if alias in local:
            set_mlflow_alias(client, mlflow_name(name), alias, local[alias])
            remote[alias] = local[alias]
        else:
            delete_mlflow_alias(client, mlflow_name(name), alias)
            del remote[alias]
    kept = {c.version for c in registry.composition_versions(name)}
    for alias, version in sorted(remote.items()):
        if version == NOT_MIRRORED:  # made by hand in MLflow: warned about, not followed
            continue
        if version not in kept:  # set in the UI on a version deleted here, as for adapters
            warn_not_followed(f"composition {name}", f"{name}@{version}", alias)
            continue
        if local.get(alias) != version:
            registry.set_composition_alias(f"{name}@{version}", alias, origin="mlflow-ui")
            changes.append(AliasChange(name, alias, version, kind="composition"))
    for alias in sorted(set(local) - set(remote)):
        registry.remove_composition_alias(name, alias, origin="mlflow-ui")
        changes.append(AliasChange(name, alias, None, kind="composition"))
    return changes


def mirror_all(
    client: MlflowClient, registry: Registry, names: list[str] | None = None
) -> list[str]:
    """Mirror the registry's compositions (of ``names``; default all) that MLflow lacks in full;
    returns the names of those that got new MLflow versions. One whose registered model is
    another registry's is warned about and left (:func:`~flows.mlflow_models.ours_or_warned`)."""
    wanted = [c.name for c in registry.compositions() if names is None or c.name in names]
    return [
        name
        for name in wanted
        if ours_or_warned(client, registry, mlflow_name(name))
        and ensure_composition_versions(client, registry, name)
    ]


def sync_from_mlflow(
    registry: Registry,
    client: MlflowClient,
    names: list[str] | None = None,
    *,
    on_wait: Callable[[str, bool], None] | None = None,
) -> tuple[list[str], list[AliasChange]]:
    """All of it, for ``adapterops sync`` and the scheduled sync flow: compositions MLflow lacks
    are mirrored, then alias moves made in MLflow reach the registry for adapters and
    compositions (of ``names``; default all). Returns (compositions mirrored, alias changes).
    ``on_wait(name, is_composition)`` is called before waiting for a gate deciding."""
    mirrored = mirror_all(client, registry, names)
    adapters = None if on_wait is None else lambda name: on_wait(name, False)
    compositions = None if on_wait is None else lambda name: on_wait(name, True)
    changes = sync_aliases(registry, client, names, on_wait=adapters)
    return mirrored, changes + sync_composition_aliases(
        registry, client, names, on_wait=compositions
    )


def _registry_aliases(registry: Registry, name: str) -> dict[str, int]:
    return {
        alias: composition.version
        for composition in registry.composition_versions(name)
        for alias in composition.aliases
    }


def _ensure_registered_model(
    client: MlflowClient, registry: Registry, name: str
) -> RegisteredModel:
    """The composition's registered model, created (for ``registry``) if missing; one another
    registry mirrors into is refused (:func:`~flows.mlflow_models.owned_model`)."""
    found = owned_model(client, registry, mlflow_name(name))
    if found is not None:
        return found
    tags = {"adapterops.kind": "composition", "adapterops.composition": name}
    return client.create_registered_model(
        mlflow_name(name),
        tags={**tags, REGISTRY_TAG: registry.identity},
        description=f"AdapterOps composition {name}: a block over exact adapter versions",
    )


def _create_version(
    client: MlflowClient, composition: Composition, previous: Composition | None
) -> None:
    """The MLflow version of ``composition``; its page says what changed since ``previous``."""
    run_id = _composition_run(client, composition)
    block, members = str(composition.definition.get("type")), ", ".join(composition.members)
    changes = (
        "\n" + composition_changes_since(diff_compositions(previous, composition))
        if previous
        else ""
    )
    tags = {
        VERSION_TAG: str(composition.version),
        "adapterops.kind": "composition",
        "adapterops.block": block,
        MEMBERS_TAG: members,
        "adapterops.scored": "yes" if composition.evaluation else "no",
        **{_score_tag(metric): f"{value:.4f}" for metric, value in composition.metrics.items()},
    }
    client.create_model_version(
        mlflow_name(composition.name),
        source=f"runs:/{run_id}/{ARTIFACT}",
        run_id=run_id,
        tags=tags,
        description=fit_description(
            f"{block} of {members}\n\n{composition.description}".strip() + changes,
            f"adapterops composition show {composition.ref}",
        ),
    )


def _composition_run(client: MlflowClient, composition: Composition) -> str:
    """The run holding the version's definition: found by its tag, else made (a retry after a
    failure halfway does not make a second one)."""
    experiment_id = configure()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`adapterops.composition` = '{composition.ref}'"
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=f"composition {composition.ref}",
        tags={"adapterops.composition": composition.ref, "adapterops.kind": "composition"},
    )
    run_id = str(run.info.run_id)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "composition.json"
        path.write_text(json.dumps(composition.to_dict(), indent=2, default=str))
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT)
    client.log_param(run_id, "members", ",".join(composition.members))
    for metric, value in composition.metrics.items():  # what it scored when saved
        client.log_metric(run_id, metric, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id
