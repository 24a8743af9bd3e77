"""``plan``: parameter counts and adapter bytes from a configuration, on the meta device."""

from __future__ import annotations

import warnings

import pytest
import safetensors.torch
import torch
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


def test_an_unknown_head_is_named():
    with pytest.raises(pc.ConfigError) as raised:  # it was a bare KeyError: 'classifcation'
        pc.plan(minilm_config(), pc.LoRA(rank=4), head="classifcation")
    assert str(raised.value) == (
        "unknown head 'classifcation'; one of 'classification', 'masked-lm', 'causal-lm', 'none'"
    )


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


def test_plan_of_what_is_neither_a_model_nor_a_configuration_says_what_it_takes():
    """A model's name was "'str' object has no attribute 'config'"."""
    with pytest.raises(TypeError) as raised:
        pc.plan("bert-base-uncased", pc.LoRA())  # type: ignore[arg-type]
    assert str(raised.value) == (
        "plan takes a transformers model or its configuration (AutoConfig.from_pretrained(...)), "
        "got str 'bert-base-uncased'"
    )


@pytest.mark.parametrize(
    ("family", "head", "limit"),
    [
        ("bert", "classification", 64),
        ("roberta", "classification", 62),  # positions start after the padding row (index 1)
        ("xlm-roberta", "masked-lm", 62),
        ("distilbert", "classification", 512),
        ("gpt2", "causal-lm", 64),
    ],
)
def test_the_position_limit_is_the_longest_input_that_runs(tiny_model, family, head, limit):
    model = tiny_model(family, head)
    assert pc.position_limit(model) == limit
    assert pc.position_limit(pc.build_on_meta(model.config, head)) == limit  # plan's skeleton
    tokens = torch.full((1, limit + 1), 5)
    with torch.no_grad():
        model(input_ids=tokens[:, :limit])
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=tokens)


def test_rotary_positions_have_no_limit(tiny_model):
    model = tiny_model("llama", "causal-lm")
    assert pc.position_limit(model) is None
    with torch.no_grad():  # past max_position_embeddings (64): nothing stops it
        assert model(input_ids=torch.full((1, 80), 5)).logits.shape[1] == 80


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


def held_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor really holds, through torchao's quantised tensor subclasses."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(held_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


@pytest.mark.parametrize("quantization", ["none", "nf4", "int8"])
def test_the_memory_plan_is_what_the_model_and_adamw_hold(quantization, tmp_path):
    """``base_bytes`` equals the frozen weights as quantize_base stores them; ``training_bytes``
    equals the trainable weights, their gradients and AdamW's moments after a step;
    ``adapter_bytes`` the tensors of the file save_adapter writes (bf16, the base's dtype)."""
    config = T.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=32, vocab_size=101,
    )  # fmt: skip  # every body weight a whole number of NF4 blocks
    lora = pc.LoRA(rank=8, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"))
    planned = pc.plan(
        config, lora, head="causal-lm", dtype=torch.bfloat16, quantization=quantization
    )
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(config).to(torch.bfloat16)
    pc.quantize_base(model, quantization)
    pc.add_adapter(model, "l", lora)
    frozen = sum(held_bytes(p) for p in model.parameters() if not p.requires_grad)
    assert planned.base_bytes == frozen
    assert pc.measure(model, "l").base_bytes == frozen  # the quantised model, measured as it is
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    ids = torch.randint(3, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    moments = [v for p in trainable for k, v in optimizer.state[p].items() if k != "step"]
    held = sum(held_bytes(p) + held_bytes(p.grad) for p in trainable)
    assert planned.training_bytes == held + sum(held_bytes(m) for m in moments)
    assert len(moments) == 2 * len(trainable) == 2 * 28
    pc.save_adapter(model, "l", tmp_path)
    in_file = safetensors.torch.load_file(tmp_path / "adapter.safetensors")
    assert {t.dtype for t in in_file.values()} == {torch.bfloat16}
    assert planned.adapter_bytes == sum(held_bytes(t) for t in in_file.values())


def test_a_7b_base_in_bf16_and_in_nf4():
    """Llama-2-7B's shapes (LlamaConfig's defaults): 6,738,415,616 weights, 2 bytes each in bf16;
    NF4 keeps the embeddings, norms and LM head in bf16 and the rest in ~0.52 bytes a weight."""
    config = T.LlamaConfig()
    lora = pc.LoRA(rank=16, targets=("q", "k", "v", "o", "ffn_in", "ffn_out"))
    bf16 = pc.plan(config, lora, head="causal-lm", dtype=torch.bfloat16)
    nf4 = pc.plan(config, lora, head="causal-lm", dtype=torch.bfloat16, quantization="nf4")
    assert bf16.total_params - bf16.trainable_params == 6_738_415_616
    assert bf16.base_bytes == 2 * 6_738_415_616
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    others = 6_738_415_616 - linear  # embeddings, LM head, norms
    assert nf4.base_bytes == 2 * others + linear // 2 + linear // 64 + 2 * (linear // 16384) + (
        32 * 7 * 17 * 2
    )
    assert 3.8e9 < nf4.base_bytes < 3.9e9
    assert bf16.training_bytes == nf4.training_bytes == 16 * bf16.trainable_params


def test_a_lora_rank_above_a_layers_width_is_warned_of():
    """Grouped-query attention: k and v project 64 features to 32 (2 of 4 heads' width), so a
    rank of 48 fits q and o (64) but not them; a rank of 32 fits all four."""
    config = T.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100,
    )  # fmt: skip
    targets = ("q", "k", "v", "o")
    with pytest.warns(RuntimeWarning) as heard:
        pc.plan(config, pc.LoRA(rank=48, targets=targets), head="causal-lm")
    assert [str(w.message) for w in heard] == [
        "LoRA rank 48 is above the width of 4 of the 8 layers it adapts "
        "(model.layers.0.self_attn.k_proj: 32): an update there has rank 32 at most, so the "
        "ranks above add parameters, not capacity (rank 32 already reaches every update of "
        "that layer)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pc.plan(config, pc.LoRA(rank=32, targets=targets), head="causal-lm")
        pc.plan(config, pc.DoRA(rank=32, targets=targets), head="causal-lm")
