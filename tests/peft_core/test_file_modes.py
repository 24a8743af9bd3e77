"""Adapter files are readable by whoever the umask admits, as any new file is: safetensors 0.8
writes its files 0600 whatever the umask (safetensors#782), so vLLM serving an adapter under
another user found "No adapter found"."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import peft_core as pc
from tests.helpers import TINY_CONFIGS, perturb_adapter, umask


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_saved_adapters_take_the_mode_any_new_file_gets(tmp_path, mask):
    import transformers as T

    model = T.AutoModelForCausalLM.from_config(TINY_CONFIGS["gpt2"]())
    pc.add_adapter(model, "a", pc.LoRA(rank=4, targets=("q", "v")))  # c_attn: a rank_pattern
    perturb_adapter(model, "a")
    with umask(mask):
        ours = pc.save_adapter(model, "a", tmp_path / "ours")
        peft = pc.save_adapter(model, "a", tmp_path / "peft", format="peft")
        pc.one_rank_in_place(peft)  # vLLM's one rank: the weights rewritten
    expected = 0o666 & ~mask
    assert modes(ours) == {"adapter.json": expected, "adapter.safetensors": expected}
    assert set(modes(peft).values()) == {expected} and "adapter_model.safetensors" in modes(peft)
