"""``adapterops push``: an adapter folder trained elsewhere (or by ``adapterops train``) becomes a
registry version, with what can be checked without loading the base model.

Given the spec it was trained with, the version is one predict, evaluate and export can use as
they use a build's (the spec's method and head must be the folder's: the registry checks). A
base model on this machine must be the kind the adapter was trained on (its ``config.json``
against the adapter's fingerprint). Without metrics given, the evaluation ``adapterops train``
wrote beside the adapter (``report.json``, one of the version's files) is recorded. The version
is mirrored in MLflow as a build's is, with the registry's copy as its source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import AdapterFolderError, AdapterVersion, InvalidNameError, Registry, RegistryError
from registry.bundles import Bundle, check_adapter_folder, inspect_folder, read_json_object
from registry.entities import FUSION_MEMBERS
from registry.names import check_language, check_name
from registry.store import fusion_members

from .mlflow_names import model_prefix
from .models import check_trained_on, relative_base_note

__all__ = ["PushResult", "push_folder", "reported_metrics"]

IDENTITY = ("name", "base_model", "task", "language")  # what a version is registered under

RegistryOrOpener = Registry | Callable[[], Registry]
"""A registry, or what opens it once every check passed (the CLI's: the embedded default is
created on first open, so a refused push must not open it)."""


def opened(registry: RegistryOrOpener) -> Registry:
    """``registry`` itself, or the one its opener opens now."""
    return registry if isinstance(registry, Registry) else registry()


@dataclass(frozen=True)
class PushResult:
    """The version pushed, and what its pusher should know (sentences, not errors)."""

    version: AdapterVersion
    warnings: list[str] = field(default_factory=list)


def push_folder(
    registry: RegistryOrOpener,
    folder: Path,
    *,
    identity: dict[str, str | None],
    spec_file: Path | None = None,
    overrides: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    description: str = "",
    origin: str = "cli",
    mirror: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> PushResult:
    """Register ``folder`` under ``identity`` (``name``, ``base_model``, ``task``,
    ``language``; with ``spec_file``, read with ``overrides`` as ``train --set`` takes them,
    each defaults to the spec's, and one that differs from it is refused; without,
    ``base_model`` defaults to the base the folder's files name), then
    mirror the version in MLflow (``mirror``), where reviewers see it; ``on_bytes`` is told the
    bytes uploaded (a progress bar). Every
    check runs before anything is stored (and before an opener opens the registry); MLflow
    being down does not undo the registration."""
    check_adapter_folder(folder)  # a mistyped path is told first, not the flags it lacks
    warnings = []
    if not identity.get("base_model") and spec_file is None and (named := _base_named_in(folder)):
        identity = {**identity, "base_model": named[0]}
        warnings.append(
            f"no --base-model: registered under {named[0]!r}, the base {named[1]} names"
        )
    fields, spec = _identity_of(identity, spec_file, overrides)
    check_name(fields["name"])
    check_name(fields["task"], "task")
    check_language(fields["language"])
    check_trained_on(folder, fields["base_model"])
    relative = relative_base_note(fields["name"], fields["base_model"], registering="pushes")
    if relative is not None:
        warnings.append(relative)
    bundle = inspect_folder(folder)  # every file checked (and hashed once) before it opens
    lineage = _fusion_lineage(bundle, spec)
    if mirror:
        model_prefix()  # written wrong: refused before the registry is opened (or made)
    registry = opened(registry)
    unreachable = _check_mlflow_name(registry, fields["name"]) if mirror else None
    known_as = registry.base_models_for(folder)
    metrics = reported_metrics(folder) if metrics is None else metrics
    version = registry.register(
        bundle,
        **fields,
        metrics=metrics,
        description=description or (spec or {}).get("description", ""),
        spec=spec,
        lineage=lineage,
        origin=origin,
        on_bytes=on_bytes,
    )
    if unreachable is not None:  # told once: trying again would wait for it again
        warnings.append(_not_mirrored(version, unreachable))
    elif mirror:
        warnings += _mirrored(registry, version)
    if spec and version.spec != spec:  # the same bytes: the version registered before
        warnings.append(
            f"these files are {version.ref} already, registered "
            f"{'with another spec' if version.spec else 'without a spec'}; a version's record "
            f"does not change: to record this spec, adapterops rm {version.ref} and push again"
        )
    if any(version.metrics.get(key) != float(value) for key, value in metrics.items()):
        recorded = ", ".join(f"{k}={v:g}" for k, v in sorted(version.metrics.items())) or "none"
        warnings.append(
            f"these files are {version.ref} already, whose metrics stay as recorded ({recorded}); "
            f"a version's record does not change: to record these, adapterops rm {version.ref} "
            "and push again"
        )
    if known_as and version.base_model not in known_as:
        # Not refused: checkpoints of one architecture (a base and its instruct-tuned sibling)
        # share a fingerprint, so a new name may be right. A typo, though, binds the adapter name.
        warnings.append(
            f"base model {version.base_model!r} is new to the registry, and the base this "
            f"adapter was trained on is registered as {', '.join(map(repr, known_as))} (same "
            f"fingerprint). If that is its base: adapterops rm {version.ref}, then push again "
            f"with --base-model {known_as[0]}"
        )
    return PushResult(version, warnings)


def _check_mlflow_name(registry: Registry, name: str) -> Exception | None:
    """Refuse a push whose adapter's MLflow registered model is another registry's, before
    anything is stored (:func:`~flows.mlflow_models.check_name_is_ours`). MLflow being down
    is returned, not raised: the version is registered all the same, and that is told."""
    from . import tracking  # noqa: PLC0415 - MLflow is slow to import
    from .errors import TrackingUnavailableError  # noqa: PLC0415
    from .mlflow_models import check_name_is_ours  # noqa: PLC0415

    try:
        check_name_is_ours(tracking.client(), registry, name)
    except TrackingUnavailableError as exc:
        return exc
    return None


def _not_mirrored(version: AdapterVersion, reason: Exception) -> str:
    """What to tell when MLflow could not mirror ``version`` (pushing the same folder again,
    or promoting the version, creates it then)."""
    return f"{version.ref} is registered, but not in MLflow yet: {reason}"


def _mirrored(registry: Registry, version: AdapterVersion) -> list[str]:
    """Create the version's MLflow version (older ones MLflow lacks first, under the adapter's
    alias lock: pushes of one adapter at once gave MLflow's numbers in another order than the
    registry's); what to tell when MLflow cannot (pushing the same folder again, or promoting
    the version, creates it then)."""
    from . import tracking  # noqa: PLC0415 - MLflow is slow to import
    from .errors import TrackingUnavailableError  # noqa: PLC0415
    from .mlflow_models import mirror_earlier_versions, mirror_version  # noqa: PLC0415

    try:
        client = tracking.client()
        with registry.alias_lock(version.name):
            mirror_earlier_versions(client, registry, version)
            mirror_version(client, registry, version)
    except TrackingUnavailableError as exc:
        return [_not_mirrored(version, exc)]
    return []


def reported_metrics(folder: Path) -> dict[str, float]:
    """The numbers of the evaluation in ``folder``'s ``report.json`` (``{}`` without one)."""
    measured = read_json_object(folder / "report.json").get("metrics")
    return {
        key: float(value)
        for key, value in (measured if isinstance(measured, dict) else {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _fusion_lineage(bundle: Bundle, spec: dict[str, Any] | None) -> dict[str, Any]:
    """For a fusion, the exact members it was trained over (which it loads at every use): the
    ones ``adapterops train`` resolved and wrote in ``report.json``, else the spec's when it pins
    each (``name@3``); checked as the registry checks them, but told as what this folder says."""
    if bundle.method != "fusion":
        return {}
    reported = read_json_object(bundle.folder / "report.json").get("members")
    named = ((spec or {}).get("method") or {}).get("members")
    source, members = ("its report.json", reported) if reported is not None else ("the spec", named)
    if members is None:
        raise AdapterFolderError(
            f"{bundle.folder} holds an AdapterFusion, which loads the exact member versions it "
            "was trained over at every use, and neither a report.json there nor the spec lists "
            "them: push the folder `adapterops train` wrote (its report.json lists them), or "
            "give --spec with each member pinned (name@3)"
        )
    try:
        return {FUSION_MEMBERS: fusion_members(bundle, {FUSION_MEMBERS: members})}
    except RegistryError as exc:
        raise AdapterFolderError(f"the fusion's members as {source} lists them: {exc}") from None


def _base_named_in(folder: Path) -> tuple[str, str] | None:
    """``(base model, file)``: the base the folder's files say it was trained on, peft's
    ``base_model_name_or_path`` or the name in our fingerprint (None: they name none)."""
    fingerprint = read_json_object(folder / "adapter.json").get("fingerprint")
    stated = (
        (read_json_object(folder / "adapter_config.json").get("base_model_name_or_path"),
         "adapter_config.json"),
        (fingerprint.get("name_or_path") if isinstance(fingerprint, dict) else None,
         "adapter.json"),
    )  # fmt: skip
    for name, file in stated:
        if isinstance(name, str) and name.strip():
            return name.strip(), file
    return None


def _identity_of(
    given: dict[str, str | None], spec_file: Path | None, overrides: list[str] | None = None
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The name, base model, task and language to register under, and the spec to record."""
    if spec_file is None:
        missing = [f"--{key.replace('_', '-')}" for key in IDENTITY if not given.get(key)]
        if missing:
            raise InvalidNameError(
                f"push needs {', '.join(missing)} (or --spec SPEC, the spec it was trained "
                "with, whose fields they default to)"
            )
        return {key: str(given[key]) for key in IDENTITY}, None
    from .spec import load_spec  # noqa: PLC0415 - the spec module imports peft_core (torch)

    spec = load_spec(spec_file, overrides)
    fields = {key: str(getattr(spec, key)) for key in IDENTITY}
    for key in IDENTITY:
        value = given.get(key)
        if value is not None and value != fields[key]:
            raise InvalidNameError(
                f"--{key.replace('_', '-')} {value!r} differs from {spec_file}'s {key} "
                f"{fields[key]!r}: leave it out (the spec's is used) or give the spec the "
                "adapter was trained with"
            )
    return fields, spec.model_dump(mode="json")
