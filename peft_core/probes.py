"""Golden probes: does this base model, with this adapter, still compute what it did in training?

The base-model fingerprint is structural (types, shapes, configuration): a randomly initialised
model of the same architecture passes it, and so does another checkpoint of the same family. An
adapter loaded onto the wrong weights then gives wrong outputs without a word. Probes close the
gap: when the adapter is saved, the model runs a few fixed inputs (token ids from a seeded
generator) and the adapter keeps a small signature of its body's last hidden states (projected to
a few dimensions by a seeded random matrix). Loading re-runs them; outputs that leave the
recorded band mean other weights.

The signature reads the body, not the head, so a language adapter trained under a masked-LM head
checks the same inside a classifier.

A QLoRA's probes are recorded on its 4-bit base, and it loads onto the unquantised base too
(serving engines do that): there the quantisation error alone moves them 20-30% (MiniLM, a tiny
Llama), beyond the band, and a zero adapter was refused as "not the weights it was trained on".
The probes record how the weights were stored; checked on weights stored otherwise they get the
band :data:`ACROSS_QUANTIZATION` (other weights still move them about 100%), and the message
says both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import PeftCoreError
from .inject import set_active
from .offload import input_device
from .quantize import quantization_of

__all__ = [
    "ACROSS_QUANTIZATION",
    "PROBES_FILE",
    "ProbeCheck",
    "ProbeMismatchError",
    "UnreadableProbesError",
    "check_probes",
    "probe_document",
    "record_probes",
    "write_probes",
]

PROBES_FILE = "probes.json"
PROBES = 4  # inputs
LENGTH = 16  # tokens each
DIMENSIONS = 8  # of the projected signature, per token
# Relative deviation allowed: fp32 on CPU against bf16 on a GPU differs by ~1e-2; other weights
# (a random model of the same architecture) by ~1.
TOLERANCE = 0.05
# Recorded on NF4 or int8 weights, checked on the weights they were quantised from (or the
# other way round): NF4's rounding moved MiniLM's signature 28%, a random tiny Llama's 20%.
ACROSS_QUANTIZATION = 0.5


class ProbeMismatchError(PeftCoreError):
    """The model with the adapter no longer computes what it computed when the adapter was saved."""


class UnreadableProbesError(ProbeMismatchError):
    """A ``probes.json`` that is not a golden-probes file; ``problem`` says what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(
            f"{path} is not a golden-probes file ({problem}): record them again "
            "(pc.record_probes on the model they were trained on), or delete the file to load "
            "without checking"
        )


@dataclass(frozen=True)
class ProbeCheck:
    """The outcome of re-running the probes: worst probe, its deviation, the band, the cost."""

    worst_probe: int
    deviation: float  # relative: |now - recorded| / |recorded| of the worst probe
    tolerance: float
    seconds: float
    recorded_with: str = "unknown precision"  # "torch.bfloat16 on cuda" (files before: unknown)
    checked_with: str = ""

    @property
    def precisions(self) -> str:
        """Where each side ran, for a message: a deviation near the band between a bf16 GPU and
        a float32 CPU reads differently from one between two float32 runs."""
        return f"recorded in {self.recorded_with}, checked in {self.checked_with}"

    @property
    def passed(self) -> bool:
        """Whether every probe stayed within the band."""
        return self.deviation <= self.tolerance


def record_probes(model: nn.Module, name: str, folder: str | Path) -> Path:
    """Run the probes through ``model`` with adapter ``name`` active; write ``probes.json``."""
    return write_probes(probe_document(model, name), folder)


def probe_document(model: nn.Module, name: str) -> dict[str, Any]:
    """What :func:`record_probes` writes, without writing it: the probes run through ``model``
    with adapter ``name`` active. Under FSDP every process runs them (each forward is a
    collective) and one writes them."""
    inputs = _inputs(model)
    signature, precision = _signature(model, name, inputs)
    return {
        "format": 1,
        "input_ids": inputs.tolist(),
        "signature": signature.tolist(),
        "tolerance": TOLERANCE,
        "recorded_with": precision,
        "quantization": quantization_of(model),
    }


def write_probes(document: dict[str, Any], folder: str | Path) -> Path:
    """``probes.json`` in ``folder`` from :func:`probe_document`'s ``document``."""
    path = Path(folder) / PROBES_FILE
    path.write_text(json.dumps(document) + "\n")
    return path


def check_probes(model: nn.Module, name: str, folder: str | Path) -> ProbeCheck | None:
    """Re-run the recorded probes (None when the folder has none). Does not raise: the caller
    decides, since it knows which version it is loading."""
    path = Path(folder) / PROBES_FILE
    if not path.is_file():
        return None
    try:  # a file edited or cut short by hand was a JSONDecodeError's or KeyError's traceback
        document = json.loads(path.read_text())
        inputs = torch.tensor(document["input_ids"], dtype=torch.long)
        recorded = torch.tensor(document["signature"], dtype=torch.float32)
        tolerance = float(document["tolerance"])
        recorded_on = document.get("quantization")  # None: written before it was recorded
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UnreadableProbesError(path, f"{type(exc).__name__}: {exc}") from None
    started = time.perf_counter()
    now, precision = _signature(model, name, inputs)
    if now.shape != recorded.shape:
        raise ProbeMismatchError(f"{path}: signature of shape {tuple(recorded.shape)} expected")
    deviations = [
        float((a - b).norm() / b.norm().clamp_min(1e-12))
        for a, b in zip(now, recorded, strict=True)
    ]
    worst = max(range(len(deviations)), key=deviations.__getitem__)
    seconds = time.perf_counter() - started
    recorded_with = _with_weights(document.get("recorded_with", "unknown precision"), recorded_on)
    checked_on = quantization_of(model)
    if recorded_on is not None and checked_on != recorded_on:  # its error alone moves them
        tolerance = max(tolerance, ACROSS_QUANTIZATION)
    checked_with = _with_weights(precision, checked_on)
    return ProbeCheck(worst, deviations[worst], tolerance, seconds, recorded_with, checked_with)


def _with_weights(precision: str, quantization: str | None) -> str:
    """``torch.bfloat16 on cuda``, and ``, NF4 weights`` where they were quantised."""
    if quantization in (None, "none"):
        return precision
    return f"{precision}, {str(quantization).upper()} weights"


def _inputs(model: nn.Module) -> Tensor:
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 2:
        raise ProbeMismatchError("the model's config has no vocab_size: probes need token ids")
    generator = torch.Generator().manual_seed(0)
    low = min(100, vocab // 2)  # past the special tokens most vocabularies start with
    return torch.randint(low, vocab, (PROBES, LENGTH), generator=generator)


@torch.no_grad()
def _signature(model: nn.Module, name: str, inputs: Tensor) -> tuple[Tensor, str]:
    """``(probes, tokens x DIMENSIONS)``: the last hidden states, projected; and the precision
    and device they were computed in (``"torch.bfloat16 on cuda"``)."""
    set_active(model, name)
    was_training = model.training
    model.eval()
    try:
        device = input_device(model)  # (an offloaded first layer's weights wait on meta)
        ids = inputs.to(device)
        output: Any = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
        )
    finally:
        model.train(was_training)
    last = output.hidden_states[-1]
    hidden = last.float().cpu()  # (probes, tokens, width)
    generator = torch.Generator().manual_seed(1)
    width = hidden.shape[-1]
    projection = torch.randn(width, DIMENSIONS, generator=generator) / width**0.5
    return (hidden @ projection).reshape(hidden.shape[0], -1), f"{last.dtype} on {device.type}"
