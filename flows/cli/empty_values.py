"""An empty value on the command line is refused before a command runs, naming the parameter.

``--out "$OUT"`` with ``OUT`` unset reaches a command as ``--out ''``. ``Path('')`` reads it as
``.``: ``train --out ''`` wrote an adapter over the files of the folder a person stood in,
``push ''`` registered that folder as an adapter, ``pull REF ''`` downloaded into it. An empty
string fell through to a default (``push --base-model ''`` took the base the files name,
``predict --text-column ''`` read ``sentence``) or deeper (``evaluate --text-column ''`` ended
in a ``KeyError``). :func:`refuse_empty_values` makes every text and path parameter of the
command tree refuse a blank value; ``.`` typed as such still means this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from .help import element_type

__all__ = ["refuse_empty_values"]

# Parameters where a blank value is not refused here: an empty description is a description
# (none), and --text and --pool say of a blank value more than this module can (how to read
# standard input; which names Prefect takes)
_SAID_ELSEWHERE = frozenset({"description", "text", "pool"})


def refuse_empty_values(command: Any) -> Any:
    """Make every text and path parameter of ``command`` and its subcommands refuse a blank
    value (``''``, ``' '``), in place, saying what to give as its help page names it (run
    after :func:`flows.cli.help.plain_value_names`)."""
    for param in command.params:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        element = element_type(annotation)
        if param.name in _SAID_ELSEWHERE:
            continue
        path = isinstance(element, type) and issubclass(element, Path)
        if path or element is str:
            wanted = _value_name(param) or ("a path" if path else "a value")
            param.process_value = _refusing_blank(param, param.process_value, wanted)
    if isinstance(command, TyperGroup):
        for child in command.commands.values():
            refuse_empty_values(child)
    return command


def _value_name(param: Any) -> str:
    """What ``param`` takes, as its help page names it (``FILE``, ``DATABASE_URL``), or ""
    where that says no more than its type (``TEXT``, ``PATH``)."""
    shown = (param.metavar or "").strip("[]").removesuffix("...")
    return "" if shown in ("TEXT", "PATH") else shown


def _refusing_blank(
    param: Any, process_value: Callable[[Any, Any], Any], wanted: str
) -> Callable[[Any, Any], Any]:
    """``process_value`` of ``param`` (the conversion of what was typed), refusing a blank
    value first: after it, ``''`` is ``Path('.')`` and cannot be told from ``.``."""

    def process(ctx: Any, value: Any) -> Any:
        typed = value if isinstance(value, list | tuple) else (value,)
        blank = [one for one in typed if isinstance(one, str) and not one.strip()]
        if blank:
            raise typer.BadParameter(
                f"{blank[0]!r} is empty (an unset shell variable?): give {wanted}",
                ctx=ctx,
                param=param,
            )
        return process_value(ctx, value)

    return process
