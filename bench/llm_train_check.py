"""``adapterops train`` on a 1B-class Llama-shaped base, as a user runs it on a GPU.

    python -m bench.llm_train_check           # on a CUDA GPU: TinyLlama-1.1B's body shapes
    python -m bench.llm_train_check --quick   # tiny shapes (any device; CI runs it on a CPU)

A check more than a benchmark: the spec of ``examples/llm`` (bf16 base, float32 LoRA on every
linear layer, chat data) trained through the real command in a fresh process, twice: on the bf16
base, and on the base stored in NF4 with gradient checkpointing and packed batches. The base
has random weights and a word-level tokenizer made here, with a chat template; the data are
arithmetic questions whose answers the adapter must learn. Each run's report (steps, loss,
perplexity, seconds) and the dtypes of the adapter file it wrote go to ``llm_train.json``.

Needs only peft_core, the flows' training code and what they import (pydantic, datasets, typer,
rich): no registry, MLflow or Prefect, so it runs on the lent GPU machine with a few wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bench.common import gpu_benchmark_options, write_result

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (  # like real templates, an assistant turn ends with the end-of-sequence token
    "{% for m in messages %}[ {{ m['role'] }} ] {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}[ assistant ] {% endif %}"
)
# TinyLlama-1.1B's body (22 blocks of 2048 wide, grouped-query attention), a word-level vocabulary
FULL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4}  # fmt: skip
QUICK = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip  # NF4-sized blocks
VARIANTS = {
    "bf16 base, float32 LoRA": {"load": {"dtype": "bf16"}},
    "NF4 base (QLoRA), checkpointing, packing": {
        "load": {"dtype": "bf16", "quantization": "nf4"},
        "train": {"gradient_checkpointing": True, "packing": True},
    },
}


def conversations() -> list[dict[str, Any]]:
    """Every sum of two numbers up to 20, as a user question and the assistant's answer."""
    return [
        {"conversation": [
            {"role": "user", "content": f"what is {a} plus {b} ?"},
            {"role": "assistant", "content": str(a + b)},
        ]}
        for a in range(21) for b in range(21)
    ]  # fmt: skip


def write_base(folder: Path, shape: dict[str, int], device: torch.device) -> int:
    """A random-weight bf16 Llama and its tokenizer, saved as a user's base model would be."""
    words = ["what", "is", "plus", "?", "[", "]", "user", "assistant", "system"]
    words += [str(n) for n in range(41)]
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        **shape, vocab_size=len(vocab), max_position_embeddings=512, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it is fast, written in bf16
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    return parameters


def write_spec(folder: Path, base: Path, data: Path, name: str, extra: dict[str, Any]) -> Path:
    """The example's recipe with this run's base, data and switches."""
    spec = yaml.safe_load((ROOT / "examples" / "llm" / "llama-3.2-1b-chat-qlora.yaml").read_text())
    spec.update(name=name, base_model=str(base))
    spec["data"] = {"train": str(data / "train.jsonl"), "validation": str(data / "valid.jsonl"),
                    "messages": "conversation"}  # fmt: skip
    spec["train"] = {"max_steps": 20, "batch_size": 8, "learning_rate": 2e-3, "max_length": 64,
                     "checkpoint_every": 1000, **extra.get("train", {})}  # fmt: skip
    spec["load"] = extra["load"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train_through_the_cli(spec: Path, out: Path, home: Path) -> dict[str, Any]:
    """``adapterops train SPEC --json`` in a fresh process; its report, or its error."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "ADAPTEROPS_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    command = [sys.executable, "-c", "from flows.cli import main; main()",
               "train", str(spec), "--out", str(out), "--json"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"ok": False, "exit_code": done.returncode, "seconds": seconds,
                "error": (done.stderr or done.stdout)[-2000:]}  # fmt: skip
    report = json.loads(done.stdout)
    with safe_open(out / "adapter.safetensors", framework="pt") as tensors:
        dtypes = sorted({str(tensors.get_slice(k).get_dtype()) for k in tensors.keys()})  # noqa: SIM118
    keep = ("steps", "final_loss", "train_seconds", "median_step_seconds", "trainable_params",
            "total_params", "metrics")  # fmt: skip
    return {"ok": True, "seconds": seconds, "file_dtypes": dtypes,
            **{k: report[k] for k in keep}}  # fmt: skip


def main() -> None:
    device, quick = gpu_benchmark_options(__doc__.split("\n")[0], "1.1B")
    shape = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        base, data = work / "base", work / "data"
        data.mkdir()
        parameters = write_base(base, shape, device)
        examples = conversations()
        (data / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        (data / "valid.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[::20]))
        print(f"base: {parameters:,} parameters ({device.type})", flush=True)
        for index, (variant, extra) in enumerate(VARIANTS.items()):
            spec = write_spec(work, base, data, f"llm-check-{index}", extra)
            row = {"variant": variant, **train_through_the_cli(spec, work / f"out{index}", work)}
            rows.append(row)
            loss = f"final loss {row['final_loss']:.3f}" if row["ok"] else row["error"][-300:]
            print(f"{variant}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']:.0f} s; {loss}")
    name = "llm_train_smoke" if quick else "llm_train"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    path = write_result(
        name, {"device": device_name, "quick": quick, "shape": shape, "parameters": parameters,
               "rows": rows},
    )  # fmt: skip
    print(f"wrote {path}")
    if not all(row["ok"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
