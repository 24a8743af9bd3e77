"""Which MLflow registered model mirrors which adapter or composition of this registry.

One MLflow server is often shared: by a staging and a production registry, by several teams.
Two registries mirroring adapters of one name into one registered model read each other's
aliases (a promotion in one became the other's champion at its next sync, with no gate) and
numbered their versions over each other's. So:

- ``ADAPTEROPS_MLFLOW_PREFIX`` (``staging.``, ``team-a-``) goes before the name of every
  registered model this registry mirrors, and of its experiment: registries sharing a server
  each give theirs, and keep apart;
- every registered model a registry mirrors into carries its identity (tag
  ``adapterops.registry``). Writing to one that another registry's identity holds is refused,
  with a line naming the prefix setting; a sync leaves it alone. A model mirrored before
  registries were told apart (no tag) is claimed by the first registry that touches it.
"""

from __future__ import annotations

import os
import re

from registry.names import NAME_PATTERN

from .errors import MlflowNameError

__all__ = [
    "COMPOSITION_PREFIX",
    "NOTE_TAG",
    "PREFIX_VARIABLE",
    "REGISTRY_TAG",
    "adapter_model",
    "composition_model",
    "mirrored_name",
    "model_prefix",
    "taken_message",
]

PREFIX_VARIABLE = "ADAPTEROPS_MLFLOW_PREFIX"
REGISTRY_TAG = "adapterops.registry"  # the identity of the registry a registered model mirrors
NOTE_TAG = "mlflow.note.content"  # a run's description in MLflow's UI
COMPOSITION_PREFIX = "composition."  # registry names hold no '.': never an adapter's model
# MLflow refuses '/' and ':' in names; quotes would break its search filters; keep to these
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME = re.compile(NAME_PATTERN)


def model_prefix() -> str:
    """``ADAPTEROPS_MLFLOW_PREFIX`` (empty when unset), checked: a prefix MLflow would refuse,
    or one its search filters would misread, is a :class:`MlflowNameError` before any work."""
    prefix = os.environ.get(PREFIX_VARIABLE, "").strip()
    if prefix and not _PREFIX.fullmatch(prefix):
        raise MlflowNameError(
            f"{PREFIX_VARIABLE}={prefix!r}: write it with letters, digits, '.', '_' and '-' "
            "only, starting with a letter or digit, at most 64 characters (e.g. staging.): it "
            "goes before each MLflow model name of this registry"
        )
    return prefix


def adapter_model(name: str) -> str:
    """The MLflow registered model mirroring adapter ``name``."""
    return f"{model_prefix()}{name}"


def composition_model(name: str) -> str:
    """The MLflow registered model mirroring composition ``name``."""
    return f"{model_prefix()}{COMPOSITION_PREFIX}{name}"


def mirrored_name(model: str) -> tuple[str, bool] | None:
    """``(registry name, is a composition)`` for MLflow registered model ``model``; None for
    a model no registry under this prefix could mirror (another registry's under another
    prefix, another team's model named as no adapter can be: ``team.model``)."""
    prefix = model_prefix()
    if not model.startswith(prefix):
        return None
    name = model.removeprefix(prefix)
    composition = name.startswith(COMPOSITION_PREFIX)
    name = name.removeprefix(COMPOSITION_PREFIX)
    return (name, composition) if _NAME.fullmatch(name) else None


def taken_message(model: str, tracking: str, holder: str | None, identity: str) -> str:
    """Why registered model ``model`` at ``tracking``, whose tag names registry ``holder``,
    cannot be the mirror of registry ``identity`` (``adapterops db status`` shows a
    registry's), and what to do."""
    prefix = model_prefix()
    now = f"{PREFIX_VARIABLE}={prefix}" if prefix else f"{PREFIX_VARIABLE} unset"
    whose = f"registry {holder}" if holder else "a registry whose versions have other files"
    named = mirrored_name(model)
    what = "a composition" if named is not None and named[1] else "an adapter"
    return (
        f"MLflow model {model!r} at {tracking} mirrors {what} of {whose}, not of this "
        f"registry ({identity}; {now}): registries that share an MLflow server each need "
        f"their own model names. Set {PREFIX_VARIABLE} for this registry (e.g. staging.) or "
        "give it its own MLFLOW_TRACKING_URI; nothing was changed in MLflow"
    )
