"""Registry versions mirrored as MLflow registered models, versions and aliases.

Naming scheme: the registry adapter ``minilm-sst2-en-lora`` is the MLflow registered model of the
same name (after ``ADAPTEROPS_MLFLOW_PREFIX``, and only while it carries this registry's
identity: :mod:`flows.mlflow_names`), and registry version N is MLflow model version N of it
(created in order under the adapter's alias lock, the versions since the newest MLflow has
first, so the numbers agree unless a version was deleted before MLflow saw it; the tag
``adapterops.version`` always states the registry number). The model version's source is the
training run's ``adapter`` artifacts, its description the model card, and it carries the same
tags as the registry record.

Aliases live in both places. MLflow is where reviewers move them, so MLflow wins: every alias move
made by AdapterOps goes to MLflow first and then to the registry, and :func:`sync_aliases` copies
moves made in the MLflow UI into the registry (origin ``mlflow-ui``). A move made through the
registry's Python API alone (origin ``registry``) that MLflow has not seen yet is the exception:
:func:`sync_aliases` copies it to MLflow instead of undoing it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Literal

from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry import AdapterVersion, Event, NotFoundError, Registry

from .errors import MlflowNameError
from .mlflow_names import (
    REGISTRY_TAG,
    adapter_model,
    mirrored_name,
    model_prefix,
    taken_message,
)
from .tracking import configure, mlflow_errors, tracking_uri

__all__ = [
    "AliasChange",
    "calling",
    "check_name_is_ours",
    "delete_model_version",
    "drop_deleted_mirrors",
    "ensure_model_version",
    "fit_description",
    "log_trend",
    "mirror_earlier_versions",
    "mirror_version",
    "mlflow_aliases",
    "mlflow_version_of",
    "moves_mlflow_has_not_seen",
    "ours_or_warned",
    "owned_model",
    "registered_models",
    "set_mlflow_alias",
    "sync_aliases",
    "tag_run",
    "version_description",
    "warn_not_followed",
]

VERSION_TAG = "adapterops.version"
# what each mirrored version is, to tell a registry's own mirrors from another's
DIGEST_TAG, MEMBERS_TAG = "adapterops.digest", "adapterops.members"
NOT_MIRRORED = 0  # mlflow_aliases' number for a version made by hand in MLflow (none is 0)
DESCRIPTION_LIMIT = 5000  # characters of a model version's description MLflow's SQL stores keep


@dataclass(frozen=True)
class AliasChange:
    """One alias difference found by :func:`sync_aliases` and applied to the registry."""

    adapter: str  # the adapter's name, or the composition's when kind is "composition"
    alias: str
    version: int | None  # None: the alias was removed in MLflow
    kind: Literal["adapter", "composition"] = "adapter"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"adapter": ...}`` or ``{"composition": ...}``, alias, version."""
        return {self.kind: self.adapter, "alias": self.alias, "version": self.version}


def ensure_model_version(
    client: MlflowClient,
    registry: Registry,
    version: AdapterVersion,
    *,
    run_id: str | None,
    description: str,
) -> int:
    """The MLflow model version mirroring ``registry``'s ``version``, created if missing
    (idempotent); a registered model of that name that mirrors another registry is refused
    (:class:`~flows.errors.MlflowNameError`).

    With :func:`mirror_earlier_versions` first, MLflow's version number is the registry's
    (unless the registry deleted an older version before MLflow saw it).
    """
    model = adapter_model(version.name)
    with mlflow_errors(f"register {version.ref}"):
        _ensure_registered_model(client, registry, version)
        existing = mlflow_version_of(client, model, version.version)
        if existing is not None:
            return existing
        tags = {
            VERSION_TAG: str(version.version),
            DIGEST_TAG: version.digest,
            "adapterops.base_model": version.base_model,
            "adapterops.base_model_fingerprint": version.base_model_fingerprint or "",
            "adapterops.task": version.task,
            "adapterops.language": version.language,
            "adapterops.method": version.method,
            # the versions table has no metric column: the tags column shows them
            **{f"adapterops.metric.{k}": f"{v:.4f}" for k, v in sorted(version.metrics.items())},
        }
        if run_id is None and _server_cannot_read(version.artifact_uri):
            run_id = _files_run(client, registry, version)
        source = f"runs:/{run_id}/adapter" if run_id else version.artifact_uri
        created = client.create_model_version(
            model,
            source=source,
            run_id=run_id,
            tags=tags,
            description=fit_description(description, f"adapterops show {version.ref}"),
        )
        return int(created.version)


