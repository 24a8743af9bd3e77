"""One adapter's (or composition's) metric across its versions: is scheduled retraining
improving it, or drifting? (``adapterops trend NAME``, ``adapterops composition trend NAME``).
Pure: registry records in, points out; the picture is :func:`flows.plots.trend_plot`'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry import AdapterVersion, Composition, higher_is_better
from registry.metrics import unrecorded_metric
from registry.version_diff import COUNTS

from .errors import DataError

__all__ = ["Trend", "TrendPoint", "metric_trend"]


@dataclass(frozen=True)
class TrendPoint:
    """One version's value of the metric (None: it was registered without it)."""

    version: int
    value: float | None
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"version": self.version, "value": self.value, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class Trend:
    """``metric`` of each version of adapter ``name``, oldest first."""

    name: str
    metric: str
    points: tuple[TrendPoint, ...]

    @property
    def higher_is_better(self) -> bool:
        """Which way is better for this metric (lower for perplexity and losses)."""
        return higher_is_better(self.metric)

    def best(self) -> TrendPoint | None:
        """The version with the best value (the newest of equals); None when none has one."""
        scored = [p for p in self.points if p.value is not None]
        if not scored:
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        return max(scored, key=lambda p: (sign * float(p.value or 0.0), p.version))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``adapterops trend --json``)."""
        best = self.best()
        return {
            "name": self.name,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "best": best.version if best else None,
            "points": [p.to_dict() for p in self.points],
        }


def metric_trend(
    versions: Sequence[AdapterVersion | Composition], metric: str | None = None
) -> Trend:
    """The trend of ``metric`` over ``versions`` (one adapter's or one composition's, any
    order). Without ``metric``: the one the newest version's spec (a composition's evaluation
    spec) gates on, else the only quality metric they recorded."""
    if not versions:
        raise DataError("no versions to draw a trend of")
    ordered = sorted(versions, key=lambda v: v.version)
    name = ordered[0].name
    recorded = sorted({key for v in ordered for key in v.metrics})
    chosen = metric or _default_metric(ordered, recorded)
    if chosen not in recorded:
        raise DataError(unrecorded_metric(f"no version of {name}", chosen, recorded))
    points = tuple(TrendPoint(v.version, v.metrics.get(chosen), v.aliases) for v in ordered)
    return Trend(name, chosen, points)


def _default_metric(ordered: list[AdapterVersion | Composition], recorded: list[str]) -> str:
    """The metric the newest spec's gate compares on, else the only one that is not a count."""
    newest = ordered[-1]
    spec = newest.spec if isinstance(newest, AdapterVersion) else newest.evaluation
    gated = spec.get("evaluate", {}).get("metric")
    if isinstance(gated, str) and gated in recorded:
        return gated
    quality = [key for key in recorded if key not in COUNTS]
    if len(quality) == 1:
        return quality[0]
    name = ordered[0].name
    if not quality:
        raise DataError(f"no version of {name} recorded a metric: there is no trend to draw")
    raise DataError(f"{name}'s versions recorded {', '.join(quality)}: give --metric, one of them")
