"""An adapter folder as a set of content-addressed blobs plus a manifest.

A folder to register must be exactly an adapter written by ``peft_core.save_adapter``: our format
(``adapter.json`` + ``adapter.safetensors``) or the PEFT layout (``adapter_config.json`` +
``adapter_model.safetensors``, optionally ``adapterops.json``), plus optional ``README.md``,
``report.json`` and ``probes.json`` (golden probes, so the digest covers them too). Each file is
stored under its sha256; the manifest (file names, digests, sizes) is stored the same way, and
its digest is the version's digest.

Downloads are verified file by file: a corrupted or truncated blob is never handed out.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .artifacts import ArtifactStore
from .artifacts.base import BytesMoved, file_sha256
from .errors import AdapterFolderError, CorruptArtifactError, StorageUnavailableError
from .folders import check_folder_to_write, new_folders

__all__ = [
    "PEFT_TASK_HEADS",
    "Bundle",
    "Manifest",
    "check_adapter_folder",
    "check_folder_to_write",
    "copy_blob",
    "download",
    "inspect_folder",
    "read_json_object",
    "saved_fingerprint",
    "stored_in",
    "upload",
]

OURS = ({"adapter.json", "adapter.safetensors"}, "adapter.json")
PEFT = ({"adapter_config.json", "adapter_model.safetensors"}, "adapterops.json")
OPTIONAL = {"README.md", "report.json", "adapterops.json", "probes.json"}
PEFT_TENSORS = "adapter_model.safetensors"
MANIFEST_FORMAT = "adapterops.manifest/1"


@dataclass(frozen=True)
class Manifest:
    """The files of one version: ``(relative path, sha256, size)`` sorted by path."""

    files: tuple[tuple[str, str, int], ...]

    def to_bytes(self) -> bytes:
        """Canonical JSON: the same files always give the same bytes, hence the same digest."""
        entries = [{"path": p, "sha256": d, "size": s} for p, d, s in self.files]
        return json.dumps({"format": MANIFEST_FORMAT, "files": entries}, sort_keys=True).encode()

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest: the version's content digest."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def size(self) -> int:
        """Total bytes of the files."""
        return sum(s for _, _, s in self.files)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Inverse of :meth:`to_bytes`."""
        document = json.loads(data)
        return cls(tuple((f["path"], f["sha256"], int(f["size"])) for f in document["files"]))


@dataclass(frozen=True)
class Bundle:
    """A validated adapter folder: its files, manifest and what its metadata says."""

    folder: Path
    manifest: Manifest
    method: str
    head: str
    fingerprint: str | None
    metadata: dict[str, Any]
    base_digests: tuple[str, ...] = ()  # every digest naming the base model, canonical first


def check_adapter_folder(path: Path) -> None:
    """Refuse a path that is not a folder (what a mistyped path gets, before anything else)."""
    if not path.is_dir():
        raise AdapterFolderError(
            f"{path} is not a folder: give the folder peft_core.save_adapter wrote"
        )


