"""Composition blocks: small immutable values and one table of allowed nestings.

    pc.set_active(model, pc.Stack("pt", "sst2"))         # language adapter, then task adapter
    pc.set_active(model, pc.Average("a", "b", weights=(0.7, 0.3)))

- ``Stack(a, b, ...)``: sequential; in every layer the output of one adapter feeds the next.
- ``Average(a, b, ..., weights=...)``: the weighted mean of the adapters' outputs in every layer,
  ``y + sum_i w_i (adapter_i(y) - y)`` (adapters library semantics).
- ``Parallel(a, b, ...)`` and ``Fuse(a, b, ...)`` are defined here with their nesting rules so that
  specs and the registry can already store them.

Blocks serialise to plain JSON (``to_dict`` / ``from_dict``) so the registry stores compositions
as versioned records over exact member versions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from .errors import ConfigError

__all__ = [
    "ALLOWED_NESTINGS",
    "Average",
    "Block",
    "CompositionError",
    "Fuse",
    "Parallel",
    "Stack",
    "block_from_dict",
    "block_to_dict",
    "leaves",
    "named_twice",
    "validate",
]


class CompositionError(ConfigError):
    """An invalid composition: an illegal nesting, an unknown adapter, bad weights."""


def weight_value(weight: object, what: str) -> float:
    """``weight`` as a float, or a CompositionError naming ``what`` and the value: a real number
    or a string holding one (a JSON definition may quote it); not a bool (True read as 1.0)."""
    if not isinstance(weight, bool) and isinstance(weight, numbers.Real | str):
        try:
            return float(weight)
        except ValueError:  # a string that is not a number: Python's line named no argument
            pass
    raise CompositionError(f"{what} must be a number, got {weight!r:.40}")


@dataclass(frozen=True, init=False)
class _Block:
    children: tuple[Block, ...]
    kind: ClassVar[str] = ""

    def __init__(self, *children: Block) -> None:
        if len(children) < 1:
            raise CompositionError(f"{type(self).__name__} needs at least one adapter")
        for child in children:  # Stack("a", 3) was accepted here and refused only when used
            if not isinstance(child, str | _Block):
                raise CompositionError(
                    f"{type(self).__name__}'s members are adapter names or blocks, got "
                    f"{type(child).__name__} {child!r:.40}"
                )
        object.__setattr__(self, "children", tuple(children))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.children))})"


@dataclass(frozen=True, init=False, repr=False)
class Stack(_Block):
    """Adapters applied one after the other in every layer."""

    kind: ClassVar[str] = "stack"


@dataclass(frozen=True, init=False, repr=False)
class Parallel(_Block):
    """The same input through several adapters at once, one output per adapter."""

    kind: ClassVar[str] = "parallel"


@dataclass(frozen=True, init=False, repr=False)
class Fuse(_Block):
    """AdapterFusion: a trained attention over the outputs of frozen adapters."""

    kind: ClassVar[str] = "fuse"


@dataclass(frozen=True, init=False, repr=False)
class Average(_Block):
    """The weighted mean of the adapters' outputs (weights default to equal)."""

    weights: tuple[float, ...]
    kind: ClassVar[str] = "average"

    def __init__(self, *children: Block, weights: Iterable[float] | None = None) -> None:
        super().__init__(*children)
        if isinstance(weights, str | bytes) or not isinstance(weights, Iterable | None):
            # a string was read digit by digit: weights="12" gave (1.0, 2.0)
            raise CompositionError(
                f"Average weights are a list of numbers, one per adapter, got {weights!r:.40}"
            )
        values = (
            tuple(weight_value(w, "each Average weight") for w in weights)
            if weights is not None
            else None
        )
        if values is None:
            values = tuple(1.0 / len(children) for _ in children)
        if len(values) != len(children):
            raise CompositionError(
                f"Average has {len(children)} adapters but {len(values)} weights"
            )
        if not all(math.isfinite(value) for value in values):  # NaN would spread to every output
            raise CompositionError(f"Average weights must be finite numbers, got {values}")
        object.__setattr__(self, "weights", values)

    def __repr__(self) -> str:
        return f"Average({', '.join(map(repr, self.children))}, weights={self.weights})"


