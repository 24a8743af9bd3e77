"""QLoRA on CPU: LoRA trains in float32 on a 4-bit NF4 base (torchao), saves in bf16, loads onto
the bf16 base and into peft, and is never merged into 4-bit weights."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peft_core as pc
from peft_core.quantize import quantized_layers
from tests.helpers import minilm_path


def minilm_bf16():
    return AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=2, dtype=torch.bfloat16
    ).eval()


def tokens():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (4, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def trained():
    """A LoRA trained for a few steps on MiniLM with NF4 weights."""
    torch.manual_seed(0)
    model = minilm_bf16()
    reference = minilm_bf16()
    count = pc.quantize_base(model, "nf4")
    losses = train_a_lora(model, steps=8)
    return model.eval(), reference, count, losses


def train_a_lora(model, steps: int) -> list[float]:
    """LoRA r=8 on q, v trained for ``steps`` AdamW steps on one fixed batch; the losses."""
    pc.add_adapter(model, "q", pc.LoRA(rank=8, targets=("q", "v")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 1, 0])
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**tokens(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_the_body_is_4_bit_and_only_the_adapter_and_head_train(trained):
    model, reference, count, losses = trained
    assert count == 37  # 6 layers x (q, k, v, o, ffn in, ffn out) and the pooler
    assert len(quantized_layers(model)) == 37
    weight = model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert pc.is_quantized(weight) and weight.requires_grad is False
    # 4 bits a weight plus about half a bit of scales, against 16 for bf16
    dense = reference.bert.encoder.layer[0].attention.self.query.weight
    packed = weight.quantized_data.numel() * weight.quantized_data.element_size()
    assert packed == dense.numel() // 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    assert losses[-1] < losses[0]


def test_it_saves_in_bf16_and_loads_onto_the_bf16_base_and_into_peft(trained, tmp_path):
    model, _, _, _ = trained
    ours = pc.save_adapter(model, "q", tmp_path / "ours")
    as_peft = pc.save_adapter(model, "q", tmp_path / "peft", format="peft")
    plain = minilm_bf16()
    record = pc.load_adapter(plain, ours)
    assert record.name == "q"
    lora_a = model.bert.encoder.layer[0].attention.self.query.adapters["q"].lora_A.weight
    loaded_a = plain.bert.encoder.layer[0].attention.self.query.adapters["q"].lora_A.weight
    assert torch.equal(loaded_a, lora_a.to(torch.bfloat16).float())  # saved in bf16
    with torch.no_grad():
        on_bf16 = plain(**tokens()).logits
        on_nf4 = model(**tokens()).logits
        theirs = peft.PeftModel.from_pretrained(minilm_bf16(), str(as_peft)).eval()
        from_peft = theirs(**tokens()).logits
    assert on_bf16.dtype == torch.float32  # our head trains (and answers) in float32
    torch.testing.assert_close(from_peft.float(), on_bf16, atol=2e-2, rtol=0)
    # the 4-bit base is close to, not equal to, the bf16 one
    assert 0 < float((on_nf4 - on_bf16).abs().max()) < 0.5


def test_merging_into_4_bit_weights_is_refused_and_changes_nothing(trained):
    model, _, _, _ = trained
    weight = model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    before = weight.get_original_weight().clone()
    with pytest.raises(pc.NotMergeableError, match="quantised weights"):
        pc.merge(model, "q")
    assert torch.equal(weight.get_original_weight(), before)
    with pytest.raises(pc.NotMergeableError, match="quantised weights"):
        pc.merged_state_dict(model, "q")


def test_quantizing_after_adapters_or_an_unknown_kind_is_refused():
    model = minilm_bf16()
    with pytest.raises(pc.ConfigError, match="unknown quantization 'int3'"):
        pc.quantize_base(model, "int3")  # type: ignore[arg-type]
    pc.add_adapter(model, "l", pc.LoRA(rank=2, targets=("q",)))
    with pytest.raises(pc.ConfigError, match="before adding adapters"):
        pc.quantize_base(model, "nf4")


def test_an_int8_base_trains_a_float32_lora_and_stays_closer_to_bf16_than_nf4():
    torch.manual_seed(0)
    model = minilm_bf16()
    assert pc.quantize_base(model, "int8") == 37  # per channel: no block-size restriction
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    assert type(weight).__name__ == "Int8Tensor" and pc.is_quantized(weight)
    assert weight.qdata.dtype == torch.int8 and weight.qdata.numel() == 384 * 384
    losses = train_a_lora(model, steps=6)
    assert losses[-1] < losses[0]
    with pytest.raises(pc.NotMergeableError, match="quantised weights"):
        pc.merge(model, "q")
    # the body's hidden states: int8's rounding error is well under NF4's
    dense = minilm_bf16().bert
    errors = {}
    for kind in ("int8", "nf4"):
        quantized = minilm_bf16()
        pc.quantize_base(quantized, kind)
        with torch.no_grad():
            got = quantized.bert(**tokens()).last_hidden_state.float()
            want = dense(**tokens()).last_hidden_state.float()
        errors[kind] = float((got - want).abs().mean())
    assert 0 < errors["int8"] < errors["nf4"] / 2
