"""The registry's tables (SQLAlchemy 2.0 typed ORM).

Invariants live in constraints: one adapter per name, one version number per adapter, one alias
name per adapter. Relationships are ``lazy="raise"`` so every query says what it loads. Constraint
names follow a naming convention so Alembic migrations stay stable across databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "AdapterRow",
    "AliasRow",
    "Base",
    "BaseModelRow",
    "CompositionMemberRow",
    "CompositionRow",
    "EventRow",
    "ManifestFileRow",
    "MetricRow",
    "RegistryIdentityRow",
    "VersionRow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class RegistryIdentityRow(Base):
    """One row: the registry's random id, written when its schema is made. The artifact store
    keeps a marker per registry writing to it, so gc can tell a store shared by two."""

    __tablename__ = "registry_identity"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # where `adapterops db move` took the registry ({database, artifacts, started, finished};
    # finished null while the move runs): its writes are refused from the moment it starts
    moved: Mapped[dict[str, Any] | None]


class BaseModelRow(Base):
    """A pre-trained model that adapters are trained on."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    revision: Mapped[str | None] = mapped_column(String(128))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterRow(Base):
    """An adapter: a name bound to one base model, task, language and method."""

    __tablename__ = "adapters"
    __table_args__ = (Index("ix_adapters_lookup", "base_model_id", "task", "language"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    task: Mapped[str] = mapped_column(String(128), index=True)
    language: Mapped[str] = mapped_column(String(32), index=True)
    method: Mapped[str] = mapped_column(String(32), index=True)
    head: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The highest version number ever given out: deleting a version never frees its number.
    last_version: Mapped[int] = mapped_column(default=0, server_default="0")

    base_model: Mapped[BaseModelRow] = relationship(lazy="raise")


class VersionRow(Base):
    """One immutable version of an adapter: its bytes (by digest) and where they came from."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    version: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the manifest
    size: Mapped[int] = mapped_column(BigInteger)
    artifact_uri: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    adapter: Mapped[AdapterRow] = relationship(lazy="raise")


class ManifestFileRow(Base):
    """One file a stored manifest lists, by digest: what gc keeps for each version, read here
    instead of downloading every version's manifest on each run. Both digests are of immutable
    content, so a row never goes stale; rows go when gc deletes their manifest."""

    __tablename__ = "manifest_files"

    manifest: Mapped[str] = mapped_column(String(64), primary_key=True)
    file: Mapped[str] = mapped_column(String(64), primary_key=True)


class MetricRow(Base):
    """One evaluation metric of a version; a table of its own so ordering by it uses an index."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("version_id", "key"),
        Index("ix_metrics_key_value", "key", "value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class AliasRow(Base):
    """A movable name (``champion``, ``previous``...) pointing at one version of an adapter."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CompositionRow(Base):
    """A named, versioned composition (stack, merge...) over exact adapter versions."""

    __tablename__ = "compositions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int]
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # how the cascade scores it: a spec's base_model/head/data/evaluate/promote ({}: not scored)
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))
    # what the version scored when saved (the cascade's gate, or composition save --metric)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))


class CompositionAliasRow(Base):
    """A movable name (``champion``...) pointing at one version of a composition."""

    __tablename__ = "composition_aliases"
    __table_args__ = (UniqueConstraint("name", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # the composition's (rows share one per version)
    alias: Mapped[str] = mapped_column(String(64))
    composition_id: Mapped[int] = mapped_column(ForeignKey("compositions.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CompositionMemberRow(Base):
    """That a composition uses a version, at a position (so the version cannot be deleted)."""

    __tablename__ = "composition_members"
    __table_args__ = (UniqueConstraint("composition_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    composition_id: Mapped[int] = mapped_column(ForeignKey("compositions.id"))
    position: Mapped[int]
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)


class EventRow(Base):
    """Append-only log: registrations, alias moves, deletions, with where they came from."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_adapter_name_id", "adapter_name", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(
        String(32)
    )  # registered | alias_set | alias_removed | deleted | rebound
    adapter_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None]
    alias: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(64), default="registry")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
