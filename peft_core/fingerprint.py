"""A stable digest of what an adapter depends on in its base model.

An adapter only makes sense on the base model it was trained on. The fingerprint covers the model
type, the configuration fields that shape weights, the names and shapes of the body's weights, and
(when a tokenizer is given) the vocabulary. It ignores the task head, so a language adapter trained
with a masked-LM head loads into a classifier of the same base model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .heads import body_prefix
from .layer import base_named_parameters

__all__ = ["Fingerprint", "fingerprint"]

# Configuration fields that change the shape or meaning of weights, across the families we support.
SHAPE_FIELDS: tuple[str, ...] = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "type_vocab_size",
    "max_position_embeddings",
    "position_embedding_type",
    "hidden_act",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "n_positions",
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
    "activation",
    "tie_word_embeddings",
)


# Body modules that only some head classes build (BertForMaskedLM has no pooler) and no adapter
# targets: leaving them out lets a language adapter trained with an MLM head load into a classifier.
_OPTIONAL_BODY_MODULES = ("pooler",)


@dataclass(frozen=True)
class Fingerprint:
    """The parts of a base model an adapter depends on, and their digest."""

    digest: str
    model_type: str
    config: dict[str, Any]
    weights: str  # sha256 of the body's weight names and shapes
    vocab: str | None  # sha256 of the tokenizer vocabulary, when one was given (not in the digest)
    name_or_path: str  # informative only: not part of the digest

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable differences (``self`` = adapter's base, ``other`` = the model at hand)."""
        diffs = []
        if self.model_type != other.model_type:
            diffs.append(f"model_type: {self.model_type!r} vs {other.model_type!r}")
        for key in sorted(set(self.config) | set(other.config)):
            if self.config.get(key) != other.config.get(key):
                diffs.append(f"{key}: {self.config.get(key)!r} vs {other.config.get(key)!r}")
        if not diffs and self.weights != other.weights:
            diffs.append("weight names or shapes differ")
        if self.vocab and other.vocab and self.vocab != other.vocab:
            diffs.append("tokenizer vocabularies differ")
        return diffs

    def matches(self, other: Fingerprint) -> bool:
        """True when an adapter made for ``self`` may load onto ``other``."""
        return not self.differences(other)


def fingerprint(model: nn.Module, tokenizer: Any = None) -> Fingerprint:
    """Fingerprint ``model``'s body (adapters and head excluded); works on the meta device."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", type(model).__name__))
    fields = {k: _jsonable(getattr(config, k)) for k in SHAPE_FIELDS if hasattr(config, k)}
    prefix = body_prefix(model)
    body = getattr(model, prefix) if prefix else model
    shapes = sorted(
        (name, list(p.shape))
        for name, p in base_named_parameters(body)
        if name.split(".")[0] not in _OPTIONAL_BODY_MODULES
    )
    weights = _sha256(shapes)
    vocab = _sha256(sorted(tokenizer.get_vocab().items())) if tokenizer is not None else None
    # The digest names the base model whether or not a tokenizer was given (the registry keys base
    # models by it); the vocabulary is compared on its own when both sides have one.
    digest = _sha256(
        {"model_type": model_type, "config": fields, "weights": weights, "vocab": None}
    )
    name = str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")
    return Fingerprint(digest, model_type, fields, weights, vocab, name)


def _sha256(value: Any) -> str:
    payload = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
