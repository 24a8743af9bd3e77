"""FSDP2 (``train.sharding: fsdp``): two gloo processes on CPU train exactly what one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.flows.test_pipelines import write_spec

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def run(command: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    env["ADAPTEROPS_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(HERE.parent.parent)
    env["TMPDIR"] = str(tmp_path)  # torchrun's torchelastic_* folders go here, not in /tmp
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-12000:]
    return done


def trained_both_ways(spec: Path, processes: int, tmp_path: Path) -> list[tuple[dict, dict]]:
    """``adapterops train SPEC --json`` under torchrun with FSDP, then with DDP: what rank 0
    reported (the only rank that does) and the adapter tensors it saved, each way."""
    outputs = []
    for sharding in ("fsdp", "ddp"):
        out = tmp_path / f"out-{sharding}"
        command = [
            str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes),
            str(BIN / "adapterops"), "train", str(spec), "--out", str(out), "--json",
            "--set", f"train.sharding={sharding}",
        ]  # fmt: skip
        done = run(command, tmp_path)
        (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
        outputs.append((json.loads(line), load_file(out / "adapter.safetensors")))
    return outputs


def test_two_sharded_processes_train_what_one_process_trains_across_a_crash(tmp_path: Path):
    """The sharded run crashes after step 3 and resumes from its checkpoint (whole tensors
    gathered on save, re-sharded on restore): it still ends where one process does. Each run
    measures a validation loss after every step (each process its share of the rows) and keeps
    the best step's weights, which the crashed run kept in its checkpoint."""
    alone, crashed, sharded = tmp_path / "alone", tmp_path / "crashed", tmp_path / "sharded"
    for folder in (alone, crashed, sharded):
        folder.mkdir()
    worker, checkpoints = str(HERE / "fsdp_worker.py"), str(tmp_path / "checkpoints")
    evaluating = {"FSDP_WORKER_EVALUATE": "1"}
    run([sys.executable, worker, str(alone)], tmp_path, **evaluating)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, worker, str(crashed), checkpoints, "3"], tmp_path, **evaluating)
    assert sorted(p.name for p in crashed.iterdir()) == ["crashed0", "crashed1"]
    saved = torch.load(Path(checkpoints) / "checkpoint.pt", weights_only=False)
    assert (saved["step"], saved["sharded"]) == (3, True)
    assert saved["evaluation"]["best_step"] == 3  # its weights whole, as the adapter's are
    for key, value in saved["evaluation"]["best_weights"].items():
        assert value.shape == saved["weights"][key].shape, key
    run([*torchrun, worker, str(sharded), checkpoints], tmp_path, **evaluating)
    one = torch.load(alone / "rank0.pt")
    ranks = [torch.load(sharded / f"rank{r}.pt") for r in (0, 1)]
    assert [r["resumed_from"] for r in ranks] == [3, 3]
    assert one["sharded"] is False and all(r["sharded"] for r in ranks)
    assert [r["local_rows"] for r in ranks] == [one["local_rows"] // 2] * 2  # half each
    # step 4 measured no lower loss than step 3: the adapter below is step 3's, put back
    # from the parts of the checkpoint's whole tensors each process holds
    assert [step for step, _ in one["evaluations"]] == [1, 2, 3, 4] and one["best_step"] == 3
    for rank in ranks:
        torch.testing.assert_close(rank["losses"], one["losses"], atol=1e-6, rtol=0)
        assert rank["best_step"] == 3
        torch.testing.assert_close(
            torch.tensor(rank["evaluations"]), torch.tensor(one["evaluations"]), atol=1e-5, rtol=0
        )
        assert rank["adapter"].keys() == one["adapter"].keys()
        for key, value in one["adapter"].items():
            torch.testing.assert_close(rank["adapter"][key], value, atol=1e-6, rtol=0)
    trained_b = [v for k, v in one["adapter"].items() if "lora_B" in k]
    assert trained_b and all(float(v.abs().max()) > 0 for v in trained_b)  # it trained


def test_a_lora_started_from_the_weights_holds_its_start_shard_by_shard(tmp_path: Path):
    """PiSSA under FSDP2: each process puts back the rows of the held start it holds after
    every step (a weight decay moves them otherwise); it trains what one process trains."""
    alone, sharded = tmp_path / "alone", tmp_path / "sharded"
    worker = str(HERE / "fsdp_worker.py")
    for folder in (alone, sharded):
        folder.mkdir()
    run([sys.executable, worker, str(alone)], tmp_path, FSDP_WORKER_INIT="pissa")
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, worker, str(sharded)], tmp_path, FSDP_WORKER_INIT="pissa")
    one = torch.load(alone / "rank0.pt")
    ranks = [torch.load(sharded / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["sharded"] for r in ranks)
    for rank in ranks:
        torch.testing.assert_close(rank["losses"], one["losses"], atol=1e-6, rtol=0)
        for key, value in one["adapter"].items():
            torch.testing.assert_close(rank["adapter"][key], value, atol=1e-6, rtol=0)
    for key, trained in ranks[0]["adapter"].items():  # rank 4 in modules of rank 8
        start, held = ranks[0]["initial"][key], (slice(4, 8) if "lora_A" in key else slice(None))
        held_part = trained[held] if "lora_A" in key else trained[:, 4:]
        start_part = start[held] if "lora_A" in key else start[:, 4:]
        assert torch.equal(held_part, start_part), key  # put back exactly, shard by shard
        trained_part = trained[:4] if "lora_A" in key else trained[:, :4]
        assert not torch.equal(trained_part, start[:4] if "lora_A" in key else start[:, :4])


def test_the_cli_trains_with_fsdp_under_torchrun_as_with_ddp(tmp_path: Path, sst2_dir: Path):
    spec = write_spec(tmp_path, sst2_dir, name="sharded", train__max_steps=4)
    (fsdp, fsdp_tensors), (ddp, ddp_tensors) = trained_both_ways(spec, 2, tmp_path)
    assert (fsdp["world_size"], fsdp["sharding"], ddp["sharding"]) == (2, "fsdp", "ddp")
    assert abs(fsdp["final_loss"] - ddp["final_loss"]) < 1e-6
    # FSDP: each process scored half the rows, the confusion matrices added up; DDP: rank 0
    # scored them all
    assert fsdp["metrics"]["accuracy"] == ddp["metrics"]["accuracy"]
    assert fsdp["metrics"]["confusion_matrix"] == ddp["metrics"]["confusion_matrix"]
    assert fsdp["metrics"]["examples"] == ddp["metrics"]["examples"] == 48
    assert fsdp_tensors.keys() == ddp_tensors.keys()
    for key, value in ddp_tensors.items():
        torch.testing.assert_close(fsdp_tensors[key], value, atol=1e-6, rtol=0)
    saved = yaml.safe_load((tmp_path / "out-fsdp" / "report.json").read_text())
    assert saved["sharding"] == "fsdp"
    # evaluated, probed and saved from the shards (no process held the whole base): the same
    # counts, base fingerprint and golden probes as DDP's whole model
    assert [fsdp[k] for k in ("trainable_params", "total_params", "adapter_bytes")] == [
        ddp[k] for k in ("trainable_params", "total_params", "adapter_bytes")
    ]
    files = {s: tmp_path / f"out-{s}" for s in ("fsdp", "ddp")}
    metas = {s: json.loads((f / "adapter.json").read_text()) for s, f in files.items()}
    assert metas["fsdp"]["fingerprint"] == metas["ddp"]["fingerprint"]
    probes = {s: json.loads((f / "probes.json").read_text()) for s, f in files.items()}
    assert probes["fsdp"]["input_ids"] == probes["ddp"]["input_ids"]
    torch.testing.assert_close(
        torch.tensor(probes["fsdp"]["signature"]),
        torch.tensor(probes["ddp"]["signature"]),
        atol=1e-5,
        rtol=1e-4,
    )


def test_qlora_shards_too_and_trains_what_ddp_trains(tmp_path: Path, sst2_dir: Path):
    """An NF4 base under FSDP2: three processes share each of MiniLM's 9-block NF4 weights
    (two could not: tests/flows/test_planning.py) and train what DDP trains on the same rows."""
    spec = write_spec(
        tmp_path, sst2_dir, name="qlora", train__max_steps=3,
        load={"dtype": "bf16", "quantization": "nf4"},
    )  # fmt: skip
    (fsdp, fsdp_tensors), (ddp, ddp_tensors) = trained_both_ways(spec, 3, tmp_path)
    assert (fsdp["world_size"], fsdp["sharding"]) == (3, "fsdp")
    # gradients reduced in another order (reduce-scatter vs all-reduce) on a bf16 base: 5e-5 of
    # the loss here, and the same predictions
    assert abs(fsdp["final_loss"] - ddp["final_loss"]) < 2e-4
    # FSDP: each process scored half the rows, the confusion matrices added up; DDP: rank 0
    # scored them all
    assert fsdp["metrics"]["accuracy"] == ddp["metrics"]["accuracy"]
    assert fsdp["metrics"]["confusion_matrix"] == ddp["metrics"]["confusion_matrix"]
    assert fsdp["metrics"]["examples"] == ddp["metrics"]["examples"] == 48
    # the golden probes say they ran on NF4 weights, sharded too (a later check on the bf16
    # weights they came from widens its band for that alone)
    recorded = [json.loads((tmp_path / f"out-{way}" / "probes.json").read_text()) for way in ("fsdp", "ddp")]  # fmt: skip
    assert [probes["quantization"] for probes in recorded] == ["nf4", "nf4"]
    assert fsdp_tensors.keys() == ddp_tensors.keys()
    for key, value in ddp_tensors.items():
        assert value.dtype == torch.bfloat16  # saved in the base's compute dtype
        if "lora_A" in key:  # A starts random at 0.05: it moved the same way (1.4% of it)
            torch.testing.assert_close(fsdp_tensors[key], value, atol=1.5e-3, rtol=0)
        else:  # B starts at zero, and Adam's first steps move each element by about the
            # learning rate whatever its gradient's size: where a near-zero gradient's sign
            # differs between the two reduction orders, so does the element
            assert float(fsdp_tensors[key].abs().max()) > 0 and float(value.abs().max()) > 0


def test_a_sharded_qlora_on_a_llama_records_its_probes_as_run_on_nf4_weights(tmp_path: Path):
    """Under FSDP2 each block's weights are DTensors over NF4 shards: the golden probes said
    ``quantization: none`` (MiniLM's unsharded pooler hid it), so a check on the NF4 base later
    took them for another quantisation and widened its band to 50%."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.helpers import minilm_path

    base = tmp_path / "llama"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip  # each weight 4 or 8 NF4 blocks of 64 x 256: two processes split them
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(8)))  # fmt: skip
    spec = tmp_path / "qlora.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "llama-qlora", "base_model": str(base), "task": "t", "language": "en",
        "head": {"type": "causal-lm"}, "method": {"type": "lora", "rank": 8},
        "data": {"train": str(rows), "validation": str(rows), "prompt": "prompt", "response": "response"},
        "load": {"dtype": "bf16", "quantization": "nf4"},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 32, "sharding": "fsdp"},
    }))  # fmt: skip
    out = tmp_path / "out"
    command = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
        str(BIN / "adapterops"), "train", str(spec), "--out", str(out), "--json",
    ]  # fmt: skip
    done = run(command, tmp_path)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert (json.loads(line)["world_size"], json.loads(line)["sharding"]) == (2, "fsdp")
    assert json.loads((out / "probes.json").read_text())["quantization"] == "nf4"
