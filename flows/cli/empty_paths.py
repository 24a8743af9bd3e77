"""An empty path on the command line is refused, not read as the current folder.

``--out "$OUT"`` with ``OUT`` unset reaches a command as ``--out ''``, which ``Path('')`` reads as
``.``: ``train --out ''`` wrote an adapter over the files of the folder a person stood in,
``push ''`` registered that folder as an adapter, ``pull REF ''`` downloaded into it.
:func:`refuse_empty_paths` makes every PATH parameter of the command tree refuse an empty value,
naming the parameter, before the command runs. ``.`` typed as such still means this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from .help import element_type

__all__ = ["refuse_empty_paths"]


def refuse_empty_paths(command: Any) -> Any:
    """Make every path parameter of ``command`` and its subcommands refuse ``''``, in place."""
    for param in command.params:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        element = element_type(annotation)
        if isinstance(element, type) and issubclass(element, Path):
            param.process_value = _refusing_empty(param, param.process_value)
    if isinstance(command, TyperGroup):
        for child in command.commands.values():
            refuse_empty_paths(child)
    return command


def _refusing_empty(param: Any, process_value: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """``process_value`` of ``param`` (the conversion of what was typed), refusing an empty
    value first: after it, ``''`` is ``Path('.')`` and cannot be told from ``.``."""

    def process(ctx: Any, value: Any) -> Any:
        typed = value if isinstance(value, list | tuple) else (value,)
        empty = [one for one in typed if isinstance(one, str) and not one.strip()]
        if empty:
            raise typer.BadParameter(
                f"{empty[0]!r} is empty (an unset shell variable?): give a path",
                ctx=ctx,
                param=param,
            )
        return process_value(ctx, value)

    return process
