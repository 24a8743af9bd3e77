"""Registry operations: plain functions that take a session and return entities.

Validation happens before the session is touched; rows never leave this module (they become
:mod:`registry.entities`). The facade (:class:`registry.Registry`) owns sessions, retries and the
artifact store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from . import manifest_files
from .bundles import Bundle
from .entities import FUSION_MEMBERS, AdapterVersion, Event, Resolution, UsedBy
from .errors import (
    BaseModelMismatchError,
    InUseError,
    InvalidCompositionError,
    InvalidNameError,
    NotFoundError,
    NotMigratedError,
    RegistryError,
)
from .locks import take_xact_lock
from .metrics import higher_is_better, unrecorded_metric
from .names import CHAMPION, Ref, check_alias_case, check_new_alias, parse_ref
from .orm import (
    AdapterRow,
    AliasRow,
    BaseModelRow,
    CompositionMemberRow,
    CompositionRow,
    EventRow,
    MetricRow,
    RegistryIdentityRow,
    VersionRow,
)

__all__ = [
    "adapter_named",
    "check_base_model",
    "check_binding",
    "check_fusion_members",
    "delete_version",
    "deleted_versions",
    "find_versions",
    "fusion_members",
    "get_version",
    "history",
    "log_event",
    "referenced_digests",
    "refs_with_digests",
    "register_version",
    "remove_alias",
    "resolve",
    "set_alias",
    "used_by",
]

# Adapters and compositions log into one table under their names; a composition's event kinds
# all start with this (composition, composition_alias_set, composition_deleted...).
COMPOSITION_EVENT = "composition"
LANGUAGE_HEADS = ("masked-lm", "causal-lm")
_Row = tuple[VersionRow, AdapterRow, BaseModelRow]


def fusion_members(bundle: Bundle, lineage: dict[str, Any]) -> list[str]:
    """The exact member versions a fusion's ``lineage`` lists (``[]`` for other methods),
    checked: a fusion loads them by these references at every use, so without them (or with
    other adapters than its weights fuse) it could never load."""
    if bundle.method != "fusion":
        return []
    members = lineage.get(FUSION_MEMBERS)
    if not isinstance(members, list) or not members or not all(
        isinstance(m, str) and parse_ref(m).version is not None for m in members
    ):  # fmt: skip
        raise InvalidCompositionError(
            f"{bundle.folder} holds an AdapterFusion: its lineage must list the exact member "
            f"versions it was trained over, {FUSION_MEMBERS}: ['name@VERSION', ...] (got "
            f"{members!r}); `adapterops train` writes them in the folder's report.json"
        )
    fused = bundle.metadata.get("method", {}).get("members")
    if isinstance(fused, list) and [parse_ref(m).name for m in members] != fused:
        raise InvalidCompositionError(
            f"{bundle.folder} fuses {fused}, but its lineage lists {members}: name one version "
            "of each adapter it fuses, in that order"
        )
    return list(members)


def check_fusion_members(
    session: Session, bundle: Bundle, lineage: dict[str, Any], base_model: str
) -> list[str]:
    """:func:`fusion_members`, each of them registered over ``base_model``: a fusion loads its
    members into its own base model at every use, so one missing, or trained on another base,
    would fail every load."""
    members = fusion_members(bundle, lineage)
    for member in members:
        try:
            version = get_version(session, member)
        except NotFoundError as exc:
            raise NotFoundError(
                f"fusion member {member}: {exc}; register the fusion's members first"
            ) from None
        if version.base_model != base_model:
            raise InvalidCompositionError(
                f"fusion member {member} is an adapter of base model {version.base_model}, "
                f"not {base_model}: a fusion runs over adapters of its own base model; "
                f"register it with base model {version.base_model}, or fuse adapters of "
                f"{base_model}"
            )
    return members


def register_version(
    session: Session,
    *,
    name: str,
    base_model: str,
    task: str,
    language: str,
    bundle: Bundle,
    artifact_uri: str,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    spec: dict[str, Any],
    description: str = "",
    origin: str = "registry",
    base_model_revision: str | None = None,
) -> tuple[AdapterVersion, bool]:
    """Record a new version (the bytes are already stored); ``(version, created)``.

    The same bytes registered again under the same adapter return the existing version
    (``created`` False): a version is identified by its content digest.
    """
    check_fusion_members(session, bundle, lineage, base_model)  # again: in this transaction
    base = _base_model(session, base_model, bundle.base_digests, base_model_revision)
    adapter = _adapter(
        session,
        name,
        base=base,
        task=task,
        language=language,
        bundle=bundle,
        description=description,
        origin=origin,
    )
    # Serialise registrations of one adapter: a row lock on PostgreSQL (SQLite already holds the
    # database lock from BEGIN IMMEDIATE), then the next number is one past the last ever given
    # out, so a deleted version's number is never reused (name@2 always means the same bytes).
    last_given = session.scalar(
        select(AdapterRow.last_version).where(AdapterRow.id == adapter.id).with_for_update()
    )
    existing = session.scalars(
        select(VersionRow).where(
            VersionRow.adapter_id == adapter.id, VersionRow.digest == bundle.manifest.digest
        )
    ).first()
    manifest_files.record(  # what gc keeps for this version, without downloading its manifest
        session, bundle.manifest.digest, (digest for _, digest, _ in bundle.manifest.files)
    )
    if existing is not None:
        return _entities(session, [(existing, adapter, base)])[0], False
    latest = session.scalar(
        select(func.max(VersionRow.version)).where(VersionRow.adapter_id == adapter.id)
    )
    number = max(last_given or 0, latest or 0) + 1
    session.execute(
        update(AdapterRow).where(AdapterRow.id == adapter.id).values(last_version=number)
    )
    row = VersionRow(
        adapter_id=adapter.id,
        version=number,
        digest=bundle.manifest.digest,
        size=bundle.manifest.size,
        artifact_uri=artifact_uri,
        spec=spec,
        lineage=lineage,
    )
    session.add(row)
    session.flush()
    session.add_all(MetricRow(version_id=row.id, key=k, value=float(v)) for k, v in metrics.items())
    _log(session, "registered", name, row.version, origin=origin, detail={"digest": row.digest})
    session.flush()
    return _entities(session, [(row, adapter, base)])[0], True


def get_version(session: Session, ref: Ref | str) -> AdapterVersion:
    """The version a reference names (``name`` alone: the newest version)."""
    parsed = ref if isinstance(ref, Ref) else parse_ref(ref)  # parse_ref names a wrong type
    query = _versions_query().where(AdapterRow.name == parsed.name)
    if parsed.version is not None:
        query = query.where(VersionRow.version == parsed.version)
    elif parsed.alias is not None:
        query = query.join(AliasRow, AliasRow.version_id == VersionRow.id).where(
            AliasRow.alias == parsed.alias
        )
    else:
        query = query.order_by(VersionRow.version.desc()).limit(1)
    row = session.execute(query).first()
    if row is None:  # only now look closer, to say what exists
        raise NotFoundError(_missing_message(session, adapter_named(session, parsed.name), parsed))
    return _entities(session, [row])[0]


# The largest LIMIT both databases take (a signed 64-bit integer); no registry holds more rows.
_LARGEST_LIMIT = 2**63 - 1


def find_versions(
    session: Session,
    *,
    base_model: str | None = None,
    task: str | None = None,
    language: str | None = None,
    method: str | None = None,
    alias: str | None = None,
    name: str | None = None,
    order_by: str | None = None,
    descending: bool | None = None,
    limit: int | None = None,
    metric_required: bool = True,
) -> list[AdapterVersion]:
    """Versions matching every given filter; ``order_by`` names a metric, best first unless
    ``descending`` says otherwise (missing values last). A metric none of them recorded is
    :class:`NotFoundError` (a typo would order nothing) unless ``metric_required=False``."""
    if limit is not None and limit < 1:  # SQLite reads LIMIT -1 as no limit, PostgreSQL refuses
        raise RegistryError(f"limit must be at least 1, got {limit}")
    query = _versions_query()
    filters = {
        BaseModelRow.name: base_model,
        AdapterRow.task: task,
        AdapterRow.language: language,
        AdapterRow.method: method,
        AdapterRow.name: name,
    }
    for column, value in filters.items():
        if value is not None:
            query = query.where(column == value)
    if alias is not None:
        query = query.join(AliasRow, AliasRow.version_id == VersionRow.id).where(
            AliasRow.alias == alias
        )
    if order_by is not None:
        metric = (
            select(MetricRow.version_id, MetricRow.value)
            .where(MetricRow.key == order_by)
            .subquery()
        )
        query = query.outerjoin(metric, metric.c.version_id == VersionRow.id)
        if descending is None:
            descending = higher_is_better(order_by)
        direction = metric.c.value.desc() if descending else metric.c.value.asc()
        query = query.order_by(direction.nulls_last(), VersionRow.id.desc())
    else:
        query = query.order_by(AdapterRow.name, VersionRow.version)
    if limit is not None and limit <= _LARGEST_LIMIT:  # a larger one (10**20) holds every row
        query = query.limit(limit)
    found = _entities(session, list(session.execute(query)))
    if metric_required and order_by is not None and found and order_by not in found[0].metrics:
        # missing values sort last: when the first lacks it, every one does (a typo?)
        recorded = sorted({key for version in found for key in version.metrics})
        raise NotFoundError(
            unrecorded_metric("no version here", order_by, recorded, " to order by")
        )
    return found


def set_alias(
    session: Session, ref: Ref | str, alias: str, *, origin: str = "registry"
) -> AdapterVersion:
    """Point ``alias`` of the referenced adapter at the referenced version (moving it if set)."""
    check_new_alias(alias)
    target = get_version(session, ref)
    adapter = adapter_named(session, target.name)
    held = session.scalars(select(AliasRow.alias).where(AliasRow.adapter_id == adapter.id))
    check_alias_case(alias, held, f"adapter {target.name!r}")
    version_id = session.scalar(
        select(VersionRow.id).where(
            VersionRow.adapter_id == adapter.id, VersionRow.version == target.version
        )
    )
    assert version_id is not None
    row = session.scalars(
        select(AliasRow).where(AliasRow.adapter_id == adapter.id, AliasRow.alias == alias)
    ).first()
    previous = None
    if row is None:
        session.add(AliasRow(adapter_id=adapter.id, alias=alias, version_id=version_id))
    elif row.version_id != version_id:
        previous = session.scalar(select(VersionRow.version).where(VersionRow.id == row.version_id))
        row.version_id = version_id
    else:
        return target  # already there: nothing to record
    _log_alias_set(
        session, "alias_set", target.name, target.version, alias=alias, origin=origin,
        previous=previous,
    )  # fmt: skip
    return get_version(session, Ref(target.name, version=target.version))


def remove_alias(session: Session, name: str, alias: str, *, origin: str = "registry") -> None:
    """Remove ``alias`` from adapter ``name``."""
    adapter = adapter_named(session, name)
    row = session.scalars(
        select(AliasRow).where(AliasRow.adapter_id == adapter.id, AliasRow.alias == alias)
    ).first()
    if row is None:
        raise NotFoundError(
            f"adapter {name!r} has no alias {alias!r}; aliases: {_aliases_of(session, adapter)}"
        )
    version = session.scalar(select(VersionRow.version).where(VersionRow.id == row.version_id))
    session.delete(row)
    _log(session, "alias_removed", name, version, alias=alias, origin=origin)


def history(session: Session, name: str) -> list[Event]:
    """Every event of adapter ``name``, oldest first."""
    adapter_named(session, name)
    return _events(session, name, EventRow.kind.not_like(f"{COMPOSITION_EVENT}%"))


def deleted_versions(session: Session, *, compositions: bool = False) -> dict[str, set[int]]:
    """Deleted version numbers by adapter (or composition) name, from their ``deleted`` events
    (numbers are never given again, so a number once deleted stays deleted)."""
    kind = f"{COMPOSITION_EVENT}_deleted" if compositions else "deleted"
    found: dict[str, set[int]] = defaultdict(set)
    for name, version in session.execute(
        select(EventRow.adapter_name, EventRow.version).where(EventRow.kind == kind)
    ):
        if version is not None:  # (a deletion always names its version)
            found[name].add(version)
    return dict(found)


def _events(session: Session, name: str, kinds: Any) -> list[Event]:
    # adapters and compositions log under their names in one table; the kind tells them apart
    rows = session.scalars(
        select(EventRow).where(EventRow.adapter_name == name, kinds).order_by(EventRow.id)
    )
    return [
        Event(r.at, r.kind, r.adapter_name, r.version, r.alias, r.origin, dict(r.detail))
        for r in rows
    ]


def _what_frees(target: AdapterVersion, users: UsedBy) -> str:
    """What to do before ``target`` can be deleted: the commands that take each hold off."""
    steps = []
    if target.aliases:
        commands = ", ".join(f"`adapterops unalias {target.name} {a}`" for a in target.aliases)
        them = ("the aliases", "them") if target.aliases[1:] else ("the alias", "it")
        steps.append(f"move {them[0]} to another version or take {them[1]} off ({commands})")
    runs_over = [f"`adapterops composition rm {c}`" for c in users.compositions]
    runs_over += [f"`adapterops rm {f}`" for f in users.fusions]
    if runs_over:
        steps.append(f"delete what runs over it ({', '.join(runs_over)})")
    return f"first {' and '.join(steps)}"


def delete_version(session: Session, ref: Ref | str, *, origin: str = "registry") -> AdapterVersion:
    """Delete a version that no alias, composition or fusion refers to (its bytes stay until gc)."""
    target = get_version(session, ref)
    adapter = adapter_named(session, target.name)
    row = session.scalars(
        select(VersionRow).where(
            VersionRow.adapter_id == adapter.id, VersionRow.version == target.version
        )
    ).one()
    users = _used_by(session, row.id, target.ref)
    if target.aliases or users:
        referents = [f"alias {a!r}" for a in target.aliases] + users.phrases()
        raise InUseError(
            f"cannot delete {target.ref}: still referred to by {', '.join(referents)}; "
            f"{_what_frees(target, users)}"
        )
    session.delete(row)
    _log(
        session,
        "deleted",
        target.name,
        target.version,
        origin=origin,
        detail={"digest": target.digest},
    )
    return target


def used_by(session: Session, ref: Ref | str) -> UsedBy:
    """The composition and fusion versions that run over the version ``ref`` names."""
    target = get_version(session, ref)
    row_id = session.scalar(
        select(VersionRow.id)
        .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
        .where(AdapterRow.name == target.name, VersionRow.version == target.version)
    )
    return _used_by(session, row_id, target.ref)


def _used_by(session: Session, version_id: int | None, ref: str) -> UsedBy:
    compositions = session.execute(
        select(CompositionRow.name, CompositionRow.version)
        .join(CompositionMemberRow, CompositionMemberRow.composition_id == CompositionRow.id)
        .where(CompositionMemberRow.version_id == version_id)
        .order_by(CompositionRow.name, CompositionRow.version)
    )
    # a fusion names its members in its lineage (a JSON list): few versions are fusions
    fusions = session.execute(
        select(AdapterRow.name, VersionRow.version, VersionRow.lineage)
        .join(AdapterRow, VersionRow.adapter_id == AdapterRow.id)
        .where(AdapterRow.method == "fusion")
        .order_by(AdapterRow.name, VersionRow.version)
    )
    return UsedBy(
        tuple(f"{name}@{version}" for name, version in compositions),
        tuple(
            f"{name}@{version}"
            for name, version, lineage in fusions
            if ref in (lineage or {}).get(FUSION_MEMBERS, [])
        ),
    )


def log_event(
    session: Session,
    kind: str,
    adapter: str,
    version: int | None,
    *,
    origin: str,
    detail: dict[str, Any],
) -> None:
    """Append an event to adapter ``adapter``'s log (which must exist)."""
    adapter_named(session, adapter)
    _log(session, kind, adapter, version, origin=origin, detail=detail)


