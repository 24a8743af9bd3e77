"""Which files each stored manifest lists, kept in SQL (``manifest_files``) for gc.

A version's record names its manifest; the manifest, in the artifact store, names its files.
gc must keep both, so it needed every manifest's contents: one download per version per run.
A registration records its manifest's files here instead, and gc reads them in one query per
500 manifests. Manifests are content-addressed, so a row is true for as long as it exists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .orm import ManifestFileRow

__all__ = ["files_of", "forget", "record"]

_PER_QUERY = 500  # digests per IN (...): well under every database's limit on parameters


def record(session: Session, manifest: str, files: Iterable[str]) -> None:
    """Remember that ``manifest`` lists ``files`` (nothing to do if it is known already)."""
    known = session.scalar(
        select(ManifestFileRow.file).where(ManifestFileRow.manifest == manifest).limit(1)
    )
    if known is None:
        session.add_all(ManifestFileRow(manifest=manifest, file=file) for file in set(files))
        session.flush()  # a concurrent writer's same rows: IntegrityError, the write retries


def files_of(session: Session, manifests: Iterable[str]) -> dict[str, set[str]]:
    """The files each of ``manifests`` lists; a manifest with no rows (registered before
    revision 0008) is absent."""
    wanted = sorted(set(manifests))
    found: dict[str, set[str]] = defaultdict(set)
    for start in range(0, len(wanted), _PER_QUERY):
        rows = session.execute(
            select(ManifestFileRow.manifest, ManifestFileRow.file).where(
                ManifestFileRow.manifest.in_(wanted[start : start + _PER_QUERY])
            )
        )
        for manifest, file in rows:
            found[manifest].add(file)
    return dict(found)


def forget(session: Session, manifests: Iterable[str]) -> None:
    """Drop the rows of manifests gc deleted from the store."""
    doomed = sorted(set(manifests))
    for start in range(0, len(doomed), _PER_QUERY):
        session.execute(
            delete(ManifestFileRow).where(
                ManifestFileRow.manifest.in_(doomed[start : start + _PER_QUERY])
            )
        )
