"""Adapters on a base that accelerate offloads (``device_map`` with ``"disk"`` entries): built on
the execution device, they run, route per row and generate as on the whole base; what needs the
offloaded weights themselves (merge, DoRA, PiSSA) is refused in one line and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

import peft_core as pc
from peft_core.layer import AdaptedLayer
from peft_core.offload import execution_device, is_offloaded
from peft_core.state import adapter_layers
from tests.helpers import TINY_CONFIGS, batch, logits, perturb_adapter

FAMILY = "qwen2"  # Llama-shaped, with biases for BitFit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    T.AutoModelForCausalLM.from_config(TINY_CONFIGS[FAMILY]()).save_pretrained(folder)
    return folder


def whole(checkpoint: Path) -> T.PreTrainedModel:
    return T.AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def offloaded(checkpoint: Path, tmp_path: Path) -> T.PreTrainedModel:
    """The same base with its second decoder layer kept on disk by accelerate."""
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    model = T.AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    return model.eval()


def test_the_fixture_really_offloads(checkpoint: Path, tmp_path: Path) -> None:
    model = offloaded(checkpoint, tmp_path)
    q = model.model.layers[1].self_attn.q_proj
    assert q.weight.is_meta and is_offloaded(q)
    assert execution_device(q) == torch.device("cpu")
    assert not is_offloaded(model.model.layers[0].self_attn.q_proj)


METHODS = {
    "lora": pc.LoRA(rank=4, targets=("q", "v", "o", "ffn_in", "ffn_out")),
    "ia3": pc.IA3(),
    "bitfit": pc.BitFit(),
    "houlsby": pc.Houlsby(reduction_factor=4),
    "pfeiffer": pc.Pfeiffer(bottleneck=5),
}


@pytest.mark.parametrize("method", METHODS)
def test_an_adapter_loads_and_runs_as_on_the_whole_base(
    method: str, checkpoint: Path, tmp_path: Path
) -> None:
    reference = whole(checkpoint)
    pc.add_adapter(reference, "a", METHODS[method])
    perturb_adapter(reference, "a")
    folder = pc.save_adapter(reference, "a", tmp_path / "a")
    model = offloaded(checkpoint, tmp_path)
    pc.load_adapter(model, folder, name="a")
    pc.set_active(model, "a")
    inputs = batch(model)
    assert not any(t.is_meta for t in pc.adapter_state_dict(model, "a").values())
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=0)
    # and the adapter does something there: without it the logits differ
    pc.set_active(model, None)
    assert (logits(model, inputs) - logits(reference, inputs)).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_per_row_and_generation_match_the_whole_base(
    method: str, checkpoint: Path, tmp_path: Path
) -> None:
    reference = whole(checkpoint)
    model = offloaded(checkpoint, tmp_path)
    for name in ("a", "b"):
        pc.add_adapter(reference, name, METHODS[method])
        perturb_adapter(reference, name, scale=0.5)
        pc.load_adapter(model, pc.save_adapter(reference, name, tmp_path / name), name=name)
    inputs = batch(model, rows=2)
    with torch.no_grad(), pc.per_row(model, ["a", "b"]):
        routed = model(**inputs).logits
    for row, name in enumerate(("a", "b")):
        pc.set_active(reference, name)
        alone = logits(reference, {k: v[row : row + 1] for k, v in inputs.items()})
        torch.testing.assert_close(routed[row : row + 1], alone, atol=1e-5, rtol=0)
    pc.set_active(model, "b")
    prompt = {"input_ids": inputs["input_ids"][1:], "attention_mask": inputs["attention_mask"][1:]}
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert model.generate(**prompt, **settings).tolist() == (
        reference.generate(**prompt, **settings).tolist()
    )


def test_merging_is_refused_in_one_line_and_changes_nothing(
    checkpoint: Path, tmp_path: Path
) -> None:
    model = offloaded(checkpoint, tmp_path)
    pc.add_adapter(model, "a", METHODS["lora"])
    perturb_adapter(model, "a")
    pc.set_active(model, "a")
    inputs = batch(model)
    before = logits(model, inputs)
    with pytest.raises(pc.NotMergeableError, match=r"model\.layers\.1\.self_attn\.q_proj.*disk"):
        pc.merge(model, "a")
    with pytest.raises(pc.NotMergeableError, match="keeps in CPU memory or on disk"):
        pc.merged_state_dict(model, "a")
    assert not any(layer.adapter("a").merged for _, layer in adapter_layers(model, "a"))
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)


def test_pissa_starts_from_the_offloaded_weights(checkpoint: Path, tmp_path: Path) -> None:
    reference, model = whole(checkpoint), offloaded(checkpoint, tmp_path)
    config = pc.LoRA(rank=4, targets=("q", "v"), init="pissa")
    for one in (reference, model):
        pc.add_adapter(one, "a", config)
        perturb_adapter(one, "a")  # a start taken from the wrong weights would show here
        pc.set_active(one, "a")
    first, second = pc.adapter_state_dict(reference, "a"), pc.adapter_state_dict(model, "a")
    key = "model.layers.1.self_attn.q_proj.lora_A.weight"
    assert any(key in k for k in second) and not any(t.is_meta for t in second.values())
    for k, tensor in first.items():
        torch.testing.assert_close(second[k], tensor, atol=1e-5, rtol=0)
    inputs = batch(model)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=0)


def test_dora_is_refused_before_injecting(checkpoint: Path, tmp_path: Path) -> None:
    model = offloaded(checkpoint, tmp_path)
    with pytest.raises(pc.ConfigError, match=r"DoRA needs the base weights of model\.layers\.1"):
        pc.add_adapter(model, "a", pc.DoRA(rank=4, targets=("q", "v")))
    assert pc.list_adapters(model) == []
    assert not any(isinstance(m, AdaptedLayer) for m in model.modules())


def test_a_peft_run_lora_loads_and_runs_as_on_the_whole_base(
    checkpoint: Path, tmp_path: Path
) -> None:
    config = pc.AnyPeft(
        config={"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    )
    reference = whole(checkpoint)
    pc.add_adapter(reference, "a", config)
    perturb_adapter(reference, "a")
    folder = pc.save_adapter(reference, "a", tmp_path / "a", format="peft")
    model = offloaded(checkpoint, tmp_path)
    pc.load_adapter(model, folder, name="a")
    for one in (reference, model):
        pc.set_active(one, "a")
    inputs = batch(model)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=0)


def test_a_peft_method_that_builds_on_the_base_weights_is_refused_and_taken_out(
    checkpoint: Path, tmp_path: Path
) -> None:
    model = offloaded(checkpoint, tmp_path)
    inputs = batch(model)
    before = logits(model, inputs)
    oft = pc.AnyPeft(config={"peft_type": "OFT", "oft_block_size": 8, "target_modules": ["q_proj"]})
    with pytest.raises(
        pc.ConfigError, match=r"peft OFT needs the base weights of model\.layers\.1\.self_attn"
    ):
        pc.add_adapter(model, "a", oft)
    assert pc.list_adapters(model) == []
    torch.testing.assert_close(logits(model, inputs), before, atol=0, rtol=0)


def test_an_adapters_own_copy_of_an_offloaded_head_holds_its_trained_weights(
    tmp_path: Path,
) -> None:
    """A classifier whose head accelerate keeps on disk: the adapter's copy of the head gets the
    head's weights in memory and no hook (a copied hook would swap them for the disk's)."""
    T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS[FAMILY]()).save_pretrained(
        tmp_path / "base"
    )
    reference = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    on_disk = {"model": "cpu", "score": "disk"}
    model = T.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", device_map=on_disk, offload_folder=tmp_path / "offload"
    ).eval()
    assert is_offloaded(model.score)
    pc.add_adapter(reference, "a", METHODS["lora"])
    perturb_adapter(reference, "a")  # the head's copy too
    pc.load_adapter(model, pc.save_adapter(reference, "a", tmp_path / "a"), name="a")
    for one in (reference, model):
        pc.set_active(one, "a")
    inputs = batch(model)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=0)
    pc.set_active(model, None)  # the original head still runs from disk
    pc.set_active(reference, None)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-5, rtol=0)


def test_loading_into_a_model_without_weights_is_refused_not_silently_empty(
    checkpoint: Path, tmp_path: Path
) -> None:
    """A base built on the meta device (no hooks: nothing will bring weights in) would get an
    adapter that holds nothing: copying into a meta tensor is a silent no-op."""
    reference = whole(checkpoint)
    pc.add_adapter(reference, "a", METHODS["lora"])
    folder = pc.save_adapter(reference, "a", tmp_path / "a")
    with torch.device("meta"):
        empty = T.AutoModelForCausalLM.from_config(TINY_CONFIGS[FAMILY]())
    with pytest.raises(pc.ConfigError, match=r"into a model without weights: .*lora_A\.weight"):
        pc.load_adapter(empty, folder, name="a")
    assert pc.list_adapters(empty) == []