def resolve(
    session: Session, *, base_model: str, task: str, language: str, metric: str | None = None
) -> Resolution:
    """The best adapter for (base model, task, language), MAD-X style when there is none.

    1. a version promoted to ``champion`` for exactly this triple (best ``metric`` first);
    2. otherwise the newest version for the triple;
    3. otherwise a stack: the language's language adapter (a masked- or causal-LM adapter for this
       base model and language), then the task adapter trained in another language.
    """
    champions = find_versions(
        session,
        base_model=base_model,
        task=task,
        language=language,
        alias=CHAMPION,
        order_by=metric,
        metric_required=False,  # champions pushed without metrics still resolve
    )
    if champions:
        others = (
            f"; other champions: {', '.join(v.ref for v in champions[1:])}" if champions[1:] else ""
        )
        return Resolution(
            "promoted",
            (champions[0],),
            f"{champions[0].ref} is the champion for {task}/{language}{others}",
        )
    candidates = find_versions(session, base_model=base_model, task=task, language=language)
    if candidates:
        newest = max(candidates, key=lambda v: v.created_at)
        return Resolution(
            "latest",
            (newest,),
            f"no version for {task}/{language} is promoted; {newest.ref} is the newest",
        )
    language_adapter = _best(
        [
            v
            for v in find_versions(session, base_model=base_model, language=language)
            if v.head in LANGUAGE_HEADS
        ],
        metric,
    )
    task_adapter = _best(
        [
            v
            for v in find_versions(session, base_model=base_model, task=task)
            if v.language != language
        ],
        metric,
    )
    if language_adapter is not None and task_adapter is not None:
        return Resolution(
            "stack",
            (language_adapter, task_adapter),
            f"no {task} adapter for {language}: stacking language adapter "
            f"{language_adapter.ref} under task adapter {task_adapter.ref} (trained on "
            f"{task_adapter.language}), MAD-X style",
        )
    missing = []
    if language_adapter is None:
        missing.append(f"no language adapter for {language!r}")
    if task_adapter is None:
        missing.append(f"no {task!r} adapter in another language")
    raise NotFoundError(
        f"nothing serves base model {base_model!r}, task {task!r}, language {language!r}: no "
        f"adapter for that triple, and no stack either ({'; '.join(missing)})"
    )


