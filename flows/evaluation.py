"""Evaluation metrics: accuracy and macro-F1 for classification, perplexity for language models."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["confusion_matrix", "evaluate", "metrics_from_confusion"]


def confusion_matrix(predictions: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """``matrix[true, predicted]`` counts."""
    index = labels.long() * num_labels + predictions.long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def metrics_from_confusion(matrix: Tensor) -> dict[str, float]:
    """Accuracy and macro-averaged F1 (classes absent from both labels and predictions skipped)."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    predicted = matrix.sum(0)
    actual = matrix.sum(1)
    present = (predicted + actual) > 0
    f1 = 2 * true_positive / (predicted + actual).clamp(min=1)
    return {
        "accuracy": float(true_positive.sum() / matrix.sum().clamp(min=1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def evaluate(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], *, head: str
) -> dict[str, Any]:
    """Metrics of ``model`` over ``batches`` (which carry ``labels``)."""
    model.eval()
    if head == "classification":
        return _classification(model, batches)
    return _language_model(model, batches)


@torch.no_grad()
def _classification(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Any]:
    num_labels = int(model.config.num_labels)
    matrix = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for batch in _on_device(model, batches):
        predictions = model(**batch).logits.argmax(-1)
        matrix += confusion_matrix(predictions.cpu(), batch["labels"].cpu(), num_labels)
    return {
        **metrics_from_confusion(matrix),
        "confusion_matrix": matrix.tolist(),
        "examples": int(matrix.sum()),
    }


@torch.no_grad()
def _language_model(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Any]:
    total_loss, total_tokens = 0.0, 0
    for batch in _on_device(model, batches):
        tokens = int((batch["labels"] != -100).sum())
        total_loss += float(model(**batch).loss) * tokens
        total_tokens += tokens
    mean = total_loss / max(total_tokens, 1)
    return {"perplexity": math.exp(min(mean, 50.0)), "eval_loss": mean, "tokens": total_tokens}


def _on_device(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> Iterator[dict[str, Tensor]]:
    device = next(model.parameters()).device
    for batch in batches:
        yield {k: v.to(device) for k, v in batch.items()}
