"""Renamed public names keep working, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import peft_core as pc
import registry as rg
import registry.errors
from tests.helpers import TINY_CONFIGS


def test_merge_adapters_is_combine_adapters() -> None:
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(TINY_CONFIGS["bert"]())
    pc.add_adapter(model, "a", pc.LoRA(rank=2))
    pc.add_adapter(model, "b", pc.LoRA(rank=2))
    with pytest.deprecated_call(match="use peft_core.combine_adapters"):
        report = pc.merge_adapters(model, {"a": 0.5, "b": 0.5}, name="ab")
    assert isinstance(report, pc.CombineReport) and report.exact
    assert pc.MergeReport is pc.CombineReport
    assert "ab" in pc.list_adapters(model)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("IntegrityError", "CorruptArtifactError"),
        ("BaseModelConflictError", "BaseModelMismatchError"),
    ],
)
def test_old_registry_error_names(old: str, new: str) -> None:
    for module in (rg, registry.errors):
        with pytest.deprecated_call(match=f"use {module.__name__}.{new}"):
            assert getattr(module, old) is getattr(rg, new)
    with pytest.raises(AttributeError, match="has no attribute 'Nonsense'"):
        _ = rg.Nonsense  # type: ignore[attr-defined]


def test_set_progress_is_reporting_progress() -> None:
    from flows import pipelines

    with pytest.deprecated_call(match="reporting_progress"):
        pipelines.set_progress(None)


def test_the_stack_launcher_moved_to_infra() -> None:
    import importlib
    import sys

    import infra.stack

    sys.modules.pop("flows.stack", None)
    with pytest.deprecated_call(match="flows.stack moved to infra.stack"):
        old = importlib.import_module("flows.stack")
    assert old.PostgresServer is infra.stack.PostgresServer
