"""Pictures a reviewer would rather look at than read: the loss curve, the confusion matrix and
an adapter's metric across its versions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from .trend import Trend

__all__ = ["confusion_matrix_plot", "loss_curve_plot", "trend_plot"]


def loss_curve_plot(
    losses: list[float],
    learning_rates: list[float],
    path: Path,
    *,
    title: str,
    evaluations: Sequence[Sequence[float]] = (),
    best_step: int | None = None,
) -> Path:
    """Training loss per step (and its running mean), with the learning rate on a second axis;
    the validation losses measured during training (``evaluations``: (step, loss) pairs) as
    points, the step whose weights were kept (``best_step``) marked."""
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    steps = range(1, len(losses) + 1)
    axis.plot(steps, losses, color="#9ab", linewidth=0.8, label="loss")
    window = max(1, len(losses) // 20)
    running = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    axis.plot(steps, running, color="#135", linewidth=1.8, label=f"running mean ({window} steps)")
    if evaluations:
        at, measured = [int(step) for step, _ in evaluations], [loss for _, loss in evaluations]
        axis.plot(at, measured, color="#2a7", marker="o", linewidth=1.4, label="validation loss")
        if best_step in at:
            kept = measured[at.index(best_step)]
            axis.plot([best_step], [kept], marker="*", markersize=14, color="#2a7",
                      linestyle="none", label=f"kept (step {best_step})")  # fmt: skip
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("loss" if evaluations else "training loss")
    axis.set_title(title)
    axis.legend(loc="upper right")
    if learning_rates:
        rate_axis = axis.twinx()
        rate_axis.plot(steps, learning_rates, color="#c73", linewidth=1, linestyle="--")
        rate_axis.set_ylabel("learning rate", color="#c73")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def confusion_matrix_plot(
    matrix: list[list[int]], path: Path, *, labels: list[str] | None = None, title: str
) -> Path:
    """Counts of (true label, predicted label), annotated."""
    size = len(matrix)
    names = labels or [str(i) for i in range(size)]
    figure, axis = plt.subplots(figsize=(1.2 * size + 2.5, 1.2 * size + 2), dpi=110)
    axis.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > peak / 2 else "black",
            )
    axis.set_xticks(range(size), names)
    axis.set_yticks(range(size), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def trend_plot(trend: Trend, path: Path) -> Path:
    """The metric of each version (a gap where one was not scored), every alias written at its
    version, and the best version ringed."""
    scored = [p for p in trend.points if p.value is not None]
    figure, axis = plt.subplots(figsize=(max(5.0, 0.45 * len(trend.points) + 3), 4), dpi=110)
    axis.plot(
        [p.version for p in trend.points],
        [p.value if p.value is not None else float("nan") for p in trend.points],
        color="#135", marker="o", linewidth=1.5,
    )  # fmt: skip
    for point in scored:
        if point.aliases:
            axis.annotate(
                ", ".join(point.aliases), (point.version, point.value or 0.0),
                textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8, color="#c73",
            )  # fmt: skip
    best = trend.best()
    if best is not None and best.value is not None:
        axis.scatter(
            [best.version], [best.value], s=160, facecolors="none", edgecolors="#2a2",
            linewidths=2, label=f"best: version {best.version}",
        )  # fmt: skip
        axis.legend(loc="best")
    axis.margins(x=0.1, y=0.2)  # room for the alias labels above the points
    axis.set_xticks([p.version for p in trend.points])
    axis.set_xlabel("version")
    better = "higher" if trend.higher_is_better else "lower"
    axis.set_ylabel(f"{trend.metric} ({better} is better)")
    axis.set_title(f"{trend.name}: {trend.metric} by version")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