def fit_description(text: str, whole_at: str) -> str:
    """``text`` cut to the :data:`DESCRIPTION_LIMIT` characters MLflow's SQL stores keep for a
    model version's description, saying where the whole is (``whole_at``: a command): on
    PostgreSQL a longer one failed the mirror, and every promotion after it."""
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    note = f"… (cut: MLflow keeps {DESCRIPTION_LIMIT:,} characters; `{whole_at}` has it all)"
    return text[: DESCRIPTION_LIMIT - len(note)] + note


def _server_cannot_read(artifact_uri: str) -> bool:
    """Whether a tracking server would refuse ``artifact_uri`` as a version's source: a file
    of this machine (a registry in a local folder) is nothing a server can read, and MLflow
    refuses one outside a run's artifacts ("Invalid model version source")."""
    return artifact_uri.startswith("file:") and tracking_uri().startswith(("http:", "https:"))


def _files_run(client: MlflowClient, registry: Registry, version: AdapterVersion) -> str:
    """A run holding ``version``'s files (artifacts ``adapter/``), for a tracking server that
    cannot read the registry's folder: found by its tag (a retry after a failure half-way
    makes no second one), else made."""
    experiment_id = configure()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`adapterops.files_of` = '{version.ref}' "
        f"and tags.`adapterops.digest` = '{version.digest}'",
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=f"{version.ref} files",
        tags={"adapterops.files_of": version.ref, "adapterops.digest": version.digest},
    )
    run_id = str(run.info.run_id)
    with TemporaryDirectory() as scratch:
        folder = registry.fetch(version.ref, Path(scratch) / "adapter")
        client.log_artifacts(run_id, str(folder), artifact_path="adapter")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def mirror_earlier_versions(
    client: MlflowClient, registry: Registry, version: AdapterVersion
) -> None:
    """Mirror, oldest first, the registry's versions of ``version``'s adapter between the
    newest MLflow has and ``version`` (pushed while MLflow was down, or registered by another
    process at once): MLflow numbers its versions as they come, so mirroring them before
    ``version`` keeps MLflow's numbers the registry's. Older gaps stay (a mirror a reviewer
    deleted in the UI is not brought back). Call it under the adapter's alias lock (two
    processes mirroring at once would interleave)."""
    with mlflow_errors(f"read the versions of {version.name}"):
        mirrored = {
            int(found.tags[VERSION_TAG])
            for found in client.search_model_versions(f"name='{adapter_model(version.name)}'")
            if found.tags.get(VERSION_TAG, "").isdigit()
        }
    newest = max(mirrored, default=0)
    for earlier in sorted(registry.find(name=version.name), key=lambda v: v.version):
        if newest < earlier.version < version.version:
            mirror_version(client, registry, earlier)


def mirror_version(client: MlflowClient, registry: Registry, version: AdapterVersion) -> int:
    """The MLflow version of a registry version registered without a build (pushed, or from
    Python), created if missing: its source is the registry's copy, its description its score
    on the metric its spec gates on and its own description. Builds create theirs with the run
    that trained them (:func:`ensure_model_version`)."""
    metric = (version.spec or {}).get("evaluate", {}).get("metric", "accuracy")
    description = version_description(version, metric, version.description)
    return ensure_model_version(client, registry, version, run_id=None, description=description)


def version_description(version: AdapterVersion, metric: str, card: str) -> str:
    """The MLflow version's description: its score first (the versions table shows the first
    32 characters), then the model card without its title (the page already names the model)."""
    value = version.metrics.get(metric)
    score = f"{metric} {value:.4f}" if value is not None else f"no {metric}"
    summary = f"{score} · {version.method} · {version.task} ({version.language})"
    body = card.split("\n", 1)[1].lstrip("\n") if card.startswith("# ") else card
    return f"{summary}\n\n{body}"


