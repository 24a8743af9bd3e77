"""Merging peft-run adapters (``pc.AnyPeft``): peft computes the merged weights, peft_core keeps
its promises: outputs unchanged by merging, unmerge exact to the bit (bf16 too), peft's own
``merge_and_unload`` on our files gives the same weights, refusals change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

import peft_core as pc
from peft_core.layer import base_state_dict
from tests.helpers import batch, logits
from tests.peft_core.test_any_peft import KINDS, classifier, config, scramble

PROMPTS = {"PROMPT_TUNING", "P_TUNING"}
UNMERGEABLE_IN_PEFT = {"LILY"}  # peft 0.21: "This method is not supported for Lily."
TUNERS = [k for k in KINDS if k not in PROMPTS | UNMERGEABLE_IN_PEFT]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in base_state_dict(model).items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed == []


@pytest.mark.parametrize("kind", TUNERS)
def test_merging_keeps_the_outputs_and_unmerging_restores_every_bit(kind: str) -> None:
    model = classifier()
    inputs = batch(model)
    before = state(model)
    pc.add_adapter(model, "a", config(kind))
    scramble(model, "a")
    expected = logits(model, inputs)
    pc.merge(model, "a")
    assert any(not torch.equal(v, before[k]) for k, v in state(model).items())  # in the weights
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-5)
    merged = pc.merged_state_dict(model, "a")  # already merged: the weights as they are
    pc.unmerge(model, "a")
    assert_bitwise_equal(state(model), before)
    torch.testing.assert_close(logits(model, inputs), expected)  # active again, unmerged
    fresh = classifier()
    fresh.load_state_dict(merged)
    torch.testing.assert_close(logits(fresh, inputs), expected, atol=1e-5, rtol=1e-5)


def test_merged_state_dict_leaves_the_model_as_it_was() -> None:
    model = classifier()
    pc.add_adapter(model, "a", config("OFT"))
    scramble(model, "a")
    inputs = batch(model)
    expected, before = logits(model, inputs), state(model)
    merged = pc.merged_state_dict(model, "a")
    assert_bitwise_equal(state(model), before)
    torch.testing.assert_close(logits(model, inputs), expected)
    fresh = classifier()
    fresh.load_state_dict(merged)
    torch.testing.assert_close(logits(fresh, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["LOHA", "OFT", "VERA", "ADALORA"])
def test_peft_merging_our_files_gives_the_same_weights(kind: str, tmp_path: Path) -> None:
    model = classifier()
    pc.add_adapter(model, "a", config(kind))
    scramble(model, "a")
    ours = pc.merged_state_dict(model, "a")
    pc.save_adapter(model, "a", tmp_path, format="peft")
    theirs = PeftModel.from_pretrained(classifier(), tmp_path).merge_and_unload().state_dict()
    body = [k for k in ours if not k.startswith("classifier.")]
    assert len(body) > 20
    for key in body:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize("kind", ["LOHA", "OFT"])
def test_in_bfloat16_unmerge_restores_the_weights_bit_for_bit(kind: str) -> None:
    model = classifier().to(torch.bfloat16)
    before = state(model)
    pc.add_adapter(model, "a", config(kind))
    scramble(model, "a")
    for _ in range(3):  # peft's own unmerge drifts a little more on every round trip
        pc.merge(model, "a")
        pc.unmerge(model, "a")
    assert_bitwise_equal(state(model), before)


def test_a_merged_adapter_adds_nothing_more_beside_another_active_one() -> None:
    model = classifier()
    inputs = batch(model)
    pc.add_adapter(model, "a", config("LOHA"))
    scramble(model, "a", seed=1)
    pc.add_adapter(model, "b", config("LOKR"))  # a second tuner on the same layers
    scramble(model, "b", seed=2)
    pc.set_active(model, pc.Stack("a", "b"))
    both = logits(model, inputs)
    pc.merge(model, "a")
    torch.testing.assert_close(logits(model, inputs), both, atol=1e-5, rtol=1e-5)
    pc.set_active(model, "b")  # a is in the weights whatever is active
    torch.testing.assert_close(logits(model, inputs), both, atol=1e-5, rtol=1e-5)
    pc.unmerge(model, "a")
    assert not torch.allclose(logits(model, inputs), both, atol=1e-3)  # b alone now
    pc.set_active(model, pc.Stack("a", "b"))
    torch.testing.assert_close(logits(model, inputs), both)


def test_a_second_merge_or_unmerge_warns_and_changes_nothing() -> None:
    model = classifier()
    pc.add_adapter(model, "a", config("LOHA"))
    scramble(model, "a")
    with pytest.warns(UserWarning, match=r"unmerge\('a'\): adapter is not merged"):
        pc.unmerge(model, "a")
    pc.merge(model, "a")
    merged = state(model)
    with pytest.warns(UserWarning, match=r"merge\('a'\): adapter is already merged"):
        pc.merge(model, "a")
    assert_bitwise_equal(state(model), merged)


def test_deleting_a_merged_adapter_is_refused_until_it_is_unmerged() -> None:
    """It left its delta in the weights (as peft did before huggingface/peft#3504); the merged
    weights are kept with merged_state_dict instead."""
    model = classifier()
    before = state(model)
    pc.add_adapter(model, "a", config("HRA"))
    scramble(model, "a")
    pc.merge(model, "a")
    with pytest.raises(pc.NotMergeableError, match=r"'a' is merged"):
        pc.delete_adapter(model, "a")
    pc.unmerge(model, "a")
    pc.delete_adapter(model, "a")
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())  # peft's layers left
    assert_bitwise_equal(state(model), before)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("PROMPT_TUNING", "virtual tokens are inputs, not weights"),
        ("LILY", "peft cannot merge its Linear layer at bert.encoder.layer.0"),
    ],
)
def test_what_cannot_merge_is_refused_and_nothing_changes(kind: str, words: str) -> None:
    model = classifier()
    pc.add_adapter(model, "a", config(kind))
    scramble(model, "a")
    inputs = batch(model)
    expected, before = logits(model, inputs), state(model)
    with pytest.raises(pc.NotMergeableError, match=words):
        pc.merge(model, "a")
    with pytest.raises(pc.NotMergeableError, match=words):
        pc.merged_state_dict(model, "a")
    assert_bitwise_equal(state(model), before)
    torch.testing.assert_close(logits(model, inputs), expected)


def test_non_finite_weights_are_refused_before_any_layer_changes() -> None:
    model = classifier()
    pc.add_adapter(model, "a", config("LOHA"))
    scramble(model, "a")
    last = [t for k, t in pc.adapter_state_dict(model, "a").items() if "layer.1." in k][-1]
    with torch.no_grad():
        last.fill_(float("nan"))  # only the last layer is broken
    before = state(model)
    with pytest.raises(pc.NotMergeableError, match="non-finite"):
        pc.merge(model, "a")
    assert_bitwise_equal(state(model), before)