# Registrations and garbage collection meet at one lock. PostgreSQL: an advisory lock held to the
# end of the transaction, shared by registrations, exclusive for gc. SQLite: every write
# transaction already holds the database lock (BEGIN IMMEDIATE), which serialises them the same.
_BLOB_LOCK = 0x6164_6F70  # "adop": an arbitrary, fixed advisory-lock key


def lock_blobs(session: Session, *, exclusive: bool) -> None:
    """Hold the blob lock until the transaction ends (gc: ``exclusive``)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    take_xact_lock(session, _BLOB_LOCK, shared=not exclusive)


def registry_identity(session: Session) -> str:
    """The registry's random id (migration 0006 writes it with the schema)."""
    identity = session.scalar(select(RegistryIdentityRow.id))
    if identity is None:
        raise NotMigratedError(
            "the registry database has no identity row: run `adapterops db upgrade`"
        )
    return identity


def referenced_digests(session: Session) -> set[str]:
    """Manifest digests of every version (what garbage collection must keep)."""
    return set(session.scalars(select(VersionRow.digest)))


def refs_with_digests(session: Session, digests: Iterable[str]) -> list[str]:
    """``name@N`` of every version whose manifest digest is one of ``digests``, sorted."""
    rows = session.execute(
        select(AdapterRow.name, VersionRow.version)
        .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
        .where(VersionRow.digest.in_(list(digests)))
    )
    return sorted(f"{name}@{version}" for name, version in rows)