def tag_run(client: MlflowClient, run_id: str, version: AdapterVersion) -> None:
    """Tag the training run with what registration added: registry version, base fingerprint;
    the run takes the version's name (``name@3``), so the runs list reads like the registry."""
    with mlflow_errors(f"tag run {run_id}"):
        client.set_tag(run_id, "mlflow.runName", version.ref)
        client.set_tag(run_id, "adapterops.registry_version", str(version.version))
        client.set_tag(run_id, "adapterops.digest", version.digest)
        client.set_tag(
            run_id, "adapterops.base_model_fingerprint", version.base_model_fingerprint or ""
        )


def log_trend(
    client: MlflowClient, run_id: str, versions: list[AdapterVersion], metric: str
) -> None:
    """``trend.png`` on a build's run: ``metric`` by version, this build among them and the
    aliases where they stand now, so a reviewer sees where a candidate sits without leaving
    MLflow. Nothing when fewer than two versions recorded the metric (no trend to draw)."""
    if sum(metric in v.metrics for v in versions) < 2:
        return
    from .plots import trend_plot  # noqa: PLC0415 - matplotlib: only when a build logs one
    from .trend import metric_trend  # noqa: PLC0415

    with mlflow_errors(f"log the trend plot on run {run_id}"), TemporaryDirectory() as scratch:
        plot = trend_plot(metric_trend(versions, metric), Path(scratch) / "trend.png")
        client.log_artifact(run_id, str(plot))


def set_mlflow_alias(client: MlflowClient, model: str, alias: str, version: int) -> None:
    """Point alias ``alias`` of MLflow registered model ``model`` at the version mirroring
    registry ``version`` (mirrored by then, so ``model`` is this registry's)."""
    with mlflow_errors(f"set alias {alias} of {model}"):
        mlflow_version = mlflow_version_of(client, model, version)
        if mlflow_version is None:
            raise MlflowException(f"{model} version {version} is not registered in MLflow yet")
        client.set_registered_model_alias(model, alias, str(mlflow_version))


def delete_mlflow_alias(client: MlflowClient, model: str, alias: str) -> None:
    """Remove an alias of MLflow registered model ``model`` (no error when absent, or when
    MLflow has no such model: an alias set from Python in the registry alone). The caller has
    made sure ``model`` is this registry's (:func:`owned_model`)."""
    with mlflow_errors(f"remove alias {alias} of {model}"):
        try:
            aliases = client.get_registered_model(model).aliases
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return
        if alias in aliases:
            client.delete_registered_model_alias(model, alias)


def mlflow_aliases(client: MlflowClient, model: str) -> dict[str, int]:
    """``{alias: registry version}`` as MLflow registered model ``model`` has them. An alias
    on a version made by hand in MLflow (a run's files registered from the UI: no
    ``adapterops.version`` tag) is :data:`NOT_MIRRORED`, with a warning: no registry version
    holds those files (its MLflow number, taken for a registry version's, moved the registry's
    alias onto other files)."""
    with mlflow_errors(f"read the aliases of {model}"):
        found = client.get_registered_model(model)
        result = {}
        for alias, mlflow_version in found.aliases.items():
            number = client.get_model_version(model, str(mlflow_version)).tags.get(VERSION_TAG)
            if number is None or not number.isdigit():
                warnings.warn(
                    f"MLflow alias {alias!r} of {model} points at its version {mlflow_version}, "
                    f"which AdapterOps did not create (no {VERSION_TAG} tag): not followed; "
                    "point it at a version AdapterOps mirrored",
                    RuntimeWarning,
                    stacklevel=3,
                )
            result[alias] = int(number) if number and number.isdigit() else NOT_MIRRORED
        return result


def check_name_is_ours(client: MlflowClient, registry: Registry, name: str) -> None:
    """Refuse adapter ``name`` now when its MLflow registered model is another registry's
    (:class:`~flows.errors.MlflowNameError`): before a build trains or a push uploads what
    could not be mirrored."""
    with mlflow_errors(f"read {adapter_model(name)}"):
        owned_model(client, registry, adapter_model(name))


def owned_model(client: MlflowClient, registry: Registry, model: str) -> RegisteredModel | None:
    """MLflow registered model ``model`` if it is ``registry``'s mirror (its tag
    ``adapterops.registry`` names the registry's identity); None if MLflow has no such model.
    One another registry mirrors into is a :class:`~flows.errors.MlflowNameError`. One
    mirrored before registries were told apart (no tag) is claimed, unless a version of it
    mirrors other files than the registry's version of that number (another registry's)."""
    try:
        found = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    identity, holder = registry.identity, found.tags.get(REGISTRY_TAG)
    if holder is None and _mirrors_only(client, registry, model):
        client.set_registered_model_tag(model, REGISTRY_TAG, identity)
        return found
    if holder != identity:
        raise MlflowNameError(taken_message(model, tracking_uri(), holder, identity))
    return found


