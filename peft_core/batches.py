"""Training batches checked against the model before its forward sees them.

A class id beyond the classifier's classes, or a token id beyond the vocabulary, fails deep
inside the forward: ``IndexError: Target 5 is out of bounds`` on a CPU, and on a GPU a
device-side assert that leaves the CUDA context unusable for the rest of the process. Either way
the user reads nothing about their labels. A batch a tokenizer returned without
``return_tensors="pt"`` holds lists, which failed with ``'list' object has no attribute 'to'``.
Labels of the wrong shape (class ids handed to a language model, a label per token to a
classifier) failed as torch's ``Expected input batch_size (8) to match target batch_size (2)``.
Here such a batch is one error naming the key, the value (or shape) and what the model accepts;
lists of equal rows simply become tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .heads import detect_head

__all__ = ["BatchLimits", "batch_limits", "checked_batch"]

IGNORED_LABEL = -100  # what transformers' losses skip (padding, prompt tokens)


@dataclass(frozen=True)
class BatchLimits:
    """What ids a model can take: ``classes`` for a classifier's labels, ``vocabulary`` for
    token ids (``input_ids``, and a language model's labels); None where unknown.
    ``token_labels``: a causal or masked language model, whose labels are one per input token."""

    classes: int | None
    vocabulary: int | None
    token_labels: bool = False


def batch_limits(model: nn.Module) -> BatchLimits:
    """The limits of ``model``, a transformers model (or peft's wrapper of one)."""
    try:
        table = cast(Any, model).get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model, or no embeddings
        table = None
    vocabulary = getattr(table, "num_embeddings", None)
    config = getattr(model, "config", None)
    classes = None
    kind = detect_head(model).kind
    if kind == "classification" and config is not None:
        # one label is regression and float labels are multi-label: neither is a class id
        classes = getattr(config, "num_labels", None)
        classes = classes if isinstance(classes, int) and classes > 1 else None
    token_labels = kind in ("causal-lm", "masked-lm")
    return BatchLimits(classes=classes, vocabulary=vocabulary, token_labels=token_labels)


def checked_batch(batch: Any, limits: BatchLimits) -> dict[str, Any]:
    """``batch`` as a dict of tensors (lists of numbers made tensors), or a TypeError or
    ValueError that names the key at fault and what to do."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            "each training batch is a dict of tensors such as a tokenizer returns, with labels "
            f"(input_ids=..., attention_mask=..., labels=...); got a {type(batch).__name__}"
        )
    checked = {key: _as_tensor(key, value) for key, value in batch.items()}
    if limits.vocabulary is not None and isinstance(checked.get("input_ids"), Tensor):
        _check_ids(
            checked["input_ids"], "input_ids", limits.vocabulary,
            f"token ids of a vocabulary of {limits.vocabulary:,}: tokenize with the base "
            "model's own tokenizer (a tokenizer given tokens of its own also needs "
            "model.resize_token_embeddings(len(tokenizer)))", ignored=None,
        )  # fmt: skip
    labels = checked.get("labels")
    _check_label_shape(labels, checked.get("input_ids"), limits)
    if isinstance(labels, Tensor) and not labels.is_floating_point():
        if limits.classes is not None:
            _check_ids(
                labels, "labels", limits.classes,
                f"class ids of a classifier with {limits.classes} classes (num_labels="
                f"{limits.classes}): number the classes 0 to {limits.classes - 1}, or load the "
                "model with num_labels set to how many there are",
            )  # fmt: skip
        elif limits.vocabulary is not None:
            _check_ids(
                labels, "labels", limits.vocabulary,
                f"token ids of a vocabulary of {limits.vocabulary:,}, or {IGNORED_LABEL} for a "
                "token the loss skips",
            )  # fmt: skip
    return checked


def _check_label_shape(labels: Any, input_ids: Any, limits: BatchLimits) -> None:
    """A language model takes a label per input token, a classifier one class id per row."""
    if not (isinstance(labels, Tensor) and isinstance(input_ids, Tensor)):
        return
    given, rows = tuple(labels.shape), tuple(input_ids.shape)
    if limits.token_labels and given != rows:
        raise ValueError(
            f"batch['labels'] has shape {given} but batch['input_ids'] {rows}: a language "
            "model's labels are token ids, one per input token (labels = input_ids, with "
            f"{IGNORED_LABEL} where the loss skips a token)"
        )
    if limits.classes is not None and not labels.is_floating_point() and given != rows[:1]:
        raise ValueError(
            f"batch['labels'] has shape {given} but the classifier takes one class id per "
            f"row: shape {rows[:1]} for batch['input_ids'] of shape {rows}"
        )


def _as_tensor(key: str, value: Any) -> Any:
    """Lists and tuples of numbers as a tensor; anything else as it came."""
    if not isinstance(value, list | tuple):
        return value
    try:
        return torch.tensor(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"batch[{key!r}] is a list that is not a table of numbers ({exc}): pad the rows to "
            "one length and return tensors, tokenizer(texts, padding=True, "
            "return_tensors='pt')"
        ) from None


def _check_ids(
    ids: Tensor, key: str, limit: int, expected: str, *, ignored: int | None = IGNORED_LABEL
) -> None:
    """ValueError naming the first id of ``ids`` outside ``[0, limit)`` (``ignored`` allowed),
    where it is, and ``expected``."""
    if ids.numel() == 0:
        return
    outside = (ids < 0) | (ids >= limit)
    if ignored is not None:
        outside &= ids != ignored
    if not bool(outside.any()):
        return
    where = tuple(int(i) for i in outside.nonzero()[0])
    raise ValueError(
        f"batch[{key!r}] holds {int(ids[where])} (at {list(where)}), but the model takes {expected}"
    )
