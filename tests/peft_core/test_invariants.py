"""One invariant suite over every method and every family.

For each (method, family, head): a fresh adapter leaves outputs unchanged; merged == unmerged;
unmerge restores the base weights; exactly the declared parameters train; save -> load
round-trips to identical outputs; a different base model is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import transformers as T
from torch import nn

import peft_core as pc
from tests.helpers import (
    adapter_parameter_names,
    batch,
    logits,
    minilm_path,
    perturb_adapter,
    trainable_names,
)


@dataclass(frozen=True)
class Method:
    config: pc.MethodConfig
    mergeable: bool
    merge_atol: float  # float32 rounding of W + delta differs from W x + delta x


METHODS = {
    "lora": Method(pc.LoRA(rank=4, alpha=8, targets=("q", "v")), True, 1e-5),
    "lora-all": Method(
        pc.LoRA(rank=2, targets=("q", "k", "v", "o", "ffn_in", "ffn_out")), True, 1e-5
    ),
    "bitfit": Method(pc.BitFit(), True, 1e-5),
    "ia3": Method(pc.IA3(), True, 1e-5),
    # DoRA adapts whole layers: GPT-2's q and v are slices of the fused c_attn.
    "dora": Method(pc.DoRA(rank=4, alpha=8, targets=("o", "ffn_in")), True, 1e-5),
    "houlsby": Method(pc.Houlsby(reduction_factor=4), False, 0.0),
    "pfeiffer": Method(pc.Pfeiffer(bottleneck=5), False, 0.0),
    "full": Method(pc.FullFineTune(), False, 0.0),
}

FAMILY_HEADS = [
    ("bert", "classification"),
    ("bert", "masked-lm"),
    ("roberta", "classification"),
    ("xlm-roberta", "classification"),
    ("distilbert", "classification"),
    ("distilbert", "masked-lm"),
    ("gpt2", "classification"),
    ("gpt2", "causal-lm"),
    ("llama", "classification"),
    ("llama", "causal-lm"),
    ("mistral", "causal-lm"),
    ("qwen2", "causal-lm"),
]
NO_BIASES = {"llama", "mistral"}  # BitFit must refuse these


def cases() -> list:
    out = []
    for method in METHODS:
        for family, head in FAMILY_HEADS:
            if method == "bitfit" and family in NO_BIASES:
                continue
            out.append(pytest.param(method, family, head, id=f"{method}-{family}-{head}"))
    return out


@pytest.fixture
def model_for(tiny_model):
    def build(family: str, head: str) -> nn.Module:
        if family == "minilm":
            return T.AutoModelForSequenceClassification.from_pretrained(
                minilm_path(), num_labels=2
            ).eval()
        return tiny_model(family, head)

    return build


ALL_CASES = [
    *cases(),
    *(pytest.param(m, "minilm", "classification", id=f"{m}-minilm") for m in METHODS),
]


@pytest.mark.parametrize(("method", "family", "head"), ALL_CASES)
class TestInvariants:
    def test_fresh_adapter_leaves_outputs_unchanged(self, model_for, method, family, head):
        model = model_for(family, head)
        inputs = batch(model)
        before = logits(model, inputs)
        pc.add_adapter(model, "a", METHODS[method].config)
        torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)

    def test_exactly_the_declared_parameters_train(self, model_for, method, family, head):
        model = model_for(family, head)
        record = pc.add_adapter(model, "a", METHODS[method].config)
        if method == "full":
            assert trainable_names(model) == {n for n, _ in model.named_parameters()}
            return
        expected = adapter_parameter_names(model, "a")
        assert expected, "the adapter must inject parameters"
        if head == "classification":
            assert record.head.trainable
            own_heads = tuple(f"{m}.heads.a." for m in record.head.modules)
            expected |= {n for n, _ in model.named_parameters() if n.startswith(own_heads)}
        else:
            assert not record.head.trainable  # a pre-trained LM head stays frozen
        assert trainable_names(model) == expected

    def test_merged_equals_unmerged_and_unmerge_restores(self, model_for, method, family, head):
        spec = METHODS[method]
        model = model_for(family, head)
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        pc.add_adapter(model, "a", spec.config)
        if not spec.mergeable:
            with pytest.raises(pc.NotMergeableError, match=r"merge"):
                pc.merge(model, "a")
            return
        perturb_adapter(model, "a")
        exported = pc.merged_state_dict(model, "a")
        original = {k: v.clone() for k, v in model.state_dict().items()}
        unmerged = logits(model, inputs)
        assert not torch.allclose(unmerged, _base_logits(model, inputs)), "adapter had no effect"
        pc.merge(model, "a")
        torch.testing.assert_close(logits(model, inputs), unmerged, atol=spec.merge_atol, rtol=1e-4)
        # the pure export is a plain checkpoint that serves the adapter's outputs
        plain = copy.deepcopy(pristine)
        plain.load_state_dict(exported, strict=True)
        torch.testing.assert_close(logits(plain, inputs), unmerged, atol=spec.merge_atol, rtol=1e-4)
        pc.unmerge(model, "a")
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, original[key], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(logits(model, inputs), unmerged, atol=spec.merge_atol, rtol=1e-4)

    def test_save_load_round_trip(self, model_for, method, family, head, tmp_path):
        model = model_for(family, head)
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        pc.add_adapter(model, "a", METHODS[method].config)
        perturb_adapter(model, "a")
        expected = logits(model, inputs)
        pc.save_adapter(model, "a", tmp_path / "a")
        record = pc.load_adapter(pristine, tmp_path / "a")
        assert record.name == "a"
        torch.testing.assert_close(logits(pristine, inputs), expected, rtol=0, atol=0)

    def test_wrong_base_model_is_refused(self, model_for, method, family, head, tmp_path):
        model = model_for(family, head)
        pc.add_adapter(model, "a", METHODS[method].config)
        pc.save_adapter(model, "a", tmp_path / "a")
        other_family = "gpt2" if family != "gpt2" else "bert"
        other = model_for(other_family, "classification")
        state_before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(pc.BaseModelMismatchError, match=r"fingerprint"):
            pc.load_adapter(other, tmp_path / "a")
        assert pc.list_adapters(other) == []
        after = other.state_dict()
        assert state_before.keys() == after.keys()
        assert all(torch.equal(state_before[k], after[k]) for k in after)


def _base_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    active = [n for n in pc.list_adapters(model)]
    pc.set_active(model, None)
    try:
        return logits(model, inputs)
    finally:
        pc.set_active(model, active)