def _mirrors_only(client: MlflowClient, registry: Registry, model: str) -> bool:
    """Whether untagged registered ``model`` mirrors ``registry``: every version of it that
    states a registry version this registry also has mirrors the same thing (an adapter's
    files, a composition's members), and one does at least, unless it has none (a model with
    versions of none of this registry's is another's: claiming it would take those for
    this registry's)."""
    named = mirrored_name(model)
    if named is None:
        return False
    name, composition = named
    try:
        ours, tag = (
            (
                {c.version: ", ".join(c.members) for c in registry.composition_versions(name)},
                MEMBERS_TAG,
            )
            if composition
            else ({v.version: v.digest for v in registry.find(name=name)}, DIGEST_TAG)
        )
    except NotFoundError:  # a composition this registry does not have
        return False
    numbered = [
        (int(found.tags[VERSION_TAG]), found.tags.get(tag))
        for found in client.search_model_versions(f"name='{model}'")
        if found.tags.get(VERSION_TAG, "").isdigit()
    ]
    same = [ours[number] == what for number, what in numbered if number in ours]
    return all(same) and (any(same) or not numbered)


def sync_aliases(
    registry: Registry,
    client: MlflowClient,
    names: list[str] | None = None,
    *,
    on_wait: Callable[[str], None] | None = None,
) -> list[AliasChange]:
    """Copy alias moves made in MLflow (the UI) into the registry; returns what changed.

    Rule: MLflow wins. An alias set in MLflow is set in the registry; an alias the registry has but
    MLflow does not (for an adapter MLflow knows) is removed. Each change is logged with origin
    ``mlflow-ui``. Registered models the registry has no adapter for (a shared MLflow server holds
    other teams' models too) are left alone, and so are another registry's mirrors of an adapter
    of the same name (with a warning: this registry's adapter cannot be mirrored there).

    Except: an alias last set or removed through the registry alone (``Registry.set_alias`` from
    Python, origin ``registry``) while MLflow still shows what it was before that move has not
    been seen by MLflow, not undone there: it is copied to MLflow. Had a reviewer moved the alias
    since, MLflow shows something else, and MLflow wins. And an alias on a version MLflow has
    never mirrored (a registry that moved to a new tracking store) cannot have been removed
    there: it is copied to MLflow too.

    Each adapter is compared under its alias lock, so a promotion gate moving an alias in MLflow
    and then in the registry is not caught half-way and recorded again as a move made in the
    UI; ``on_wait(name)`` is called first when it must wait for one.
    """
    with mlflow_errors("list registered models"):
        listed = [mirrored_name(m.name) for m in registered_models(client, _under_prefix())]
        known = {named[0] for named in listed if named is not None and not named[1]}
    changes: list[AliasChange] = []  # (compositions have their own sync)
    for name in sorted(known if names is None else set(names) & known):
        with registry.alias_lock(name, on_wait=calling(on_wait, name)):
            changes += _sync_adapter(registry, client, name)
    return changes


def calling(on_wait: Callable[[str], None] | None, name: str) -> Callable[[], None] | None:
    """``on_wait`` bound to ``name``, for a lock's ``on_wait`` (None stays None)."""
    return None if on_wait is None else lambda: on_wait(name)


def _sync_adapter(registry: Registry, client: MlflowClient, name: str) -> list[AliasChange]:
    """:func:`sync_aliases` for one adapter MLflow knows, under its alias lock."""
    versions = registry.find(name=name)
    if not versions or not ours_or_warned(client, registry, adapter_model(name)):
        return []  # not an adapter of this registry, or not this registry's model
    changes: list[AliasChange] = []
    remote = mlflow_aliases(client, adapter_model(name))
    local = {alias: v.version for v in versions for alias in v.aliases}
    for alias in moves_mlflow_has_not_seen(registry.history(name), local, remote):
        if alias in local:
            remote[alias] = _alias_to_mlflow(client, registry, versions, alias, local[alias])
        else:
            delete_mlflow_alias(client, adapter_model(name), alias)
            del remote[alias]
    for alias, version in sorted(remote.items()):
        if version == NOT_MIRRORED:  # made by hand in MLflow: warned about, not followed
            continue
        if version not in {v.version for v in versions}:
            # set in the UI on a version deleted here: not followed (that would fail every
            # sync, and every build and promotion of the adapter after it), said instead
            warn_not_followed(name, f"{name}@{version}", alias)
            continue
        if local.get(alias) != version:
            registry.set_alias(f"{name}@{version}", alias, origin="mlflow-ui")
            changes.append(AliasChange(name, alias, version))
    changes += _removed_in_mlflow(registry, client, versions, local, remote)
    return changes


