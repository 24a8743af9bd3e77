"""`adapterops db verify --probes`: one load of a base model shared by its versions, against one
load per version (what it did before).

    python -m bench.probes_bench [--quick]

An embedded registry (SQLite, a local folder) holds N LoRA versions on one Llama-shaped base
model with random weights saved to a folder (as a user's local base is), each version with its
spec and its golden probes. ``flows.verify_job.probe_versions`` loads the base once and each
version beside it in turn; the other way fetches each version and loads the base for it
(``verify_on_base``). Every version must pass either way; rounds alternate the order; medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers as T

import peft_core as pc
from bench.common import write_result
from flows.models import resolve_base_model
from flows.spec import parse_spec
from flows.train_job import load_inference_model
from flows.verify_job import probe_versions, verify_on_base
from registry import Registry

LORA_TARGETS = ("q", "v")


def llama_base(folder: Path, *, layers: int, width: int, seed: int = 0) -> Path:
    """A Llama-shaped model with random weights (from ``seed``) and MiniLM's tokenizer, saved
    in ``folder``: what loads for each version is these weights from disk."""
    tokenizer = T.AutoTokenizer.from_pretrained(
        resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
    )
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        hidden_size=width, intermediate_size=width * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 64),
        vocab_size=len(tokenizer), max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # fmt: skip
    T.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lm_spec(
    name: str, base: Path, load: dict[str, str], data: dict[str, str] | None = None
) -> dict[str, Any]:
    """The spec a causal-LM LoRA on ``base`` is registered with, the base loaded with ``load``
    (``{"quantization": "nf4"}``: QLoRA), reading ``data`` (default: texts in ``sentence``);
    its data is never read."""
    return {
        "name": name, "base_model": str(base), "task": "lm", "language": "en",
        "head": {"type": "causal-lm"}, "load": load,
        "method": {"type": "lora", "rank": 8, "targets": list(LORA_TARGETS)},
        "data": data or {"train": "train.tsv", "text": "sentence"},
    }  # fmt: skip


def register_lora_versions(
    registry: Registry,
    base: Path,
    names: list[str],
    work: Path,
    *,
    load: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
    probes: bool = True,
) -> list[str]:
    """Register a LoRA on ``base`` (loaded with ``load``, as a build would) under each of
    ``names``, each with its spec (reading ``data``) and (``probes``) its golden probes, with
    random non-zero weights (a fresh LoRA changes no output)."""
    load = load or {}
    model, _ = load_inference_model(parse_spec(lm_spec("loader", base, load)))
    refs = []
    for number, name in enumerate(names):
        pc.add_adapter(model, name, pc.LoRA(rank=8, targets=LORA_TARGETS))
        generator = torch.Generator().manual_seed(number)
        with torch.no_grad():
            for tensor in pc.adapter_state_dict(model, name).values():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
        folder = work / name
        pc.save_adapter(model, name, folder)
        if probes:
            pc.record_probes(model, name, folder)
        pc.delete_adapter(model, name)
        version = registry.register(
            folder, name=name, base_model=str(base), task="lm", language="en",
            spec=lm_spec(name, base, load, data),
        )  # fmt: skip
        shutil.rmtree(folder)
        refs.append(version.ref)
    return refs


def one_load_per_version(registry: Registry, refs: list[str], work: Path) -> None:
    """What ``db verify --probes`` did before: each version fetched and its base loaded for it."""
    for ref in refs:
        folder = registry.fetch(ref, work / ref)
        check = verify_on_base(registry.get(ref), folder)  # raises when the probes fail
        assert check.passed, f"{ref}: its probes failed on its own base"
        shutil.rmtree(folder)


def probe_timings(
    work: Path, *, versions: int, layers: int, width: int, rounds: int, load: dict[str, str]
) -> dict[str, Any]:
    """Seconds to re-run the probes of ``versions`` LoRA versions on one saved base, loaded
    with ``load`` (medians of ``rounds``): the base loaded once for all of them, and once per
    version."""
    base = llama_base(work / "base", layers=layers, width=width)
    base_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    registry = Registry(f"sqlite:///{work / 'registry.db'}", (work / "artifacts").as_uri())
    names = [f"lm-adapter-{number}" for number in range(versions)]
    refs = register_lora_versions(registry, base, names, work / "folders", load=load)
    seconds: dict[str, list[float]] = {"shared": [], "per_version": []}
    for round_ in range(rounds):
        ways = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
        for way in ways:
            started = time.perf_counter()
            if way == "shared":
                outcomes = probe_versions(registry, refs)
                assert [o.status for o in outcomes] == ["passed"] * versions, outcomes
            else:
                one_load_per_version(registry, refs, work / "fetched")
            seconds[way].append(time.perf_counter() - started)
    registry.close()
    shared, per_version = (statistics.median(seconds[k]) for k in ("shared", "per_version"))
    params = sum(p.numel() for p in T.AutoModelForCausalLM.from_pretrained(base).parameters())
    return {
        "versions": versions, "layers": layers, "width": width, "load": load, "base_params": params,
        "base_megabytes": base_bytes / 2**20, "rounds": rounds, "shared_s": shared,
        "per_version_s": per_version, "speedup": per_version / shared,
    }  # fmt: skip


# As saved (float32: transformers maps the file, a load is cheap) and quantised to NF4 as it
# loads (QLoRA: every load quantises every weight again).
LOADS: list[dict[str, str]] = [{}, {"quantization": "nf4"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller base, fewer versions")
    args = parser.parse_args()
    shapes = {"versions": 4, "layers": 2, "width": 128, "rounds": 2}
    if not args.quick:
        shapes = {"versions": 8, "layers": 8, "width": 1024, "rounds": 3}
    rows = []
    for load in LOADS:
        with tempfile.TemporaryDirectory(prefix="adapterops-probes-bench-") as work:
            row = probe_timings(Path(work), load=load, **shapes)
        print(
            f"golden probes of {row['versions']} versions on a {row['base_params'] / 1e6:.0f}M-"
            f"weight base ({row['base_megabytes']:.0f} MB), load {row['load'] or 'as saved'}: "
            f"base loaded once {row['shared_s']:.2f} s, once per version "
            f"{row['per_version_s']:.2f} s ({row['speedup']:.1f}x)",
            flush=True,
        )
        rows.append(row)
    print(f"wrote {write_result('probes', {'quick': args.quick, 'rows': rows})}")


if __name__ == "__main__":
    main()
