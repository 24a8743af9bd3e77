"""Which way a recorded metric improves: the one rule that ``ls --order-by``, ``resolve`` and the
promotion gate share, so "best first" means the same everywhere."""

from __future__ import annotations

__all__ = ["LOWER_IS_BETTER", "higher_is_better"]

# What evaluation records as a cost (flows/evaluation.py: perplexity, eval_loss) and what a user
# pushing with --metric is likely to call one: a name ending in these, or one of the rates below.
LOWER_IS_BETTER = ("perplexity", "loss", "error")
_ERROR_RATES = frozenset({"wer", "cer"})  # word and character error rates


def higher_is_better(metric: str) -> bool:
    """False for perplexity, losses and error rates (``eval_loss``, ``val_loss``, ``wer``...),
    True for the rest (accuracy, macro-F1, exact match, any score)."""
    name = metric.lower()
    return not (name.endswith(LOWER_IS_BETTER) or name in _ERROR_RATES)