def _under_prefix() -> str | None:
    """The search filter for registered models under ``ADAPTEROPS_MLFLOW_PREFIX`` (None: all;
    LIKE's ``_`` matches any character, so :func:`mirrored_name` still checks each name)."""
    prefix = model_prefix()
    return f"name LIKE '{prefix}%'" if prefix else None


def ours_or_warned(client: MlflowClient, registry: Registry, model: str) -> bool:
    """Whether registered ``model`` is ``registry``'s (:func:`owned_model`); another registry's
    is warned about (a sync goes on with the other adapters) and left alone."""
    try:
        with mlflow_errors(f"read {model}"):
            owned_model(client, registry, model)
    except MlflowNameError as exc:
        warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
        return False
    return True


def warn_not_followed(holder: str, ref: str, alias: str) -> None:
    """Warn that MLflow's ``alias`` of ``holder`` (an adapter, or ``composition NAME``) points at
    ``ref``, a version the registry has deleted, so a sync does not follow it."""
    warnings.warn(
        f"MLflow alias {alias!r} of {holder} points at {ref}, which the registry has deleted: "
        "not followed; move the alias in the MLflow UI",
        RuntimeWarning,
        stacklevel=3,
    )


def _alias_to_mlflow(
    client: MlflowClient,
    registry: Registry,
    versions: list[AdapterVersion],
    alias: str,
    version: int,
) -> int:
    """Point MLflow's ``alias`` at the mirror of registry ``version`` (one of ``versions``),
    mirroring it first if MLflow lacks it; returns ``version``."""
    holder = next(v for v in versions if v.version == version)
    mirror_version(client, registry, holder)
    set_mlflow_alias(client, adapter_model(holder.name), alias, version)
    return version


def _removed_in_mlflow(
    registry: Registry,
    client: MlflowClient,
    versions: list[AdapterVersion],
    local: dict[str, int],
    remote: dict[str, int],
) -> list[AliasChange]:
    """The registry's aliases MLflow lacks, taken off in the registry (a reviewer removed them
    in the UI), except those on a version MLflow never mirrored: nobody could remove them
    there, so they go to MLflow. (A registry that moved to a new tracking store mirrored only
    its next build there, and the sync after it took ``champion`` away: the build after that
    was promoted with no champion to beat.)"""
    changes = []
    name = versions[0].name
    for alias in sorted(set(local) - set(remote)):
        with mlflow_errors(f"read the versions of {name}"):
            mirrored = mlflow_version_of(client, adapter_model(name), local[alias]) is not None
        if not mirrored:
            _alias_to_mlflow(client, registry, versions, alias, local[alias])
            continue
        registry.remove_alias(name, alias, origin="mlflow-ui")
        changes.append(AliasChange(name, alias, None))
    return changes


def moves_mlflow_has_not_seen(
    events: list[Event], local: dict[str, int], remote: dict[str, int]
) -> list[str]:
    """The aliases (of an adapter or a composition) whose last move was made through the
    registry alone (origin ``registry``) and where MLflow still shows what the registry had
    before it: the version the alias left (none, for a new alias), or the one it was removed
    from. ``events``: the registry's history of the adapter or composition."""
    last: dict[str, Event] = {}
    for event in events:
        if event.alias is not None and event.kind.endswith(("alias_set", "alias_removed")):
            last[event.alias] = event
    unseen = []
    for alias, event in sorted(last.items()):
        if event.origin != "registry" or local.get(alias) == remote.get(alias):
            continue
        set_here = event.kind.endswith("alias_set")
        before = event.detail.get("previous") if set_here else event.version
        if remote.get(alias) == before:
            unseen.append(alias)
    return unseen


