"""per_row keeps each layer's stacked weights between calls, and never a stale stack."""

from __future__ import annotations

import torch

import peft_core as pc
from peft_core.stacks import _SLOT
from tests.helpers import batch, logits, perturb_adapter


def two_loras(tiny_model):
    model = tiny_model("bert", "classification")
    for name in ("a", "b"):
        pc.add_adapter(model, name, pc.LoRA(rank=4, targets=("q", "v")))
        perturb_adapter(model, name)
    return model.eval()


def stacks_of(model) -> list:
    return [
        stack for module in model.modules() for stack in module.__dict__.get(_SLOT, {}).values()
    ]


def alone(model, name, inputs, row):
    pc.set_active(model, name)
    return logits(model, {k: v[row : row + 1] for k, v in inputs.items()})[0]


def assert_each_row_is_its_adapter_alone(model, inputs, rows) -> None:
    with pc.per_row(model, rows):
        mixed = logits(model, inputs)
    for row, name in enumerate(rows):
        if name is not None:
            expected = alone(model, name, inputs, row)
            torch.testing.assert_close(mixed[row], expected, atol=1e-5, rtol=0)


def test_the_stack_is_built_once_and_reused(tiny_model):
    model = two_loras(tiny_model)
    inputs = batch(model, rows=4)
    with pc.per_row(model, ["a", "b", "a", None]):
        first = logits(model, inputs)
    built = stacks_of(model)
    assert len(built) == 4  # q and v of both layers
    with pc.per_row(model, ["b", "a", None, "a"]):  # other rows, same adapters: no new stack
        logits(model, inputs)
    again = stacks_of(model)
    assert len(again) == 4 and all(x is y for x, y in zip(built, again, strict=True))
    for row, name in enumerate(["a", "b", "a"]):
        torch.testing.assert_close(first[row], alone(model, name, inputs, row), atol=1e-5, rtol=0)


def test_a_changed_adapter_is_restacked(tiny_model):
    model = two_loras(tiny_model)
    inputs = batch(model, rows=2)
    with pc.per_row(model, ["a", "b"]):
        logits(model, inputs)
    perturb_adapter(model, "b", scale=0.5)  # in place, as an optimiser step or a load would
    with pc.per_row(model, ["a", "b"]):
        mixed = logits(model, inputs)
    torch.testing.assert_close(mixed[1], alone(model, "b", inputs, 1), atol=1e-5, rtol=0)
    pc.delete_adapter(model, "a")
    pc.add_adapter(model, "a", pc.LoRA(rank=2, targets=("q", "v")))
    perturb_adapter(model, "a")
    with pc.per_row(model, ["a", "b"]):
        mixed = logits(model, inputs)
    torch.testing.assert_close(mixed[0], alone(model, "a", inputs, 0), atol=1e-5, rtol=0)


def test_bottleneck_stacks_are_kept_and_restacked_when_changed(tiny_model):
    model = tiny_model("bert", "classification")
    for name in ("a", "b"):
        pc.add_adapter(model, name, pc.Pfeiffer(bottleneck=4))
        perturb_adapter(model, name)
    model.eval()
    inputs = batch(model, rows=3)
    with pc.per_row(model, ["a", "b", None]):
        logits(model, inputs)
    built = stacks_of(model)
    assert len(built) == 2  # one per layer
    with pc.per_row(model, [None, "b", "a"]):
        logits(model, inputs)
    assert all(x is y for x, y in zip(built, stacks_of(model), strict=True))
    perturb_adapter(model, "a", scale=0.5)
    assert_each_row_is_its_adapter_alone(model, inputs, ["a", "b", None])


def test_dora_scales_are_kept_and_follow_a_merge_into_the_base(tiny_model):
    """DoRA's per-row scales (a norm over each adapter's whole weight) are kept between calls,
    and rebuilt when another adapter is merged into the base weights they read."""
    model = tiny_model("llama", "causal-lm")
    for name, config in (("d", pc.DoRA(rank=4)), ("e", pc.DoRA(rank=2)), ("l", pc.LoRA())):
        pc.add_adapter(model, name, config)
        perturb_adapter(model, name)
    model.eval()
    inputs = batch(model, rows=3)
    assert_each_row_is_its_adapter_alone(model, inputs, ["d", "e", None])
    built = len(stacks_of(model))
    assert_each_row_is_its_adapter_alone(model, inputs, ["e", None, "d"])
    assert len(stacks_of(model)) == built  # nothing new stacked
    pc.merge(model, "l")
    assert_each_row_is_its_adapter_alone(model, inputs, ["d", "e", None])


def test_a_replaced_weight_is_restacked(tiny_model):
    model = two_loras(tiny_model)
    inputs = batch(model, rows=2)
    with pc.per_row(model, ["a", "b"]):
        logits(model, inputs)
    for module in model.modules():  # new Parameter objects, as module surgery would leave
        if isinstance(module, pc.methods.lora.LoRAModule):
            weight = module.lora_B.weight
            module.lora_B.weight = torch.nn.Parameter(weight.detach() * 3, weight.requires_grad)
    assert_each_row_is_its_adapter_alone(model, inputs, ["a", "b"])


def test_one_adapter_for_every_row_is_exactly_set_active(tiny_model):
    model = two_loras(tiny_model)
    inputs = batch(model, rows=3)
    with pc.per_row(model, ["b", "b", "b"]):
        routed = logits(model, inputs)
    assert stacks_of(model) == []  # nothing stacked for a single adapter
    pc.set_active(model, "b")
    assert torch.equal(routed, logits(model, inputs))
    with pc.per_row(model, [None, None, None]):
        base = logits(model, inputs)
    pc.set_active(model, None)
    assert torch.equal(base, logits(model, inputs))
