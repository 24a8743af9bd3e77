"""Pictures a reviewer would rather look at than read: the loss curve and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt

__all__ = ["confusion_matrix_plot", "loss_curve_plot"]


def loss_curve_plot(
    losses: list[float], learning_rates: list[float], path: Path, *, title: str
) -> Path:
    """Training loss per step (and its running mean), with the learning rate on a second axis."""
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    steps = range(1, len(losses) + 1)
    axis.plot(steps, losses, color="#9ab", linewidth=0.8, label="loss")
    window = max(1, len(losses) // 20)
    running = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    axis.plot(steps, running, color="#135", linewidth=1.8, label=f"running mean ({window} steps)")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("training loss")
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