def delete_model_version(
    client: MlflowClient, registry: Registry, model: str, registry_version: int
) -> int | None:
    """Delete the version of MLflow registered model ``model`` mirroring ``registry``'s version
    ``registry_version``, which the registry deleted, so reviewers cannot point an alias at it;
    the MLflow version deleted, or None when there was none (never mirrored; or ``model`` is
    another registry's, whose versions are not this one's to delete)."""
    with mlflow_errors(f"delete the version mirroring {model}@{registry_version}"):
        try:
            if owned_model(client, registry, model) is None:
                return None  # never mirrored (pushed, not promoted)
        except MlflowNameError:
            return None
        mirrored = mlflow_version_of(client, model, registry_version)
        if mirrored is not None:
            client.delete_model_version(model, str(mirrored))
        return mirrored


def drop_deleted_mirrors(
    registry: Registry, client: MlflowClient, names: list[str] | None = None
) -> list[str]:
    """Delete the MLflow versions still mirroring registry versions that were deleted where
    MLflow did not follow (``Registry.delete`` from Python, or ``rm`` while MLflow was down), of
    adapters and compositions of ``names`` (default: all), so no reviewer points an alias at
    them; returns ``name@N`` (``composition name@N``) for each. One a reviewer's alias holds is
    left: the sync warns about that alias instead."""
    with mlflow_errors("list registered models"):
        models = registered_models(client, _under_prefix())
    # one query each, whatever the number of models (a shared server holds other registries'
    # models too: a name with no deletion here is skipped, ours or not)
    deleted_of = {
        False: registry.deleted_versions(),
        True: registry.deleted_versions(compositions=True),
    }
    dropped: list[str] = []
    for model in models:
        named = mirrored_name(model.name)
        if named is None or (names is not None and named[0] not in names):
            continue
        name, composition = named
        deleted = deleted_of[composition].get(name)
        if not deleted or not ours_or_warned(client, registry, model.name):
            continue
        held = {str(v) for v in client.get_registered_model(model.name).aliases.values()}
        with mlflow_errors(f"remove the mirrors of {name}'s deleted versions"):
            mirrors = {
                int(m.tags.get(VERSION_TAG, "0")): str(m.version)
                for m in client.search_model_versions(f"name='{model.name}'")
            }
            for number, mirrored in sorted(mirrors.items()):
                if number in deleted and mirrored not in held:
                    client.delete_model_version(model.name, mirrored)
                    dropped.append(f"{'composition ' if composition else ''}{name}@{number}")
    return dropped


def registered_models(
    client: MlflowClient, where: str | None = None, *, page_size: int = 1000
) -> list[RegisteredModel]:
    """Every registered model (matching ``where``), page after page (MLflow returns 100 by
    default: an unpaged search silently missed the rest)."""
    found: list[RegisteredModel] = []
    token = None
    while True:
        page = client.search_registered_models(where, max_results=page_size, page_token=token)
        found += page
        token = page.token
        if not token:
            return found


def _ensure_registered_model(
    client: MlflowClient, registry: Registry, version: AdapterVersion
) -> None:
    """The adapter's registered model, created (for ``registry``) if missing; one another
    registry mirrors into is refused (:func:`owned_model`)."""
    model = adapter_model(version.name)
    tags = {
        "adapterops.base_model": version.base_model,
        "adapterops.task": version.task,
        "adapterops.language": version.language,
        "adapterops.method": version.method,
    }
    what = f"{version.method} adapter for {version.task} ({version.language})"
    description = f"{what} on {version.base_model}"
    found = owned_model(client, registry, model)
    if found is None:
        owner = {REGISTRY_TAG: registry.identity}
        client.create_registered_model(model, tags={**tags, **owner}, description=description)
        return
    if any(found.tags.get(key) != value for key, value in tags.items()):
        # the name was bound anew in the registry (every old version removed): say the new
        for key, value in tags.items():
            client.set_registered_model_tag(model, key, value)
        client.update_registered_model(model, description=description)


def mlflow_version_of(client: MlflowClient, name: str, registry_version: int) -> int | None:
    """The MLflow version of registered model ``name`` mirroring ``registry_version``, if any."""
    found = client.search_model_versions(
        f"name='{name}' and tag.`{VERSION_TAG}`='{registry_version}'"
    )
    return int(found[0].version) if found else None