# --- helpers -------------------------------------------------------------------------------


def _best(versions: list[AdapterVersion], metric: str | None) -> AdapterVersion | None:
    """Champions first, then the best ``metric``, then the newest."""
    if not versions:
        return None

    def score(v: AdapterVersion) -> float:  # larger is better; a missing metric ranks last
        value = v.metrics.get(metric) if metric else 0.0
        if value is None:
            return float("-inf")
        return value if metric is None or higher_is_better(metric) else -value

    def rank(v: AdapterVersion) -> tuple[bool, float, Any]:
        return (CHAMPION in v.aliases, score(v), v.created_at)

    return max(versions, key=rank)


def _base_model(
    session: Session, name: str, digests: tuple[str, ...], revision: str | None
) -> BaseModelRow:
    """The base model row, checked against the adapter's base digests (canonical first).

    A row recorded with an older form of the digest (the vocabulary in it) is rewritten to the
    canonical one when an adapter proves they name the same base.
    """
    canonical = digests[0] if digests else None
    row = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).first()
    if row is None:
        row = BaseModelRow(name=name, fingerprint=canonical, revision=revision)
        session.add(row)
        session.flush()
    elif canonical and row.fingerprint and row.fingerprint not in digests:
        known = base_models_with(session, digests)
        hint = f" (registered as {', '.join(map(repr, known))})" if known else ""
        raise BaseModelMismatchError(
            f"this adapter was trained on a base model with fingerprint {canonical[:12]}{hint}, "
            f"but {name!r} is registered with fingerprint {row.fingerprint[:12]}: wrong base "
            "model. Register it under the base model it was trained on."
        )
    elif canonical and row.fingerprint != canonical:
        row.fingerprint = canonical
    return row


