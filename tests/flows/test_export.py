"""``adapterops export REF --for peft|vllm|lorax|merged|adapterhub``: each engine's files load
where they should with the registry's outputs, and what an engine would refuse or ignore stops
the export before anything is written."""

from __future__ import annotations

import json
import os
from typing import ClassVar

import peft
import pytest
import torch
import transformers
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2LMHeadModel,
    LlamaForCausalLM,
)

import peft_core as pc
from flows.build_job import build_from_spec
from flows.errors import DataError
from flows.export_job import Finding, export, export_composition, lint, serving_hint
from flows.quickstart import minilm_sst2_spec
from registry import Registry
from tests.helpers import TINY_CONFIGS, batch, minilm_path, perturb_adapter, run_cli

TEXTS = ["a gripping, funny film", "dull and far too long"]


class TestVllmRules:
    """vLLM's PEFTHelper checks (as its source documents them), one by one."""

    LORA: ClassVar[dict] = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj"],
    }

    def test_a_plain_decoder_lora_passes(self):
        assert lint("vllm", "lora", "causal-lm", self.LORA) == []
        assert lint("vllm", "lora", None, {**self.LORA, "use_rslora": True}) == []
        # per-module ranks: the export writes one rank (and lints the files it wrote)
        patterns = {"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"q_proj": 2}}
        assert lint("vllm", "lora", "causal-lm", {**self.LORA, **patterns}) == []

    @pytest.mark.parametrize(
        ("change", "outcome", "words"),
        [
            ({"use_dora": True}, "refuses", "DoRA is not supported"),
            ({"modules_to_save": ["classifier"]}, "refuses", "modules_to_save must be empty"),
            ({"r": 32}, "refuses", "rank 32 is above --max-lora-rank 16"),
            ({"bias": "lora_only"}, "refuses", "needs vLLM's --enable-lora-bias"),
            ({"peft_type": "LOHA"}, "refuses", "LoRA adapters only, not LOHA"),
        ],
    )
    def test_each_rule(self, change, outcome, words):
        (finding,) = lint("vllm", "lora", "causal-lm", {**self.LORA, **change})
        assert finding.outcome == outcome and words in finding.message

    def test_a_raised_server_rank_admits_it(self):
        assert lint("vllm", "lora", "causal-lm", {**self.LORA, "r": 32}, max_lora_rank=32) == []

    def test_a_classification_adapter_is_refused_twice_over(self):
        config = {**self.LORA, "modules_to_save": ["classifier"]}
        found = lint("vllm", "lora", "classification", config)
        assert [f.outcome for f in found] == ["refuses", "refuses"]
        assert str(found[1]) == (
            "vllm refuses: it serves LoRA on generative (causal-LM) models; this is a "
            "classification adapter"
        )

    def test_an_adapter_of_a_bare_body_is_refused_with_the_reason(self):
        (finding,) = lint("vllm", "lora", "none", self.LORA)
        assert str(finding) == (
            "vllm refuses: it serves LoRA on generative (causal-LM) models, and this adapter was "
            "trained on a base without a head (its module paths would match nothing there): "
            "train it on the causal-LM model (`head: {type: causal-lm}` in its spec)"
        )

    def test_methods_without_a_peft_form_or_a_delta(self):
        assert lint("peft", "pfeiffer", "classification", None) == [
            Finding(
                "peft", "refuses",
                "peft has no equivalent of a pfeiffer adapter (exportable: LoRA, DoRA, IA3 and "
                "type: peft methods); export --for merged if it merges",
            )
        ]  # fmt: skip
        (hub,) = lint("adapterhub", "lora", "causal-lm", None)
        assert (hub.outcome, "holds bottleneck adapters" in hub.message) == ("refuses", True)
        assert lint("adapterhub", "pfeiffer", "masked-lm", None, trained_head=False) == []
        (merged,) = lint("merged", "houlsby", "classification", None)
        assert "non-linear bottleneck has no weight delta" in merged.message
        assert lint("merged", "lora", "classification", None) == []
        prompt = {"type": "peft", "config": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}}
        (refused,) = lint("merged", "peft", "classification", None, method_config=prompt)
        assert "virtual tokens are inputs, not weights" in refused.message
        loha = {"type": "peft", "config": {"peft_type": "LOHA", "target_modules": ["query"]}}
        assert lint("merged", "peft", "classification", None, method_config=loha) == []


