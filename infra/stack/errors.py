"""What the local stack reports when it cannot start."""

from __future__ import annotations

__all__ = ["StackError"]


class StackError(Exception):
    """The local stack cannot start here: a port in use, a missing binary."""
