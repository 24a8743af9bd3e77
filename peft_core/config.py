"""Method configurations: small, frozen, validated on construction.

A configuration describes *what* to inject; ``peft_core.add_adapter`` does the injection. Each
method defines its configuration in its own module under ``peft_core/methods/``; this module
gathers the built-in ones and converts any registered one to and from a plain dict with a ``type``
key (``config_to_dict``/``config_from_dict``), so specs, saved adapters and the registry share one
spelling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError
from .methods import all_methods, method_of
from .methods.base import MethodConfig
from .methods.bitfit import BitFit
from .methods.bottleneck import Houlsby, Pfeiffer
from .methods.dora import DoRA
from .methods.field_types import check_field_types, plain_values
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
        nest = (  # a method that takes another library's configuration whole (type: peft)
            f"; {kind}'s own fields go under config: {{type: {kind}, config: {{{unknown[0]}: "
            "...}}"
            if set(known) == {"config"} and "config" not in fields
            else ""
        )
        raise ConfigError(
            f"{kind}: unknown field(s) {unknown}; known fields: {sorted(known)}{nest}"
        )
    fields = plain_values(cls, fields)
    check_field_types(kind, cls, fields, sequence="list")  # a file holds lists
    try:
        config: MethodConfig = cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"{kind}: {exc}") from None
    return config
