"""Errors the flows raise for bad input (a light module: the CLI imports it at start-up)."""

from __future__ import annotations

from registry.redaction import RedactedError  # messages never carry a password or a key

__all__ = [
    "BaseModelNotFound",
    "DataError",
    "GateError",
    "MlflowNameError",
    "OrchestrationError",
    "PromotionRefusedError",
    "StackError",
    "TrackingAccessError",
    "TrackingUnavailableError",
    "one_line",
]


class DataError(RedactedError):
    """The data named by a spec cannot be used; the message says why and what to do."""


class BaseModelNotFound(RedactedError):
    """The base model is neither a local folder, a packaged model, nor in the local HF cache."""


class TrackingUnavailableError(RedactedError):
    """MLflow cannot be reached or refused a request (after retries)."""


class MlflowNameError(RedactedError):
    """An MLflow registered model name this registry cannot use: another registry's mirror of an
    adapter of the same name, or ``ADAPTEROPS_MLFLOW_PREFIX`` written wrong."""


class TrackingAccessError(RedactedError):
    """MLflow answered but refused the request: no valid credentials, or a user without the
    permission (not MLflow being down: re-running changes nothing, so nothing is stored)."""


class OrchestrationError(RedactedError):
    """The Prefect server cannot be reached, or refused a deployment or a run."""


class PromotionRefusedError(RedactedError):
    """A promotion by hand would put a worse-scoring version in place (``--force`` overrides)."""

    def __init__(self, comparison: str, alias: str, refs: tuple[str, str] | None = None) -> None:
        # refs: the holder and the candidate, for the command that shows what changed between them
        what_changed = f" (what changed: adapterops diff {' '.join(refs)})" if refs else ""
        super().__init__(f"{comparison}: pass --force to make it {alias} anyway{what_changed}")
        self.comparison = comparison  # e.g. "x@2 scores accuracy 0.8000, worse than ..."


class GateError(RedactedError):
    """A build's gate could not weigh its candidate against the version holding the alias (its
    files are damaged): the candidate is registered, not promoted. Not bad input: exit 1."""


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most 500 characters, for a report's table or an MLflow
    run's note."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


# The local stack's error lives with the launcher (infra.stack); the CLI treats it as bad input.
from infra.stack.errors import StackError  # noqa: E402
