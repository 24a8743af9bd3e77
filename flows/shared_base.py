"""Which registered versions can share one loaded base model, so that a base loads once for
many versions instead of once each (a 7B base in NF4 is quantised again at every load):
``predict A B C`` runs each group in shared batches (a row per version); ``evaluate A B C``
and ``db verify --probes`` load each version of a group beside the base in turn, run it, and
take it out again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peft_core as pc
from registry import AdapterVersion

from .members import members_of_version
from .spec import AdapterSpec

__all__ = ["sharing_groups"]


def sharing_groups(
    versions: Sequence[AdapterVersion], specs: Sequence[AdapterSpec | None]
) -> list[list[int]]:
    """The positions of ``versions`` (run with ``specs``) in groups that can share one loaded
    base model, in first-seen order: one base model, head and load settings. A version alone
    in its group loads its own: one without a spec (None), a full fine-tune (its weights are
    the model's), an adapter peft places (alone in its layers), a fusion (it runs over its
    members), or one whose method this code does not know."""
    groups: dict[Any, list[int]] = {}
    for position, (version, spec) in enumerate(zip(versions, specs, strict=True)):
        key = _base_key(spec) if spec is not None and _sits_beside_others(version) else None
        groups.setdefault(key if key is not None else ("alone", position), []).append(position)
    return list(groups.values())


def _base_key(spec: AdapterSpec) -> tuple[Any, ...]:
    head = spec.head
    labels = head.num_labels if head.type == "classification" else None
    return (spec.base_model, head.type, labels, spec.load.model_dump_json())


def _sits_beside_others(version: AdapterVersion) -> bool:
    if members_of_version(version):
        return False
    try:
        method = pc.method_of(version.method)
    except pc.PeftCoreError:
        return False
    return not (method.trains_whole_model or method.places_itself)
