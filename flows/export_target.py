"""Where ``export`` writes, checked before torch loads: an unknown engine or a folder that
holds files is one line at once, not after five seconds of imports."""

from __future__ import annotations

from pathlib import Path

from registry.folders import check_folder_to_write

from .errors import DataError

__all__ = ["ENGINES", "checked_export_target"]

ENGINES = ("peft", "vllm", "lorax", "merged", "adapterhub")


def checked_export_target(destination: str | Path, engine: str) -> Path:
    """``destination`` if it is a new or empty folder this user can write and ``engine`` is
    known, else DataError (AdapterFolderError for a folder that cannot be written)."""
    target = Path(destination)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists and is not an empty folder: export into a new one")
    if engine not in ENGINES:
        raise DataError(f"unknown engine {engine!r}; export --for one of {', '.join(ENGINES)}")
    check_folder_to_write(target, f"export for {engine}")
    return target
