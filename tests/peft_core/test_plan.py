"""``plan``: parameter counts and adapter bytes from a configuration, on the meta device."""

from __future__ import annotations

import pytest
import transformers as T

import peft_core as pc
from tests.helpers import minilm_path

MINILM_LAYERS, MINILM_HIDDEN, MINILM_FFN = 6, 384, 1536
HEAD = MINILM_HIDDEN * 2 + 2  # classifier weight + bias for 2 labels


def minilm_config():
    return T.AutoConfig.from_pretrained(minilm_path(), num_labels=2)


@pytest.mark.parametrize(
    ("config", "expected_trainable"),
    [
        # 6 layers x (q, v) x (A: r x 384 + B: 384 x r)
        (pc.LoRA(rank=8, targets=("q", "v")), MINILM_LAYERS * 2 * 2 * 8 * MINILM_HIDDEN + HEAD),
        # per layer: q, k, v, o, output dense biases (384 each), intermediate (1536), 2 LayerNorms
        # (384 each); plus embeddings LayerNorm and the pooler bias
        (
            pc.BitFit(),
            MINILM_LAYERS * (7 * MINILM_HIDDEN + MINILM_FFN) + 2 * MINILM_HIDDEN + HEAD,
        ),
        # Pfeiffer: per layer one bottleneck 384 -> 24 -> 384 with biases
        (
            pc.Pfeiffer(reduction_factor=16),
            MINILM_LAYERS * (384 * 24 + 24 + 24 * 384 + 384) + HEAD,
        ),
        (
            pc.Houlsby(bottleneck=24),
            2 * MINILM_LAYERS * (384 * 24 + 24 + 24 * 384 + 384) + HEAD,
        ),
    ],
)
def test_minilm_counts(config, expected_trainable):
    result = pc.plan(minilm_config(), config, head="classification")
    assert result.trainable_params == expected_trainable
    assert result.adapter_bytes == 4 * expected_trainable  # float32
    assert result.trainable_fraction == pytest.approx(expected_trainable / result.total_params)


def test_full_fine_tune_trains_everything():
    result = pc.plan(minilm_config(), pc.FullFineTune(), head="classification")
    assert result.trainable_params == result.total_params
    assert result.trainable_fraction == 1.0
    assert result.total_params == 22_713_216 + HEAD  # MiniLM-L6 (with pooler) + classifier


def test_plan_from_a_model_leaves_it_untouched(tiny_model):
    model = tiny_model("bert", "classification")
    from_model = pc.plan(model, pc.LoRA())
    assert pc.list_adapters(model) == []
    assert from_model == pc.plan(model.config, pc.LoRA(), head="classification")


def test_an_existing_lm_head_stays_frozen():
    config = T.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=128)
    result = pc.plan(config, pc.LoRA(rank=4, targets=("q", "v")), head="causal-lm")
    assert result.trainable_params == 2 * 2 * (4 * 64 + 64 * 4)  # no head parameters


def test_gpt3_175b_lora_matches_the_paper():
    """GPT-3 175B, LoRA r=1 on q and v: the LoRA paper's 4.7M trainable parameters (Table 4)."""
    config = T.GPT2Config(n_embd=12288, n_layer=96, n_head=96, vocab_size=50257, n_positions=2048)
    result = pc.plan(config, pc.LoRA(rank=1, targets=("q", "v")), head="causal-lm")
    assert result.trainable_params == 96 * 2 * (12288 + 12288)  # 4,718,592
    assert 174e9 < result.total_params < 176e9
    assert result.adapter_bytes == 4 * result.trainable_params
