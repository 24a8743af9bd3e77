"""Every stored file of a registry's versions read back and checked against its digest.

A download checks the files of the one version it fetches (:func:`registry.bundles.download`),
so a damaged blob (a bit flipped on a disk, an object overwritten or truncated by a tool, a store
restored from an old backup) is found by whoever loads it next: a serving job, at the worst time.
:func:`verify_versions` does the same check for many versions at once, each shared file once,
and names every version a damaged file breaks (`adapterops db verify`). The repair is to
register the folder the file came from again: an upload replaces a stored copy that is not whole
(:meth:`ArtifactStore.put_file`), for every version that lists it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import ArtifactStore
from .artifacts.base import BytesMoved, file_sha256
from .bundles import Manifest

__all__ = ["MANIFEST", "DamagedFile", "Verification", "verify_versions"]

MANIFEST = "manifest"  # what a damaged file list is called (a version's files are named)
CHECKS_AT_ONCE = 8  # downloads at once: a far store answers each slowly
# a quick check of more files than this lists the store (a request per 1,000 blobs) rather
# than asking for each file's size (a request each)
LISTING_FROM = 200


@dataclass(frozen=True)
class DamagedFile:
    """A stored file that does not hold the bytes its digest names."""

    versions: tuple[str, ...]  # ``name@N`` of each checked version that lists it
    file: str  # its name in those versions; ``manifest`` for a version's list of files
    digest: str
    uri: str
    problem: str  # "missing", "corrupted" or (a quick check's) "N bytes, not M"


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_versions` checked, and what it found damaged (nothing: all whole)."""

    versions: int
    files: int  # distinct files, a file shared by several versions counted once
    bytes: int
    damaged: tuple[DamagedFile, ...]
    checked: tuple[str, ...] = ()  # ``name@N`` of each version checked, sorted

    @property
    def whole(self) -> tuple[str, ...]:
        """The versions checked whose every file is whole."""
        broken = {ref for each in self.damaged for ref in each.versions}
        return tuple(ref for ref in self.checked if ref not in broken)

    @property
    def nothing_found(self) -> bool:
        """Whether the store held not one of the versions' manifests: another store than the
        one they were registered into, more likely than every file lost."""
        lost = {
            ref
            for each in self.damaged
            if each.file == MANIFEST and each.problem == "missing"
            for ref in each.versions
        }
        return self.versions > 0 and len(lost) == self.versions


