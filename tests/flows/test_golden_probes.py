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
from flows import verify_job
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


def test_db_verify_probes_loads_each_base_model_once_and_says_each_versions_outcome(
    embedded_home, tmp_path, monkeypatch
):
    """Versions on one base model share one load of it (it loaded once per version: a 7B
    base in NF4 is quantised again at each load); a version without probes is "not checked"
    before any base loads for it; a base replaced by one of another shape fails its versions
    and the others are still checked (peft_core's refusal of the fingerprint ended the command,
    with no report)."""
    from bench.probes_bench import llama_base, register_lora_versions

    registry = Registry()
    first = llama_base(tmp_path / "first", layers=1, width=64)
    second = llama_base(tmp_path / "second", layers=1, width=64)
    third = llama_base(tmp_path / "third", layers=1, width=64)
    refs = register_lora_versions(registry, first, ["a", "b"], tmp_path / "folders")
    refs += register_lora_versions(registry, second, ["c"], tmp_path / "folders")
    refs += register_lora_versions(
        registry, third, ["no-probes"], tmp_path / "folders", probes=False
    )
    refs.insert(1, refs.pop(2))  # a, c, b: a group's versions need not be given together
    loaded = []
    real_load = verify_job.load_inference_model

    def counting_load(spec):
        loaded.append(spec.base_model)
        return real_load(spec)

    monkeypatch.setattr(verify_job, "load_inference_model", counting_load)
    outcomes = verify_job.probe_versions(registry, refs)
    assert [(o.ref, o.status) for o in outcomes] == [
        ("a@1", "passed"), ("c@1", "passed"), ("b@1", "passed"), ("no-probes@1", "not checked"),
    ]  # fmt: skip
    assert loaded == [str(first), str(second)]
    assert outcomes[3].detail.startswith("no-probes@1 has no golden probes (registered before")

    for base in (first, second):
        shutil.rmtree(base)
    llama_base(first, layers=1, width=64, seed=1)  # the same shape, other weights
    llama_base(second, layers=1, width=96)  # another shape: another fingerprint
    probed = run_cli("db", "verify", "--probes", "--json", *refs[:3], env=os.environ.copy())
    assert probed.returncode == 1, probed.stderr[-2000:]
    said = {p["ref"]: (p["status"], p["detail"]) for p in json.loads(probed.stdout)["probes"]}
    assert {ref: status for ref, (status, _) in said.items()} == {
        "a@1": "failed", "b@1": "failed", "c@1": "failed",
    }  # fmt: skip
    assert said["a@1"][1].startswith("a@1 fails its golden probe ")
    assert "fingerprint" in said["c@1"][1] and str(second) in said["c@1"][1]


def test_db_verify_probes_reads_each_file_once_and_names_a_damaged_version_without_probing_it(
    embedded_home, tmp_path, monkeypatch
):
    """``db verify --probes`` downloaded every version twice: the digest check read every file
    back, then the probes downloaded each version again (gigabytes twice for a full
    fine-tune). The probes go first now, and a download checks every digest on the way: the
    digest check reads only what they did not download whole. A version whose file is damaged
    is left to the digest check, which names the file; it is not probed."""
    import hashlib
    from collections import Counter

    from bench.probes_bench import llama_base, register_lora_versions
    from registry.artifacts.local import LocalStore
    from tests.helpers import store_from_outside

    registry = Registry()
    base = llama_base(tmp_path / "base", layers=1, width=64)
    refs = register_lora_versions(registry, base, ["a", "b", "c"], tmp_path / "folders")
    files = {  # each version's files: (name, digest)
        ref: [
            (name, digest)
            for name, digest, _ in bundles.Manifest.from_bytes(
                registry.artifacts.read_bytes(registry.get(ref).digest)
            ).files
        ]
        for ref in refs
    }  # fmt: skip
    tensors = dict(files["c@1"])["adapter.safetensors"]
    damaged = bytearray(registry.artifacts.read_bytes(tensors))
    damaged[-1] ^= 0xFF  # same size: only a digest finds it
    store_from_outside(registry, tensors, bytes(damaged), tmp_path)
    assert hashlib.sha256(damaged).hexdigest() != tensors

    reads: list[str] = []
    real_get = LocalStore.get_file
    monkeypatch.setattr(
        LocalStore, "get_file", lambda self, key, *a, **k: reads.append(key) or real_get(self, key, *a, **k)
    )  # fmt: skip
    whole: set[str] = set()
    outcomes = verify_job.probe_versions(registry, refs, whole=whole)
    assert [(o.ref, o.status) for o in outcomes] == [("a@1", "passed"), ("b@1", "passed")]
    assert whole == {"a@1", "b@1"}
    probed = Counter(reads)
    reads.clear()
    report = registry.verify(refs, known_whole=whole)
    assert [(d.versions, d.file, d.problem) for d in report.damaged] == [
        (("c@1",), "adapter.safetensors", "corrupted")
    ]
    assert report.whole == ("a@1", "b@1") and report.files == len(
        {d for f in files.values() for _, d in f}
    )
    of_whole = {digest for ref in ("a@1", "b@1") for _, digest in files[ref]}
    assert set(reads) == {digest for _, digest in files["c@1"]} - of_whole  # c's alone, again
    assert all(probed[digest] >= 1 for digest in of_whole)  # read by the probes' downloads
    reads.clear()
    registry.verify(refs)  # without known_whole: every file (what db verify alone reads)
    assert set(reads) == {digest for f in files.values() for _, digest in f}

    # the command: a and b probed, c named by the digest check, exit 1
    env = {**os.environ, "COLUMNS": "200"}
    result = run_cli("db", "verify", "--probes", "--json", env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert [(p["ref"], p["status"]) for p in document["probes"]] == [
        ("a@1", "passed"), ("b@1", "passed"),
    ]  # fmt: skip
    assert [(d["versions"], d["file"]) for d in document["damaged"]] == [
        (["c@1"], "adapter.safetensors")
    ]
    text = run_cli("db", "verify", "--probes", env=env)
    assert text.returncode == 1, text.stderr[-2000:]
    lines = text.stdout.splitlines()
    assert lines[1].startswith("  adapter.safetensors of c@1: corrupted (sha256 ")
    assert lines[-3] == (
        "golden probes of 2 version(s) with whole files, on the base models here: 2 passed, "
        "0 failed, 0 not checked"
    )