def inspect_folder(folder: str | Path) -> Bundle:
    """Validate an adapter folder and hash its files (nothing is stored yet)."""
    path = Path(folder)
    check_adapter_folder(path)
    present = {p.name for p in path.iterdir()}
    if not present:  # a listing of what is missing and unexpected says less than this
        raise AdapterFolderError(
            f"{path} is empty: give the folder peft_core.save_adapter (or peft's "
            "save_pretrained) wrote the adapter into"
        )
    if "adapter.json" not in present and _written_by_adapterhub(path):
        raise AdapterFolderError(
            f"{path} is an AdapterHub adapter: register it with `adapterops import {path} "
            "--base-model ...` (Python: flows.import_job.import_adapterhub), which converts it "
            "and checks it on the base model"
        )
    required, metadata_file = OURS if "adapter.json" in present else PEFT
    missing = sorted(required - present)
    extra = sorted(present - required - OPTIONAL)
    subfolders = sorted(p.name for p in path.iterdir() if p.is_dir())
    if missing or extra or subfolders:
        raise AdapterFolderError(
            f"{path} is not a complete adapter folder: missing {missing or 'nothing'}, unexpected "
            f"{sorted(set(extra) | set(subfolders)) or 'nothing'}. Expected {sorted(OURS[0])} "
            f"(peft_core format) or {sorted(PEFT[0])} (PEFT), plus optional {sorted(OPTIONAL)}."
        )
    metadata = _read_metadata(path / metadata_file)
    _check_contents(path, "adapter.safetensors" if metadata_file == OURS[1] else PEFT_TENSORS)
    files = tuple(
        sorted((name, file_sha256(path / name), (path / name).stat().st_size) for name in present)
    )
    # A PEFT folder written by peft itself has no adapterops.json: its adapter_config.json says
    # the method and the head (what peft_core loads it as).
    peft_file = path / "adapter_config.json"
    written_by_peft = _read_metadata(peft_file) if metadata_file == PEFT[1] else {}
    method = str(metadata.get("method", {}).get("type") or _peft_method(written_by_peft))
    if not method:
        raise AdapterFolderError(
            f"{path / metadata_file} does not say which method the adapter uses"
        )
    saved = metadata.get("fingerprint") or {}
    head = str(
        metadata.get("head", {}).get("kind")
        or PEFT_TASK_HEADS.get(str(written_by_peft.get("task_type")), "none")
    )
    return Bundle(
        path, Manifest(files), method, head, saved.get("digest"), metadata, base_digests(saved)
    )


def _check_contents(folder: Path, tensors_file: str) -> None:
    """What every load of the version reads is readable: the weights file is whole safetensors
    (its header read, every tensor's bytes inside the file; nothing loaded) and ``report.json``
    and ``probes.json``, where present, are JSON objects. A damaged or half-copied file is
    refused at push, not stored as a version every later load fails on."""
    for optional in ("report.json", "probes.json"):
        _read_metadata(folder / optional)
    file = folder / tensors_file
    try:
        with safe_open(str(file), framework="numpy") as tensors:
            tensors.keys()
    except (SafetensorError, OSError) as exc:
        raise AdapterFolderError(
            f"{file} is not a whole safetensors file ({exc}): push the folder as peft or "
            "adapterops wrote it (a copy cut short, or another file under its name?)"
        ) from None


def saved_fingerprint(folder: str | Path) -> dict[str, Any]:
    """The base-model fingerprint an adapter folder's metadata records: ``{}`` when it has none
    or cannot be read (:func:`inspect_folder` says what is wrong with such a folder)."""
    path = Path(folder)
    metadata_file = path / (OURS[1] if (path / OURS[1]).is_file() else PEFT[1])
    try:
        saved = _read_metadata(metadata_file).get("fingerprint")
    except (AdapterFolderError, OSError):
        return {}
    return saved if isinstance(saved, dict) else {}


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file's object, or ``{}`` when it is missing, unreadable or not an object: for
    reading what a folder's files state before :func:`inspect_folder` (or loading) says what is
    wrong with them."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _written_by_adapterhub(folder: Path) -> bool:
    """AdapterHub's ``adapter_config.json`` has a ``config`` object and ``version: adapters.*``."""
    saved = read_json_object(folder / "adapter_config.json")
    return str(saved.get("version", "")).startswith("adapters.")


def base_digests(saved: dict[str, Any]) -> tuple[str, ...]:
    """Every digest that names this adapter's base model, the tokenizer-free one first.

    peft_core's digest covers model type, shape-relevant config and weight shapes; files written
    before it left the vocabulary out also carry a digest with the vocabulary in. Both are
    recomputed here (peft_core's formula; ``tests/registry`` checks they agree), so a base model
    registered either way is recognised.
    """
    if not {"model_type", "config", "weights"} <= set(saved):
        return (saved["digest"],) if saved.get("digest") else ()
    parts = {
        "model_type": saved["model_type"],
        "config": saved["config"],
        "weights": saved["weights"],
    }
    digests = [_json_sha256({**parts, "vocab": None})]
    if saved.get("vocab"):
        digests.append(_json_sha256({**parts, "vocab": saved["vocab"]}))
    if saved.get("digest") and saved["digest"] not in digests:
        digests.append(saved["digest"])
    return tuple(digests)