def check_base_model(session: Session, name: str, digests: Sequence[str]) -> None:
    """Raise :class:`BaseModelMismatchError` when base model ``name`` is registered with a
    fingerprint none of ``digests`` (those of the model the name reaches now) is: what
    registering an adapter trained on it would refuse, asked before the training."""
    row = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).first()
    if row is None or not digests or not row.fingerprint or row.fingerprint in digests:
        return
    raise BaseModelMismatchError(
        f"base model {name!r} is registered with fingerprint {row.fingerprint[:12]} (the model "
        f"its adapters were trained on), but it names a model with fingerprint "
        f"{digests[0][:12]} now (another config or other weight shapes): give this model a name "
        f"of its own (another folder, or its Hub id), or point base_model back at the model "
        f"registered as {name!r}"
    )


def base_models_with(session: Session, digests: Sequence[str]) -> list[str]:
    """The registered base models whose fingerprint is one of ``digests``, first registered
    first."""
    if not digests:
        return []
    query = select(BaseModelRow.name).where(BaseModelRow.fingerprint.in_(list(digests)))
    return list(session.scalars(query.order_by(BaseModelRow.id)))


def _adapter(
    session: Session,
    name: str,
    *,
    base: BaseModelRow,
    task: str,
    language: str,
    bundle: Bundle,
    description: str,
    origin: str,
) -> AdapterRow:
    row = session.scalars(select(AdapterRow).where(AdapterRow.name == name)).first()
    if row is None:
        row = AdapterRow(
            name=name,
            base_model_id=base.id,
            task=task,
            language=language,
            method=bundle.method,
            head=bundle.head,
            description=description,
        )
        session.add(row)
        session.flush()
        return row
    registered = (row.base_model_id, row.task, row.language, row.method)
    if registered == (base.id, task, language, bundle.method):
        return row
    registered_base = _base_name(session, row)
    if not _has_versions(session, row):
        # Every version is deleted (pushed under the wrong base model, say): nothing refers to
        # the old binding any more, so the name takes the new one; numbers keep counting up.
        before = {
            "base_model": registered_base,
            "task": row.task,
            "language": row.language,
            "method": row.method,
        }
        row.base_model_id, row.task, row.language = base.id, task, language
        row.method, row.head = bundle.method, bundle.head
        _log(session, "rebound", name, None, origin=origin, detail={"before": before})
        session.flush()
        return row
    raise _binding_error(row, registered_base, (base.name, task, language, bundle.method))


