"""What commands print: the consoles (stdout for results, stderr for ``error:``, ``warning:``
and ``note:`` lines), ``--json`` documents, and tables that fit the terminal."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# markup=False: names, texts and messages print as written; "[sic]" in a text or "[q, v]" in a
# message is not a style to drop. Styles are given as Text(..., style=...) instead.
console = Console(markup=False)
errors = Console(stderr=True, markup=False)


def labelled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, then ``text`` as written: ``error: ...``, ``warning: ...``."""
    return Text.assemble((label, style), " ", text)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, whole at any width (logs grep it)."""
    errors.print(labelled("warning:", "yellow", message), highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """One ``note: ...`` line on stderr, whole at any width."""
    errors.print(labelled("note:", "cyan", message), highlight=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    """One JSON document on stdout (plain print: no wrapping, no colour)."""
    print(json.dumps(document, default=str))


def human_bytes(size: int) -> str:
    """``297992`` -> ``291.0 KB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


FOLDED_WIDTH = 20  # the least a folding column is given before columns are dropped


def print_columns(
    rows: dict[str, list[str]],
    *,
    keep: int = 3,
    numbers: Collection[str] = (),
    title: str | None = None,
    fold: Collection[str] = (),
) -> None:
    """A table of ``rows`` (column name -> cells), most wanted column first: columns that do
    not fit the terminal (CI logs are 80 wide) are dropped from the end, at least ``keep``
    stay, and a note names the dropped ones. The columns named in ``numbers`` are right-aligned.
    Given ``fold``, only those columns fold their cells (down to :data:`FOLDED_WIDTH`) to make
    room, the others keep theirs whole on one line."""
    shown = list(rows)
    while len(shown) > keep and _table_width(rows, shown, numbers, fold) > console.width:
        shown.pop()
    console.print(_table(rows, shown, numbers, fold, title=title))
    if len(shown) < len(rows):
        hidden = ", ".join(c for c in rows if c not in shown)
        note = f"not shown at this width: {hidden} (--json has every field)"
        console.print(note, style="dim", soft_wrap=True)


def _table(
    rows: dict[str, list[str]],
    columns: list[str],
    numbers: Collection[str],
    fold: Collection[str],
    *,
    title: str | None = None,
    folded_width: int | None = None,
) -> Table:
    table = Table(title=title)
    for column in columns:
        folds = not fold or column in fold
        table.add_column(
            column,
            overflow="fold",
            justify="right" if column in numbers else "left",
            no_wrap=not folds,
            max_width=folded_width if folds and fold else None,
        )
    for row in zip(*(rows[c] for c in columns), strict=True):
        table.add_row(*row)
    return table


def _table_width(
    rows: dict[str, list[str]], columns: list[str], numbers: Collection[str], fold: Collection[str]
) -> int:
    """Columns of the terminal the table takes without wrapping any cell (``fold`` columns'
    cells folded to :data:`FOLDED_WIDTH`)."""
    unbounded = console.options.update(max_width=100_000)
    table = _table(rows, columns, numbers, fold, folded_width=FOLDED_WIDTH)
    return Measurement.get(console, unbounded, table).maximum


def metrics_text(metrics: dict[str, Any], between: str = "\n") -> str:
    """Metrics as ``accuracy=0.91``, by name (a table cell: one per line)."""
    return between.join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def print_card(ref: str, aliases: tuple[str, ...], lines: dict[str, str]) -> None:
    """``show`` for a person: the ref and its aliases, then labelled lines (empty ones left
    out), folded to the terminal's width."""
    held = f" ({', '.join(aliases)})" if aliases else ""
    console.print(Text(f"{ref}{held}", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column(overflow="fold")
    for label, value in lines.items():
        if value:
            grid.add_row(label, Text(value))
    console.print(grid)
