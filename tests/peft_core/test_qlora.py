"""QLoRA on CPU: LoRA trains in float32 on a 4-bit NF4 base (torchao), saves in bf16, loads onto
the bf16 base and into peft, and is never merged into 4-bit weights."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers as T
from transformers import AutoModelForSequenceClassification

import peft_core as pc
from peft_core.quantize import quantizable_layers, quantization_config, quantized_layers
from tests.helpers import minilm_path, perturb_adapter


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


def test_a_dequantized_base_merges_into_what_the_4_bit_model_computed(tmp_path):
    """``export --for merged`` of a QLoRA: the NF4 weights stored as the bf16 values they
    compute with, the adapter merges, and the plain checkpoint answers as the QLoRA did (closer
    than the adapter on the bf16 base it was quantised from, peft's way of merging one)."""
    torch.manual_seed(0)
    model = minilm_bf16()
    pc.quantize_base(model, "nf4")
    pc.add_adapter(model, "q", pc.LoRA(rank=8, targets=("q", "v")))
    perturb_adapter(model, "q")
    with torch.no_grad():
        qlora = model(**tokens()).logits
        on_bf16 = minilm_bf16()
        pc.load_adapter(on_bf16, pc.save_adapter(model, "q", tmp_path / "q"))
        other_way = on_bf16(**tokens()).logits
    assert pc.quantize.dequantize_base(model, torch.bfloat16) == 37
    assert quantized_layers(model) == []
    weight = model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert (weight.dtype, weight.requires_grad) == (torch.bfloat16, False)
    merged = pc.merged_state_dict(model, "q")  # refused on the 4-bit weights
    plain = minilm_bf16()
    plain.load_state_dict(merged)
    with torch.no_grad():
        answered = plain(**tokens()).logits
        base_alone = minilm_bf16()(**tokens()).logits
    off = float((answered.float() - qlora.float()).abs().max())  # bf16 rounding of the sums
    assert off < 0.05
    assert off < float((other_way.float() - qlora.float()).abs().max()) / 2
    # the adapter is in it: far from what the base alone answers
    assert float((answered.float() - base_alone.float()).abs().max()) > 0.3


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


def _stored(weight: torch.Tensor) -> list[torch.Tensor]:
    """The tensors torchao keeps for a quantised weight (codes and scales), or the weight."""
    if type(weight).__name__ == "NF4Tensor":
        return [weight.quantized_data, weight.quantized_scalers, weight.scaler_mean]
    if type(weight).__name__ == "Int8Tensor":
        return [weight.qdata, weight.scale]
    return [weight]


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantizing_while_loading_stores_what_quantize_base_stores(tmp_path, quantization):
    """``quantization_config`` makes ``from_pretrained`` quantise each weight as it reads it (the bf16
    base is never whole in memory): the same layers, with the same codes and scales, as loading
    in bf16 and calling ``quantize_base``. A Llama whose k/v weights (64 x 128) are too small for
    NF4's blocks keeps them in bf16 either way, and the LM head is never quantised."""
    config = T.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512,
    )  # fmt: skip
    torch.manual_seed(0)
    T.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    after = T.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    count = pc.quantize_base(after, quantization)
    with torch.device("meta"):
        skeleton = T.AutoModelForCausalLM.from_config(config)
    streamed = T.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, device_map={"": "cpu"},
        quantization_config=quantization_config(skeleton, quantization),
    )  # fmt: skip
    assert (
        quantized_layers(streamed)
        == quantized_layers(after)
        == quantizable_layers(skeleton, quantization)
    )
    assert count == len(quantized_layers(streamed)) == {"nf4": 2 * 5, "int8": 2 * 7}[quantization]
    assert "lm_head" not in quantized_layers(streamed)
    for (name, want), got in zip(
        after.state_dict().items(), streamed.state_dict().values(), strict=True
    ):
        assert type(got) is type(want), name
        assert all(map(torch.equal, _stored(got), _stored(want))), name


def test_quantization_config_refuses_a_model_with_nothing_to_quantize():
    config = T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    with torch.device("meta"):
        skeleton = T.AutoModelForCausalLM.from_config(config)
    assert quantizable_layers(skeleton, "nf4") == []
    with pytest.raises(pc.ConfigError, match="multiples of 16384"):
        quantization_config(skeleton, "nf4")