def check_binding(
    session: Session,
    name: str,
    binding: tuple[str, str, str, str],
    what: str,
) -> None:
    """Raise the error registering ``what`` (``"this spec"``) under ``name`` would raise: the
    name is bound to another (base model, task, language, method) and still has versions."""
    row = session.scalars(select(AdapterRow).where(AdapterRow.name == name)).first()
    if row is None or not _has_versions(session, row):
        return
    registered_base = _base_name(session, row)
    if (registered_base, row.task, row.language, row.method) != binding:
        raise _binding_error(row, registered_base, binding, what)


def _base_name(session: Session, row: AdapterRow) -> str:
    return str(
        session.scalar(select(BaseModelRow.name).where(BaseModelRow.id == row.base_model_id))
    )


def _has_versions(session: Session, row: AdapterRow) -> bool:
    return session.scalar(select(VersionRow.id).where(VersionRow.adapter_id == row.id)) is not None


def _binding_error(
    row: AdapterRow,
    registered_base: str,
    binding: tuple[str, str, str, str],
    what: str = "this folder",
) -> InvalidNameError:
    base, task, language, method = binding
    return InvalidNameError(
        f"adapter {row.name!r} is registered for base model {registered_base!r}, task "
        f"{row.task!r}, language {row.language!r}, method {row.method!r}; {what} is for "
        f"{base!r}, {task!r}, {language!r}, {method!r}. Use another adapter name "
        f"(or, if its versions were pushed under the wrong ones, remove them all with "
        f"adapterops rm {row.name}@VERSION, and the name takes the new ones)."
    )


