"""Golden probes through the product: a build records them (digest-covered), and ``predict``,
``pull --verify`` and ``Registry.load_into`` refuse a base model folder whose weights were
replaced by another model of the same architecture; ``--skip-probe`` is there for the brave."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import peft_core as pc
from flows.build_job import build_from_spec
from flows.push_job import push_folder
from flows.quickstart import minilm_sst2_spec
from flows.verify_job import verify_on_base
from registry import AdapterFolderError, BaseModelMismatchError, Registry, bundles
from tests.helpers import minilm_path, run_cli


@pytest.fixture
def built_on_a_folder(embedded_home, sst2_dir, tmp_path):
    """A LoRA version built on a base model folder of our own (a copy of MiniLM)."""
    base = tmp_path / "base-model"
    shutil.copytree(minilm_path(), base)
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=3, name="probed-sst2-lora")
    spec = spec.model_copy(
        update={
            "base_model": str(base),
            "data": spec.data.model_copy(update={"max_eval_samples": 16}),
        }
    )
    return build_from_spec(spec, Registry(), tmp_path / "built").ref, base


def replace_weights_with_random_ones(base):
    torch.manual_seed(0)
    impostor = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(base))
    for weights in base.glob("*.safetensors"):
        weights.unlink()
    impostor.save_pretrained(base)


def test_the_wrong_weights_are_refused_everywhere_the_adapter_loads(built_on_a_folder, tmp_path):
    ref, base = built_on_a_folder
    registry = Registry()
    files = {f.name for f in registry.fetch(ref, tmp_path / "fetched").iterdir()}
    assert "probes.json" in files  # recorded at build time, covered by the version's digest
    env = {**os.environ, "COLUMNS": "200"}

    verified = run_cli("pull", ref, str(tmp_path / "pulled"), "--verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr[-2000:]
    document = json.loads(verified.stdout)
    assert document["probe_deviation"] < 1e-4 and document["probe_tolerance"] == 0.05
    assert document["probe_recorded_with"] == document["probe_checked_with"]
    assert document["probe_checked_with"] == "torch.float32 on cpu"
    assert (tmp_path / "pulled" / "probes.json").is_file()
    # into a folder pulled into before, as plain pull does: its files replaced, a note kept
    # (a traceback after the probes: the checked folder was renamed onto a full one)
    (tmp_path / "pulled" / "notes.txt").write_text("mine")
    again = run_cli("pull", ref, str(tmp_path / "pulled"), "--verify", "--json", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {f.name for f in (tmp_path / "pulled").iterdir()} == files | {"notes.txt"}
    before = {f.name: f.read_bytes() for f in (tmp_path / "pulled").iterdir()}
    probed = run_cli("db", "verify", "--probes", "--json", env=env)
    assert probed.returncode == 0, probed.stderr[-2000:]
    assert [(p["ref"], p["status"]) for p in json.loads(probed.stdout)["probes"]] == [
        (ref, "passed")
    ]

    replace_weights_with_random_ones(base)  # same architecture, same fingerprint, other weights

    probed = run_cli("db", "verify", "--probes", env=env)  # the files whole, the outputs not
    assert probed.returncode == 1, probed.stderr[-2000:]
    said = probed.stdout.splitlines()
    assert len(said) == 3 and said[0].endswith(": every file whole")
    assert said[1] == (
        "golden probes of 1 version(s) with whole files, on the base models here: 0 passed, "
        "1 failed, 0 not checked"
    )
    assert said[2].startswith(f"  {ref}: failed: {ref} fails its golden probe ")

    refused = run_cli("predict", ref, "--text", "a fine film", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {ref} fails its golden probe ")
    assert (
        "recorded at registration (band 5%; recorded in torch.float32 on cpu, checked in " in line
    )
    assert "--skip-probe" in line
    brave = run_cli("predict", ref, "--text", "a fine film", "--skip-probe", "--json", env=env)
    assert brave.returncode == 0, brave.stderr[-2000:]

    pulled = run_cli("pull", ref, str(tmp_path / "new" / "pulled-again"), "--verify", env=env)
    assert pulled.returncode == 2 and "fails its golden probe" in pulled.stderr
    assert not (tmp_path / "new").exists()  # nothing handed out unverified, no empty folder
    refused = run_cli("pull", ref, str(tmp_path / "pulled"), "--verify", env=env)
    assert refused.returncode == 2 and "fails its golden probe" in refused.stderr
    assert {f.name: f.read_bytes() for f in (tmp_path / "pulled").iterdir()} == before

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    with pytest.raises(BaseModelMismatchError, match=r"deviate \d+\.\d% from those recorded"):
        registry.load_into(model, ref)
    assert pc.list_adapters(model) == []  # taken out again: the model is as it was
    registry.load_into(model, ref, skip_probe=True)
    assert pc.list_adapters(model) == ["probed-sst2-lora"]


def test_a_version_pushed_without_its_spec_verifies_with_the_head_its_files_carry(
    built_on_a_folder, tmp_path
):
    """``pull --verify`` loaded such a version on the base's body, and a trained classifier
    refuses a model without its head: every such version failed to verify."""
    ref, base = built_on_a_folder
    registry = Registry()
    identity = {"name": "no-spec", "base_model": str(base), "task": "sst2", "language": "en"}
    folder = registry.fetch(ref, tmp_path / "fetched")
    pushed = push_folder(registry, folder, identity=identity, mirror=False).version
    assert not pushed.spec and pushed.head == "classification"
    pulled = registry.fetch(pushed.ref, tmp_path / "pulled")
    check = verify_on_base(pushed, pulled)
    assert check.passed and check.deviation < 1e-4
    replace_weights_with_random_ones(base)
    with pytest.raises(BaseModelMismatchError, match=r"^no-spec@1 fails its golden probe "):
        verify_on_base(pushed, pulled)


def test_a_broken_probes_file_registered_by_older_code_is_one_line(
    built_on_a_folder, tmp_path, monkeypatch
):
    """push reads probes.json now; a version registered before with a broken one was a
    JSONDecodeError's traceback at every load."""
    ref, base = built_on_a_folder
    registry = Registry()
    folder = registry.fetch(ref, tmp_path / "fetched")
    (folder / "probes.json").write_text("{bad")
    identity = {"name": "old-probes", "base_model": str(base), "task": "sst2", "language": "en"}
    with monkeypatch.context() as older_code:
        older_code.setattr(bundles, "_check_contents", lambda folder, tensors: None)
        push_folder(registry, folder, identity=identity, mirror=False)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    with pytest.raises(AdapterFolderError) as refused:
        registry.load_into(model, "old-probes@1")
    assert str(refused.value) == (
        "old-probes@1's probes.json is not a golden-probes file (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)): skip_probe=True "
        "(CLI: --skip-probe) loads it without checking"
    )
    assert pc.list_adapters(model) == []  # taken out again
    registry.load_into(model, "old-probes@1", skip_probe=True)
    assert pc.list_adapters(model) == ["old-probes"]
