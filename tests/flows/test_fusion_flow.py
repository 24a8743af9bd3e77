"""AdapterFusion through the flows: members come from the registry by exact version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peft_core as pc
from flows import pipelines
from flows.data import load_split
from flows.errors import DataError
from flows.planning import plan_spec
from flows.predict_job import predict
from flows.prepare_job import check_inputs
from flows.push_job import push_folder
from flows.spec import load_plan_spec, load_spec
from flows.train_job import load_inference_model
from registry import AdapterFolderError, NotFoundError, Registry
from tests.flows.test_pipelines import write_spec

pytestmark = pytest.mark.usefixtures("prefect_server", "embedded_home")


def test_a_fusion_of_registered_adapters_builds_and_predicts(tmp_path: Path, sst2_dir: Path):
    for language in ("en", "pt"):
        member = write_spec(
            tmp_path, sst2_dir, name=f"member-{language}",
            method={"type": "pfeiffer", "reduction_factor": 32},
            data__train=str(sst2_dir / language / "train.tsv"),
        )  # fmt: skip
        pipelines.build(str(member), output=str(tmp_path / f"out-{language}"))
    fusion = write_spec(
        tmp_path, sst2_dir, name="fused",
        method={"type": "fusion", "members": ["member-en@champion", "member-pt@1"]},
    )  # fmt: skip
    check_inputs(load_spec(fusion))
    result = pipelines.build(str(fusion), output=str(tmp_path / "out-fused"))
    assert (result["ref"], result["alias"]) == ("fused@1", "champion")
    # plan costs the fusion over its registered members: what the build saved and trained
    planned = plan_spec(load_plan_spec(fusion))
    saved = load_file(tmp_path / "out-fused" / "adapter.safetensors")
    assert planned.adapter_bytes == sum(t.numel() * t.element_size() for t in saved.values())
    assert planned.trainable_params == sum(t.numel() for t in saved.values())

    version = Registry().get("fused@1")
    assert version.method == "fusion"
    assert version.lineage["fusion_members"] == ["member-en@1", "member-pt@1"]
    # predict runs the fusion over the same members as its evaluation: the same 48 answers
    rows = load_split(str(sst2_dir / "en" / "validation.tsv"), max_samples=48, seed=0)
    ref, answers = predict(Registry(), "fused@champion", list(rows["sentence"]))
    right = sum(a.label == label for a, label in zip(answers, rows["label"], strict=True))
    assert (ref, right / 48) == ("fused@1", version.metrics["accuracy"])

    # the trained folder pushed as another adapter keeps its members (report.json lists them);
    # without report.json nothing says which versions it fuses: refused, nothing registered
    identity = {"name": "fused-pushed", "base_model": version.base_model, "task": "sst2",
                "language": "en"}  # fmt: skip
    bare = shutil.copytree(tmp_path / "out-fused", tmp_path / "bare")
    (bare / "report.json").unlink()
    with pytest.raises(AdapterFolderError, match=r"give --spec with each member pinned"):
        push_folder(Registry(), bare, identity=identity, mirror=False)
    assert Registry().find(name="fused-pushed") == []
    pushed = push_folder(Registry(), tmp_path / "out-fused", identity=identity, mirror=False)
    assert pushed.version.lineage["fusion_members"] == ["member-en@1", "member-pt@1"]
    texts = list(rows["sentence"])[:4]
    assert (
        predict(Registry(), "fused-pushed@1", texts)[1] == predict(Registry(), "fused@1", texts)[1]
    )

    # from Python, one call loads a fusion with the members it was trained over
    model, tokenizer = load_inference_model(load_spec(fusion))
    Registry().load_into(model, "fused@1")
    assert pc.list_adapters(model) == ["member-en", "member-pt", "fused"]
    pc.set_active(model, "fused")
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    assert logits.argmax(-1).tolist() == [a.label for a in answers[:4]]
    crowded, _ = load_inference_model(load_spec(fusion))
    pc.add_adapter(crowded, "fused", pc.LoRA(rank=2))  # the fusion's name is taken: refused
    with pytest.raises(pc.AdapterExistsError, match="fused"):
        Registry().load_into(crowded, "fused@1")
    assert pc.list_adapters(crowded) == ["fused"]  # the members it loaded are gone again


def test_bad_members_are_refused_before_training(tmp_path: Path, sst2_dir: Path):
    missing = write_spec(
        tmp_path, sst2_dir, name="lonely", method={"type": "fusion", "members": ["nobody@1"]}
    )
    with pytest.raises(NotFoundError, match="nobody"):
        check_inputs(load_spec(missing))

    lora = write_spec(tmp_path, sst2_dir, name="a-lora")
    pipelines.build(str(lora), output=str(tmp_path / "out-lora"))
    wrong = write_spec(
        tmp_path, sst2_dir, name="wrong", method={"type": "fusion", "members": ["a-lora"]}
    )
    with pytest.raises(DataError, match="a-lora is a lora adapter"):
        check_inputs(load_spec(wrong))
