"""Garbage collection: delete the blobs of an artifact store that no version refers to.

A version's record points at its manifest; the manifest lists the version's files. So what a
registry keeps is every version's manifest and every file those manifests list; the rest of the
store, once older than a grace period (a registration uploads its bytes before recording them),
is garbage. :func:`collect` works in two phases so registrations are held up as little as
possible:

1. Without any lock: what every version's manifest lists (recorded in SQL at registration,
   :mod:`registry.manifest_files`; a manifest recorded before revision 0008 is downloaded once,
   the slow part, and recorded then) and the blobs old enough to go.
2. Under each registry's exclusive blob lock (no version is recorded meanwhile): read again the
   versions recorded since phase 1, with their few new manifests, and delete the candidates none
   of them refers to.

A store other registries write to too is collected only with all of them given: their versions'
files would look unreferenced from here. Each registry leaves a marker in the store so gc can
tell (:meth:`ArtifactStore.writers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from . import manifest_files, store
from .bundles import Manifest
from .errors import CorruptArtifactError, RegistryError, SharedStoreError
from .locks import kept_busy

if TYPE_CHECKING:
    from .client import Registry

MANIFEST_DOWNLOADS = 8  # manifests read at once (each a small GET; a far store answers slowly)

FilesOf = dict[str, set[str] | None]  # manifest digest -> the file digests it lists (None: gone)


def collect(
    registry: Registry,
    *,
    older_than: timedelta,
    dry_run: bool,
    shared_with: Sequence[Registry],
    on_progress: Callable[[int, int], None] | None,
    spared: list[str] | None = None,
) -> list[str]:
    """What :meth:`Registry.gc` does, its arguments already checked: delete (or, on a dry run,
    list) the unreferenced blobs older than ``older_than``, then the uploads a crash left
    unfinished; returns their digests, then the unfinished uploads' names. ``spared`` is given
    the unreferenced blobs kept for being younger."""
    others = _sharing(registry, shared_with)
    _refuse_a_shared_store(registry, others, mark=not dry_run)
    cutoff = datetime.now(UTC) - older_than
    files_of: FilesOf = {}
    referenced: set[str] = set()
    for each in (registry, *others):
        referenced |= each._read(lambda s: _recorded(s, files_of))
    downloaded = _download_manifests(registry, referenced - files_of.keys(), on_progress)
    files_of |= downloaded
    _refuse_missing_manifests(registry, files_of, [registry, *others])
    if not dry_run and downloaded:  # recorded once: the next gc reads them from SQL
        registry._write(lambda s: _record(s, downloaded))
    keep = _kept(referenced, files_of)
    unreferenced = [blob for blob in registry.artifacts.blobs() if blob.digest not in keep]
    candidates = [blob.digest for blob in unreferenced if blob.modified <= cutoff]
    if spared is not None:
        spared.extend(blob.digest for blob in unreferenced if blob.modified > cutoff)

    def decide_and_delete(session: Session) -> list[str]:
        # Each registration re-checks its blobs under the shared lock after gc lets go, so
        # holding every registry's exclusive lock here is what makes the deletion safe.
        store.lock_blobs(session, exclusive=True)
        referenced_now = _recorded(session, files_of)
        with ExitStack() as held:
            sessions = [session]
            for other in others:
                sessions.append(held.enter_context(other.database.session()))
                store.lock_blobs(sessions[-1], exclusive=True)
                referenced_now |= _recorded(sessions[-1], files_of)
            # a version recorded meanwhile by code older than revision 0008: download it (as
            # for each call to the store below, the locks' transactions kept from idling out)
            with kept_busy(*sessions):
                new = _download_manifests(registry, referenced_now - files_of.keys())
            files_of.update(new)
            _refuse_missing_manifests(registry, files_of, [])  # (no new session under the lock)
            keep_now = _kept(referenced_now, files_of)
            doomed = [digest for digest in candidates if digest not in keep_now]
            if not dry_run:
                _record(session, new)
                with kept_busy(*sessions):
                    registry.artifacts.delete_many(doomed)
                for each in sessions:
                    manifest_files.forget(each, doomed)
        # Uploads a crash left unfinished hold no version's bytes: past the grace, they go.
        with kept_busy(session):
            return doomed + registry.artifacts.clean_incomplete(cutoff, dry_run=dry_run)

    return registry._write(decide_and_delete)


def _recorded(session: Session, files_of: FilesOf) -> set[str]:
    """Every version's manifest digest in ``session``'s registry; adds the files recorded for
    each (not yet in ``files_of``) to ``files_of``."""
    referenced = store.referenced_digests(session)
    files_of.update(manifest_files.files_of(session, referenced - files_of.keys()))
    return referenced


def _record(session: Session, downloaded: FilesOf) -> None:
    """Record the files of the manifests downloaded (those found: None is a missing one)."""
    for manifest, files in downloaded.items():
        if files is not None:
            manifest_files.record(session, manifest, files)


def _download_manifests(
    registry: Registry,
    digests: Iterable[str],
    on_progress: Callable[[int, int], None] | None = None,
) -> FilesOf:
    """The files each manifest lists (None: missing from the store), read from the store,
    several at once: a store far away answers each request slowly."""

    def files_listed(digest: str) -> set[str] | None:
        try:
            manifest = Manifest.from_bytes(registry.artifacts.read_bytes(digest))
        except FileNotFoundError:
            return None
        return {file_digest for _, file_digest, _ in manifest.files}

    wanted = sorted(digests)
    found: FilesOf = {}
    if not wanted:
        return found
    with ThreadPoolExecutor(max_workers=MANIFEST_DOWNLOADS) as pool:
        listed = pool.map(files_listed, wanted)
        for done, (digest, files) in enumerate(zip(wanted, listed, strict=True), start=1):
            found[digest] = files
            if on_progress is not None:
                on_progress(done, len(wanted))
    return found


def _refuse_missing_manifests(
    registry: Registry, files_of: FilesOf, naming: list[Registry]
) -> None:
    """A version whose manifest is gone lists files gc cannot know: they would look
    unreferenced, and deleting them would lose what re-registering could still restore.
    ``naming``: the registries to look its name up in."""
    missing = sorted(digest for digest, files in files_of.items() if files is None)
    if not missing:
        return
    refs = sorted(
        ref
        for named_in in naming
        for ref in named_in._read(lambda s: store.refs_with_digests(s, missing))
    )
    named = ", ".join(refs) or "a version"
    raise CorruptArtifactError(
        f"gc refused: the manifest of {named} is missing from the artifact store "
        f"{registry.artifacts.url} (sha256 {', '.join(missing)}), so the files it lists are "
        "unknown and would look unreferenced. Push the version's folder again (the same "
        f"bytes put its manifest back) or delete the version (`adapterops rm "
        f"{refs[0] if refs else 'NAME@VERSION'}`); nothing was deleted"
    )


def _sharing(registry: Registry, shared_with: Sequence[Registry]) -> list[Registry]:
    """The other registries whose files gc keeps, checked to share ``registry``'s store (this
    registry itself, given again, is dropped)."""
    others: dict[str, Registry] = {}
    for other in shared_with:
        if other.artifacts.url != registry.artifacts.url:
            raise RegistryError(
                f"gc: the registry at {other.database.safe_url} stores its files in "
                f"{other.artifacts.url}, not in this registry's store {registry.artifacts.url}: "
                "list only the registries that share this store (nothing was deleted)"
            )
        identity = other.identity
        if identity != registry.identity:
            others[identity] = other
    return list(others.values())


def _refuse_a_shared_store(registry: Registry, sharing: list[Registry], *, mark: bool) -> None:
    """gc only deletes in a store whose every writer it knows: another registry's versions
    (a staging and a production database given one bucket) look unreferenced from here.
    ``mark``: leave this registry's marker (a dry run writes nothing)."""
    identity = registry._mark_store() if mark else registry.identity
    known = {identity} | {other.identity for other in sharing}
    artifacts = registry.artifacts
    others = {i: note for i, note in artifacts.writers().items() if i not in known}
    if not others:
        return
    safe_url = registry.database.safe_url
    own = f" at {safe_url}"
    earlier = sorted(i for i, note in others.items() if " ".join(note.split()).endswith(own))
    if earlier:  # this database, recreated since (or its schema downgraded past 0006)
        markers = ", ".join(artifacts.marker_uri(i) for i in earlier)
        raise SharedStoreError(
            f"gc refused: a registry at this same database ({safe_url}) wrote "
            f"to {artifacts.url} under another id ({', '.join(earlier)}; this one is "
            f"{identity}): the database was created again since, so the files of the "
            "versions it held look unreferenced from here. If those versions are gone for "
            f"good, delete the marker ({markers}) and run gc again (nothing was deleted)"
        )
    named = "; ".join(
        f"{' '.join(note.split()) or i} (marker {artifacts.marker_uri(i)})"
        for i, note in sorted(others.items())
    )
    raise SharedStoreError(
        f"gc refused: the artifact store {artifacts.url} is shared with another "
        f"registry, whose versions' files look unreferenced from here: {named}. Collect it "
        "with every registry that writes to it (`adapterops gc --shared-with DATABASE_URL`, "
        "once per other registry; from Python gc(shared_with=[Registry(url, "
        "artifacts_url)])), or give each registry its own ADAPTEROPS_ARTIFACTS_URL (a folder "
        "or S3 prefix of its own); if that registry is gone for good, delete its marker and "
        "run gc again (nothing was deleted)"
    )


def _kept(manifests: set[str], files_of: FilesOf) -> set[str]:
    """The manifests and every file digest they list."""
    return manifests.union(*(files_of.get(digest) or set() for digest in manifests))
