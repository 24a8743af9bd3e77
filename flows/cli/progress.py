"""What a command shows while it works, on a terminal only: spinners while it waits, bars
of rows or bytes (none with ``--json`` or when standard error is a log)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .output import errors, note


@contextmanager
def counting(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on a terminal's standard error that a ``(done, total)`` callback moves; ``None``
    (nothing shown) with ``--json`` or when standard error is a log, not a terminal."""
    with counting_with_steps(label, enabled=enabled) as (_, advance):
        yield advance


@contextmanager
def counting_with_steps(
    label: str, *, enabled: bool
) -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None] | None]]:
    """:func:`counting`'s bar, and a callback that names the step under way in its text
    (``LABEL: load the base model and sst2@3``), so the seconds before the first count say
    what they wait on. Both do nothing where :func:`counting` shows nothing."""
    if not enabled or not errors.is_terminal:
        yield (lambda _: None), None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=errors, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def say(step: str) -> None:
            bar.update(task, description=f"{label}: {step}")

        yield say, advance


# What a command waits on before its first line of its own (``waiting``'s text).
LOADING_FLOW_LIBRARIES = "loading torch, transformers and Prefect"
LOADING_LIBRARIES = "loading torch and transformers"


# Commands that move or read aliases go through MLflow first (reviewers move them in its UI).
READING_MLFLOW = "loading MLflow and reading its aliases"


@contextmanager
def waiting(what: str, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner saying ``what`` on a terminal's standard error, for the seconds a command has
    nothing else to show (loading torch, checking a spec's base model and data); the callback
    it yields changes the text as the work moves on. It leaves no line behind: an error that
    follows is still the only line. Nothing with ``--json`` or when standard error is a log."""
    if not enabled or not errors.is_terminal:
        yield lambda _: None
        return
    with errors.status(what) as spinner:
        yield spinner.update


@contextmanager
def byte_progress(
    label: str, total: int, *, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A bar of bytes moved (push, pull) on stderr while a person watches: a terminal, no
    ``--json``; ``None`` otherwise. Yields what to tell the bytes to (thread-safe: S3's multipart
    transfers report from several threads)."""
    with bytes_to_come(label, enabled=enabled and total > 0) as bar:
        if bar is None:
            yield None
            return
        set_total, advance = bar
        set_total(total)
        yield advance


@contextmanager
def bytes_to_come(
    label: str, *, enabled: bool
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]] | None]:
    """:func:`byte_progress` for work that learns its total once started (``db move`` reads
    every manifest first): yields ``(set_total, advance)``, or ``None`` where no bar is shown."""
    if not enabled or not errors.is_terminal:
        yield None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (
            lambda total: bar.update(task, total=total),
            lambda moved: bar.advance(task, moved),
        )


def waiting_for_a_gate(name: str, *, composition: bool = False) -> Callable[[], None]:
    """What an alias move by hand says (a ``note:`` line) when it must wait for a promotion
    gate of ``name`` deciding elsewhere: a build re-evaluating an LLM champion takes minutes."""
    deciding = (
        f"a cascade is scoring composition {name}"
        if composition
        else f"a promotion gate of {name} is deciding (a build, retrain or promote)"
    )
    return lambda: note(f"{deciding}; waiting for it to finish")
