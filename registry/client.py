"""``Registry``: the registry's Python API in a few obvious calls.

    from registry import Registry
    reg = Registry()                                    # embedded: SQLite + a local folder
    v = reg.register("out/sst2", name="minilm-sst2-en-lora", task="sst2", language="en",
                     base_model="sentence-transformers/all-MiniLM-L6-v2",
                     metrics={"accuracy": 0.81})
    reg.set_alias("minilm-sst2-en-lora@1", "champion")
    reg.get("minilm-sst2-en-lora@champion")
    reg.find(task="sst2", language="en", order_by="accuracy")
    reg.resolve(base_model=..., task="sst2", language="pt")   # MAD-X stack if no pt adapter
    reg.fetch("minilm-sst2-en-lora@champion", "here/")       # verified download
    reg.load_into(model, "minilm-sst2-en-lora@champion")      # through peft_core
    reg.verify()                            # every stored file read back against its digest
    reg.register_composition("pt-sst2", {"type": "stack"}, ["lang-pt", "minilm-sst2-en-lora"])
    reg.set_composition_alias("pt-sst2@1", "champion")
    reg.load_composition(model, "pt-sst2@champion")           # every member, then the stack

Bytes are written before the record that points at them is committed: a crash in between leaves only
unreferenced blobs, which :meth:`gc` removes.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from . import composition_store, garbage, store
from .artifacts import ArtifactStore, open_store
from .artifacts.base import BytesMoved
from .bundles import (
    Bundle,
    base_digests,
    download,
    inspect_folder,
    saved_fingerprint,
    stored_in,
    upload,
)
from .composition_diff import CompositionDiff, diff_compositions
from .compositions import named_twice, with_leaves
from .db import Database, translate_db_errors
from .entities import FUSION_MEMBERS, AdapterVersion, Composition, Event, Resolution, UsedBy
from .errors import (
    AdapterFolderError,
    BaseModelMismatchError,
    InvalidCompositionError,
    InvalidNameError,
    NoRegistryError,
    NotFoundError,
    RegistryError,
    RegistryMovedError,
    StorageUnavailableError,
)
from .locks import kept_busy, lock_is_held, named_lock
from .move import MoveReport, move_registry
from .move_marker import check_writable, moved_to, where_it_went
from .names import (
    base_model_name,
    check_alias,
    check_key,
    check_language,
    check_name,
    check_storable_text,
    member_name,
    parse_ref,
)
from .settings import Settings
from .verification import Verification, verify_versions
from .version_diff import VersionDiff, diff_versions

__all__ = ["Registry"]

T = TypeVar("T")
_RETRIES = 8
_MANIFEST_DOWNLOADS = 8  # manifests gc downloads at once (each a small GET)


class _Conflict(RegistryError):
    """A concurrent writer won a unique constraint: retry the whole transaction."""


class Registry:
    """Records in a SQL database, bytes in an artifact store."""

    def __init__(
        self,
        database_url: str | None = None,
        artifacts_url: str | os.PathLike[str] | None = None,
        *,
        auto_migrate: bool | None = None,
        create: bool = True,
    ) -> None:
        """Open the registry at the given locations (default: the environment's, see
        :class:`Settings`). A SQLite registry is created on first use; ``create=False`` (reading
        commands) refuses one that does not exist with :class:`NoRegistryError` instead."""
        _check_type("Registry: database_url", database_url, str, "a URL")
        if isinstance(artifacts_url, os.PathLike):  # a local folder given as a Path
            artifacts_url = os.fspath(artifacts_url)
        _check_type("Registry: artifacts_url", artifacts_url, str, "a URL or a folder")
        defaults = Settings.from_env()
        # the store first (it writes nothing when opened): one that cannot be used leaves no
        # new SQLite registry behind
        self.artifacts: ArtifactStore = open_store(artifacts_url or defaults.artifacts_url)
        try:
            self.database = Database(
                database_url or defaults.database_url, auto_migrate=auto_migrate, create=create
            )
        except NoRegistryError as exc:
            if database_url:
                raise
            raise NoRegistryError(Settings.where_to_look(str(exc))) from None
        self._marked_store = False

    @property
    def identity(self) -> str:
        """This registry's random id (its artifact store's marker is named by it)."""
        return self._read(store.registry_identity)

    def _mark_store(self) -> str:
        """Leave this registry's marker in the artifact store (once per process) before its
        first write there; returns the registry's id."""
        identity = self.identity
        if not self._marked_store:
            # written again rather than listed first: registering needs no list permission
            self.artifacts.mark_writer(identity, f"registry {identity} at {self.database.safe_url}")
            self._marked_store = True
        return identity

    # --- writing ------------------------------------------------------------------------------

    def register(
        self,
        folder: str | Path | Bundle,
        *,
        name: str,
        base_model: str,
        task: str,
        language: str,
        metrics: dict[str, float] | None = None,
        lineage: dict[str, Any] | None = None,
        spec: dict[str, Any] | None = None,
        description: str = "",
        origin: str = "registry",
        base_model_revision: str | None = None,
        on_bytes: BytesMoved | None = None,
    ) -> AdapterVersion:
        """Register a saved adapter folder (or its :func:`~registry.bundles.inspect_folder`
        bundle, checked and hashed already) as the adapter's next version. ``on_bytes`` is told
        the bytes uploaded as they go (a progress bar; files already stored count as moved).

        Registering the same bytes again returns the existing version (idempotent re-runs).
        """
        check_name(name)
        check_name(task, "task")
        check_language(language)
        if not base_model.strip() or len(base_model) > 256:  # '  ' was stored as a base's name
            raise InvalidNameError(f"invalid base model name {base_model!r}")
        check_storable_text(base_model, "base model", one_line=True)  # 'b\x00' was stored
        check_storable_text(description, "description")
        base_model = base_model_name(base_model)
        metrics = _checked_metrics(metrics or {})
        _check_json(lineage or {}, "lineage")
        _check_json(spec or {}, "spec")
        bundle = folder if isinstance(folder, Bundle) else inspect_folder(folder)
        _check_spec_fits(bundle, spec or {})
        if bundle.method == "fusion":  # its members are checked before any byte is uploaded
            self._read(lambda s: store.check_fusion_members(s, bundle, lineage or {}, base_model))
        binding = (base_model, task, language, bundle.method)  # so is the name's binding
        self._read(lambda s: store.check_binding(s, name, binding, "this folder"))
        self._mark_store()
        artifact_uri = upload(self.artifacts, bundle, on_bytes)  # bytes first, then the record

        def write(session: Session) -> AdapterVersion:
            # Under the blob lock gc cannot be deleting: put back any blob a gc that ran since
            # the upload took (an old orphan this registration reuses), then record the version.
            store.lock_blobs(session, exclusive=False)
            with kept_busy(session):  # the store's calls: the lock's transaction kept alive
                upload(self.artifacts, bundle, only_missing=True)
            version, _ = store.register_version(
                session,
                name=name,
                base_model=base_model,
                task=task,
                language=language,
                bundle=bundle,
                artifact_uri=artifact_uri,
                metrics=dict(metrics or {}),
                lineage=dict(lineage or {}),
                spec=dict(spec or {}),
                description=description,
                origin=origin,
                base_model_revision=base_model_revision,
            )
            return version

        return self._write(write)

    def set_alias(self, ref: str, alias: str, *, origin: str = "registry") -> AdapterVersion:
        """Point ``alias`` at the version ``ref`` names (``name@3``), moving it if needed."""
        return self._write(lambda s: store.set_alias(s, ref, alias, origin=origin))

    @contextmanager
    def alias_lock(self, name: str, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold adapter ``name``'s alias lock for the block, waiting while another process (or
        thread) sharing this registry's database holds it (``on_wait`` is called first if it
        must wait). A promotion gate holds it from reading which version holds an alias to
        moving it, so two gates of one adapter weigh their candidates one after the other, the
        second against what the first left; a move by hand waits for a gate deciding."""
        with self._named_lock(f"aliases of {name}", on_wait):
            yield

    @contextmanager
    def composition_alias_lock(
        self, name: str, *, on_wait: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold composition ``name``'s alias lock for the block (as :meth:`alias_lock` for an
        adapter): the retraining cascade's gate of a saved stack holds it from reading the
        stack's newest version to moving its champion."""
        with self._named_lock(f"aliases of composition {name}", on_wait):
            yield

    @contextmanager
    def cascade_lock(
        self, name: str, *, on_wait: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold the cascade lock of fusion ``name`` for the block: a cascade holds it from
        re-reading the fusion's champion to its candidate's gate (training included), so two
        cascades of one fusion at once (two members got new champions) build one after the
        other, the second over what the first left, instead of each over one new member."""
        with self._named_lock(f"cascade of fusion {name}", on_wait):
            yield

    @contextmanager
    def build_lock(
        self, build_key: str, *, on_wait: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold the lock of build key ``build_key`` (a spec, its data and code) for the block,
        waiting while another process holds it (``on_wait`` is called first if it must wait).
        A build holds it from looking for an earlier build to registering its own, so two
        builds of the same spec, data and code at once (a CI build beside a scheduled one) do
        not both train into one checkpoint folder: the second finds the first's version."""
        with self._named_lock(_build_lock_name(build_key), on_wait):
            yield

    def building(self, build_key: str) -> bool:
        """Whether a process holds build key ``build_key``'s lock now (its build under way;
        True where this cannot be told). A build's MLflow run still RUNNING while no process
        holds its lock is a killed process's (:mod:`flows.run_attempts`)."""
        name = _build_lock_name(build_key)  # the lock build_lock takes
        return lock_is_held(self.database.engine, self.database.sqlite_path, name)

    def _named_lock(
        self, name: str, on_wait: Callable[[], None] | None
    ) -> AbstractContextManager[None]:
        return named_lock(self.database.engine, self.database.sqlite_path, name, on_wait=on_wait)

    def remove_alias(self, name: str, alias: str, *, origin: str = "registry") -> None:
        """Remove an alias."""
        self._write(lambda s: store.remove_alias(s, name, alias, origin=origin))

    def delete(self, ref: str, *, origin: str = "registry") -> AdapterVersion:
        """Delete a version no alias, composition or fusion refers to (``gc`` then frees its
        bytes)."""
        return self._write(lambda s: store.delete_version(s, ref, origin=origin))

    def register_composition(
        self,
        name: str,
        definition: dict[str, Any],
        members: Sequence[str],
        *,
        description: str = "",
        evaluation: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Composition:
        """Save a composition (a stack, a weighted merge...) over exact member versions, with
        the ``metrics`` it scored (finite numbers, as a version's).

        ``evaluation`` says how to score it when a member gets a new champion (the retraining
        cascade): a build spec's ``base_model``, ``head``, ``data``, ``evaluate`` and ``promote``
        (any other spec fields are ignored); without it the cascade lists it but cannot score it.
        """
        check_name(name, "composition name")
        if isinstance(members, str):  # would be read letter by letter: "no adapter named 'l'"
            raise TypeError(
                f"members is a list of references, not one string: [{members!r}], or split "
                "it into the members"
            )
        if isinstance(definition, dict):  # any other shape is canonical_definition's line
            _check_json(definition, "definition")
        _check_json(evaluation or {}, "evaluation")
        check_storable_text(description, "description")
        checked = _checked_metrics(metrics or {})
        return self._write(
            lambda s: composition_store.register_composition(
                s, name, definition, members, description=description, evaluation=evaluation,
                metrics=checked,
            )
        )  # fmt: skip

    def set_composition_alias(
        self, ref: str, alias: str, *, origin: str = "registry"
    ) -> Composition:
        """Point ``alias`` (``champion``...) of a composition at the version ``ref`` names
        (``pt-sst2@2``), moving it from another version if needed."""
        return self._write(
            lambda s: composition_store.set_composition_alias(s, ref, alias, origin=origin)
        )

    def remove_composition_alias(self, name: str, alias: str, *, origin: str = "registry") -> None:
        """Take ``alias`` off composition ``name``."""
        self._write(
            lambda s: composition_store.remove_composition_alias(s, name, alias, origin=origin)
        )

    def delete_composition(self, ref: str, *, origin: str = "registry") -> Composition:
        """Delete the composition version ``ref`` names (``pt-sst2@2``) when no alias points at
        it; its members can be deleted then. Its number is never given to another version."""
        parse_ref(ref)  # a reference that is not a string is told here, by its type
        return self._write(lambda s: composition_store.delete_composition(s, ref, origin=origin))

    # --- reading ------------------------------------------------------------------------------

    def get(self, ref: str) -> AdapterVersion:
        """The version ``name``, ``name@3`` or ``name@champion`` names."""
        parsed = parse_ref(ref)
        return self._read(lambda s: store.get_version(s, parsed))

    def used_by(self, ref: str) -> UsedBy:
        """The composition versions holding the version ``ref`` names, and the fusion versions
        trained over it: what would stop its deletion, besides an alias."""
        parsed = parse_ref(ref)
        return self._read(lambda s: store.used_by(s, parsed))

    def find(
        self,
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
    ) -> list[AdapterVersion]:
        """Versions matching every given filter, optionally ordered by a metric: best first
        (lowest first for perplexity, losses and error rates: :func:`registry.higher_is_better`)
        unless ``descending`` is given."""
        texts = {
            "base_model": base_model, "task": task, "language": language, "method": method,
            "alias": alias, "name": name, "order_by": order_by,
        }  # fmt: skip
        # Python compares what it is given: task=3 matched nothing, descending="no" was true.
        for key, value in texts.items():
            _check_type(f"find: {key}", value, str, "text")
        _check_type("find: descending", descending, bool, "True or False")
        if isinstance(limit, numbers.Integral) and not isinstance(limit, bool):
            limit = int(limit)  # a NumPy integer is a whole number too
        _check_type("find: limit", limit, int, "a whole number")
        # a value no version can hold matched nothing, as if none were registered (``EN``)
        if language is not None:
            check_language(language)
        if alias is not None:
            check_alias(alias)
        if name is not None:
            check_name(name)
        return self._read(
            lambda s: store.find_versions(
                s,
                base_model=None if base_model is None else base_model_name(base_model),
                task=task,
                language=language,
                method=method,
                alias=alias,
                name=name,
                order_by=order_by,
                descending=descending,
                limit=limit,
            )
        )

    def resolve(
        self, *, base_model: str, task: str, language: str, metric: str | None = None
    ) -> Resolution:
        """The best adapter (or MAD-X stack) for (base model, task, language), with the reason."""
        for key, value in {"base_model": base_model, "task": task, "language": language}.items():
            _check_type(f"resolve: {key}", value, str, "text", optional=False)
        _check_type("resolve: metric", metric, str, "a metric's name")
        check_language(language)  # "EN" was "nothing serves ... language 'EN'"
        base_model = base_model_name(base_model)  # the folder "base/" is "base"
        return self._read(
            lambda s: store.resolve(
                s, base_model=base_model, task=task, language=language, metric=metric
            )
        )

    def check_base_model(self, base_model: str, fingerprint: dict[str, Any]) -> None:
        """Raise :class:`BaseModelMismatchError` if ``base_model`` is registered as another
        model than the one of ``fingerprint`` (``peft_core.fingerprint(model).to_dict()``, a
        model built on the meta device will do): a build asks before it trains, not when it
        registers."""
        digests = base_digests(fingerprint)
        name = base_model_name(base_model)
        self._read(lambda s: store.check_base_model(s, name, digests))

    def check_binding(
        self,
        name: str,
        *,
        base_model: str,
        task: str,
        language: str,
        method: str,
        what: str = "this adapter",
    ) -> None:
        """Raise :class:`InvalidNameError` if registering ``what`` under ``name`` would be
        refused because the name is bound to another base model, task, language or method: a
        build asks before it trains, not when it registers."""
        binding = (base_model_name(base_model), task, language, method)
        self._read(lambda s: store.check_binding(s, name, binding, what))

    def base_models_for(self, folder: str | Path) -> list[str]:
        """The names under which the base model an adapter folder was trained on is registered
        (its fingerprint's): empty when no adapter on that base has been registered yet."""
        digests = base_digests(saved_fingerprint(folder))
        return self._read(lambda s: store.base_models_with(s, digests))

    def diff(self, before: str, after: str) -> VersionDiff:
        """What changed from version ``before`` to ``after`` (any two refs, ``a@champion``,
        ``a@4``): metrics with their deltas, the spec's fields, data and code lineage, base model
        and files."""
        return diff_versions(self.get(before), self.get(after))

    def composition_diff(self, before: str, after: str) -> CompositionDiff:
        """What changed from composition version ``before`` to ``after`` (``madx@1``,
        ``madx@champion``): its members' versions, its blocks, how it is scored."""
        return diff_compositions(self.composition(before), self.composition(after))

    def history(self, name: str) -> list[Event]:
        """The adapter's event log: registrations, alias moves, deletions, with their origin."""
        _check_type("history: name", name, str, "an adapter's name", optional=False)
        if "@" in name:  # was "no adapter named 'a@3'"
            raise InvalidNameError(
                f"the history is an adapter's, not a version's ({name!r}): ask for "
                f"{member_name(name)!r}, whose events name each version"
            )
        check_name(name)  # '' was "no adapter named ''", with five names like nothing
        return self._read(lambda s: store.history(s, name))

    def deleted_versions(self, *, compositions: bool = False) -> dict[str, set[int]]:
        """The numbers of every deleted version, by adapter name (``compositions``: by
        composition name), from the event logs in one query: what MLflow mirrors must drop."""
        return self._read(lambda s: store.deleted_versions(s, compositions=compositions))

    def composition(self, name: str, version: int | None = None) -> Composition:
        """A saved composition: ``name`` (the newest version), ``name@2``, ``name@champion``, or
        ``name`` with ``version``."""
        _check_type("composition: name", name, str, "a composition's name or ref", optional=False)
        _check_type("composition: version", version, int, "a whole number")
        return self._read(lambda s: composition_store.get_composition(s, name, version))

    def composition_versions(self, name: str) -> list[Composition]:
        """Every version of composition ``name`` that exists, oldest first (a deleted one leaves
        a gap: numbers are never given again)."""
        _check_type("composition_versions: name", name, str, "a composition's name", optional=False)
        return self._read(lambda s: composition_store.composition_versions(s, name))

    def composition_history(self, name: str) -> list[Event]:
        """The composition's event log: versions saved and alias moves, with their origin."""
        _check_type("composition_history: name", name, str, "a composition's name", optional=False)
        if "@" in name:
            raise InvalidNameError(
                f"the history is a composition's, not a version's ({name!r}): ask for "
                f"{member_name(name)!r}, whose events name each version"
            )
        check_name(name, "composition name")
        return self._read(lambda s: composition_store.composition_history(s, name))

    def compositions(self) -> list[Composition]:
        """The newest version of every saved composition."""
        return self._read(composition_store.list_compositions)

    def record_event(
        self,
        kind: str,
        name: str,
        version: int | None,
        *,
        origin: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an event (``kind`` up to 32 characters) to adapter ``name``'s history."""
        _check_event_kind(kind, composition=False)
        self._write(
            lambda s: store.log_event(s, kind, name, version, origin=origin, detail=detail or {})
        )

    def record_composition_event(
        self,
        kind: str,
        name: str,
        version: int | None,
        *,
        origin: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an event (``kind``: ``composition_`` and up to 20 more characters, such as
        ``composition_cascade``) to composition ``name``'s history."""
        _check_event_kind(kind, composition=True)
        self._write(
            lambda s: composition_store.log_composition_event(
                s, kind, name, version, origin=origin, detail=detail or {}
            )
        )

    # --- bytes --------------------------------------------------------------------------------

    def fetch(
        self,
        ref: str,
        destination: str | Path,
        *,
        on_bytes: BytesMoved | None = None,
        check_files: Callable[[Path], None] | None = None,
    ) -> Path:
        """Download the version's files into ``destination``, verified against their digests
        (``on_bytes``: told the bytes as they arrive, up to the version's ``size``);
        ``check_files`` sees the folder of verified files before they move into place, and what
        it raises leaves ``destination`` as it was."""
        version = self.get(ref)
        return download(
            self.artifacts, version.digest, Path(destination), label=version.ref,
            on_bytes=on_bytes, check_files=check_files, registered_at=version.artifact_uri,
        )  # fmt: skip

    def load_into(
        self,
        model: Any,
        ref: str,
        *,
        name: str | None = None,
        force: bool = False,
        skip_probe: bool = False,
    ) -> AdapterVersion:
        """Fetch a version and load it into ``model`` through peft_core (which checks the base's
        fingerprint), then re-run its golden probes: outputs that left the band recorded at
        registration mean other base weights, and the adapter is taken out again
        (:class:`BaseModelMismatchError`). ``skip_probe`` skips them; ``force`` skips both.

        A fusion runs over the exact member versions it was trained over: those the model does
        not hold yet (by adapter name) are loaded first, each checked the same way; on any
        failure the ones loaded here are taken out again."""
        import peft_core  # noqa: PLC0415 - imported here so reading the registry needs no torch
        from peft_core.state import check_model  # noqa: PLC0415

        check_model(model)  # before the download, not after it
        version = self.get(ref)
        loaded = name or version.name
        held = set(peft_core.list_adapters(model))
        members = [m for m in version.lineage.get(FUSION_MEMBERS, []) if member_name(m) not in held]
        added: list[str] = []
        try:
            for member in members:
                self.load_into(model, member, name=member_name(member), skip_probe=skip_probe)
                added.append(member_name(member))
            with tempfile.TemporaryDirectory() as scratch:
                folder = download(
                    self.artifacts, version.digest, Path(scratch) / "adapter", label=version.ref,
                    registered_at=version.artifact_uri,
                )  # fmt: skip
                try:
                    peft_core.load_adapter(model, folder, name=loaded, force=force)
                except peft_core.PeftCoreError as exc:
                    raise _naming_the_version(exc, version.ref, folder) from None
                if not (skip_probe or force):
                    self._check_probes(model, loaded, folder, version)
        except BaseException:
            for member in added:  # leave the model as it was
                peft_core.delete_adapter(model, member)
            raise
        return version

    def load_composition(self, model: Any, ref: str, *, skip_probe: bool = False) -> Composition:
        """Load every member of composition ``ref`` (``pt-sst2``, ``pt-sst2@champion``) into
        ``model`` under its adapter's name, each checked as :meth:`load_into` checks it, and
        activate the composition. On any failure the members loaded so far are taken out again."""
        composition = self.composition(ref)
        self.load_definition(
            model, composition.definition, composition.members, skip_probe=skip_probe
        )
        return composition

    def load_definition(
        self,
        model: Any,
        definition: dict[str, Any],
        members: Sequence[str],
        *,
        skip_probe: bool = False,
    ) -> Any:
        """Load exact versions ``members`` (``lang-pt@1``...) into ``model`` under their adapters'
        names and activate ``definition`` over them (its leaves, in order, are the members);
        returns the activated ``peft_core`` block, over those names."""
        import peft_core  # noqa: PLC0415

        names = [member.partition("@")[0] for member in members]
        twice = named_twice(list(members))
        if twice:
            raise InvalidCompositionError(
                f"the members hold two versions of {', '.join(twice)}: one model holds one "
                "adapter per name; load them with load_into(model, ref, name=...) instead"
            )
        taken = [n for n in names if n in peft_core.list_adapters(model)]
        if taken:
            raise InvalidCompositionError(
                f"the model already holds adapter(s) named {', '.join(taken)}: load the "
                "composition into a model without them (peft_core.delete_adapter removes one)"
            )
        loaded: list[str] = []
        try:
            for member, name in zip(members, names, strict=True):
                self.load_into(model, member, name=name, skip_probe=skip_probe)
                loaded.append(name)
            block = peft_core.block_from_dict(with_leaves(definition, iter(names)))
            peft_core.set_active(model, block)
        except BaseException:
            for name in loaded:
                peft_core.delete_adapter(model, name)
            raise
        return block

    @staticmethod
    def _check_probes(model: Any, name: str, folder: Path, version: AdapterVersion) -> None:
        import peft_core  # noqa: PLC0415

        try:
            check = peft_core.check_probes(model, name, folder)
        except peft_core.probes.UnreadableProbesError as exc:  # registered before push read it
            peft_core.delete_adapter(model, name)
            raise AdapterFolderError(
                f"{version.ref}'s probes.json is not a golden-probes file ({exc.problem}): "
                "skip_probe=True (CLI: --skip-probe) loads it without checking"
            ) from None
        if check is None or check.passed:
            return
        peft_core.delete_adapter(model, name)  # leave the model as it was
        raise BaseModelMismatchError(
            f"{version.ref} fails its golden probe {check.worst_probe}: the outputs deviate "
            f"{check.deviation:.1%} from those recorded at registration (band "
            f"{check.tolerance:.0%}; {check.precisions}), so these base weights are not the "
            f"ones it was trained on ({version.base_model}); skip_probe=True (CLI: --skip-probe) "
            "loads it anyway"
        )

    def gc(
        self,
        *,
        older_than: timedelta = timedelta(hours=1),
        dry_run: bool = False,
        shared_with: Sequence[Registry] = (),
        on_progress: Callable[[int, int], None] | None = None,
        spared: list[str] | None = None,
    ) -> list[str]:
        """Delete blobs no version refers to, written more than ``older_than`` ago, and uploads a
        crash left unfinished; returns the deleted digests, then the unfinished uploads' names.
        ``spared``, a list, is given the digests of the unreferenced blobs kept for being
        younger (a version deleted just after it was registered leaves such blobs).

        The grace period protects the blobs of a registration that is uploading right now (bytes
        are written before their record). A store other registries write to too (staging and
        production given one bucket) is collected only with all of them in ``shared_with``: a
        blob any of them refers to is kept. Registrations wait only while it decides and
        deletes. ``on_progress(done, total)`` is told the manifests downloaded (a bar: those of
        versions registered before schema 0008, once). How: :mod:`registry.garbage`.
        """
        if not isinstance(older_than, timedelta):  # 3600 meant seconds? minutes? Say which.
            raise TypeError(
                f"gc: older_than is a datetime.timedelta (timedelta(hours=1)), "
                f"not {type(older_than).__name__} {older_than!r}"
            )
        if older_than < timedelta(0):
            raise RegistryError(f"gc: older_than must not be negative, got {older_than}")
        if isinstance(shared_with, Registry) or not isinstance(shared_with, Sequence):
            raise TypeError(
                f"gc: shared_with is a list of Registry objects, not "
                f"{type(shared_with).__name__}: gc(shared_with=[Registry(url, artifacts_url)])"
            )
        for other in shared_with:
            if not isinstance(other, Registry):
                raise TypeError(f"gc: shared_with holds Registry objects, not {other!r:.60}")
        return garbage.collect(
            self,
            older_than=older_than,
            dry_run=dry_run,
            shared_with=shared_with,
            on_progress=on_progress,
            spared=spared,
        )

    def verify(
        self,
        refs: Sequence[str] = (),
        *,
        quick: bool = False,
        on_total: Callable[[int], None] | None = None,
        on_bytes: BytesMoved | None = None,
        known_whole: Collection[str] = (),
    ) -> Verification:
        """Read back every file of the versions ``refs`` name (``name``: all its versions,
        ``name@3``/``name@champion``: one; a composition's name or ref: its members' versions;
        none given: the whole registry) and check each against its digest, as a download does,
        each shared file once. Damage is reported with the
        versions it breaks (:class:`~registry.verification.Verification`), not raised:
        registering the folder a damaged file came from again replaces it. ``quick``: each
        file's presence and size alone, from the store's listing (no download; altered bytes
        of the right size go unseen). ``known_whole``: versions (``name@N``) just downloaded
        whole (:meth:`fetch` checks every digest), whose files are not read again. ``on_total``
        is told the bytes to read, ``on_bytes`` the bytes as they arrive. A store this registry
        never wrote to, holding none of them, is :class:`StorageUnavailableError` (the settings
        name another store), not damage."""
        chosen = {version.ref: version for version in self.versions_of(refs)}
        report = verify_versions(
            self.artifacts, sorted((ref, v.digest) for ref, v in chosen.items()), quick=quick,
            on_total=on_total, on_bytes=on_bytes, known_whole=set(known_whole),
        )  # fmt: skip
        # none found in a store this registry never wrote to: "push every folder again" would
        # be the wrong advice (one version's lost manifest, in its own store, is damage)
        if report.nothing_found and self.identity not in self.artifacts.writers():
            newest = max(chosen.values(), key=lambda version: version.created_at)
            raise StorageUnavailableError(
                f"the artifact store {self.artifacts.url} holds none of the {report.versions} "
                f"version(s)' files: ADAPTEROPS_ARTIFACTS_URL names another store than the one "
                f"they were registered into ({newest.ref}'s files went to "
                f"{stored_in(newest.artifact_uri)}); point it there and run this again "
                "(if it is that store, everything was removed from it outside adapterops)"
            )
        return report

    def versions_of(self, refs: Sequence[str] = ()) -> list[AdapterVersion]:
        """The versions ``refs`` name, each once, as :meth:`verify` reads them: ``name``, all
        its versions; ``name@3``/``name@champion``, one; a composition's name or ref, its
        members' versions; none given, every version."""
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"refs is a list of names or refs (names, name@3), not {refs!r:.60}")
        for ref in refs:
            _check_type("a ref", ref, str, "a name or name@VERSION", optional=False)
        asked: Sequence[str | None] = refs or [None]  # None: every version
        chosen = {  # each version once
            version.ref: version for ref in asked for version in self._versions_named(ref)
        }
        return list(chosen.values())

    def _versions_named(self, ref: str | None) -> list[AdapterVersion]:
        """``name@3``: that version; ``name``: every version of it (none there: NotFoundError
        naming similar names); a composition's name or ref: the versions its members are;
        ``None``: every version."""
        if ref is None:
            return self.find()
        try:
            if "@" in ref:
                return [self.get(ref)]
            check_name(ref)
            self._read(lambda s: store.adapter_named(s, ref))
            return self.find(name=ref)
        except NotFoundError as no_adapter:
            try:
                compositions = (
                    [self.composition(ref)] if "@" in ref else self.composition_versions(ref)
                )
            except NotFoundError:
                raise no_adapter from None
        members = {member for composition in compositions for member in composition.members}
        return [self.get(member) for member in sorted(members)]

    def move_to(
        self,
        database_url: str,
        artifacts_url: str | os.PathLike[str] | None = None,
        *,
        on_wait: Callable[[], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        on_bytes: BytesMoved | None = None,
        dry_run: bool = False,
    ) -> MoveReport:
        """Move this registry into the empty one at ``database_url`` and ``artifacts_url``
        (default: this registry's store, kept as it is): every record and file is copied, the
        copy keeps this registry's id, and this database then refuses writes, naming the new
        place (:class:`RegistryMovedError`); reading it still works. How, and what a failure
        leaves: :mod:`registry.move`. ``dry_run``: the same checks and counts, nothing changed."""
        _check_type("move_to: database_url", database_url, str, "a URL", optional=False)
        if isinstance(artifacts_url, os.PathLike):
            artifacts_url = os.fspath(artifacts_url)
        _check_type("move_to: artifacts_url", artifacts_url, str, "a URL or a folder")
        return move_registry(
            self,
            database_url,
            artifacts_url,
            on_wait=on_wait,
            on_total=on_total,
            on_bytes=on_bytes,
            dry_run=dry_run,
        )

    def check_writable(self) -> None:
        """Raise :class:`RegistryMovedError` if this registry was moved (or is being moved)
        to another database, and :class:`StorageUnavailableError` if its artifact store cannot
        take its files (S3 unreachable, no bucket, credentials missing or refused: it writes
        the registry's marker there, as the first registration would): a build checks before it
        trains, not when it registers."""
        moved = self._read(moved_to)
        if moved is not None:
            raise RegistryMovedError(where_it_went(moved))
        self._mark_store()

    def close(self) -> None:
        """Release database connections."""
        self.database.dispose()

    def __enter__(self) -> Registry:
        """``with Registry() as registry:``: its connections released at the end of the block
        (a script or a scheduled job opening a registry per task left them to the collector)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- sessions -----------------------------------------------------------------------------

    def _read(self, operation: Callable[[Session], T]) -> T:
        with self.database.session() as session:
            return operation(session)

    def _write(self, operation: Callable[[Session], T]) -> T:
        """Run a write in its own transaction, retrying when a concurrent writer won a race."""
        with translate_db_errors(self.database.url):
            for _ in range(_RETRIES):
                try:
                    with self.database.sessions.begin() as session:
                        check_writable(session)  # a moved registry's old database: refused
                        return operation(session)
                except SAIntegrityError:
                    continue  # e.g. two processes created the same adapter: the loser retries
        raise _Conflict(f"gave up after {_RETRIES} conflicting concurrent writes; try again")


def _check_spec_fits(bundle: Bundle, spec: Mapping[str, Any]) -> None:
    """A spec registered with a folder describes how to load it (predict, evaluate and export
    read it): its method and head must be the ones the folder's metadata states."""
    stated = {
        "method.type": (bundle.metadata.get("method") or {}).get("type"),
        "head.type": (bundle.metadata.get("head") or {}).get("kind"),
    }
    given = {
        "method.type": (spec.get("method") or {}).get("type"),
        "head.type": (spec.get("head") or {}).get("type"),
    }
    for field, value in given.items():
        if value and stated[field] not in (None, "none", value):
            raise AdapterFolderError(
                f"the spec's {field} is {value!r}, but {bundle.folder} holds a "
                f"{stated[field]!r} adapter: give the spec it was trained with (a field set "
                f"when training, --set {field}={stated[field]}, is set again when pushing)"
            )


def _check_type(what: str, value: Any, kind: type, spelled: str, *, optional: bool = True) -> None:
    """A TypeError naming an argument given a value of another type (None passes when
    ``optional``)."""
    fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))  # True: an int
    if not fits and not (optional and value is None):
        allowed = f"{spelled} or None" if optional else spelled
        raise TypeError(f"{what} is {allowed}, not {type(value).__name__} {value!r:.40}")
    if isinstance(value, str):  # text the database cannot hold failed inside its driver
        check_storable_text(value, what)


def _checked_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metric names of at most 64 characters and finite numbers, checked before anything runs."""
    if not isinstance(metrics, Mapping):  # a list of pairs failed with "no attribute 'items'"
        raise RegistryError(
            f"metrics is a mapping of metric name to number ({{'accuracy': 0.91}}), not "
            f"{type(metrics).__name__}"
        )
    checked = {}
    for key, value in metrics.items():
        check_key(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RegistryError(f"metric {key}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise RegistryError(f"metric {key}={value!r} is not a finite number")
        checked[key] = number
    return checked


def _check_json(value: Mapping[str, Any], what: str) -> None:
    """A field the database stores as JSON, checked before any byte is uploaded (the database
    refused it at the insert, in a line that quoted the SQL)."""
    try:
        json.dumps(value, allow_nan=False)  # PostgreSQL's JSON has no NaN either
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"{what} must be plain JSON (strings, numbers, booleans, lists and dicts with string "
            f"keys): {exc}"
        ) from None
    for text in _strings_in(value):  # stored escaped, they failed where the record was shown
        check_storable_text(text, f"{what} text")


def _strings_in(value: Any) -> Iterator[str]:
    """Every string in a JSON value: its dicts' keys and its leaves."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings_in(item)


def _check_event_kind(kind: str, *, composition: bool) -> None:
    """An event kind fits its column, and says whose log it is in: composition histories hold
    exactly the kinds that start with ``composition``."""
    if not isinstance(kind, str) or not kind or len(kind) > 32:
        raise RegistryError(f"an event kind is 1 to 32 characters, got {kind!r:.40}")
    prefix = f"{store.COMPOSITION_EVENT}_"
    if composition and not kind.startswith(prefix):
        raise RegistryError(f"a composition's event kind starts with {prefix!r}, got {kind!r}")
    if not composition and kind.startswith(store.COMPOSITION_EVENT):
        raise RegistryError(
            f"event kind {kind!r}: kinds starting with {store.COMPOSITION_EVENT!r} belong to "
            "compositions' histories (record_composition_event)"
        )


def _naming_the_version(error: Exception, ref: str, folder: Path) -> Exception:
    """peft_core's ``error`` loading ``ref``'s files from the scratch ``folder`` they were
    downloaded into, said of the version (the folder is gone when the message is read, and a
    predict over several versions did not say which one failed)."""
    message = str(error.args[0]) if error.args else str(error)
    try:
        return type(error)(f"{ref}: {message.replace(str(folder), 'its files')}")
    except TypeError:  # an error type with its own arguments: as it was
        return error


def _build_lock_name(build_key: str) -> str:
    """The name of build key ``build_key``'s lock (:meth:`Registry.build_lock`)."""
    return f"build {build_key}"
