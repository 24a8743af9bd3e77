"""``adapterops import``: AdapterHub adapters become registry versions, checked on their base."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import peft_core as pc
from registry import BaseModelMismatchError, Registry
from tests.helpers import minilm_path, run_cli

FIXTURES = Path(__file__).parent.parent / "fixtures" / "adapterhub"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
WHERE = ("--base-model", MINILM, "--task", "lm", "--language", "en")

pytestmark = pytest.mark.usefixtures("embedded_home")


def test_an_imported_adapter_is_a_version_that_computes_what_adapters_computed(tmp_path: Path):
    done = run_cli("import", str(FIXTURES / "seq_bn"), "--name", "en-lang", *WHERE, "--json")
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    assert (version["name"], version["version"], version["method"]) == ("en-lang", 1, "pfeiffer")
    stored = Registry().get("en-lang@1")
    assert stored.lineage["imported_from"] == "adapterhub"
    assert stored.lineage["adapterhub_version"] == "adapters.1.3.0"

    # loaded through the registry into a classifier (names saved on the bare body are rebased)
    reference = load_file(str(FIXTURES / "reference.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    Registry().load_into(model.eval(), "en-lang@1")  # the golden probes pass on MiniLM
    with torch.no_grad():
        ids, mask = reference["input_ids"], reference["attention_mask"]
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, reference["seq_bn"], atol=1e-5, rtol=0)

    # a version without a spec is verified on its base model's body
    pulled = run_cli("pull", "en-lang@1", str(tmp_path / "pulled"), "--verify", "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["probe_deviation"] < 1e-4

    # and back out in AdapterHub's layout (a spec-less version: its base model's body)
    out = tmp_path / "hub"
    exported = run_cli("export", "en-lang@1", "--for", "adapterhub", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "pytorch_adapter.bin"]
    body = AutoModel.from_pretrained(minilm_path()).eval()
    pc.load_adapter(body, out)
    with torch.no_grad():
        again = body(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(again, reference["seq_bn"], atol=1e-5, rtol=0)

    # the same architecture with other weights fails the probes recorded at import
    config = AutoConfig.from_pretrained(minilm_path(), num_labels=2)
    stranger = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(BaseModelMismatchError, match="fails its golden probe"):
        Registry().load_into(stranger, "en-lang@1")


def test_folders_of_the_other_kind_are_sent_to_the_right_command(tmp_path: Path):
    pushed = run_cli("push", str(FIXTURES / "seq_bn"), "--name", "x", *WHERE)
    assert pushed.returncode == 2 and pushed.stderr.count("\n") == 1
    assert "is an AdapterHub adapter: register it with `adapterops import" in pushed.stderr
    imported = run_cli("import", str(tmp_path), "--name", "x", *WHERE)
    assert imported.returncode == 2 and imported.stderr.count("\n") == 1
    assert "not an AdapterHub adapter folder" in imported.stderr
    nowhere = run_cli("import", str(tmp_path / "nowhere"), "--name", "x", *WHERE)
    assert nowhere.stderr == (
        f"error: {tmp_path / 'nowhere'} does not exist: give the folder the `adapters` library "
        "saved\n"
    )
    # the identity is checked before the base model loads (was: after, by the registry)
    english = run_cli("import", str(FIXTURES / "seq_bn"), "--name", "x", *WHERE[:4], "--language", "English")  # fmt: skip
    assert english.returncode == 2 and english.stderr.startswith(
        "error: invalid language 'English': a language code"
    )
    assert not (Path(os.environ["ADAPTEROPS_HOME"]) / "registry.db").exists()  # none started


def test_an_adapter_our_modules_cannot_compute_is_refused_and_nothing_is_stored(tmp_path: Path):
    folder = Path(shutil.copytree(FIXTURES / "seq_bn", tmp_path / "gated"))
    saved = json.loads((folder / "adapter_config.json").read_text())
    saved["config"]["use_gating"] = True
    (folder / "adapter_config.json").write_text(json.dumps(saved))
    done = run_cli("import", str(folder), "--name", "gated", *WHERE)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "use_gating=True" in done.stderr
    assert not (Path(os.environ["ADAPTEROPS_HOME"]) / "registry.db").exists()  # none started


def test_a_registry_that_cannot_open_is_told_before_the_base_model_loads(tmp_path: Path):
    """It was told after the conversion (the base model loaded first): here the base named
    does not even exist, and the registry's line still comes first."""
    notes = tmp_path / "notes.db"
    notes.write_text("not a database")
    env = {**os.environ, "ADAPTEROPS_REGISTRY_URL": f"sqlite:///{notes}"}
    where = ("--base-model", "nobody/no-such-model", *WHERE[2:])
    done = run_cli("import", str(FIXTURES / "seq_bn"), "--name", "x", *where, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: sqlite:///{notes} is not a registry database: "), (
        done.stderr
    )
    assert notes.read_text() == "not a database"


def test_an_artifact_store_that_cannot_take_the_files_is_told_before_the_base_model_loads(
    tmp_path: Path,
):
    """An S3 store nothing answers at was found out at the registration, after the conversion;
    the base named here does not exist, and the store's line still comes first, whether the
    registry exists yet or not."""
    from infra.stack import free_port
    from tests.helpers import empty_registry

    home = tmp_path / "home"
    env = {
        **os.environ,
        "ADAPTEROPS_HOME": str(home),
        "ADAPTEROPS_ARTIFACTS_URL": "s3://adapters/x",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_MAX_ATTEMPTS": "1",
    }
    where = ("--base-model", "nobody/no-such-model", *WHERE[2:])
    for registry_exists in (False, True):
        if registry_exists:
            empty_registry(home)
        done = run_cli("import", str(FIXTURES / "seq_bn"), "--name", "x", *where, env=env)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: cannot reach S3 at http://127.0.0.1:"), done.stderr
        assert (home / "registry.db").exists() is registry_exists  # the refusal made none


def test_a_name_bound_to_another_task_is_told_before_the_base_model_loads(tmp_path: Path):
    """It was refused at the registration, after the base model loaded and the adapter was
    converted; the base named here does not even exist, and the name's line comes first."""
    from registry import Registry
    from tests.registry.workers import write_fake_adapter

    home = tmp_path / "home"
    registry = Registry(f"sqlite:///{home / 'registry.db'}", (home / "artifacts").as_uri())
    fake = write_fake_adapter(tmp_path / "fake", 1)
    registry.register(
        fake, name="x", base_model="nobody/no-such-model", task="other", language="en"
    )
    registry.close()
    env = {**os.environ, "ADAPTEROPS_HOME": str(home)}
    where = ("--base-model", "nobody/no-such-model", *WHERE[2:])
    done = run_cli("import", str(FIXTURES / "seq_bn"), "--name", "x", *where, env=env)
    assert (done.returncode, done.stderr) == (2, (
        "error: adapter 'x' is registered for base model 'nobody/no-such-model', task 'other', "
        f"language 'en', method 'lora'; {FIXTURES / 'seq_bn'} is for 'nobody/no-such-model', "
        "'lm', 'en', 'pfeiffer'. Use another adapter name (or, if its versions were pushed "
        "under the wrong ones, remove them all with adapterops rm x@VERSION, and the name takes "
        "the new ones).\n"
    ))  # fmt: skip
