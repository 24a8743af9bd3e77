"""Adapters on a half-precision base train in float32 (as peft does: bf16 trainable weights lose
small AdamW updates), compute in the base's dtype outside the adapter, and are saved in the
base's dtype unless asked otherwise."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import transformers as T
from transformers import LlamaForCausalLM

import peft_core as pc
from tests.helpers import TINY_CONFIGS, batch, perturb_adapter


def bf16_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(TINY_CONFIGS["llama"]()).to(torch.bfloat16)


def adapter_dtypes(model, name: str) -> set[torch.dtype]:
    return {t.dtype for t in pc.adapter_state_dict(model, name).values()}


@pytest.mark.parametrize("config", [pc.LoRA(rank=4), pc.DoRA(rank=4), pc.IA3(), pc.Pfeiffer()])
def test_adapter_weights_are_float32_on_a_bf16_base(config):
    model = bf16_llama()
    pc.add_adapter(model, "a", config)
    assert adapter_dtypes(model, "a") == {torch.float32}
    assert {p.dtype for _, p in pc.layer.base_named_parameters(model)} == {torch.bfloat16}
    perturb_adapter(model, "a")
    out = model(**batch(model)).logits
    assert out.dtype == torch.bfloat16  # the model around the adapter still computes in bf16
    out.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_the_base_dtype_is_kept_when_asked():
    model = bf16_llama()
    pc.add_adapter(model, "a", pc.LoRA(rank=4), adapter_dtype="base")
    assert adapter_dtypes(model, "a") == {torch.bfloat16}
    with pytest.raises(pc.ConfigError, match="adapter_dtype must be 'fp32' or 'base'"):
        pc.add_adapter(model, "b", pc.LoRA(rank=4), adapter_dtype="fp16")  # type: ignore[arg-type]


def test_small_updates_survive_in_float32_and_vanish_in_bf16():
    """One AdamW step at a small learning rate: float32 weights move, bf16 weights round back."""
    moved = {}
    for adapter_dtype in ("fp32", "base"):
        model = bf16_llama()
        pc.add_adapter(model, "a", pc.LoRA(rank=4), adapter_dtype=adapter_dtype)
        perturb_adapter(model, "a", scale=1.0)
        before = {k: v.clone() for k, v in pc.adapter_state_dict(model, "a").items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model(**batch(model)).logits.float().pow(2).mean().backward()
        optimizer.step()
        after = pc.adapter_state_dict(model, "a")
        changed = sum(int((after[k] != before[k]).sum()) for k in before if "lora_A" in k)
        moved[adapter_dtype] = changed / sum(v.numel() for k, v in before.items() if "lora_A" in k)
    assert moved["fp32"] > 0.99 and moved["base"] < 0.2


@pytest.mark.parametrize("layout", ["adapterops", "peft"])
def test_files_hold_the_base_dtype_by_default_and_load_back_into_float32(tmp_path, layout):
    model = bf16_llama()
    pc.add_adapter(model, "a", pc.LoRA(rank=4))
    perturb_adapter(model, "a")
    default = pc.save_adapter(model, "a", tmp_path / "default", format=layout)
    full = pc.save_adapter(model, "a", tmp_path / "full", format=layout, dtype=torch.float32)
    weights = "adapter.safetensors" if layout == "adapterops" else "adapter_model.safetensors"
    assert {t.dtype for t in safetensors.torch.load_file(default / weights).values()} == {
        torch.bfloat16
    }
    assert {t.dtype for t in safetensors.torch.load_file(full / weights).values()} == {
        torch.float32
    }
    expected = {
        k: v.to(torch.bfloat16).float() for k, v in pc.adapter_state_dict(model, "a").items()
    }
    reloaded = bf16_llama()
    pc.load_adapter(reloaded, default)
    got = pc.adapter_state_dict(reloaded, "a")
    assert {t.dtype for t in got.values()} == {torch.float32}
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("family", ["bert", "roberta", "llama"])
def test_a_new_classification_head_trains_in_float32_and_saves_in_the_base_dtype(tmp_path, family):
    """The adapter's own head copy is a trainable weight like the adapter's: float32 on a bf16
    body (its input cast once), bf16 in the file, float32 again after loading."""
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS[family]())
    model = model.to(torch.bfloat16)
    pc.add_adapter(model, "a", pc.LoRA(rank=4))
    head = {k: v for k, v in pc.adapter_state_dict(model, "a").items() if "lora" not in k}
    assert head and {t.dtype for t in head.values()} == {torch.float32}
    inputs = batch(model)
    logits = model(**inputs).logits
    assert logits.dtype == torch.float32  # the loss reads float32 logits
    logits.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    pc.set_active(model, None)  # the original head: untouched, bf16 in and out
    assert model(**inputs).logits.dtype == torch.bfloat16
    with pc.per_row(model, ["a", None]):  # one row each way: float32 where they meet
        mixed = model(**{k: v[:2] for k, v in inputs.items()}).logits
    assert mixed.dtype == torch.float32
    folder = pc.save_adapter(model, "a", tmp_path / "a")
    saved = safetensors.torch.load_file(folder / "adapter.safetensors")
    assert {saved[k].dtype for k in head} == {torch.bfloat16}
    reloaded = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS[family]())
    pc.load_adapter(reloaded.to(torch.bfloat16), folder)
    again = pc.adapter_state_dict(reloaded, "a")
    assert all(torch.equal(again[k], head[k].to(torch.bfloat16).float()) for k in head)
