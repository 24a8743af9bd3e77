"""A spec whose training step cannot fit the GPU's free memory is refused before the model is
loaded (``check_inputs`` asks ``check_step_fits`` with the free memory of the GPU it runs on)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from flows.errors import DataError
from flows.planning import check_step_fits, plan_step
from flows.spec import load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"


def test_a_step_that_fits_passes_and_one_that_does_not_says_what_to_change():
    spec = load_spec(EXAMPLE)
    step = plan_step(spec)
    assert step is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_step_fits(spec, int(step.peak_bytes / 0.97) + 1)  # enough, with the margin
    with pytest.warns(RuntimeWarning, match="within 3% under the limit") as close:
        check_step_fits(spec, step.peak_bytes, "NVIDIA L4")  # exactly enough: a warning
    assert "of the" in str(close[0].message) and "free on NVIDIA L4" in str(close[0].message)
    with pytest.raises(DataError) as refused:
        check_step_fits(spec, step.peak_bytes - 1, "NVIDIA T4")
    message = str(refused.value)
    gib = step.peak_bytes / 2**30
    assert f"needs about {gib:.1f} GiB (32 rows x 64 tokens" in message
    assert "NVIDIA T4 has" in message and "lower train.batch_size" in message
    # the advice works: half the rows and checkpointing need less than the memory refused above
    smaller = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": 16})})
    smaller_step = plan_step(smaller)
    assert smaller_step is not None and smaller_step.peak_bytes < step.peak_bytes - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # it may be close; it must not refuse
        check_step_fits(smaller, step.peak_bytes - 1)


def test_under_fsdp_each_process_checks_its_share_within_the_wider_error():
    """One of N FSDP processes needs its shard and what it gathers; the estimate of that is
    looser (15% either side), so a step up to 15% over the free memory gets a warning."""
    spec = load_spec(EXAMPLE, ["train.sharding=fsdp"])
    step, whole = plan_step(spec, 2), plan_step(spec)
    assert step is not None and whole is not None
    assert step.processes == 2 and step.peak_bytes != whole.peak_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_step_fits(spec, int(step.peak_bytes / 0.85) + 1, processes=2)
    with pytest.warns(RuntimeWarning, match="within 15% under to 15% over the limit") as close:
        check_step_fits(spec, int(step.peak_bytes / 1.1), "NVIDIA H100", processes=2)
    assert "per process of 2 (FSDP) against the" in str(close[0].message)
    with pytest.raises(DataError, match=r"per process of 2 \(FSDP\).*more GPUs"):
        check_step_fits(spec, int(step.peak_bytes / 1.15) - 1, "NVIDIA H100", processes=2)


def test_a_base_with_nothing_to_quantize_is_refused_with_the_other_inputs(tmp_path):
    """A base whose Linear layers are all too small for NF4's blocks: check_inputs says so,
    before any data is read or model loaded (it was an error inside the training step)."""
    import transformers as T

    import peft_core as pc
    from flows.prepare_job import _check_method_fits

    T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64,
    ).save_pretrained(tmp_path)  # fmt: skip
    document = yaml.safe_load(EXAMPLE.read_text())
    document.update(base_model=str(tmp_path), head={"type": "causal-lm"})
    document["method"]["targets"] = ["q_proj", "v_proj"]
    document.pop("evaluate", None)  # the metric follows the head
    spec = parse_spec(document, source="spec.yaml")
    _check_method_fits(spec)  # unquantised: fine
    document["load"] = {"quantization": "nf4"}
    nf4 = parse_spec(document, source="spec.yaml")
    with pytest.raises(pc.ConfigError, match="no Linear layer of this model can be stored in nf4"):
        _check_method_fits(nf4)


def test_an_nf4_base_fsdp_cannot_split_is_refused_under_torchrun(monkeypatch):
    """MiniLM's 384 x 384 weights have 9 NF4 blocks of 64 x 256 each: two FSDP processes
    cannot share them (torchao failed inside fully_shard, after loading); three can."""
    import peft_core as pc
    from flows.prepare_job import _check_method_fits

    spec = load_spec(EXAMPLE, ["train.sharding=fsdp", "load.quantization=nf4", "load.dtype=bf16"])
    _check_method_fits(spec)  # one process: nothing to split
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(pc.ConfigError, match="start a number of processes that divides 9"):
        _check_method_fits(spec)
    monkeypatch.setenv("WORLD_SIZE", "3")
    _check_method_fits(spec)