Block = str | Stack | Parallel | Fuse | Average

# What may appear inside what: the one source of nesting rules (set_active, per-row routing and
# the registry all validate against it). The adapters library also allows Parallel inside Stack
# and Stack inside Parallel; peft_core runs Parallel as the outermost block over plain adapters.
ALLOWED_NESTINGS: dict[type[_Block], tuple[type, ...]] = {
    Stack: (str, Stack, Average, Fuse),
    Parallel: (str,),
    Fuse: (str,),
    Average: (str, Stack),
}
_BY_KIND: dict[str, type[_Block]] = {cls.kind: cls for cls in ALLOWED_NESTINGS}


def validate(block: Block, known: Iterable[str] | None = None) -> None:
    """Raise :class:`CompositionError` for an illegal nesting or an adapter not in ``known``."""
    names = set(known) if known is not None else None
    _validate(block, names, path=repr(block))


def _validate(block: Block, known: set[str] | None, *, path: str) -> None:
    if isinstance(block, str):
        if known is not None and block not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise CompositionError(
                f"{path}: no adapter {block!r} in the model; adapters: {listing}"
            )
        return
    if not isinstance(block, _Block):
        raise CompositionError(f"{path}: {block!r} is not an adapter name or a composition block")
    allowed = ALLOWED_NESTINGS[type(block)]
    for child in block.children:
        if not isinstance(child, allowed):
            raise CompositionError(
                f"{path}: {type(child).__name__} cannot be nested inside {type(block).__name__} "
                f"(allowed: {', '.join(a.__name__ for a in allowed)})"
            )
        _validate(child, known, path=path)


def named_twice(block: Block) -> list[str]:
    """Adapter names that take more than one place in ``block``, in order of first repeat.

    A model holds one adapter per name, so a name twice would run the same weights twice
    (``Stack``), or give two outputs under one key (``Parallel``): always a slip.
    """
    seen: list[str] = []
    twice: list[str] = []

    def walk(node: Block) -> None:
        if isinstance(node, str):
            if node in seen and node not in twice:
                twice.append(node)
            seen.append(node)
            return
        for child in node.children:
            walk(child)

    walk(block)
    return twice


def leaves(block: Block | None) -> list[str]:
    """Adapter names in ``block``, in order (no duplicates)."""
    if block is None:
        return []
    if isinstance(block, str):
        return [block]
    out: list[str] = []
    for child in block.children:
        out += [name for name in leaves(child) if name not in out]
    return out


def block_to_dict(block: Block) -> dict[str, Any] | str:
    """Plain JSON: a name, or ``{"type": "stack", "children": [...]}`` (plus ``weights``)."""
    if isinstance(block, str):
        return block
    data: dict[str, Any] = {
        "type": block.kind,
        "children": [block_to_dict(c) for c in block.children],
    }
    if isinstance(block, Average):
        data["weights"] = list(block.weights)
    return data


def block_from_dict(data: dict[str, Any] | str) -> Block:
    """Inverse of :func:`block_to_dict`, validated."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and data.get("type") not in _BY_KIND:
        raise CompositionError(
            f"unknown composition type {data.get('type')!r}; one of {', '.join(sorted(_BY_KIND))}"
        )
    try:
        cls = _BY_KIND[data["type"]]
        children = [block_from_dict(c) for c in data["children"]]
    except (KeyError, TypeError) as exc:
        raise CompositionError(f"not a composition: {data!r} ({exc})") from None
    block: Block = (
        Average(*children, weights=data.get("weights"))
        if cls is Average
        else cast(Stack | Parallel | Fuse, cls(*children))
    )
    validate(block)
    return block