class TestLoraxRules:
    """What LoRAX's loader reads (its LoraConfig and the lora_A/lora_B weights), rule by rule."""

    LORA = TestVllmRules.LORA

    def test_a_plain_decoder_lora_of_any_rank_passes(self):
        assert lint("lorax", "lora", "causal-lm", self.LORA) == []
        # no server rank limit (LoRAX pads ranks itself); rsLoRA's scaling is read
        assert lint("lorax", "lora", None, {**self.LORA, "r": 256, "use_rslora": True}) == []

    @pytest.mark.parametrize(
        ("change", "outcome", "words"),
        [
            ({"use_dora": True}, "ignores", "reads no DoRA magnitudes (use_dora)"),
            ({"modules_to_save": ["lm_head"]}, "ignores", "not modules_to_save ['lm_head']"),
            ({"bias": "all"}, "ignores", "reads no LoRA bias (bias 'all')"),
            ({"layers_to_transform": [0, 2]}, "ignores", "is dropped from every layer"),
            ({"peft_type": "IA3"}, "refuses", "LoRA adapters only, not IA3"),
        ],
    )
    def test_each_rule(self, change, outcome, words):
        (finding,) = lint("lorax", "lora", "causal-lm", {**self.LORA, **change})
        assert finding.outcome == outcome and words in finding.message
        assert str(finding).startswith(f"lorax {outcome}: ")

    def test_engines_are_named_in_any_case(self):
        assert lint("LoRAX", "lora", "causal-lm", self.LORA) == []
        (finding,) = lint("vLLM", "lora", "causal-lm", {**self.LORA, "r": 32})
        assert str(finding).startswith("vllm refuses: rank 32 is above --max-lora-rank 16")
        with pytest.raises(DataError, match="unknown engine 'Onnx'; export --for one of peft, "):
            lint("Onnx", "lora", "causal-lm", self.LORA)

    def test_only_generative_models(self):
        (bare,) = lint("lorax", "lora", "none", self.LORA)
        assert str(bare).startswith("lorax refuses: it serves LoRA on generative (causal-LM) ")
        (classifier,) = lint("lorax", "lora", "classification", self.LORA)
        assert str(classifier) == (
            "lorax refuses: it serves LoRA on generative (causal-LM) models; this is a "
            "classification adapter"
        )


def test_vllm_is_told_a_rank_above_its_default_and_serves_a_merged_llm(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 32}))
    assert serving_hint("vllm", "org/base 7b", tmp_path, "chat") == (
        f"vllm serve 'org/base 7b' --enable-lora --lora-modules chat={tmp_path} --max-lora-rank 32"
    )  # quoted where a shell would split it
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert serving_hint("merged", "org/base", tmp_path, "chat") == (
        f"vllm serve {tmp_path} (or transformers.LlamaForCausalLM.from_pretrained("
        f"{str(tmp_path)!r}))"
    )  # a merged LLM is a plain checkpoint for any server


