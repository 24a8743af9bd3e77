"""A spec whose training step cannot fit the GPU's free memory is refused before the model is
loaded (``check_inputs`` asks ``check_step_fits`` with the free memory of the GPU it runs on)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import yaml

from flows.errors import DataError
from flows.planning import check_max_length, check_step_fits, plan_step
from flows.spec import load_spec, parse_spec
from tests.helpers import llama_lm_spec, run_cli

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


def test_plan_refuses_the_quantised_storage_build_would_refuse(tmp_path):
    """``plan`` costed an NF4 base with no layer torchao can store so, and an NF4 base too few
    blocks to split over ``--processes`` FSDP processes, as if it would train: ``build``
    refused both before training. Now ``plan`` says the same line."""
    import transformers as T

    T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64,
    ).save_pretrained(tmp_path / "tiny")  # fmt: skip
    document = yaml.safe_load(EXAMPLE.read_text())
    document.update(base_model=str(tmp_path / "tiny"), head={"type": "causal-lm"})
    document["method"]["targets"] = ["q_proj", "v_proj"]
    document.pop("evaluate", None)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
    refused = run_cli("plan", str(tmp_path / "spec.yaml"), "--set", "load.quantization=nf4")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.startswith("error: no Linear layer of this model can be stored in nf4")
    assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    fsdp = ["--set", "load.quantization=nf4", "--set", "train.sharding=fsdp", "--no-step"]
    split = run_cli("plan", str(EXAMPLE), *fsdp, "--processes", "2")
    assert split.returncode == 2 and "start a number of processes that divides 9" in split.stderr
    three = run_cli("plan", str(EXAMPLE), *fsdp, "--processes", "3", "--json")
    assert three.returncode == 0, three.stderr[-2000:]
    assert json.loads(three.stdout)["base_bytes"] == 53_354_272  # NF4 layers (86.6 MB in fp32)


def test_a_max_length_past_a_rotary_bases_context_is_said_and_its_own_context_is_not(
    tmp_path, sst2_dir
):
    """A Llama (rotary positions) takes any length, so nothing failed: a spec copied from a
    longer-context base trained, silently, on positions the base never saw. Beyond its
    ``max_position_embeddings`` is a warning naming it; up to it, nothing is said."""
    document = llama_lm_spec(tmp_path, sst2_dir, max_length=2048)
    config = tmp_path / "base" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_position_embeddings": 1024}))  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
    with pytest.warns(RuntimeWarning) as said:
        check_max_length(load_spec(tmp_path / "spec.yaml"))
    assert [str(w.message) for w in said] == [
        f"tiny-llama-lm: train.max_length 2048 is more than the 1024 tokens {tmp_path / 'base'} "
        "was pre-trained on (max_position_embeddings in its config.json): positions past them "
        "were never seen, and longer texts (packed batches fill train.max_length) usually "
        "answer worse; set train.max_length to 1024 or less"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_max_length(load_spec(tmp_path / "spec.yaml", ["train.max_length=1024"]))


def test_without_a_gpu_a_step_beyond_the_machines_memory_is_one_line_before_the_base_loads(
    tmp_path, sst2_dir
):
    """On a machine without a GPU (a CI runner building an LLM) a step that cannot fit its
    memory went ahead: the kernel's out-of-memory killer ended it, exit 137 and no word (or
    the allocator's traceback). 64 rows of 16,384 tokens over a 32,000-token vocabulary need
    about 510 GiB, more than any machine that runs these tests has."""
    spec = llama_lm_spec(tmp_path, sst2_dir, complete=True, batch_size=64, max_length=16384)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # no GPU, anywhere
    env["ADAPTEROPS_HOME"] = str(tmp_path / "home")
    result = run_cli("train", "spec.yaml", "--out", "out", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: one training step of tiny-llama-lm needs about 509.7 GiB (64 rows x 16384 "
        "tokens, weights 0.0 GiB) but this machine (CPU memory; no CUDA GPU here) has "
    ), line
    assert "GiB free: lower train.batch_size" in line
    assert not (tmp_path / "out").exists()


def test_processes_on_a_cpu_share_its_memory(tmp_path, sst2_dir, monkeypatch):
    """Several gloo processes on one machine each hold a step: each gets its share of the
    memory. Checked once, before torchrun starts them (a process would count its siblings'
    loading against itself)."""
    import torch

    from flows import inference_placement
    from flows.prepare_job import _check_step_fits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one = parse_spec(llama_lm_spec(tmp_path, sst2_dir, batch_size=4, max_length=64))
    step = plan_step(one)
    assert step is not None
    room = int(step.peak_bytes * 1.5)  # one step fits; two do not
    monkeypatch.setattr(
        inference_placement, "free_memory", lambda: inference_placement.Memory((), room)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_step_fits(one)
    two = one.model_copy(update={"train": one.train.model_copy(update={"processes": 2})})
    with pytest.raises(DataError) as refused:
        _check_step_fits(two)
    share = f"{room // 2 / 2**30:.1f} GiB free"
    assert (
        "but each of 2 processes' share of this machine (CPU memory; no CUDA GPU here) has "
        in str(refused.value)
    )
    assert share in str(refused.value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside torchrun: the parent checked before
    _check_step_fits(two)