def adapter_named(session: Session, name: str) -> AdapterRow:
    """The adapter's row; :class:`NotFoundError` naming similar names (or the composition of
    that name) when there is none."""
    row = session.scalars(select(AdapterRow).where(AdapterRow.name == name)).first()
    if row is None:
        similar = session.scalars(
            select(AdapterRow.name).where(AdapterRow.name.like(f"%{name[:4]}%")).limit(5)
        ).all()
        hint = f"; similar names: {', '.join(similar)}" if similar else ""
        composition = session.scalars(
            select(CompositionRow.id).where(CompositionRow.name == name).limit(1)
        ).first()
        if composition is not None:  # `show pt-sst2` for a saved stack: say where it is
            hint = (  # whichever command it was (show, rm, alias, ...)
                f"; {name!r} is a composition: give it to the same command after `composition` "
                f"(`adapterops composition show {name}`)"
            )
        raise NotFoundError(f"no adapter named {name!r}{hint}")
    return row


def _missing_message(session: Session, adapter: AdapterRow, ref: Ref) -> str:
    if ref.version is not None:
        known = session.scalars(
            select(VersionRow.version)
            .where(VersionRow.adapter_id == adapter.id)
            .order_by(VersionRow.version)
        ).all()
        listing = _listing(known)
        return f"adapter {adapter.name!r} has no version {ref.version}; known versions: {listing}"
    if ref.alias is not None:
        aliases = _aliases_of(session, adapter)
        return f"adapter {adapter.name!r} has no alias {ref.alias!r}; aliases: {aliases}"
    return f"adapter {adapter.name!r} has no versions"


def _aliases_of(session: Session, adapter: AdapterRow) -> str:
    aliases = session.scalars(select(AliasRow.alias).where(AliasRow.adapter_id == adapter.id)).all()
    return _listing(sorted(aliases))


def _listing(values: Iterable[object]) -> str:
    items = [str(v) for v in values]
    return ", ".join(items) if items else "none"


def _versions_query() -> Select[VersionRow, AdapterRow, BaseModelRow]:
    return (
        select(VersionRow, AdapterRow, BaseModelRow)
        .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
        .join(BaseModelRow, BaseModelRow.id == AdapterRow.base_model_id)
    )


def _entities(session: Session, rows: list[_Row]) -> list[AdapterVersion]:
    """Entities for rows, loading aliases and metrics in two queries (no N+1)."""
    ids = [version.id for version, _, _ in rows]
    aliases: dict[int, list[str]] = defaultdict(list)
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    for chunk in _chunks(ids, 500):
        for version_id, alias in session.execute(
            select(AliasRow.version_id, AliasRow.alias).where(AliasRow.version_id.in_(chunk))
        ):
            aliases[version_id].append(alias)
        for version_id, key, value in session.execute(
            select(MetricRow.version_id, MetricRow.key, MetricRow.value).where(
                MetricRow.version_id.in_(chunk)
            )
        ):
            metrics[version_id][key] = value
    return [
        AdapterVersion(
            name=adapter.name,
            version=version.version,
            base_model=base.name,
            task=adapter.task,
            language=adapter.language,
            method=adapter.method,
            head=adapter.head,
            digest=version.digest,
            size=version.size,
            artifact_uri=version.artifact_uri,
            created_at=version.created_at,
            description=adapter.description,
            metrics=metrics[version.id],
            spec=dict(version.spec),
            lineage=dict(version.lineage),
            aliases=tuple(sorted(aliases[version.id])),
            base_model_fingerprint=base.fingerprint,
            base_model_revision=base.revision,
        )
        for version, adapter, base in rows
    ]


def _chunks(values: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _log_alias_set(
    session: Session,
    kind: str,
    name: str,
    version: int,
    *,
    alias: str,
    origin: str,
    previous: int | None,
) -> None:
    """Record an alias set or moved (``previous``: the version it left), and write it now."""
    _log(session, kind, name, version, alias=alias, origin=origin, detail={"previous": previous})
    session.flush()


def _log(
    session: Session,
    kind: str,
    adapter: str,
    version: int | None,
    *,
    alias: str | None = None,
    origin: str = "registry",
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        EventRow(
            kind=kind,
            adapter_name=adapter,
            version=version,
            alias=alias,
            origin=origin,
            detail=detail or {},
        )
    )
