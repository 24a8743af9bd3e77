"""What the local stack reports when it cannot start."""

from __future__ import annotations

from registry.redaction import RedactedError

__all__ = ["StackError"]


class StackError(RedactedError):
    """The local stack cannot start here: a port in use, a missing binary."""
