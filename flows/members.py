"""The registered adapters a Fusion is built over: loaded frozen, by exact version.

A spec names members by reference (``name@champion``); training resolves each to ``name@N`` and
records it, and every later step (evaluation, the gate, predict) loads those exact versions, so a
champion that moves afterwards never changes what a fusion version means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.entities import FUSION_MEMBERS
from registry.names import member_name

if TYPE_CHECKING:
    from torch import nn

    from registry import AdapterVersion, Registry

    from .spec import AdapterSpec

__all__ = ["LINEAGE_KEY", "load_members", "members_of_spec", "members_of_version"]

LINEAGE_KEY = FUSION_MEMBERS  # the registry refuses to delete a version a fusion lists here


def members_of_spec(spec: AdapterSpec) -> list[str]:
    """The member references a spec names (empty unless its method is a fusion)."""
    from .spec import FusionSpec  # noqa: PLC0415 - the spec module imports this one

    return list(spec.method.members) if isinstance(spec.method, FusionSpec) else []


def members_of_version(version: AdapterVersion) -> list[str]:
    """The exact member versions a registered fusion was trained over."""
    return list(version.lineage.get(LINEAGE_KEY, []))


def load_members(model: nn.Module, refs: list[str], registry: Registry | None = None) -> list[str]:
    """Load each reference into ``model`` under its adapter name; returns ``name@N`` for each."""
    if not refs:
        return []
    if registry is None:
        from registry import Registry  # noqa: PLC0415 - only fusions need the registry here

        registry = Registry(create=False)  # members must be registered
    return [registry.load_into(model, ref, name=member_name(ref)).ref for ref in refs]
