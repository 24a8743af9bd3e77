"""``one_rank_in_place``: LoRA files with per-module ranks and alphas rewritten with one rank and
one alpha (what vLLM reads), computing exactly what they computed."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
import transformers as T
from peft import LoraConfig, PeftModel, get_peft_model

import peft_core as pc
from tests.helpers import TINY_CONFIGS, batch, logits


def classifier() -> T.BertForSequenceClassification:
    torch.manual_seed(0)
    return T.BertForSequenceClassification(TINY_CONFIGS["bert"]()).eval()


def test_per_module_ranks_and_alphas_become_one_of_each(tmp_path: Path) -> None:
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "intermediate.dense"],
        rank_pattern={"value": 6, "intermediate.dense": 2},
        alpha_pattern={"intermediate.dense": 3},
    )
    tuned = get_peft_model(classifier(), config)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn_like(parameter))
    inputs = batch(tuned)
    expected = logits(tuned.eval(), inputs)
    tuned.save_pretrained(tmp_path)
    before = safetensors.torch.load_file(str(tmp_path / "adapter_model.safetensors"))

    written = pc.one_rank_in_place(tmp_path)

    assert (written["r"], written["lora_alpha"], written["rank_pattern"]) == (6, 8, {})
    assert written["alpha_pattern"] == {}
    assert written == json.loads((tmp_path / "adapter_config.json").read_text())
    after = safetensors.torch.load_file(str(tmp_path / "adapter_model.safetensors"))
    assert {t.shape[0] for k, t in after.items() if "lora_A" in k} == {6}
    value_b = [k for k in after if "value.lora_B" in k]
    assert value_b and all(torch.equal(after[k], before[k]) for k in value_b)  # already at 6
    theirs = PeftModel.from_pretrained(classifier(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-5)


def test_files_with_one_rank_already_are_left_alone(tmp_path: Path) -> None:
    model = classifier()
    pc.add_adapter(model, "a", pc.LoRA(rank=4, targets=("q", "v")))
    pc.save_adapter(model, "a", tmp_path, format="peft")
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert pc.one_rank_in_place(tmp_path)["r"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp
