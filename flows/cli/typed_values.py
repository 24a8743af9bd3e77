"""A value on the command line that no command could use is refused before a command runs,
naming the parameter: an empty one, or text that is not UTF-8.

``--out "$OUT"`` with ``OUT`` unset reaches a command as ``--out ''``. ``Path('')`` reads it as
``.``: ``train --out ''`` wrote an adapter over the files of the folder a person stood in,
``push ''`` registered that folder as an adapter, ``pull REF ''`` downloaded into it. An empty
string fell through to a default (``push --base-model ''`` took the base the files name,
``predict --text-column ''`` read ``sentence``) or deeper (``evaluate --text-column ''`` ended
in a ``KeyError``). Bytes that are not UTF-8 (a Latin-1 terminal, a file's contents pasted
through a shell variable) reach Python as lone surrogates, which SQL drivers and tokenizers
cannot encode: ``ls --task $'t\\xff'`` ended in a ``UnicodeEncodeError`` traceback.

:func:`refuse_unusable_values` makes every text and path parameter of the command tree refuse a
blank value (``.`` typed as such still means this folder), and every text parameter a value
that is not UTF-8. A path may hold any bytes a filesystem takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from .help import element_type

__all__ = ["not_utf8_byte", "not_utf8_setting", "refuse_unusable_values"]

# Parameters where a blank value is not refused here: an empty description is a description
# (none), and --text and --pool say of a blank value more than this module can (how to read
# standard input; which names Prefect takes)
_BLANK_SAID_ELSEWHERE = frozenset({"description", "text", "pool"})


def refuse_unusable_values(command: Any) -> Any:
    """Make every text and path parameter of ``command`` and its subcommands refuse a blank
    value (``''``, ``' '``), saying what to give as its help page names it, and every text
    parameter a value that is not UTF-8; in place (run after
    :func:`flows.cli.help.plain_value_names`)."""
    for param in command.params:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        element = element_type(annotation)
        path = isinstance(element, type) and issubclass(element, Path)
        if path or element is str:
            wanted = _value_name(param) or ("a path" if path else "a value")
            blank = param.name not in _BLANK_SAID_ELSEWHERE
            param.process_value = _refusing(param, param.process_value, wanted, blank, not path)
    if isinstance(command, TyperGroup):
        for child in command.commands.values():
            refuse_unusable_values(child)
    return command


def _value_name(param: Any) -> str:
    """What ``param`` takes, as its help page names it (``FILE``, ``DATABASE_URL``), or ""
    where that says no more than its type (``TEXT``, ``PATH``)."""
    shown = (param.metavar or "").strip("[]").removesuffix("...")
    return "" if shown in ("TEXT", "PATH") else shown


def _refusing(
    param: Any,
    process_value: Callable[[Any, Any], Any],
    wanted: str,
    blank: bool,
    utf8: bool,
) -> Callable[[Any, Any], Any]:
    """``process_value`` of ``param`` (the conversion of what was typed), refusing first a
    blank value (``blank``: after it, ``''`` is ``Path('.')`` and cannot be told from ``.``)
    and text that is not UTF-8 (``utf8``)."""

    def process(ctx: Any, value: Any) -> Any:
        for one in value if isinstance(value, list | tuple) else (value,):
            if not isinstance(one, str):
                continue
            if blank and not one.strip():
                raise typer.BadParameter(
                    f"{one!r} is empty (an unset shell variable?): give {wanted}",
                    ctx=ctx,
                    param=param,
                )
            if utf8 and not_utf8_byte(one) is not None:
                shown = one.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                raise typer.BadParameter(
                    f"{shown!r} is not UTF-8 text (each byte that is not shows as \ufffd): "
                    "type it in UTF-8",
                    ctx=ctx,
                    param=param,
                )
        return process_value(ctx, value)

    return process


def not_utf8_byte(text: str) -> int | None:
    """The first byte of ``text`` that was not UTF-8, or None: Python reads such bytes (from
    arguments, standard input) as lone surrogates, byte B as U+DC00 + B (surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return ord(text[exc.start]) - 0xDC00
    return None


# The settings adapterops and the libraries it drives read from the environment: the
# registry's, MLflow's, Prefect's, S3's (boto3) and the Hugging Face hub's. The registry's own
# locations are said by registry.settings, with what to give (a folder; from Python too).
_SETTING_PREFIXES = ("ADAPTEROPS_", "MLFLOW_", "PREFECT_", "AWS_", "HF_")
_SAID_BY_THE_REGISTRY = frozenset(
    {"ADAPTEROPS_HOME", "ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL"}
)


def not_utf8_setting(environment: Mapping[str, str]) -> str | None:
    """What to say of the first setting in ``environment`` that is not UTF-8 text, or None.
    Its value is not shown: it may be a secret. ``MLFLOW_TRACKING_URI`` with a Latin-1 byte
    was a ``UnicodeEncodeError`` traceback from inside MLflow's client."""
    for name, value in sorted(environment.items()):
        ours = name.startswith(_SETTING_PREFIXES) and name not in _SAID_BY_THE_REGISTRY
        byte = not_utf8_byte(value) if ours else None
        if byte is not None:
            position = value.index(chr(0xDC00 + byte))
            return (
                f"the environment variable {name} is not UTF-8 text (byte {byte:#04x} at "
                f"position {position}): set it in UTF-8"
            )
    return None
