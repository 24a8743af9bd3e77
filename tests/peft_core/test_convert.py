"""``pc.convert_adapter``: another format from the saved files and the base's config alone (the
model built on the meta device), byte for byte what loading into the real base and saving gives;
what needs the real base is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

import peft_core as pc
from tests.helpers import TINY_CONFIGS, perturb_adapter

AUTO = {
    "classification": T.AutoModelForSequenceClassification,
    "causal-lm": T.AutoModelForCausalLM,
}
CASES = {
    "llama-lora": ("llama", "causal-lm", pc.LoRA(rank=4, targets=("q", "v", "o")), "peft"),
    "bert-lora-head": ("bert", "classification", pc.LoRA(rank=4, targets=("q", "v")), "peft"),
    "bert-dora": ("bert", "classification", pc.DoRA(rank=4, targets=("q", "v")), "peft"),
    "gpt2-ia3": ("gpt2", "causal-lm", pc.IA3(), "peft"),
    "bert-houlsby": ("bert", "classification", pc.Houlsby(reduction_factor=4), "adapterhub"),
}


def saved(
    family: str, head: str, config: pc.MethodConfig, folder: Path
) -> tuple[T.PreTrainedModel, Path]:
    model = AUTO[head].from_config(TINY_CONFIGS[family]()).to(torch.bfloat16)
    pc.add_adapter(model, "a", config)
    perturb_adapter(model, "a")
    return model, pc.save_adapter(model, "a", folder)


@pytest.mark.parametrize("case", CASES)
def test_converted_files_are_those_the_real_base_writes(case: str, tmp_path: Path) -> None:
    family, head, config, format = CASES[case]
    model, source = saved(family, head, config, tmp_path / "ours")
    expected = pc.save_adapter(model, "a", tmp_path / "expected", format=format)
    converted = pc.convert_adapter(
        source, tmp_path / "converted", TINY_CONFIGS[family](), head=head, format=format,
        dtype=torch.bfloat16,
    )  # fmt: skip
    names = sorted(p.name for p in expected.iterdir())
    assert names == sorted(p.name for p in converted.iterdir()) and len(names) >= 2
    for name in names:
        assert (converted / name).read_bytes() == (expected / name).read_bytes(), name


def test_what_needs_the_real_base_is_refused_in_one_line(tmp_path: Path) -> None:
    _, full = saved("bert", "classification", pc.FullFineTune(), tmp_path / "full")
    with pytest.raises(pc.ConfigError, match="full adapter, whose files cannot be converted"):
        pc.convert_adapter(full, tmp_path / "out", TINY_CONFIGS["bert"](), head="classification")
    _, lora = saved("bert", "classification", pc.LoRA(rank=4, targets=("q", "v")), tmp_path / "l")
    other = TINY_CONFIGS["bert"]()
    other.num_hidden_layers = 3
    with pytest.raises(pc.BaseModelMismatchError, match="was trained on base model"):
        pc.convert_adapter(lora, tmp_path / "out", other, head="classification")
    with pytest.raises(pc.AdapterFormatError, match=r"has no adapter\.json"):
        pc.convert_adapter(tmp_path, tmp_path / "out", other)
    assert not (tmp_path / "out").exists()
    before = {p.name: p.read_bytes() for p in lora.iterdir()}
    for into in (lora, tmp_path / "l" / ".." / "l"):  # was converted in place: its files gone
        with pytest.raises(pc.ConfigError) as raised:
            pc.convert_adapter(lora, into, TINY_CONFIGS["bert"](), head="classification")
        assert str(raised.value) == (
            f"convert_adapter would write into {lora}, the folder it reads, replacing the "
            "adapter there; give another destination folder"
        )
    assert {p.name: p.read_bytes() for p in lora.iterdir()} == before
