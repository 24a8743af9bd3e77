"""The base model's dtype comes from the spec (``load.dtype``)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import peft_core as pc
from flows.build_job import build_from_spec
from flows.quickstart import minilm_sst2_spec
from flows.train_job import load_base_model
from peft_core.quantize import quantized_layers
from registry import Registry


def test_a_bf16_base_trains_float32_adapters_and_records_its_dtype(
    sst2_dir, tmp_path, embedded_home
):
    """``load.dtype: bf16`` (on a CPU too): the base computes in bf16, the LoRA weights train in
    float32, the files hold bf16 (the base's dtype, as peft writes), and the version's lineage
    and model card say which dtype the base had."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=4, batch_size=8, name="bf16-lora")
    spec = spec.model_copy(
        update={
            "load": spec.load.model_copy(update={"dtype": "bf16"}),
            "data": spec.data.model_copy(update={"max_eval_samples": 16}),
        }
    )
    assert spec.load.torch_dtype() == torch.bfloat16
    result = build_from_spec(spec, Registry(), tmp_path / "out")
    version = Registry().get(result.ref)
    assert version.lineage["base_dtype"] == "bfloat16"
    files = Registry().fetch(result.ref, tmp_path / "fetched")
    tensors = safetensors.torch.load_file(files / "adapter.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    card = (files / "README.md").read_text()
    assert "(bfloat16)" in card
    # the card points reviewers at the export that checks an engine's rules
    assert f"`adapterops export {spec.name}@champion --for ENGINE --out DIR`" in card
    assert result.metrics["examples"] == 16
    default = minilm_sst2_spec("lora", sst2_dir / "en", steps=1)
    assert default.load.dtype == "auto" and default.load.torch_dtype() == torch.float32  # a CPU


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_a_quantized_base_builds_a_lora_that_records_its_quantization(
    sst2_dir, tmp_path, embedded_home, quantization
):
    """``load: {dtype: bf16, quantization: nf4}``: QLoRA through the whole build (train, evaluate
    on the 4-bit base, register); the lineage and the model card say so; files are bf16. The
    same with an int8 base."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=3, batch_size=8, name="qlora-sst2")
    spec = spec.model_copy(
        update={
            "load": spec.load.model_copy(update={"dtype": "bf16", "quantization": quantization}),
            "data": spec.data.model_copy(update={"max_eval_samples": 16}),
        }
    )
    result = build_from_spec(spec, Registry(), tmp_path / "out")
    version = Registry().get(result.ref)
    assert (version.lineage["base_dtype"], version.lineage["base_quantization"]) == (
        "bfloat16",
        quantization,
    )
    files = Registry().fetch(result.ref, tmp_path / "fetched")
    tensors = safetensors.torch.load_file(files / "adapter.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert f"(bfloat16, {quantization})" in (files / "README.md").read_text()
    assert result.metrics["examples"] == 16


def test_an_fp16_base_trains_with_loss_scaling_by_default(sst2_dir, tmp_path):
    """``load.dtype: fp16`` (GPUs without bf16): ``precision: auto`` becomes fp16 autocast with
    a loss scale, the LoRA stays float32 and learns, and the files are float16."""
    from flows.train_job import train_from_spec, training_precision

    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=6, batch_size=8, name="fp16-lora")
    spec = spec.model_copy(
        update={
            "load": spec.load.model_copy(update={"dtype": "fp16"}),
            "data": spec.data.model_copy(update={"max_eval_samples": 16}),
        }
    )
    assert training_precision(spec, torch.device("cpu")) == "fp16"
    report = train_from_spec(spec, tmp_path / "out")
    assert report.precision == "fp16" and report.steps == 6
    assert all(torch.isfinite(torch.tensor(report.losses)))
    tensors = safetensors.torch.load_file(tmp_path / "out" / "adapter.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if "lora_B" in k)


def test_a_quantized_base_is_quantized_weight_by_weight_as_it_loads(sst2_dir):
    """``load_base_model`` hands transformers a quantisation config, so each weight is quantised
    as it is read (on the training device): the same NF4 layers and codes as loading the bf16
    base whole and calling ``quantize_base``, with the classifier head left in bf16."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=1)
    bf16 = spec.model_copy(update={"load": spec.load.model_copy(update={"dtype": "bf16"})})
    nf4 = bf16.model_copy(update={"load": bf16.load.model_copy(update={"quantization": "nf4"})})
    streamed, _ = load_base_model(nf4, torch.device("cpu"))
    whole, _ = load_base_model(bf16)
    pc.quantize_base(whole, "nf4")
    layers = quantized_layers(streamed)
    assert layers == quantized_layers(whole) and len(layers) == 37
    for name in layers:
        got, want = streamed.get_submodule(name).weight, whole.get_submodule(name).weight
        assert torch.equal(got.quantized_data, want.quantized_data), name
        assert torch.equal(got.quantized_scalers, want.quantized_scalers), name
    head = streamed.classifier.weight
    assert not pc.is_quantized(head) and head.dtype == torch.bfloat16 and head.shape == (2, 384)
