"""Targets by role, resolved per model family, or by module-name pattern.

One spec (``targets: [q, v]``) works across families because each family maps the roles onto its
own module names here. A role can point at a slice of a fused projection: GPT-2's ``c_attn``
computes q, k and v in one matrix, so ``q`` is its first third of output features.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from .layer import layer_kind, named_base_modules

__all__ = ["ALL_LINEAR", "FAMILIES", "ROLES", "Family", "Target", "family_of", "find_targets"]

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "ffn_in", "ffn_out")
# Every Linear and Conv1D layer of the body, in any family: what peft's "all-linear" adapts
# (the head is not part of the body). Fused projections are adapted whole, as peft does.
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class RoleRule:
    """Where a role lives in one family: a regex on module names, maybe a slice of a fused layer."""

    pattern: str
    part: int | None = None  # index of the slice in a fused projection
    parts: int = 1  # how many equal slices the fused projection has


@dataclass(frozen=True)
class Family:
    """A model family: the model types it covers and where each role lives."""

    name: str
    model_types: tuple[str, ...]
    roles: dict[str, tuple[RoleRule, ...]]


def _rules(*patterns: str) -> tuple[RoleRule, ...]:
    return tuple(RoleRule(p) for p in patterns)


_BERT = r"(^|.*\.)layer\.\d+\."
_DISTIL = r"(^|.*\.)transformer\.layer\.\d+\."
_GPT2 = r"(^|.*\.)h\.\d+\."
_LLAMA = r"(^|.*\.)layers\.\d+\."

FAMILIES: tuple[Family, ...] = (
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        {
            "q": _rules(_BERT + r"attention\.self\.query"),
            "k": _rules(_BERT + r"attention\.self\.key"),
            "v": _rules(_BERT + r"attention\.self\.value"),
            "o": _rules(_BERT + r"attention\.output\.dense"),
            "ffn_in": _rules(_BERT + r"intermediate\.dense"),
            "ffn_out": _rules(_BERT + r"output\.dense"),
        },
    ),
    Family(
        "distilbert",
        ("distilbert",),
        {
            "q": _rules(_DISTIL + r"attention\.q_lin"),
            "k": _rules(_DISTIL + r"attention\.k_lin"),
            "v": _rules(_DISTIL + r"attention\.v_lin"),
            "o": _rules(_DISTIL + r"attention\.out_lin"),
            "ffn_in": _rules(_DISTIL + r"ffn\.lin1"),
            "ffn_out": _rules(_DISTIL + r"ffn\.lin2"),
        },
    ),
    Family(
        "gpt2",
        ("gpt2",),
        {
            "q": (RoleRule(_GPT2 + r"attn\.c_attn", part=0, parts=3),),
            "k": (RoleRule(_GPT2 + r"attn\.c_attn", part=1, parts=3),),
            "v": (RoleRule(_GPT2 + r"attn\.c_attn", part=2, parts=3),),
            "o": _rules(_GPT2 + r"attn\.c_proj"),
            "ffn_in": _rules(_GPT2 + r"mlp\.c_fc"),
            "ffn_out": _rules(_GPT2 + r"mlp\.c_proj"),
        },
    ),
    Family(
        "llama",
        ("llama", "mistral", "qwen2"),
        {
            "q": _rules(_LLAMA + r"self_attn\.q_proj"),
            "k": _rules(_LLAMA + r"self_attn\.k_proj"),
            "v": _rules(_LLAMA + r"self_attn\.v_proj"),
            "o": _rules(_LLAMA + r"self_attn\.o_proj"),
            "ffn_in": _rules(_LLAMA + r"mlp\.gate_proj", _LLAMA + r"mlp\.up_proj"),
            "ffn_out": _rules(_LLAMA + r"mlp\.down_proj"),
        },
    ),
)


def family_of(model_type: str) -> Family | None:
    """The family that covers ``model_type``, or ``None`` (then only patterns work)."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


@dataclass(frozen=True)
class Target:
    """One module to adapt: its name in the model and, for a fused projection, which slice."""

    module_name: str
    out_slice: tuple[int, int] | None = None
    role: str | None = None


def find_targets(
    model: nn.Module,
    targets: Iterable[str],
    *,
    model_type: str,
    out_features: dict[str, int],
) -> tuple[list[Target], list[str]]:
    """Resolve role names and patterns to module targets.

    Returns ``(targets, unmatched)``: the resolved targets in model order and every requested
    role/pattern that matched nothing. ``out_features`` maps candidate module names to their output
    width (needed to cut fused projections into slices).
    """
    family = family_of(model_type)
    modules = list(named_base_modules(model))
    names = [name for name, _ in modules]
    found: dict[tuple[str, tuple[int, int] | None], Target] = {}
    unmatched: list[str] = []
    for requested in targets:
        if requested == ALL_LINEAR:
            hits = [Target(name) for name, module in modules if _has_weight_matrix(module)]
        elif requested in ROLES:
            hits = _match_role(names, family, requested, out_features)
        else:
            hits = _match_pattern(names, requested)
        if not hits:
            unmatched.append(requested)
        for hit in hits:
            found.setdefault((hit.module_name, hit.out_slice), hit)
    order = {name: i for i, name in enumerate(names)}
    resolved = sorted(found.values(), key=lambda t: (order[t.module_name], t.out_slice or (0, 0)))
    return resolved, unmatched


def _has_weight_matrix(module: nn.Module) -> bool:
    kind = layer_kind(module)
    return kind is not None and kind.has_weight_matrix


def _match_role(
    names: list[str], family: Family | None, role: str, out_features: dict[str, int]
) -> list[Target]:
    if family is None:
        return []
    hits = []
    for rule in family.roles[role]:
        for name in names:
            if not re.fullmatch(rule.pattern, name):
                continue
            if rule.part is None:
                hits.append(Target(name, None, role))
            elif name in out_features:
                width = out_features[name] // rule.parts
                hits.append(Target(name, (rule.part * width, (rule.part + 1) * width), role))
    return hits


def _match_pattern(names: list[str], pattern: str) -> list[Target]:
    """A suffix (``"query"`` matches ``...self.query``) or a full regular expression."""
    try:
        regex = re.compile(pattern)
    except re.error:
        regex = None
    return [
        Target(name)
        for name in names
        if name == pattern
        or name.endswith("." + pattern)
        or (regex is not None and regex.fullmatch(name))
    ]
