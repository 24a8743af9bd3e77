"""Safetensors files that every reader a new file admits can read.

safetensors 0.8 writes each file through a temporary file, which is always created 0600, and
renames it into place (safetensors#782): an adapter saved by one user could not be read by
another, so vLLM serving it under its own user answered "No adapter found", and a merged
checkpoint copied into an image failed for the image's user. Files written here get the mode
``open()`` gives a new file: ``0o666`` less the umask (0644 under the usual 022).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch

__all__ = ["new_file_mode", "readable_as_new", "save_tensors"]


def save_tensors(
    tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, then the mode of a new file (see the module)."""
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    readable_as_new(path)


def readable_as_new(path: Path) -> None:
    """Give ``path`` the mode ``open()`` would have given it."""
    os.chmod(path, new_file_mode())


def new_file_mode() -> int:
    """``0o666`` less this process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, for a moment
    os.umask(mask)
    return mask
