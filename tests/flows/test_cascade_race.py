"""Two cascades of one saved stack at once (two of its members got new champions): the second
gate waits for the first and scores the version it saved, so the stack ends over both new
champions instead of the later cascade's candidate dropping the earlier one's; an alias moved by
hand waits for a cascade scoring the stack, and says so."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import peft_core as pc
from flows.cascade import gate_stack
from flows.quickstart import minilm_sst2_spec
from flows.stale import find_stale
from registry import Registry
from tests.helpers import (
    held_in_another_thread,
    home_with_fake_adapters,
    minilm_path,
    wait_until,
)


def register_lora(registry: Registry, folder: Path, name: str, seed: int) -> None:
    """A LoRA whose outputs are the base's (B is zero) over one shared head, so every stack of
    them scores alike and the gate (ties go to the candidate) passes each candidate."""
    torch.manual_seed(0)  # the same classifier head in every version
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    torch.manual_seed(seed)  # distinct bytes: A is drawn at random
    pc.add_adapter(model, name, pc.LoRA(rank=2))
    pc.save_adapter(model, name, folder)
    registry.register(folder, name=name, base_model=str(minilm_path()), task="sst2", language="en")


def test_the_second_cascade_of_a_stack_scores_what_the_first_saved(
    embedded_home: Path, sst2_dir: Path, tmp_path: Path
):
    registry = Registry()
    for seed, name in enumerate(("lang", "lang", "task", "task")):
        register_lora(registry, tmp_path / f"{name}-{seed}", name, seed)
    validation = tmp_path / "validation.tsv"
    lines = (sst2_dir / "en" / "validation.tsv").read_text().splitlines()[:33]
    validation.write_text("\n".join(lines) + "\n")
    scored_on = minilm_sst2_spec("lora", sst2_dir / "en", steps=4).model_dump(mode="json")
    scored_on["data"]["validation"] = str(validation)
    registry.register_composition(
        "madx", {"type": "stack"}, ["lang@1", "task@1"], evaluation=scored_on
    )
    registry.set_composition_alias("madx@1", "champion")
    lang_champion = registry.set_alias("lang@2", "champion")
    task_champion = registry.set_alias("task@2", "champion")
    # both cascades list the stack before either saves anything
    (_, [lang_item]), (_, [task_item]) = find_stale(registry, "lang"), find_stale(registry, "task")
    assert (lang_item.ref, task_item.ref) == ("stack:madx@1", "stack:madx@1")
    assert task_item.candidate_members == ["lang@1", "task@2"]

    holding, release = threading.Event(), threading.Event()

    def lang_cascade_saving() -> None:  # the first gate, holding the stack's lock as it saves
        other = Registry()
        with other.composition_alias_lock("madx"):
            holding.set()
            release.wait(60)
            other.register_composition(
                "madx", {"type": "stack"}, ["lang@2", "task@1"], evaluation=scored_on
            )
            other.set_composition_alias("madx@2", "champion")
        other.close()

    first = threading.Thread(target=lang_cascade_saving)
    first.start()
    assert holding.wait(30)
    outcomes: list = []
    second = threading.Thread(
        target=lambda: outcomes.append(gate_stack(registry, task_item, task_champion))
    )
    second.start()
    time.sleep(2)  # without the lock, the second gate has read madx@1 by now
    release.set()
    first.join(60)
    second.join(300)

    [task_outcome] = outcomes
    assert (task_outcome.composition, task_outcome.status) == ("stack:madx@2", "promoted")
    assert task_outcome.members == ["lang@2", "task@2"]
    assert task_outcome.candidate == "stack:madx@3"
    newest = registry.composition("madx@champion")
    assert (newest.version, newest.members) == (3, ("lang@2", "task@2"))
    # the first cascade's own listing is now behind: nothing left to score for lang
    late = gate_stack(registry, lang_item, lang_champion)
    assert (late.composition, late.status) == ("stack:madx@1", "not evaluated")
    assert late.reason == (
        "its newest version, stack:madx@3, is over lang@2 already (since stack:madx@1 was listed)"
    )
    assert [v.version for v in registry.composition_versions("madx")] == [1, 2, 3]


def test_a_composition_alias_moved_by_hand_waits_for_the_cascade_scoring_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Else a cascade that read the champion before the move would move it after, undoing it
    unweighed; the command says why it waits."""
    env = home_with_fake_adapters(tmp_path, monkeypatch, ("lang", "task"))
    registry = Registry()
    registry.register_composition("madx", {"type": "stack"}, ["lang", "task"])
    adapterops = Path(sys.executable).parent / "adapterops"
    said = tmp_path / "alias.err"
    with held_in_another_thread(lambda: Registry().composition_alias_lock("madx")):  # a cascade
        moving = subprocess.Popen(
            [str(adapterops), "composition", "alias", "madx@1", "champion", "--json"],
            stdout=subprocess.PIPE, stderr=said.open("w"), text=True, env=env,
        )  # fmt: skip
        wait_until(lambda: said.read_text() != "", "the command to say it waits")
        time.sleep(2)  # waiting still: it finishes in ~6 s unhindered
        assert moving.poll() is None
        assert registry.composition("madx@1").aliases == ()
    out, _ = moving.communicate(timeout=120)
    assert moving.returncode == 0, said.read_text()
    assert json.loads(out)["aliases"] == ["champion"]
    assert (
        said.read_text()
        == "note: a cascade is scoring composition madx; waiting for it to finish\n"
    )
    registry.close()
