"""``pc.shard_units`` and ``pc.sharded_weight_bytes``: what each FSDP2 process holds of the
weights (``adapterops plan --processes N``). The figures against FSDP2's real allocations:
``tests/distributed/test_fsdp_memory.py``."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from torch import nn

import peft_core as pc

LLAMA = T.LlamaConfig(
    hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=301, pad_token_id=0,
)  # fmt: skip
LORA = pc.LoRA(rank=4, targets=("q", "v"))


def adapted_llama(method: pc.MethodConfig = LORA) -> nn.Module:
    model = pc.build_on_meta(LLAMA, "causal-lm", dtype=torch.bfloat16)
    pc.add_adapter(model, "a", method)
    return model


def size(parameters) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def test_the_units_are_the_transformer_blocks_or_else_the_largest_layer_list():
    model = adapted_llama()
    assert pc.shard_units(model) == list(model.model.layers)

    class NoSplitList(nn.Module):  # no _no_split_modules: its layers, not its small list
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    plain = NoSplitList()
    assert pc.shard_units(plain) == list(plain.layers)
    assert pc.shard_units(nn.Linear(4, 4)) == []  # the root alone


def test_a_process_keeps_its_padded_shard_and_knows_what_each_unit_gathers():
    model = adapted_llama()
    everything = size(model.parameters())
    kept = sum(
        math.ceil(p.shape[0] / 3) * p[0].numel() * p.element_size() for p in model.parameters()
    )
    assert kept > everything // 3  # vocab 301, 200 and the adapters' rows: padded to thirds
    weights = pc.sharded_weight_bytes(model, 3)
    layers = model.model.layers
    in_blocks = {id(p) for layer in layers for p in layer.parameters()}
    assert weights == pc.ShardedWeights(
        processes=3,
        kept=kept,
        root=size(p for p in model.parameters() if id(p) not in in_blocks),
        root_trainable=0,  # LoRA on q, v: nothing of the root trains
        blocks=tuple(size(layer.parameters()) for layer in layers),
        blocks_trainable=tuple(size(p for p in layer.parameters() if p.requires_grad)
                               for layer in layers),
    )  # fmt: skip
    # float32 rank-4 LoRA on q (96 -> 96) and v (96 -> 2 heads x 24)
    assert weights.blocks_trainable[0] == 4 * (4 * 96 + 96 * 4 + 4 * 96 + 48 * 4)
    assert pc.sharded_weight_bytes(model, 1).kept == everything
    with pytest.raises(ValueError, match="at least 1"):
        pc.sharded_weight_bytes(model, 0)


def test_a_sharded_estimate_divides_the_optimizer_state_not_the_activations():
    options = dict(
        head="causal-lm", batch_size=2, sequence_length=32, dtype=torch.bfloat16,
        precision="bf16",
    )  # fmt: skip
    one = pc.estimate_step_memory(LLAMA, pc.FullFineTune(), **options)
    four = pc.estimate_step_memory(LLAMA, pc.FullFineTune(), processes=4, **options)
    assert (one.processes, one.gathered_bytes, four.processes) == (1, 0, 4)
    weights = pc.sharded_weight_bytes(adapted_llama(pc.FullFineTune()), 4)
    assert four.weights_bytes == weights.kept  # the gathered weights are in the step
    assert four.peak_bytes == four.weights_bytes + four.step_bytes
    # at least the root and a block gathered whole (all of it trainable: with its gradients)
    assert four.gathered_bytes >= weights.root + 2 * weights.blocks[0]
    # every weight trains: AdamW's moments (2x the weights) are a quarter each, which more
    # than pays for what is gathered
    assert four.step_bytes < one.step_bytes - 0.75 * 2 * one.weights_bytes + four.gathered_bytes
    assert four.peak_bytes < 0.75 * one.peak_bytes
    lora_one = pc.estimate_step_memory(LLAMA, LORA, **options)
    lora_four = pc.estimate_step_memory(LLAMA, LORA, processes=4, **options)
    # LoRA's state is small: the activations, which sharding does not divide, stay
    assert lora_four.step_bytes > 0.95 * lora_one.step_bytes


def test_a_quantised_base_is_refused_where_fsdp_could_not_split_it():
    """torchao's int8 weights do not split; an NF4 weight splits along its 64 x 256 blocks
    (a 256 x 256 weight has 4, the 256 x 768 ones 12): the error says which counts work."""
    config = T.LlamaConfig(
        hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=300,
    )  # fmt: skip
    model = pc.build_on_meta(config, "causal-lm")
    for processes in (1, 2, 4):
        pc.check_shardable(model, "nf4", processes)
    with pytest.raises(pc.ConfigError) as refused:
        pc.check_shardable(model, "nf4", 3)
    assert str(refused.value) == (
        "load.quantization nf4 under FSDP splits each NF4 weight evenly across the processes "
        "along its blocks of 64 x 256 values, and 8 of the base's weights cannot be split "
        "across 3 processes (model.layers.0.self_attn.q_proj.weight has 4 blocks): start a "
        "number of processes that divides 4, or use train.sharding: ddp"
    )
    # weights of one block each: only DDP shares the work
    config_small = T.LlamaConfig(
        hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=300,
    )  # fmt: skip
    small = pc.build_on_meta(config_small, "causal-lm")
    with pytest.raises(pc.ConfigError) as refused:
        pc.check_shardable(small, "nf4", 2)
    assert str(refused.value).endswith(
        "and 14 of the base's weights cannot be split across 2 processes "
        "(model.layers.0.self_attn.q_proj.weight has 1 block): no number of processes splits "
        "them all: use train.sharding: ddp"
    )
    with pytest.raises(pc.ConfigError, match="int8 cannot be sharded by FSDP2"):
        pc.check_shardable(model, "int8", 2)
    pc.check_shardable(model, "int8", 1)  # one process shards nothing
    pc.check_shardable(model, "none", 3)
    with pytest.raises(pc.ConfigError, match="across 3"):  # plan --processes 3 says it too
        pc.estimate_step_memory(
            config, LORA, head="causal-lm", batch_size=1, sequence_length=8,
            dtype=torch.bfloat16, quantization="nf4", processes=3,
        )  # fmt: skip
