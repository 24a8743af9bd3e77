"""The table of PEFT methods: every module here that defines ``METHOD`` (one or a tuple) adds it.

    from peft_core.methods import all_methods, method_of
    method_of("lora").mergeable            # True
    method_of(pc.Houlsby()).fusable        # True

The table is built on first use from the modules in this package, then from the
``peft_core.methods`` entry-point group (other packages' methods), so a new method is one new file.
:func:`register_method` adds one at run time (tests, notebooks).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from ..errors import ConfigError
from .base import CombineReport, LayerSite, MergeReport, Method, MethodConfig, PeftImport

__all__ = [
    "CombineReport",
    "LayerSite",
    "MergeReport",
    "Method",
    "MethodConfig",
    "PeftImport",
    "all_methods",
    "method_of",
    "register_method",
]

_TABLE: dict[str, Method] = {}
_ENTRY_POINT_GROUP = "peft_core.methods"
_NOT_METHODS = {"base", "parts"}


def register_method(method: Method) -> Method:
    """Add ``method`` to the table (its ``type`` must be new) and return it."""
    _discover()
    _add(method)
    return method


def all_methods() -> dict[str, Method]:
    """Every known method by type tag, in listing order."""
    _discover()
    return dict(sorted(_TABLE.items(), key=lambda item: (item[1].order, item[0])))


def method_of(config_or_type: Any) -> Method:
    """The method of a configuration object or a type tag (``"lora"``)."""
    _discover()
    kind = config_or_type if isinstance(config_or_type, str) else config_or_type.type
    if kind not in _TABLE:
        raise ConfigError(f"unknown method type {kind!r}; expected one of {sorted(_TABLE)}")
    return _TABLE[kind]


def _add(method: Method) -> None:
    existing = _TABLE.get(method.type)
    if existing is not None and existing is not method:
        raise ConfigError(f"a method of type {method.type!r} is already registered")
    _TABLE[method.type] = method


_discovered = False


def _discover() -> None:
    global _discovered  # noqa: PLW0603 - the table is built once, on first use
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "METHOD", ())
        for method in declared if isinstance(declared, tuple) else (declared,):
            _add(method)
    for entry in entry_points(group=_ENTRY_POINT_GROUP):
        method = entry.load()
        if not isinstance(method, Method):
            raise ConfigError(f"entry point {entry.value} is not a peft_core Method")
        _add(method)
