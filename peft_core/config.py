"""Method configurations: small, frozen, validated on construction.

A configuration describes *what* to inject; ``peft_core.add_adapter`` does the injection. Each
method defines its configuration in its own module under ``peft_core/methods/``; this module
gathers the built-in ones and converts any registered one to and from a plain dict with a ``type``
key (``config_to_dict``/``config_from_dict``), so specs, saved adapters and the registry share one
spelling.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from .errors import ConfigError
from .methods import all_methods, method_of
from .methods.base import MethodConfig
from .methods.bitfit import BitFit
from .methods.bottleneck import Houlsby, Pfeiffer
from .methods.dora import DoRA
from .methods.full import FullFineTune
from .methods.fusion import Fusion
from .methods.hf_peft import AnyPeft
from .methods.ia3 import IA3
from .methods.lora import LoRA

__all__ = [
    "IA3",
    "AnyPeft",
    "BitFit",
    "DoRA",
    "FullFineTune",
    "Fusion",
    "Houlsby",
    "LoRA",
    "MethodConfig",
    "Pfeiffer",
    "config_from_dict",
    "config_to_dict",
]


def config_to_dict(config: MethodConfig) -> dict[str, Any]:
    """A JSON-ready dict with a ``type`` key; tuples become lists."""
    out = dataclasses.asdict(config)  # type: ignore[call-overload]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of :func:`config_to_dict`; unknown types or fields are a :class:`ConfigError`."""
    fields = dict(data)
    kind = fields.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"unknown method type {kind!r}; expected one of {sorted(all_methods())}")
    cls = method_of(kind).config_class
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"{kind}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for key, value in fields.items():
        if isinstance(value, list) and "tuple" in str(known[key].type):
            fields[key] = tuple(value)
    _check_field_types(kind, cls, fields)
    try:
        config: MethodConfig = cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"{kind}: {exc}") from None
    return config


def _check_field_types(kind: str, cls: type, fields: dict[str, Any]) -> None:
    """A value of the wrong type (``rank: "big"`` from a hand-written file) is named with the
    type its field takes, not left to fail inside a comparison in the config's own checks."""
    hints = typing.get_type_hints(cls)
    for key, value in fields.items():
        expected = hints.get(key, Any)
        if not _fits(value, expected):
            raise ConfigError(f"{kind}: {key} must be {_spelled(expected)}, got {value!r:.60}")


# What a plain field accepts: JSON has one number type, so a float field takes whole numbers too.
_PLAIN_CHECKS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _fits(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin is Literal:
        return value in args
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, tuple) and all(_fits(item, args[0]) for item in value)
    # Any, mappings and nested configs: the config's own checks' job
    check = _PLAIN_CHECKS.get(expected)
    return check is None or bool(check(value))


def _spelled(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spelled(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_spelled(args[0])}s"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(expected, "null" if expected is type(None) else str(expected))
