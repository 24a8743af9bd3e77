"""Help pages people read: value names, not Python types.

Typer shows each option's Python annotation as its value name (``<list[str]>``, ``<bool>`` after a
flag, ``<int range>``). :func:`plain_value_names` replaces them with the names Unix tools use
(``TEXT``, ``PATH``, ``INTEGER``, ``PORT``; nothing after a flag) unless an option chose its own
``metavar``, and writes arguments in capitals (``FOLDER``, like ``REF`` and ``SPEC``). It runs on
the built command tree, so every command and group follows the same rule.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup

__all__ = ["element_type", "plain_value_names"]

_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def plain_value_names(command: Any, help_names: tuple[str, ...] = ("-h", "--help")) -> Any:
    """Give every parameter of ``command`` and its subcommands a plain value name, in place."""
    # The help option is made on first use and cached; make it now so that it is renamed too.
    help_option = command.get_help_option(typer.Context(command, help_option_names=[*help_names]))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperArgument):
            param.metavar = param.metavar or param.name.upper()
            name = _type_name(param)
            if name is not None:  # an argument's metavar is its name; its type column changes
                shown = f"{name}..." if param.nargs != 1 else name
                param.display_type_rich = lambda ctx, shown=shown: shown  # type: ignore[method-assign,misc]
        elif param is not None and param.metavar is None:  # an option the author left unnamed
            name = "" if param.is_flag else _type_name(param)  # --json, --help: nothing follows
            if name is not None:
                param.metavar = name
    if isinstance(command, TyperGroup):
        for child in command.commands.values():
            plain_value_names(child, help_names)
    return command


def _type_name(param: Any) -> str | None:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    element = element_type(annotation)
    if isinstance(element, type) and issubclass(element, Path):
        element = Path
    name = _NAMES.get(element)
    if name == "INTEGER" and (param.name or "").endswith("port"):
        return "PORT"
    return name


def element_type(annotation: Any) -> Any:
    """``list[Path] | None`` -> ``Path``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        real = [a for a in typing.get_args(annotation) if a is not type(None)]
        return element_type(real[0]) if len(real) == 1 else annotation
    if origin in (list, tuple):
        return element_type(typing.get_args(annotation)[0])
    return annotation
