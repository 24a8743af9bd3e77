"""Errors the flows raise for bad input (a light module: the CLI imports it at start-up)."""

from __future__ import annotations

__all__ = [
    "BaseModelNotFound",
    "DataError",
    "OrchestrationError",
    "StackError",
    "TrackingUnavailableError",
]


class DataError(Exception):
    """The data named by a spec cannot be used; the message says why and what to do."""


class BaseModelNotFound(Exception):
    """The base model is neither a local folder, a packaged model, nor in the local HF cache."""


class TrackingUnavailableError(Exception):
    """MLflow cannot be reached or refused a request (after retries)."""


class OrchestrationError(Exception):
    """The Prefect server cannot be reached, or refused a deployment or a run."""


# The local stack's error lives with the launcher (infra.stack); the CLI treats it as bad input.
from infra.stack.errors import StackError  # noqa: E402
