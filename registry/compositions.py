"""The one JSON shape of a composition: peft_core's ``{"type": ..., "children": [...]}``.

A registered composition's definition is stored in exactly the shape ``peft_core.block_to_dict``
writes and ``peft_core.block_from_dict`` reads, with every leaf an exact version (``name@3``), so
a stored definition activates as it is: ``pc.set_active(model, pc.block_from_dict(definition))``
after loading its members under those names.

Older definitions used ``"members"`` for the children (migration 0002 rewrote stored ones); they
are still accepted on the way in.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidCompositionError
from .names import member_name

__all__ = [
    "BLOCK_KINDS",
    "answers_per_member",
    "canonical_definition",
    "named_twice",
    "stack_definition",
    "with_leaves",
]

CHILDREN = "children"
_OLD_CHILDREN = "members"
BLOCK_KINDS = ("stack", "average", "parallel", "fuse")  # peft_core's blocks (no torch here)


def stack_definition(refs: list[str]) -> dict[str, Any]:
    """A plain stack over ``refs``, in the one shape."""
    return {"type": "stack", CHILDREN: list(refs)}


def canonical_definition(definition: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    """``definition`` in the one shape, its leaves replaced in order by the exact ``refs``.

    ``{"type": "stack"}`` alone means that block over every member; a definition with children
    must name exactly as many leaves as there are members. Nesting rules are peft_core's.
    """
    if not isinstance(definition, dict) or not isinstance(definition.get("type"), str):
        raise InvalidCompositionError(
            f'a composition definition is {{"type": ..., "children": [...]}}, got {definition!r}'
        )
    twice = named_twice(refs)
    if twice:  # what load_definition would refuse at every load: refused once, here
        raise InvalidCompositionError(
            f"the members name {', '.join(twice)} twice: a composition holds one version of "
            "each adapter (its members load into one model under their adapters' names)"
        )
    renamed = _renamed(definition)
    _check_kinds(renamed)  # before counting leaves: an unknown block counted as none
    if CHILDREN not in renamed:
        renamed = {**renamed, CHILDREN: list(refs)}
    leaves = iter(refs)
    count = _count_leaves(renamed)
    if count != len(refs):
        raise InvalidCompositionError(
            f"the definition has {count} adapter(s) but {len(refs)} member(s) were given "
            f"({', '.join(refs)}); list each member once, in the order of the definition's leaves"
        )
    _check_leaves_follow_members(_leaves(renamed), refs)
    exact = with_leaves(renamed, leaves)
    import peft_core as pc  # noqa: PLC0415 - torch only when a composition is written

    try:
        canonical = dict(pc.block_to_dict(pc.block_from_dict(exact)))  # type: ignore[arg-type]
    except pc.CompositionError as exc:
        raise InvalidCompositionError(f"invalid composition: {exc}") from None
    if _holds_fuse(canonical):  # it would be refused at every load, never at the save
        raise InvalidCompositionError(
            "a composition cannot hold a Fuse block: AdapterFusion's attention over its members "
            "is an adapter of its own, trained, which a composition's members do not include; "
            "build it from a spec (method: {type: fusion, members: [...]}) and predict with "
            "that version"
        )
    return canonical


def _holds_fuse(node: Any) -> bool:
    """Whether a block (in the one shape) or any block inside it is a Fuse."""
    if not isinstance(node, dict):
        return False
    return node.get("type") == "fuse" or any(_holds_fuse(c) for c in node.get(CHILDREN, []))


def answers_per_member(definition: dict[str, Any]) -> bool:
    """Whether the composition is a Parallel block: one answer per member, side by side, where
    every other composition gives one answer (peft_core runs Parallel only outermost)."""
    return definition.get("type") == "parallel"


def named_twice(refs: list[str]) -> list[str]:
    """The adapter names more than one of ``refs`` (``a@1``, ``a@2``) name: one model holds one
    adapter per name, so a composition's members load under distinct ones."""
    names = [ref.partition("@")[0] for ref in refs]
    return sorted({name for name in names if names.count(name) > 1})


def _renamed(node: Any) -> Any:
    """The old ``members`` key as ``children``, at every level."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k != _OLD_CHILDREN}
    if _OLD_CHILDREN in node and CHILDREN not in node:
        out[CHILDREN] = node[_OLD_CHILDREN]
    if isinstance(out.get(CHILDREN), list):
        out[CHILDREN] = [_renamed(child) for child in out[CHILDREN]]
    return out


def _check_kinds(node: Any) -> None:
    """Every block's type is one peft_core knows, and every leaf is a member's place (a
    string): ``{"type": "adapter", "name": "x"}`` for a leaf was counted as a block with no
    leaves ("the definition has 0 adapter(s)")."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind not in BLOCK_KINDS:
        raise InvalidCompositionError(
            f"unknown composition type {kind!r}; one of {', '.join(sorted(BLOCK_KINDS))} (in "
            f"{json.dumps(node, default=str):.120}; a leaf is a member's name, a string, in its "
            f"block's {CHILDREN!r})"
        )
    children = node.get(CHILDREN)
    if children is not None and not isinstance(children, list):
        raise InvalidCompositionError(
            f"{CHILDREN!r} of a {kind} block is a list of members' names or blocks, got "
            f"{json.dumps(children, default=str)}"
        )
    for child in children or []:
        _check_kinds(child)


def _count_leaves(node: Any) -> int:
    if isinstance(node, dict):
        return sum(_count_leaves(child) for child in node.get(CHILDREN) or [])
    return 1


def _leaves(node: Any) -> list[Any]:
    """A definition's leaves, in order."""
    if isinstance(node, dict):
        return [leaf for child in node.get(CHILDREN) or [] for leaf in _leaves(child)]
    return [node]


def _check_leaves_follow_members(leaves: list[Any], refs: list[str]) -> None:
    """The members fill the leaves in order, whatever the leaves say; a leaf that names
    another member than the one in its place (``children: [b, a]`` with members ``a b``) was
    silently swapped, and a stack's order is what it computes."""
    named = {member_name(ref): ref for ref in refs}
    meant = [named.get(member_name(leaf)) if isinstance(leaf, str) else None for leaf in leaves]
    for place, (leaf, ref, member) in enumerate(zip(leaves, refs, meant, strict=True), start=1):
        if member is not None and member != ref:
            reordered = " ".join(m for m in meant if m) if all(meant) else ""
            raise InvalidCompositionError(
                f"the definition's leaf {place} is {leaf!r}, but the member in that place is "
                f"{ref}: the members fill the leaves in the order they are given"
                + (f"; give them as the definition orders them: {reordered}" if reordered else "")
            )


def with_leaves(node: Any, leaves: Any) -> Any:
    """``node`` with its leaves replaced, in order, by the items of iterator ``leaves``."""
    if isinstance(node, dict):
        return {**node, CHILDREN: [with_leaves(c, leaves) for c in node.get(CHILDREN) or []]}
    return next(leaves)
