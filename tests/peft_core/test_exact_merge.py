"""Merge then unmerge restores every base weight bit for bit, in bf16, fp16 and fp32 (peft and
bitsandbytes drift in half precision), and the merged model computes what the adapter did."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

import peft_core as pc
from peft_core.exact import add_exactly, take_back
from tests.helpers import TINY_CONFIGS, batch, logits, perturb_adapter

METHODS = {
    "lora": pc.LoRA(rank=8, targets=("q", "k", "v", "o", "ffn_in", "ffn_out")),
    "dora": pc.DoRA(rank=8, targets=("q", "v")),
    "ia3": pc.IA3(),
    "bitfit": pc.BitFit(),
}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def tiny_llama(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = TINY_CONFIGS["llama"]()
    config.attention_bias = config.mlp_bias = True  # BitFit needs biases to train
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_unmerge_restores_every_bit(method, dtype):
    model = tiny_llama(dtype)
    pc.add_adapter(model, method, METHODS[method])
    perturb_adapter(model, method, scale=0.3)
    before = {k: v.clone() for k, v in pc.layer.base_state_dict(model).items()}
    inputs = batch(model)
    with_adapter = logits(model, inputs).float()

    pc.merge(model, method)
    merged = pc.layer.base_state_dict(model)
    assert any(not torch.equal(merged[k], before[k]) for k in before)  # the merge did something
    tolerance = 1e-4 if dtype == torch.float32 else 0.25  # half precision rounds the forward
    torch.testing.assert_close(logits(model, inputs).float(), with_adapter, atol=tolerance, rtol=0)

    pc.unmerge(model, method)
    after = pc.layer.base_state_dict(model)
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert changed == []
    torch.testing.assert_close(logits(model, inputs).float(), with_adapter, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_naive_round_trip_would_drift(dtype):
    """Why the exact path exists: adding then subtracting in half precision loses bits."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, generator=generator).to(dtype)
    delta = (0.01 * torch.randn(256, 256, generator=generator)).to(dtype)
    assert not torch.equal(weight + delta - delta, weight)
    exact = weight.clone()
    undo = add_exactly(exact, delta)
    assert not torch.equal(exact, weight)
    take_back(exact, undo)
    assert torch.equal(exact.view(torch.int16), weight.view(torch.int16))


def test_signed_zeros_and_extremes_come_back_too():
    weight = torch.tensor([0.0, -0.0, 1e-8, -1e-8, 3.0e38, -3.0e38, 1.0], dtype=torch.float32)
    delta = torch.tensor([1e-3, 1e-3, 1.0, -1.0, 1e37, -1e37, 1e-9])
    restored = weight.clone()
    undo = add_exactly(restored, delta)
    take_back(restored, undo)
    assert torch.equal(restored.view(torch.int32), weight.view(torch.int32))
