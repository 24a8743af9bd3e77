"""``adapterops composition ls | show | alias | unalias | history | predict``: saved
compositions (stacks, averages over exact member versions), their aliases and event logs, and
predictions through them. Compositions are saved from Python
(``Registry.register_composition``) and by the retraining cascade."""

from __future__ import annotations

from typing import Annotated

import typer

from registry import Composition, Registry

from .common import (
    JsonOption,
    SkipProbeOption,
    TextOption,
    console,
    emit_json,
    print_columns,
    quiet_libraries,
    user_errors,
)
from .operate import show_predictions
from .registry import show_events

__all__ = ["composition_app"]

composition_app = typer.Typer(
    help="Saved compositions (stacks, averages) and their aliases.", no_args_is_help=True
)

CompositionRef = Annotated[
    str, typer.Argument(help="name, name@VERSION or name@ALIAS", metavar="REF")
]


@composition_app.command("ls")
def list_compositions(as_json: JsonOption = False) -> None:
    """The newest version of every composition."""
    with user_errors(as_json):
        compositions = Registry().compositions()
    _print(compositions, as_json)


@composition_app.command()
def show(ref: CompositionRef, as_json: JsonOption = False) -> None:
    """One composition version: its definition, members and aliases."""
    with user_errors(as_json):
        composition = Registry().composition(ref)
    _print([composition], as_json, single=True)


@composition_app.command()
def alias(
    ref: CompositionRef,
    name: Annotated[str, typer.Argument(help="Alias to set or move, e.g. champion.")],
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a composition version (moving it from another version if needed)."""
    with user_errors(as_json):
        composition = Registry().set_composition_alias(ref, name, origin="cli")
    _print([composition], as_json, single=True)


@composition_app.command()
def unalias(
    composition: Annotated[str, typer.Argument(help="Composition name.")],
    name: Annotated[str, typer.Argument(help="Alias to remove.")],
    as_json: JsonOption = False,
) -> None:
    """Take an alias off a composition."""
    with user_errors(as_json):
        Registry().remove_composition_alias(composition, name, origin="cli")
    if as_json:
        emit_json({"ok": True, "composition": composition, "removed": name})
        return
    console.print(f"removed alias {name} from {composition}")


@composition_app.command()
def history(
    name: Annotated[str, typer.Argument(help="Composition name.")], as_json: JsonOption = False
) -> None:
    """The composition's event log: versions saved and alias moves, with their origin."""
    with user_errors(as_json):
        events = Registry().composition_history(name)
    show_events(events, f"history of composition {name}", as_json)


@composition_app.command()
def predict(
    ref: CompositionRef,
    text: TextOption,
    skip_probe: SkipProbeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run a composition on text: every member loaded and checked, the composition active; the
    head is its evaluation spec's, else its last member's (a MAD-X stack's task adapter)."""
    from ..predict_job import predict_composition  # noqa: PLC0415 - torch only when predicting

    quiet_libraries()
    with user_errors(as_json):
        result = predict_composition(Registry(), ref, text, skip_probe=skip_probe)
    show_predictions([result], text, as_json)


def _print(compositions: list[Composition], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        emit_json(compositions[0].to_dict() if single else [c.to_dict() for c in compositions])
        return
    rows = {
        "ref": [c.ref for c in compositions],
        "aliases": [", ".join(c.aliases) for c in compositions],
        "members": [", ".join(c.members) for c in compositions],
        "kind": [str(c.definition.get("type", "")) for c in compositions],
        "scored": ["yes" if c.evaluation else "no" for c in compositions],
    }
    print_columns(rows, keep=2)
