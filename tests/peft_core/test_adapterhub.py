"""AdapterHub import: adapters saved by ``adapters`` 1.3.0 (tests/fixtures/adapterhub, written by
its make_fixtures.py in a separate environment) give the outputs ``adapters`` recorded for them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

import peft_core as pc
from peft_core.adapterhub import is_adapterhub_folder
from tests.helpers import minilm_path

FIXTURES = Path(__file__).parent.parent / "fixtures" / "adapterhub"
NAMES = ("seq_bn", "double_seq_bn", "seq_bn_learned")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reference.safetensors"))


def inputs(reference):
    return {"input_ids": reference["input_ids"], "attention_mask": reference["attention_mask"]}


def body() -> torch.nn.Module:
    return AutoModel.from_pretrained(minilm_path()).eval()


@torch.no_grad()
def hidden(model, reference) -> torch.Tensor:
    return model(**inputs(reference)).last_hidden_state


@pytest.mark.parametrize("name", NAMES)
def test_an_adapterhub_adapter_gives_the_outputs_adapters_recorded(name, reference):
    assert (reference[name] - reference["base"]).abs().max() > 0.5  # the adapter matters
    model = body()
    assert torch.allclose(hidden(model, reference), reference["base"], atol=1e-5, rtol=0)
    record = pc.load_adapter(model, FIXTURES / name)
    assert record.name == name
    # 3e-5: the reference was recorded by another torch/transformers build, whose float32 sums
    # run in another order (transformers 5.24 moved one element of 8448 by 1.8e-5); the
    # adapter itself moves the outputs by more than 0.5
    torch.testing.assert_close(hidden(model, reference), reference[name], atol=3e-5, rtol=0)


def test_the_layouts_map_onto_our_presets():
    model = body()
    seq = pc.load_adapter(model, FIXTURES / "seq_bn")
    double = pc.load_adapter(model, FIXTURES / "double_seq_bn")
    assert seq.config == pc.Pfeiffer(bottleneck=6, activation="relu", original_ln_before=True)
    assert [t.module_name for t in seq.targets][:1] == ["encoder.layer.0.output.LayerNorm"]
    assert double.config == pc.Houlsby(bottleneck=8, activation="silu")
    # leave_out=[5]: layers 0-4, attention and FFN output each
    assert len(double.targets) == 10
    assert not any(".5." in t.module_name for t in double.targets)


def test_it_loads_into_a_classifier_whose_own_head_stays(reference):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    record = pc.load_adapter(model, FIXTURES / "seq_bn")
    assert record.head.trainable is False  # AdapterHub heads are not read
    torch.testing.assert_close(
        hidden(model.bert, reference), reference["seq_bn"], atol=1e-5, rtol=0
    )


def test_saved_in_our_format_it_reloads_with_the_same_outputs(tmp_path, reference):
    model = body()
    pc.load_adapter(model, FIXTURES / "seq_bn", name="pfeiffer")
    folder = pc.save_adapter(model, "pfeiffer", tmp_path / "ours")
    again = body()
    record = pc.load_adapter(again, folder)
    assert record.config.original_ln_before is True
    torch.testing.assert_close(hidden(again, reference), reference["seq_bn"], atol=1e-5, rtol=0)


def test_mixed_rows_equal_each_adapter_alone(reference):
    model = body()
    for name in NAMES:
        pc.load_adapter(model, FIXTURES / name)
    rows = ["seq_bn", None, "double_seq_bn", "seq_bn_learned"]
    ids = reference["input_ids"][[0, 1, 0, 1]]
    mask = reference["attention_mask"][[0, 1, 0, 1]]
    with torch.no_grad(), pc.per_row(model, rows):
        mixed = model(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, name in enumerate(rows):
        expected = reference[name or "base"][i % 2]
        torch.testing.assert_close(mixed[i], expected, atol=1e-5, rtol=0)


def test_a_fresh_post_norm_pfeiffer_starts_at_the_base_and_trains():
    model = body()
    ids = torch.tensor([[101, 1996, 2143, 102]])
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
    pc.add_adapter(model, "p", pc.Pfeiffer(reduction_factor=16, original_ln_before=True))
    out = model(input_ids=ids).last_hidden_state
    assert torch.equal(out.detach(), before)
    out.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_a_decoder_without_post_norm_blocks_is_refused_by_name(tiny_model):
    model = tiny_model("llama", "causal-lm")
    with pytest.raises(pc.TargetError, match="original_ln_before needs a LayerNorm beside"):
        pc.add_adapter(model, "p", pc.Pfeiffer(original_ln_before=True))


def copy_fixture(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit_config(folder: Path, **changes) -> None:
    saved = json.loads((folder / "adapter_config.json").read_text())
    saved["config"].update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(saved))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"use_gating": True}, "use_gating=True"),
        ({"ln_after": True}, "ln_after=True"),
        ({"is_parallel": True}, "is_parallel=True"),
        ({"non_linearity": "leakyrelu"}, "non_linearity='leakyrelu'"),
        ({"architecture": "lora"}, "'lora' adapter"),
    ],
)
def test_what_our_modules_do_not_compute_is_refused_before_the_model_changes(
    tmp_path, changes, named
):
    folder = copy_fixture(tmp_path, "seq_bn")
    edit_config(folder, **changes)
    model = body()
    with pytest.raises(pc.AdapterFormatError, match=named):
        pc.load_adapter(model, folder)
    assert pc.list_adapters(model) == []


def test_another_base_model_is_refused_unless_forced(tmp_path, tiny_model):
    model = tiny_model("bert", "classification")
    with pytest.raises(pc.BaseModelMismatchError, match="hidden size 384"):
        pc.load_adapter(model, FIXTURES / "seq_bn")
    assert pc.list_adapters(model) == []


def test_a_damaged_or_foreign_weights_file_is_one_clear_error(tmp_path):
    folder = copy_fixture(tmp_path, "seq_bn")
    (folder / "pytorch_adapter.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(pc.AdapterFormatError, match="cannot read"):
        pc.load_adapter(body(), folder)
    (folder / "pytorch_adapter.bin").unlink()
    with pytest.raises(pc.AdapterFormatError, match=r"has no adapter\.safetensors"):
        pc.load_adapter(body(), folder)
    folder = copy_fixture(tmp_path, "seq_bn_learned")
    tensors = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    tensors["heads.seq_bn_learned.1.weight"] = torch.zeros(2, 384)
    torch.save(tensors, folder / "pytorch_adapter.bin")
    with pytest.raises(pc.AdapterFormatError, match="unexpected tensor 'heads"):
        pc.load_adapter(body(), folder)


def test_a_peft_folder_is_not_mistaken_for_an_adapterhub_one(tmp_path):
    model = body()
    pc.add_adapter(model, "l", pc.LoRA(rank=2, targets=("q",)))
    folder = pc.save_adapter(model, "l", tmp_path / "peft", format="peft")
    assert not is_adapterhub_folder(folder)
    assert all(is_adapterhub_folder(FIXTURES / name) for name in NAMES)


def test_saved_on_the_bare_body_it_loads_into_models_with_heads_and_back(tmp_path, reference):
    model = body()
    pc.load_adapter(model, FIXTURES / "seq_bn", name="lang")
    on_body = pc.save_adapter(model, "lang", tmp_path / "body")
    masked = AutoModelForMaskedLM.from_pretrained(minilm_path()).eval()
    record = pc.load_adapter(masked, on_body)
    assert record.targets[0].module_name == "bert.encoder.layer.0.output.LayerNorm"
    torch.testing.assert_close(
        hidden(masked.bert, reference), reference["seq_bn"], atol=1e-5, rtol=0
    )
    on_masked = pc.save_adapter(masked, "lang", tmp_path / "masked")
    again = body()
    assert pc.load_adapter(again, on_masked).targets[0].module_name == (
        "encoder.layer.0.output.LayerNorm"
    )
    torch.testing.assert_close(hidden(again, reference), reference["seq_bn"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["seq_bn", "double_seq_bn"])
def test_written_back_in_adapterhubs_format_it_reads_the_same(name, tmp_path, reference):
    """(``check_export.py`` checks the same folders with ``adapters`` 1.3.0 itself: within 2e-6.)"""
    model = body()
    pc.load_adapter(model, FIXTURES / name, name="x")
    folder = pc.save_adapter(model, "x", tmp_path / "hub", format="adapterhub", dtype=torch.float32)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "pytorch_adapter.bin",
    ]
    written = json.loads((folder / "adapter_config.json").read_text())
    original = json.loads((FIXTURES / name / "adapter_config.json").read_text())
    for key in ("mh_adapter", "output_adapter", "original_ln_before", "leave_out"):
        assert written["config"][key] == original["config"][key], key
    assert written["version"] == "adapters.1.3.0" and is_adapterhub_folder(folder)
    again = body()
    pc.load_adapter(again, folder)
    torch.testing.assert_close(hidden(again, reference), reference[name], atol=1e-5, rtol=0)


def test_only_bottleneck_adapters_are_written_in_adapterhubs_format(tmp_path):
    model = body()
    pc.add_adapter(model, "l", pc.LoRA(rank=2, targets=("q",)))
    with pytest.raises(pc.AdapterFormatError, match="holds bottleneck adapters"):
        pc.save_adapter(model, "l", tmp_path / "hub", format="adapterhub")
    assert not (tmp_path / "hub").exists()