@pytest.fixture
def built(embedded_home, sst2_dir, tmp_path) -> str:
    """A LoRA SST-2 adapter on MiniLM, built and registered (the embedded defaults)."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=4, name="export-sst2-lora")
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_eval_samples": 32})})
    return build_from_spec(spec, Registry(), tmp_path / "built").ref


def registry_probabilities(ref: str) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    Registry().load_into(model, ref)
    return probabilities(model)


def probabilities(model) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    with torch.no_grad():
        return model.eval()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(
            -1
        )


def test_each_engine_loads_its_export_with_the_registrys_outputs(built, tmp_path):
    expected = registry_probabilities(built)
    env = {**os.environ, "COLUMNS": "200"}  # ADAPTEROPS_HOME: the fixture's embedded home

    result = run_cli("export", built, "--for", "peft", "--out", str(tmp_path / "peft"), "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    exported = json.loads(result.stdout)
    assert set(exported["files"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    # the call it says to use is the one that loads it
    base_model = Registry().get(built).base_model
    assert exported["serve"] == (
        "peft.PeftModel.from_pretrained(transformers.AutoModelForSequenceClassification"
        f".from_pretrained({base_model!r}), {str(tmp_path / 'peft')!r})"
    )
    # (offline here: the base's local copy in place of its Hub id)
    here = exported["serve"].replace(repr(base_model), repr(str(minilm_path())))
    with_peft = eval(here, {"peft": peft, "transformers": transformers})
    torch.testing.assert_close(probabilities(with_peft), expected, atol=1e-5, rtol=0)

    result = run_cli("export", built, "--for", "merged", "--out", str(tmp_path / "merged"), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout.splitlines()[-1]
    assert said == f"use it: transformers.BertForSequenceClassification.from_pretrained({str(tmp_path / 'merged')!r})"  # fmt: skip
    merged = eval(said.removeprefix("use it: "), {"transformers": transformers})
    assert not any("lora" in name for name, _ in merged.named_parameters())  # a plain model
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    torch.testing.assert_close(probabilities(merged), expected, atol=1e-5, rtol=0)

    out = tmp_path / "new" / "vllm"  # its parent is made for the export, and goes if refused
    refused = run_cli("export", built, "--for", "vllm", "--out", str(out), env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {built} is not exported for vllm: ")
    assert "modules_to_save must be empty" in line and "generative (causal-LM) models" in line
    assert not (tmp_path / "new").exists()  # nothing written, no empty folder left

    occupied = run_cli("export", built, "--for", "peft", "--out", str(tmp_path / "peft"), env=env)
    assert occupied.returncode == 2 and "is not an empty folder" in occupied.stderr
    under_a_file = tmp_path / "peft" / "adapter_config.json" / "sub"  # was a traceback
    refused = run_cli("export", built, "--for", "peft", "--out", str(under_a_file), env=env)
    assert (refused.returncode, refused.stderr.strip()) == (
        2,
        f"error: cannot export for peft into {under_a_file}: {under_a_file.parent} is a file; "
        "give a folder (new or existing) to write the adapter's files into",
    )
    with_peft = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2),
        tmp_path / "peft",
    )  # the earlier export is intact
    torch.testing.assert_close(probabilities(with_peft), expected, atol=1e-5, rtol=0)


def test_peft_files_come_from_the_config_alone_as_the_loaded_base_writes_them(
    built, tmp_path, monkeypatch
):
    """export --for peft reads no base weights (a 70B base would cost minutes and its memory)
    and writes, byte for byte, what loading the version into its base and saving gives."""
    from flows import export_job

    model, tokenizer = export_job._load(Registry(), Registry().get(built))
    real = pc.save_adapter(model, built.split("@")[0], tmp_path / "real", format="peft", tokenizer=tokenizer)  # fmt: skip

    def no_weights(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr("flows.train_job.load_inference_model", no_weights)
    monkeypatch.setattr("flows.train_job.load_base_model", no_weights)
    result = export_job.export(Registry(), built, "peft", tmp_path / "converted")
    names = sorted(p.name for p in real.iterdir())
    assert (
        result.files
        == names
        == ["adapter_config.json", "adapter_model.safetensors", "adapterops.json"]
    )
    for name in names:
        assert (tmp_path / "converted" / name).read_bytes() == (real / name).read_bytes(), name


def test_a_decoder_lora_in_peft_layout_goes_to_vllm_as_it_is(embedded_home, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY_CONFIGS["llama"]())
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    pc.add_adapter(model, "chat", pc.LoRA(rank=8, targets=("q_proj", "v_proj")))
    perturb_adapter(model, "chat")  # a trained adapter: B is not zero
    pc.save_adapter(model, "chat", tmp_path / "adapter", format="peft")
    version = Registry().register(
        tmp_path / "adapter", name="chat-lora", base_model="tiny-llama", task="chat", language="en"
    )
    result = run_cli("export", version.ref, "--for", "vllm", "--out", str(tmp_path / "vllm"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    exported = json.loads(result.stdout)
    assert exported["findings"] == []
    assert exported["serve"] == (
        f"vllm serve tiny-llama --enable-lora --lora-modules chat-lora={tmp_path / 'vllm'}"
    )
    written = json.loads((tmp_path / "vllm" / "adapter_config.json").read_text())
    assert (written["peft_type"], written["r"], written["modules_to_save"]) == ("LORA", 8, None)
    # peft reads the exported files to the same outputs; vLLM reads the same two files
    inputs = batch(model)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        fresh = LlamaForCausalLM(TINY_CONFIGS["llama"]())
        fresh.load_state_dict(base_weights)
        reloaded = PeftModel.from_pretrained(fresh, tmp_path / "vllm").eval()
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_a_decoder_lora_in_our_format_goes_to_vllm_without_the_frozen_head(embedded_home, tmp_path):
    """A causal LM's own head stays the base's: frozen, not saved, not in the PEFT files. The
    lint read its module (lm_head) from our metadata as peft's modules_to_save all the same,
    so vLLM and LoRAX refused every LoRA a build had trained on a causal LM ("a new head
    cannot be served with a LoRA adapter")."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY_CONFIGS["llama"]())
    model.save_pretrained(tmp_path / "base")  # the conversion reads its config.json
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    pc.add_adapter(model, "chat", pc.LoRA(rank=8, targets=("q_proj", "v_proj")))
    perturb_adapter(model, "chat")
    pc.save_adapter(model, "chat", tmp_path / "adapter")  # ours, as a build saves it
    assert pc.read_metadata(tmp_path / "adapter")["head"]["trainable"] is False
    version = Registry().register(
        tmp_path / "adapter", name="chat-ours", base_model=str(tmp_path / "base"), task="chat",
        language="en",
    )  # fmt: skip
    inputs = batch(model)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
    for engine in ("vllm", "lorax"):
        result = export(Registry(), version.ref, engine, tmp_path / engine)
        assert result.findings == [], engine
        written = json.loads((tmp_path / engine / "adapter_config.json").read_text())
        assert (written["task_type"], written["modules_to_save"]) == ("CAUSAL_LM", None)
        fresh = LlamaForCausalLM(TINY_CONFIGS["llama"]())
        fresh.load_state_dict(base_weights)
        with torch.no_grad():
            reloaded = PeftModel.from_pretrained(fresh, tmp_path / engine).eval()
            torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_a_gpt2_lora_goes_to_vllm_with_one_rank_everywhere(embedded_home, tmp_path):
    """GPT-2's q and v slices are one LoRA of twice the rank on its fused c_attn, so its PEFT
    files have a rank_pattern, which vLLM ignores: the export pads to one rank instead."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(TINY_CONFIGS["gpt2"]())
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    pc.add_adapter(model, "chat", pc.LoRA(rank=4, targets=("q", "v", "ffn_in")))
    perturb_adapter(model, "chat")
    pc.save_adapter(model, "chat", tmp_path / "adapter", format="peft")
    stored = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {stored["r"], *stored["rank_pattern"].values()} == {4, 8}  # c_attn: 2 x 4
    version = Registry().register(
        tmp_path / "adapter", name="chat-gpt2", base_model="tiny-gpt2", task="chat", language="en"
    )
    result = run_cli("export", version.ref, "--for", "vllm", "--out", str(tmp_path / "vllm"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["findings"] == []
    written = json.loads((tmp_path / "vllm" / "adapter_config.json").read_text())
    assert (written["r"], written["rank_pattern"], written["alpha_pattern"]) == (8, {}, {})
    inputs = batch(model)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        fresh = GPT2LMHeadModel(TINY_CONFIGS["gpt2"]())
        fresh.load_state_dict(base_weights)
        reloaded = PeftModel.from_pretrained(fresh, tmp_path / "vllm").eval()
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)
    too_wide = run_cli(
        "export", version.ref, "--for", "vllm", "--max-lora-rank", "4", "--out", str(tmp_path / "x")
    )
    assert too_wide.returncode == 2 and not (tmp_path / "x").exists()
    assert "rank 8 is above --max-lora-rank 4" in too_wide.stderr
    # LoRAX reads r and lora_alpha alone too (and has no rank limit): the same files
    lorax = export(Registry(), version.ref, "lorax", tmp_path / "lorax", max_lora_rank=4)
    assert lorax.findings == [] and lorax.files == sorted(os.listdir(tmp_path / "vllm"))
    assert lorax.serve == (
        f'lorax-launcher --model-id tiny-gpt2; each request names it: "adapter_id": '
        f'"{tmp_path / "lorax"}", "adapter_source": "local"'
    )
    for name in lorax.files:
        assert (tmp_path / "lorax" / name).read_bytes() == (tmp_path / "vllm" / name).read_bytes()


def test_a_dora_goes_to_lorax_only_when_forced_and_then_as_plain_lora(embedded_home, tmp_path):
    """LoRAX reads no DoRA magnitudes: the export stops with one line, nothing written; forced,
    it writes the files with the warning, and they are the DoRA's as peft reads them."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY_CONFIGS["llama"]())
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    pc.add_adapter(model, "chat", pc.DoRA(rank=4, targets=("q_proj", "v_proj")))
    perturb_adapter(model, "chat")
    pc.save_adapter(model, "chat", tmp_path / "adapter", format="peft")
    version = Registry().register(
        tmp_path / "adapter", name="chat-dora", base_model="tiny-llama", task="chat", language="en"
    )
    out = tmp_path / "lorax"
    # the engine as the project spells itself is the same engine
    refused = run_cli("export", version.ref, "--for", "LoRAX", "--out", str(out))
    assert (refused.returncode, refused.stdout, out.exists()) == (2, "", False)
    assert refused.stderr == (
        "error: chat-dora@1 is not exported for lorax: lorax ignores: it reads no DoRA magnitudes "
        "(use_dora) and would serve the adapter as plain LoRA; export --for merged instead "
        "(nothing written; --force writes it anyway)\n"
    )
    forced = run_cli(
        "export", version.ref, "--for", "lorax", "--out", str(out), "--force", "--json",
        "--max-lora-rank", "32",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]
    # vLLM's setting changes nothing here, and the user who gave it is told so
    assert forced.stderr.splitlines()[0] == (
        "warning: --max-lora-rank is vLLM's server setting: --for lorax does not read it"
    )
    assert json.loads(forced.stdout)["findings"] == [
        "lorax ignores: it reads no DoRA magnitudes (use_dora) and would serve the adapter as "
        "plain LoRA; export --for merged instead"
    ]
    written = json.loads((out / "adapter_config.json").read_text())
    assert (written["peft_type"], written["use_dora"]) == ("LORA", True)
    inputs = batch(model)
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        fresh = LlamaForCausalLM(TINY_CONFIGS["llama"]())
        fresh.load_state_dict(base_weights)
        reloaded = PeftModel.from_pretrained(fresh, out).eval()
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_a_classifier_pushed_without_a_spec_exports_with_the_head_its_files_carry(
    embedded_home, tmp_path
):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    pc.add_adapter(model, "three", pc.LoRA(rank=4))
    perturb_adapter(model, "three")
    pc.save_adapter(model, "three", tmp_path / "adapter")
    Registry().register(
        tmp_path / "adapter", name="three", base_model=str(minilm_path()), task="nli",
        language="en",
    )  # fmt: skip
    # no spec: the head and its three labels come from the files (was refused: "this model's
    # head is none")
    export(Registry(), "three@1", "peft", tmp_path / "peft")
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    with_peft = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    inputs = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(
            with_peft(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0
        )


def test_a_bottleneck_adapter_is_refused_for_peft_before_anything_is_written(
    embedded_home, tmp_path
):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    pc.add_adapter(model, "bottleneck", pc.Pfeiffer())
    perturb_adapter(model, "bottleneck")
    pc.save_adapter(model, "bottleneck", tmp_path / "adapter")
    version = Registry().register(
        tmp_path / "adapter", name="pfeiffer", base_model=str(minilm_path()), task="sst2",
        language="en",
    )  # fmt: skip
    for engine, why in (
        ("peft", "peft refuses: peft has no equivalent of a pfeiffer adapter"),
        ("merged", "merged refuses: pfeiffer: its non-linear bottleneck has no weight delta"),
    ):
        for force in ([], ["--force"]):  # no files to write: --force is neither offered nor taken
            out = str(tmp_path / engine)
            result = run_cli("export", version.ref, "--for", engine, "--out", out, *force)
            assert result.returncode == 2, result.stderr
            line = result.stderr.strip()
            assert line.startswith(f"error: pfeiffer@1 cannot be exported for {engine}: {why}")
            assert line.endswith(" (nothing written)") and "\n" not in line
            assert not (tmp_path / engine).exists()
    hub = run_cli("export", version.ref, "--for", "adapterhub", "--out", str(tmp_path / "hub"))
    assert hub.returncode == 2 and not (tmp_path / "hub").exists()
    assert "adapterhub ignores: the adapter's trained classification head is not written" in (
        hub.stderr
    )
    assert hub.stderr.strip().endswith("(nothing written; --force writes it anyway)")
    forced = run_cli(
        "export", version.ref, "--for", "adapterhub", "--out", str(tmp_path / "hub"), "--force"
    )
    assert forced.returncode == 0, forced.stderr  # was a TypeError printing the warning
    assert forced.stderr.startswith(
        "warning: adapterhub ignores: the adapter's trained classification head is not written"
    )
    assert forced.stdout.splitlines()[-1] == (
        f"use it: model = transformers.AutoModel.from_pretrained({str(minilm_path())!r}); "
        f"adapters.init(model); model.load_adapter({str(tmp_path / 'hub')!r}, set_active=True)"
    )
    inputs = batch(model)
    with torch.no_grad():
        expected = model.bert(**inputs).last_hidden_state
    loaded = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    pc.load_adapter(loaded, tmp_path / "hub")  # AdapterHub's files: the body's adapter
    with torch.no_grad():
        got = loaded.bert(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    unknown = run_cli("export", version.ref, "--for", "onnx", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "unknown engine 'onnx'" in unknown.stderr


def test_a_lora_composition_exports_as_the_one_adapter_it_computes(
    embedded_home, sst2_dir, tmp_path
):
    """A saved stack of two LoRAs, flattened: peft loads it to the composition's outputs, the
    merged checkpoint gives them too, and what cannot flatten is one line with nothing written."""
    registry = Registry()
    for seed, (name, config) in enumerate(
        {"lang": pc.LoRA(rank=2), "task": pc.LoRA(rank=4), "bottleneck": pc.Pfeiffer()}.items()
    ):
        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        pc.add_adapter(model, name, config)
        torch.manual_seed(seed)
        perturb_adapter(model, name, scale=0.1 * (seed + 1))
        pc.save_adapter(model, name, tmp_path / name)
        registry.register(
            tmp_path / name, name=name, base_model=str(minilm_path()), task="sst2", language="en"
        )
    scored_on = minilm_sst2_spec("lora", sst2_dir / "en", steps=4).model_dump(mode="json")
    registry.register_composition("madx", {"type": "stack"}, ["lang", "task"], evaluation=scored_on)
    registry.register_composition(
        "bottlenecks", {"type": "stack"}, ["lang", "bottleneck"], evaluation=scored_on
    )
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    registry.load_composition(model, "madx@1")
    expected = probabilities(model)
    assert not torch.allclose(expected, registry_probabilities("task@1"), atol=1e-3)

    result = run_cli("composition", "export", "madx", "--for", "peft", "--out", str(tmp_path / "peft"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    exported = json.loads(result.stdout)
    assert exported["ref"] == "madx@1" and "probes.json" in exported["files"]
    written = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (written["peft_type"], written["r"]) == ("LORA", 6)  # the ranks, side by side
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    with_peft = PeftModel.from_pretrained(base, tmp_path / "peft")
    torch.testing.assert_close(probabilities(with_peft), expected, atol=1e-5, rtol=0)

    merged = export_composition(registry, "madx@1", "merged", tmp_path / "merged")
    assert "model.safetensors" in merged.files
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(probabilities(plain), expected, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="madx@1 is not exported for vllm: vllm refuses"):
        export_composition(registry, "madx@1", "vllm", tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()
    # no evaluation spec: its last member's files tell the head (two labels, from its weights)
    registry.register_composition("bare", {"type": "stack"}, ["lang", "task"])
    export_composition(registry, "bare", "peft", tmp_path / "bare")
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    from_files = PeftModel.from_pretrained(base, tmp_path / "bare")
    torch.testing.assert_close(probabilities(from_files), expected, atol=1e-5, rtol=0)

    refused = run_cli("composition", "export", "bottlenecks", "--for", "peft", "--out", str(tmp_path / "b"))  # fmt: skip
    assert refused.returncode == 2 and refused.stdout == "" and not (tmp_path / "b").exists()
    assert refused.stderr == (  # was peft_core's "cannot flatten", once every member loaded
        "error: bottlenecks@1 cannot be exported as one adapter: its members use different "
        "methods (lang@1 (lora), bottleneck@1 (pfeiffer)) and one adapter holds one; export its "
        "members one at a time instead\n"
    )
    registry.register_composition("side", {"type": "parallel"}, ["lang", "task"])
    registry.register_composition("one", {"type": "stack"}, ["bottleneck"])
    for name, reason in {
        "side": "a Parallel block does not flatten into one adapter (its outputs do not add "
        "up); only Stack and Average do",
        "one": "pfeiffer adapters' outputs do not add up, so a stack or an average of them is "
        "no single adapter (LoRA and BitFit ones are)",
    }.items():
        with pytest.raises(DataError) as raised:
            export_composition(registry, name, "peft", tmp_path / name)
        assert str(raised.value) == (
            f"{name}@1 cannot be exported as one adapter: {reason}; export its members one at "
            "a time instead"
        )
        assert not (tmp_path / name).exists()