def _json_sha256(value: Any) -> str:
    payload = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()


def upload(
    store: ArtifactStore,
    bundle: Bundle,
    on_bytes: BytesMoved | None = None,
    *,
    only_missing: bool = False,
) -> str:
    """Store the bundle's files, then its manifest; returns the manifest's URI. ``on_bytes`` is
    told the files' bytes as they move (not the manifest's: the total is the version's size).
    A stored copy is checked whole before it is kept (a damaged one is replaced); with
    ``only_missing``, only its presence is (just uploaded, the files are whole: what a gc since
    may have deleted is put back)."""
    for name, digest, _ in bundle.manifest.files:
        if not (only_missing and store.has(digest)):
            store.put_file(digest, bundle.folder / name, on_bytes)
    with tempfile.TemporaryDirectory() as scratch:
        manifest_file = Path(scratch) / "manifest.json"
        manifest_file.write_bytes(bundle.manifest.to_bytes())
        if not (only_missing and store.has(bundle.manifest.digest)):
            store.put_file(bundle.manifest.digest, manifest_file)
    return store.uri(bundle.manifest.digest)


def download(
    store: ArtifactStore,
    digest: str,
    destination: Path,
    *,
    label: str,
    on_bytes: BytesMoved | None = None,
    check_files: Callable[[Path], None] | None = None,
    registered_at: str | None = None,
) -> Path:
    """Fetch version ``label``'s files into ``destination``, verifying every digest
    (``on_bytes``: told the files' bytes as they arrive).

    Files land in a temporary folder beside ``destination`` (never inside it, so a killed download
    leaves nothing in it) and move into place only when all are verified, so a failed download
    leaves ``destination`` as it was (one made for it, with its new parents, is removed again).
    ``check_files`` is handed that folder of verified files before they move: what it raises
    leaves ``destination`` as it was too (``pull --verify`` re-runs the probes there).
    ``registered_at`` (the version's recorded manifest URI) names the store it went to where a
    file is missing from another.
    """
    check_folder_to_write(destination, f"download {label}")
    prefix = f".{destination.name}.incoming-"
    with (
        new_folders(destination),
        tempfile.TemporaryDirectory(dir=destination.parent, prefix=prefix) as scratch,
    ):
        staging = Path(scratch)
        manifest_path = staging / ".manifest"
        where = stored_in(registered_at) if registered_at else store.url
        _fetch(store, digest, manifest_path, label=label, what="manifest", registered_in=where)
        _verify(manifest_path, digest, label=label, what="manifest")
        manifest = Manifest.from_bytes(manifest_path.read_bytes())
        _check_no_other_adapter(destination, {name for name, _, _ in manifest.files}, label)
        for name, file_digest, size in manifest.files:
            target = staging / name
            _fetch(
                store, file_digest, target, label=label, what=name, on_bytes=on_bytes,
                registered_in=where,
            )  # fmt: skip
            _verify(target, file_digest, label=label, what=name, size=size)
        if check_files is not None:
            manifest_path.unlink()  # the folder holds the adapter's files alone, as pulled
            check_files(staging)
        for name, _, _ in manifest.files:
            shutil.move(str(staging / name), destination / name)
    return destination


def stored_in(artifact_uri: str) -> str:
    """The store a version's recorded manifest URI is in (``s3://b/p/blobs/sha256/ab/ab..``:
    ``s3://b/p``)."""
    return artifact_uri.split("/blobs/sha256/", maxsplit=1)[0]