def verify_versions(
    store: ArtifactStore,
    versions: Iterable[tuple[str, str]],
    *,
    quick: bool = False,
    on_total: Callable[[int], None] | None = None,
    on_bytes: BytesMoved | None = None,
    known_whole: Collection[str] = (),
) -> Verification:
    """Check ``versions`` (``(name@N, manifest digest)`` pairs): each manifest, then each file
    it lists, downloaded and hashed; ``quick``: each file's presence and size alone, from the
    store's listing (no download: a missing or truncated file is found, altered bytes are not).
    The files of the versions in ``known_whole`` (just downloaded whole: a download checks
    every digest) count as whole without another download. ``on_total`` is told the bytes to
    download once the manifests are read, ``on_bytes`` the bytes as they arrive. A store that
    cannot be reached raises :class:`~registry.errors.StorageUnavailableError`; damage is
    reported, not raised."""
    refs_of: dict[str, list[str]] = defaultdict(list)  # manifest digest -> its versions
    for ref, digest in versions:
        refs_of[digest].append(ref)
    damaged: list[DamagedFile] = []
    files: dict[str, _Listed] = {}  # file digest -> its size, versions and names
    with ThreadPoolExecutor(max_workers=CHECKS_AT_ONCE) as pool:
        found = pool.map(lambda digest: _manifest(store, digest), refs_of)
        for (digest, refs), manifest in zip(refs_of.items(), found, strict=True):
            if isinstance(manifest, str):
                damaged.append(_damaged(store, refs, MANIFEST, digest, manifest))
                continue
            for name, file_digest, size in manifest.files:
                listed = files.setdefault(file_digest, _Listed(size))
                listed.versions.update(dict.fromkeys(refs))
                listed.names[name] = None
                listed.whole = listed.whole or any(ref in known_whole for ref in refs)
        total = sum(listed.size for listed in files.values())
        unread = [digest for digest, listed in files.items() if not listed.whole]
        if on_total is not None:
            on_total(sum(files[digest].size for digest in unread))
        if quick:
            stored = _stored_sizes(store, unread, pool)
            problem_of = {d: _size_problem(stored, d, files[d].size) for d in unread}
        else:
            with tempfile.TemporaryDirectory(prefix="adapterops-verify-") as scratch:
                checked = pool.map(
                    lambda d: _file_problem(store, d, files[d].size, Path(scratch), on_bytes),
                    unread,
                )
                problem_of = dict(zip(unread, checked, strict=True))
        problems = [problem_of.get(digest) for digest in files]
    for (digest, listed), problem in zip(files.items(), problems, strict=True):
        if problem is not None:
            names = " / ".join(listed.names)  # one file under two names: both
            damaged.append(_damaged(store, list(listed.versions), names, digest, problem))
    return Verification(
        checked=tuple(sorted(ref for refs in refs_of.values() for ref in refs)),
        versions=sum(len(refs) for refs in refs_of.values()),
        files=len(files),
        bytes=total,
        damaged=tuple(sorted(damaged, key=lambda d: (d.versions, d.file))),
    )


def _stored_sizes(
    store: ArtifactStore, digests: list[str], pool: ThreadPoolExecutor
) -> dict[str, int]:
    """The stored sizes of ``digests`` (those stored): a request each for a few (one version's
    files: the gate checks its champion's before loading it), else from the store's listing,
    a request per 1,000 blobs (a whole registry's)."""
    if len(digests) > LISTING_FROM:
        return {blob.digest: blob.size for blob in store.blobs()}
    sizes = zip(digests, pool.map(store.size, digests), strict=True)
    return {digest: size for digest, size in sizes if size is not None}


@dataclass
class _Listed:
    """A file some checked manifests list: its size, and the versions and names listing it
    (dicts as ordered sets)."""

    size: int
    versions: dict[str, None] = field(default_factory=dict)
    names: dict[str, None] = field(default_factory=dict)
    whole: bool = False  # a version listing it was just downloaded whole


def _manifest(store: ArtifactStore, digest: str) -> Manifest | str:
    """The manifest, or what is wrong with it."""
    try:
        data = store.read_bytes(digest)
    except FileNotFoundError:
        return "missing"
    if hashlib.sha256(data).hexdigest() != digest:
        return "corrupted"
    return Manifest.from_bytes(data)


def _file_problem(
    store: ArtifactStore, digest: str, size: int, scratch: Path, on_bytes: BytesMoved | None
) -> str | None:
    """``None`` when the stored file holds ``size`` bytes whose sha256 is ``digest``."""
    path = scratch / digest
    try:
        store.get_file(digest, path, on_bytes)
    except FileNotFoundError:
        if on_bytes is not None:  # the bar still reaches its total
            on_bytes(size)
        return "missing"
    try:
        whole = path.stat().st_size == size and file_sha256(path) == digest
    finally:
        path.unlink(missing_ok=True)
    return None if whole else "corrupted"


def _size_problem(stored: dict[str, int], digest: str, size: int) -> str | None:
    """``None`` when the listing holds the file at its size."""
    if digest not in stored:
        return "missing"
    return None if stored[digest] == size else f"{stored[digest]} bytes, not {size}"


def _damaged(
    store: ArtifactStore, refs: list[str], file: str, digest: str, problem: str
) -> DamagedFile:
    return DamagedFile(tuple(sorted(refs)), file, digest, store.uri(digest), problem)
