"""Where ``export`` writes, checked before torch loads: an unknown engine or a folder that
holds files is one line at once, not after five seconds of imports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from registry.folders import check_folder_to_write

from .errors import DataError

__all__ = [
    "ENGINES",
    "VLLM_DEFAULT_MAX_LORA_RANK",
    "checked_export_target",
    "engine_named",
    "vllm_rank_limit",
]

ENGINES = ("peft", "vllm", "lorax", "merged", "adapterhub")
VLLM_DEFAULT_MAX_LORA_RANK = 16  # vLLM's default --max-lora-rank


def engine_named(engine: str) -> str:
    """``engine`` as ENGINES spell it: written as the projects spell themselves (``vLLM``,
    ``LoRAX``, ``PEFT``, ``AdapterHub``), it is the same engine; an unknown one is returned as
    written (the error quotes what the user wrote)."""
    named = engine.strip().lower()
    return named if named in ENGINES else engine


def checked_export_target(destination: str | Path, engine: str) -> Path:
    """``destination`` if it is a new or empty folder this user can write and ``engine`` is
    known, else DataError (AdapterFolderError for a folder that cannot be written)."""
    target = Path(destination)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists and is not an empty folder: export into a new one")
    if engine_named(engine) not in ENGINES:
        raise DataError(f"unknown engine {engine!r}; export --for one of {', '.join(ENGINES)}")
    check_folder_to_write(target, f"export for {engine}")
    return target


def vllm_rank_limit(engine: str, max_lora_rank: int | None, say: Callable[[str], None]) -> int:
    """The rank limit exports are checked against: ``max_lora_rank`` given for vLLM, else vLLM's
    default. Given for another engine, which has no such setting, ``say`` is told it changes
    nothing (a user who wrote it expects it to)."""
    if max_lora_rank is not None and engine != "vllm":
        say(f"--max-lora-rank is vLLM's server setting: --for {engine} does not read it")
    return max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK
