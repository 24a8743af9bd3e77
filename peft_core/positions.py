"""How many token positions a model can take.

Models with learned absolute position embeddings (BERT, RoBERTa, DistilBERT, GPT-2, OPT) have one
row per position: a longer input fails inside the embeddings, mid-training, with a shape error.
Rotary or relative positions (Llama, Mistral, Qwen2, T5) compute them and have no such wall.
"""

from __future__ import annotations

from torch import nn

__all__ = ["position_limit"]

# The embedding tables of learned positions, by the names transformers gives them.
_POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")


def position_limit(model: nn.Module) -> int | None:
    """The most tokens one sequence of ``model`` may hold, or ``None`` when its positions are not
    a learned table (nothing in the model stops a longer input). Works on a meta-device model."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            return module.num_embeddings - _rows_before_the_first_position(module)
    return None


def _rows_before_the_first_position(table: nn.Embedding) -> int:
    """Rows of the table no position uses: OPT starts at row 2 (``offset``), RoBERTa and XLM-R
    after their padding row (``padding_idx + 1``), the others at row 0."""
    offset = getattr(table, "offset", None)
    if isinstance(offset, int):
        return offset
    return table.padding_idx + 1 if table.padding_idx is not None else 0
