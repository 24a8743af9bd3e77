"""Which way a recorded metric improves: the one rule that ``ls --order-by``, ``resolve`` and the
promotion gate share, so "best first" means the same everywhere; and what to say of a metric
that nothing recorded."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["LOWER_IS_BETTER", "higher_is_better", "unrecorded_metric"]

# What evaluation records as a cost (flows/evaluation.py: perplexity, eval_loss) and what a user
# pushing with --metric is likely to call one: a name ending in these, or one of the rates below.
LOWER_IS_BETTER = ("perplexity", "loss", "error")
_ERROR_RATES = frozenset({"wer", "cer"})  # word and character error rates


def higher_is_better(metric: str) -> bool:
    """False for perplexity, losses and error rates (``eval_loss``, ``val_loss``, ``wer``...),
    True for the rest (accuracy, macro-F1, exact match, any score)."""
    name = metric.lower()
    return not (name.endswith(LOWER_IS_BETTER) or name in _ERROR_RATES)


def unrecorded_metric(what: str, metric: str, recorded: Iterable[str], purpose: str = "") -> str:
    """What to say when ``what`` (``"no version of NAME"``) recorded no ``metric``: the
    metrics recorded, and the one meant when the name is close to one (``f1``: ``macro_f1``,
    ``acc``: ``accuracy``). ``purpose`` follows the metric (``" to order by"``)."""
    names = sorted(set(recorded))
    wanted = metric.lower()
    close = [name for name in names if wanted and wanted in name.lower()]
    close = close or difflib.get_close_matches(metric, names, n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if len(close) == 1 else ""
    return (
        f"{what} recorded {metric!r}{purpose}; {guess}they recorded: "
        f"{', '.join(names) or 'no metric'}"
    )
