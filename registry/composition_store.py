"""Composition operations: plain functions that take a session and return
:class:`~registry.entities.Composition` entities, as :mod:`registry.store`'s do for versions.

A composition version names exact member versions (rows in ``composition_members``, so a member
cannot be deleted under it); its number is never given again once deleted (read from its
``composition`` event); its aliases and events live beside the adapters' own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .compositions import answers_per_member, canonical_definition
from .entities import Composition, Event
from .errors import InUseError, InvalidCompositionError, NotFoundError
from .names import Ref, check_alias_case, check_new_alias, parse_ref
from .orm import (
    AdapterRow,
    CompositionAliasRow,
    CompositionMemberRow,
    CompositionRow,
    EventRow,
    VersionRow,
    utcnow,
)
from .store import (
    COMPOSITION_EVENT,
    _chunks,
    _events,
    _listing,
    _log,
    _log_alias_set,
    get_version,
)

__all__ = [
    "composition_history",
    "composition_versions",
    "delete_composition",
    "get_composition",
    "list_compositions",
    "log_composition_event",
    "register_composition",
    "remove_composition_alias",
    "set_composition_alias",
]


def register_composition(
    session: Session,
    name: str,
    definition: dict[str, Any],
    members: Sequence[str],
    *,
    description: str = "",
    evaluation: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> Composition:
    """A new version of composition ``name`` over the exact versions ``members`` resolve to,
    with the ``metrics`` it scored (checked by the caller)."""
    resolved = [get_version(session, member) for member in members]
    fusions = [v.ref for v in resolved if v.method == "fusion"]
    if fusions:  # loading the members alone, it would be refused at every load
        raise InvalidCompositionError(
            f"{', '.join(fusions)}: an AdapterFusion runs over the adapters it fuses, which a "
            f"composition does not load with it; predict with it alone (`adapterops predict "
            f"{fusions[0]}`), or compose the adapters it fuses"
        )
    bases = {v.base_model for v in resolved}
    if len(bases) > 1:  # every member loads into one model: one would be refused at every load
        each = "; ".join(f"{v.ref}: {v.base_model}" for v in resolved)
        raise InvalidCompositionError(
            f"{name}: its members are adapters of different base models ({each}), and a "
            "composition's members load into one model: compose adapters of one base model"
        )
    version_ids = [
        session.scalar(
            select(VersionRow.id)
            .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
            .where(AdapterRow.name == v.name, VersionRow.version == v.version)
        )
        for v in resolved
    ]
    definition = canonical_definition(definition, [v.ref for v in resolved])
    if evaluation and answers_per_member(definition):  # the cascade would have no score to gate
        raise InvalidCompositionError(
            f"{name}: a Parallel composition answers once per member (their outputs side by "
            "side), so there is no one score for the cascade to gate on: save it without an "
            "evaluation spec (each member is gated by its own builds), or as a stack or an "
            "average"
        )
    row = CompositionRow(
        name=name,
        version=_last_composition_number(session, name) + 1,
        definition=definition,
        description=description,
        evaluation=dict(evaluation or {}),
        metrics=dict(metrics or {}),
    )
    session.add(row)
    session.flush()
    session.add_all(
        CompositionMemberRow(composition_id=row.id, position=position, version_id=version_id)
        for position, version_id in enumerate(version_ids)
        if version_id is not None
    )
    _log(session, "composition", name, row.version, detail={"members": [v.ref for v in resolved]})
    return Composition(
        name,
        row.version,
        definition,
        tuple(v.ref for v in resolved),
        description,
        row.created_at,
        dict(row.evaluation),
        metrics=dict(row.metrics),
    )


def _last_composition_number(session: Session, name: str) -> int:
    """The highest version number composition ``name`` ever had: a deleted version lives on in
    its ``composition`` event, so its number is never given again (``name@2`` keeps one
    meaning, as adapters' versions do)."""
    saved = session.scalar(
        select(func.max(CompositionRow.version)).where(CompositionRow.name == name)
    )
    logged = session.scalar(
        select(func.max(EventRow.version)).where(
            EventRow.adapter_name == name, EventRow.kind == "composition"
        )
    )
    return max(saved or 0, logged or 0)


def composition_versions(session: Session, name: str) -> list[Composition]:
    """Every version of composition ``name`` that exists, oldest first (deleted ones leave
    gaps in the numbers)."""
    _composition_row(session, Ref(name))  # a clear error for an unknown composition
    rows = session.scalars(
        select(CompositionRow).where(CompositionRow.name == name).order_by(CompositionRow.version)
    ).all()
    return _entities(session, list(rows))


def delete_composition(session: Session, ref: str, *, origin: str = "registry") -> Composition:
    """Delete a composition version no alias points at; its members are then free to delete."""
    target = get_composition(session, ref)
    if target.aliases:
        held = ", ".join(repr(a) for a in target.aliases)
        raise InUseError(
            f"cannot delete composition {target.ref}: it holds the alias {held}; move it to "
            f"another version or remove it first (adapterops composition unalias {target.name} "
            f"{target.aliases[0]})"
        )
    row = _composition_row(session, Ref(target.name, target.version))
    for member in session.scalars(
        select(CompositionMemberRow).where(CompositionMemberRow.composition_id == row.id)
    ):
        session.delete(member)
    session.flush()  # the members' rows go before the row they point at (foreign keys)
    session.delete(row)
    _log(
        session,
        "composition_deleted",
        target.name,
        target.version,
        origin=origin,
        detail={"members": list(target.members)},
    )
    return target


def list_compositions(session: Session) -> list[Composition]:
    """The newest version of every composition, by name."""
    newest = (
        select(CompositionRow.name, func.max(CompositionRow.version).label("version"))
        .group_by(CompositionRow.name)
        .subquery()
    )
    rows = session.scalars(
        select(CompositionRow)
        .join(
            newest,
            (newest.c.name == CompositionRow.name) & (newest.c.version == CompositionRow.version),
        )
        .order_by(CompositionRow.name)
    ).all()
    return _entities(session, list(rows))


def get_composition(session: Session, name: str, version: int | None = None) -> Composition:
    """A composition version: ``name`` (the newest), ``name@3``, ``name@champion``, or ``name``
    with ``version``."""
    row = _composition_row(session, parse_ref(name) if version is None else Ref(name, version))
    return _entities(session, [row])[0]


def _entities(session: Session, rows: list[CompositionRow]) -> list[Composition]:
    """Entities for rows, loading their members and aliases in two queries (no N+1: a
    composition retrained nightly has hundreds of versions)."""
    ids = [row.id for row in rows]
    members: dict[int, list[str]] = defaultdict(list)
    aliases: dict[int, list[str]] = defaultdict(list)
    for chunk in _chunks(ids, 500):
        for composition_id, adapter, number in session.execute(
            select(CompositionMemberRow.composition_id, AdapterRow.name, VersionRow.version)
            .join(VersionRow, CompositionMemberRow.version_id == VersionRow.id)
            .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
            .where(CompositionMemberRow.composition_id.in_(chunk))
            .order_by(CompositionMemberRow.composition_id, CompositionMemberRow.position)
        ):
            members[composition_id].append(f"{adapter}@{number}")
        for composition_id, alias in session.execute(
            select(CompositionAliasRow.composition_id, CompositionAliasRow.alias)
            .where(CompositionAliasRow.composition_id.in_(chunk))
            .order_by(CompositionAliasRow.alias)
        ):
            aliases[composition_id].append(alias)
    return [
        Composition(
            row.name,
            row.version,
            dict(row.definition),
            tuple(members[row.id]),
            row.description,
            row.created_at,
            dict(row.evaluation or {}),
            tuple(aliases[row.id]),
            dict(row.metrics or {}),
        )
        for row in rows
    ]


def set_composition_alias(
    session: Session, ref: str, alias: str, *, origin: str = "registry"
) -> Composition:
    """Point ``alias`` of the referenced composition at the referenced version (moving it)."""
    check_new_alias(alias)
    target = _composition_row(session, parse_ref(ref))
    check_alias_case(
        alias, _composition_aliases(session, target.name), f"composition {target.name!r}"
    )
    row = session.scalars(
        select(CompositionAliasRow).where(
            CompositionAliasRow.name == target.name, CompositionAliasRow.alias == alias
        )
    ).first()
    previous = None
    if row is None:
        session.add(CompositionAliasRow(name=target.name, alias=alias, composition_id=target.id))
    elif row.composition_id != target.id:
        previous = session.scalar(
            select(CompositionRow.version).where(CompositionRow.id == row.composition_id)
        )
        row.composition_id = target.id
        row.updated_at = utcnow()
    else:
        return get_composition(session, target.name, target.version)  # already there
    _log_alias_set(
        session, "composition_alias_set", target.name, target.version, alias=alias,
        origin=origin, previous=previous,
    )  # fmt: skip
    return get_composition(session, target.name, target.version)


def remove_composition_alias(
    session: Session, name: str, alias: str, *, origin: str = "registry"
) -> None:
    """Remove ``alias`` from composition ``name``."""
    _composition_row(session, Ref(name))  # a clear error for an unknown composition
    row = session.scalars(
        select(CompositionAliasRow).where(
            CompositionAliasRow.name == name, CompositionAliasRow.alias == alias
        )
    ).first()
    if row is None:
        raise NotFoundError(
            f"composition {name!r} has no alias {alias!r}; aliases: "
            f"{_listing(_composition_aliases(session, name))}"
        )
    version = session.scalar(
        select(CompositionRow.version).where(CompositionRow.id == row.composition_id)
    )
    session.delete(row)
    _log(session, "composition_alias_removed", name, version, alias=alias, origin=origin)


def _composition_row(session: Session, ref: Ref) -> CompositionRow:
    query = select(CompositionRow).where(CompositionRow.name == ref.name)
    if ref.alias is not None:
        query = query.join(
            CompositionAliasRow, CompositionAliasRow.composition_id == CompositionRow.id
        ).where(CompositionAliasRow.alias == ref.alias)
    elif ref.version is not None:
        query = query.where(CompositionRow.version == ref.version)
    row = session.scalars(query.order_by(CompositionRow.version.desc()).limit(1)).first()
    if row is not None:
        return row
    versions = session.scalars(
        select(CompositionRow.version)
        .where(CompositionRow.name == ref.name)
        .order_by(CompositionRow.version)
    ).all()
    if not versions:
        adapter = session.scalars(
            select(AdapterRow.id).where(AdapterRow.name == ref.name).limit(1)
        ).first()
        hint = (  # whichever command it was (show, rm, alias, ...)
            f"; {ref.name!r} is an adapter: give it to the same command without `composition` "
            f"(`adapterops show {ref.name}`)"
            if adapter
            else ""
        )
        raise NotFoundError(f"no composition {ref.name!r}{hint}")
    if ref.alias is not None:
        raise NotFoundError(
            f"composition {ref.name!r} has no alias {ref.alias!r}; aliases: "
            f"{_listing(_composition_aliases(session, ref.name))}"
        )
    raise NotFoundError(
        f"no composition {ref.name!r} version {ref.version}; versions: {_listing(versions)}"
    )


def _composition_aliases(session: Session, name: str) -> list[str]:
    return list(
        session.scalars(
            select(CompositionAliasRow.alias)
            .where(CompositionAliasRow.name == name)
            .order_by(CompositionAliasRow.alias)
        )
    )


def composition_history(session: Session, name: str) -> list[Event]:
    """Every event of composition ``name`` (versions saved, aliases moved, versions deleted),
    oldest first; told even once every version is deleted."""
    events = _events(session, name, EventRow.kind.like(f"{COMPOSITION_EVENT}%"))
    if not events:
        _composition_row(session, Ref(name))  # a clear error for an unknown composition
    return events


def log_composition_event(
    session: Session,
    kind: str,
    name: str,
    version: int | None,
    *,
    origin: str,
    detail: dict[str, Any],
) -> None:
    """Append an event (``kind`` starting with ``composition_``) to composition ``name``'s log;
    ``version``, when given, must exist."""
    _composition_row(session, Ref(name, version))  # a clear error for an unknown composition
    _log(session, kind, name, version, origin=origin, detail=detail)
