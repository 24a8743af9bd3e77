"""Weights the base checkpoint lacks are drawn the same on every load (flows.missing_weights)."""

from __future__ import annotations

import torch

from flows.quickstart import minilm_sst2_spec
from flows.train_job import load_base_model


def test_a_frozen_head_the_checkpoint_lacks_is_the_same_on_every_load(sst2_dir):
    """MiniLM ships no masked-LM transform: two loads draw one, at the initializer range."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=1)
    spec = spec.model_copy(update={"head": spec.head.model_copy(update={"type": "masked-lm"})})
    first, _ = load_base_model(spec)
    second, _ = load_base_model(spec)
    assert first.state_dict().keys() == second.state_dict().keys()
    for key, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, atol=0, rtol=0, msg=key)
    drawn = first.get_parameter("cls.predictions.transform.dense.weight")
    assert 0.015 < float(drawn.detach().std()) < 0.025  # BERT's initializer_range 0.02


def test_a_head_each_adapter_trains_keeps_its_seeded_start(sst2_dir):
    """A new classifier is copied, trained and saved by each adapter: its start still follows
    the run's seed, not a fixed draw."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=1)
    torch.manual_seed(1)
    first, _ = load_base_model(spec)
    torch.manual_seed(2)
    second, _ = load_base_model(spec)
    weights = [m.get_parameter("classifier.weight") for m in (first, second)]
    assert not torch.equal(*weights)