def copy_blob(
    source: ArtifactStore,
    target: ArtifactStore,
    digest: str,
    scratch: Path,
    *,
    size: int,
    label: str,
    what: str,
    on_bytes: BytesMoved | None = None,
) -> None:
    """Copy one blob from ``source`` to ``target`` through a file in ``scratch``, verified
    against its digest and size before it is stored (errors name it: file ``what`` of version
    ``label``)."""
    path = scratch / digest
    try:
        _fetch(source, digest, path, label=label, what=what, on_bytes=on_bytes)
        _verify(path, digest, label=label, what=what, size=size)
        target.put_file(digest, path)
    finally:
        path.unlink(missing_ok=True)


def _check_no_other_adapter(destination: Path, incoming: set[str], label: str) -> None:
    """Pulling again into the same folder replaces the files; an adapter file this version lacks
    (another format's, an older version's probes) would stay beside them, and the folder would be
    a mix that loads as neither. Other files (a user's notes) are left alone."""
    adapter_files = OURS[0] | PEFT[0] | OPTIONAL
    stale = sorted(p.name for p in destination.iterdir() if p.name in adapter_files - incoming)
    if stale:
        raise AdapterFolderError(
            f"cannot download {label} into {destination}: it holds {stale} of another adapter, "
            "which this version does not have, and the folder would mix the two; download into "
            "a new or empty folder, or remove those files first (nothing was written)"
        )


def _fetch(
    store: ArtifactStore,
    digest: str,
    target: Path,
    *,
    label: str,
    what: str,
    on_bytes: BytesMoved | None = None,
    registered_in: str | None = None,
) -> None:
    try:
        store.get_file(digest, target, on_bytes)
    except FileNotFoundError:
        if registered_in is None:
            check = (
                "check that ADAPTEROPS_ARTIFACTS_URL names the store it was registered into; if "
                "it does, the file was removed from the store outside adapterops"
            )
        elif registered_in != store.url:
            check = f"it was registered into {registered_in}: point ADAPTEROPS_ARTIFACTS_URL there"
        else:
            check = (
                "it was removed from the store it was registered into, outside adapterops; "
                "pushing the folder it came from again (`adapterops push FOLDER`) puts it back"
            )
        raise CorruptArtifactError(
            f"{label}: {what} is missing from the artifact store (expected sha256 {digest} at "
            f"{store.uri(digest)}): {check}"
        ) from None
    except StorageUnavailableError:
        raise


def _verify(path: Path, digest: str, *, label: str, what: str, size: int | None = None) -> None:
    actual_size = path.stat().st_size
    actual = file_sha256(path)
    if actual != digest or (size is not None and actual_size != size):
        raise CorruptArtifactError(
            f"{label}: {what} is corrupted or truncated: expected sha256 {digest}"
            f"{f' ({size} bytes)' if size is not None else ''}, got {actual} "
            f"({actual_size} bytes). It was not loaded. To repair it, register the folder it "
            "came from again (`adapterops push FOLDER` with its name, task and language; a "
            "build wrote it to out/NAME): the same bytes replace the damaged file in every "
            "version that lists it. `adapterops db verify` finds every damaged file."
        )


# peft's task types and the head each means (peft_core.peft_format writes the same two)
PEFT_TASK_HEADS = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal-lm"}


def _peft_method(config: dict[str, Any]) -> str:
    """The peft_core method a PEFT ``adapter_config.json`` loads as (``""``: none given): its
    LoRA, DoRA and IA³ natively, any other peft type through the ``peft`` method. The registry
    reads no torch, so this mirrors the methods' ``reads_peft`` (a test holds them together)."""
    peft_type = config.get("peft_type")
    if not peft_type:
        return "lora" if config else ""  # what a config without a type was recorded as before
    if peft_type == "LORA":
        return "dora" if config.get("use_dora") else "lora"
    return "ia3" if peft_type == "IA3" else "peft"


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFolderError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterFolderError(f"{path} must hold a JSON object")
    return data
