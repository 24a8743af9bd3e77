"""Shared fixtures: tiny random models of every family, the real MiniLM, and the SST-2 data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers as T
from torch import nn

from tests.helpers import TINY_CONFIGS, minilm_path

# ../shared/data beside the repository (CI lays it there); ADAPTEROPS_SHARED_DATA overrides.
SHARED_DATA = Path(
    os.environ.get(
        "ADAPTEROPS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The real SST-2 data beside the repository (never copied into it)."""
    path = SHARED_DATA / "sst2"
    if not (path / "en" / "train.tsv").is_file():
        pytest.fail(f"SST-2 data not found at {path}; the tests need ../shared/data/sst2")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


@pytest.fixture
def tiny_model() -> Callable[[str, str], nn.Module]:
    """Build a tiny random model: ``tiny_model("gpt2", "causal-lm")``."""

    def build(family: str, head: str) -> nn.Module:
        config = TINY_CONFIGS[family]()
        auto = {
            "classification": T.AutoModelForSequenceClassification,
            "masked-lm": T.AutoModelForMaskedLM,
            "causal-lm": T.AutoModelForCausalLM,
        }[head]
        return auto.from_config(config).eval()

    return build
