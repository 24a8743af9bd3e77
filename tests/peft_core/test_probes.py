"""Golden probes on the real MiniLM: the right base passes, the same architecture with other
weights does not, and the signature reads the body (a head swap does not matter)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

import peft_core as pc
from tests.helpers import minilm_path, perturb_adapter


def classifier(**options):
    return AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=2, **options
    )


@pytest.fixture
def saved(tmp_path):
    model = classifier()
    pc.add_adapter(model, "sst2", pc.LoRA(rank=8, targets=("q", "v")))
    perturb_adapter(model, "sst2")
    folder = pc.save_adapter(model, "sst2", tmp_path / "adapter")
    pc.record_probes(model, "sst2", folder)
    return folder


def test_the_right_base_reproduces_the_recorded_outputs(saved):
    document = json.loads((saved / pc.probes.PROBES_FILE).read_text())
    assert len(document["input_ids"]) == 4 and len(document["signature"][0]) == 16 * 8
    model = classifier()
    pc.load_adapter(model, saved)
    check = pc.check_probes(model, "sst2", saved)
    assert check is not None and check.passed and check.deviation < 1e-6
    assert check.precisions == "recorded in torch.float32 on cpu, checked in torch.float32 on cpu"


def test_a_bf16_base_stays_in_the_band_and_each_side_says_its_precision(tmp_path):
    """Recorded in float32, checked on the same weights in bf16: inside the band for an adapter
    of a trained one's size (0.05 noise: 1.7% here; the fixture's 0.2 noise, which swamps the
    body, moves 20% and would not be)."""
    model = classifier()
    pc.add_adapter(model, "sst2", pc.LoRA(rank=8, targets=("q", "v")))
    perturb_adapter(model, "sst2", scale=0.05)
    saved = pc.save_adapter(model, "sst2", tmp_path / "adapter")
    pc.record_probes(model, "sst2", saved)
    half = classifier().to(torch.bfloat16)
    pc.load_adapter(half, saved)
    check = pc.check_probes(half, "sst2", saved)
    assert check is not None and check.passed and 1e-4 < check.deviation < check.tolerance
    assert check.checked_with == "torch.bfloat16 on cpu"
    older = tmp_path / "older"  # probes written before the precision was recorded
    shutil.copytree(saved, older)
    document = json.loads((older / pc.probes.PROBES_FILE).read_text())
    del document["recorded_with"]
    (older / pc.probes.PROBES_FILE).write_text(json.dumps(document))
    check = pc.check_probes(half, "sst2", older)
    assert check is not None and check.recorded_with == "unknown precision"


def test_a_qlora_checked_on_the_unquantised_base_gets_the_wider_band_and_says_so(tmp_path):
    """Recorded on MiniLM's NF4 weights, a QLoRA (here a fresh one: its adapter adds nothing)
    loads onto the bf16 weights they were quantised from, as serving engines load it: NF4's
    rounding alone moves the probes 28%, and it was refused as "not the weights it was trained
    on". Other weights still leave the wider band, and the NF4 base keeps the narrow one."""
    model = classifier(dtype=torch.bfloat16)
    pc.quantize_base(model, "nf4")
    pc.add_adapter(model, "qlora", pc.LoRA(rank=8, targets=("q", "v")))
    saved = pc.save_adapter(model, "qlora", tmp_path / "qlora")
    pc.record_probes(model, "qlora", saved)
    assert json.loads((saved / pc.probes.PROBES_FILE).read_text())["quantization"] == "nf4"

    unquantised = classifier(dtype=torch.bfloat16)
    pc.load_adapter(unquantised, saved)
    check = pc.check_probes(unquantised, "qlora", saved)
    assert check is not None and check.passed
    assert pc.probes.TOLERANCE < check.deviation < check.tolerance == pc.probes.ACROSS_QUANTIZATION
    assert check.precisions == (
        "recorded in torch.bfloat16 on cpu, NF4 weights, checked in torch.bfloat16 on cpu"
    )
    quantised = classifier(dtype=torch.bfloat16)
    pc.quantize_base(quantised, "nf4")
    pc.load_adapter(quantised, saved)
    check = pc.check_probes(quantised, "qlora", saved)
    assert check is not None and check.passed and check.tolerance == pc.probes.TOLERANCE
    older = tmp_path / "older"  # probes written before the quantisation was recorded: as then
    shutil.copytree(saved, older)
    document = json.loads((older / pc.probes.PROBES_FILE).read_text())
    del document["quantization"]
    (older / pc.probes.PROBES_FILE).write_text(json.dumps(document))
    check = pc.check_probes(quantised, "qlora", older)
    assert check is not None and check.passed and check.tolerance == pc.probes.TOLERANCE
    other = AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(minilm_path(), num_labels=2), dtype=torch.bfloat16
    )  # the same architecture, random weights
    pc.load_adapter(other, saved, force=True)
    check = pc.check_probes(other, "qlora", saved)
    assert check is not None and not check.passed and check.deviation > 1


def test_the_same_architecture_with_other_weights_leaves_the_band(saved):
    torch.manual_seed(0)
    random_weights = AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(minilm_path(), num_labels=2)
    )
    pc.load_adapter(random_weights, saved)  # the structural fingerprint cannot tell
    check = pc.check_probes(random_weights, "sst2", saved)
    assert check is not None and not check.passed and check.deviation > 1.0

    # another checkpoint of the family: the real weights, each moved by 5% of its spread
    nearby = classifier()
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in nearby.bert.parameters():
            parameter.add_(0.05 * parameter.std() * torch.randn_like(parameter))
    pc.load_adapter(nearby, saved)
    check = pc.check_probes(nearby, "sst2", saved)
    assert check is not None and not check.passed


def test_a_probes_file_that_is_not_one_is_a_clear_error(saved):
    model = classifier()
    pc.load_adapter(model, saved)
    path = saved / pc.probes.PROBES_FILE
    document = json.loads(path.read_text())
    for text, why in [
        ("{bad", "JSONDecodeError: Expecting property name enclosed in double quotes"),
        (json.dumps({k: v for k, v in document.items() if k != "signature"}),
         "KeyError: 'signature'"),
    ]:  # fmt: skip
        path.write_text(text)
        with pytest.raises(pc.ProbeMismatchError) as refused:
            pc.check_probes(model, "sst2", saved)
        assert str(refused.value).startswith(f"{path} is not a golden-probes file ({why}")
        assert str(refused.value).endswith("or delete the file to load without checking")


def test_the_signature_reads_the_body_not_the_head(tmp_path):
    masked = AutoModelForMaskedLM.from_pretrained(minilm_path())
    pc.add_adapter(masked, "pt-lang", pc.Pfeiffer())
    perturb_adapter(masked, "pt-lang")
    folder = pc.save_adapter(masked, "pt-lang", tmp_path / "lang")
    pc.record_probes(masked, "pt-lang", folder)
    inside_a_classifier = classifier()
    pc.load_adapter(inside_a_classifier, folder)
    check = pc.check_probes(inside_a_classifier, "pt-lang", folder)
    assert check is not None and check.deviation < 1e-5


def test_a_folder_without_probes_has_nothing_to_check(tmp_path):
    model = classifier()
    pc.add_adapter(model, "plain", pc.BitFit())
    folder = pc.save_adapter(model, "plain", tmp_path / "plain")
    assert pc.check_probes(model, "plain", folder) is None
