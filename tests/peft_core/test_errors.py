"""Bad input gets a clear error that names the problem, and the model is left untouched."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

import peft_core as pc
from tests.helpers import batch, logits, perturb_adapter


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before, modules_before):
    assert [type(m) for m in model.modules()] == modules_before
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in after)


class TestConfigValidation:
    @pytest.mark.parametrize(
        ("build", "message"),
        [
            (lambda: pc.LoRA(rank=0), "rank must be >= 1"),
            (lambda: pc.LoRA(alpha=0), "alpha must be > 0"),
            (lambda: pc.LoRA(dropout=1.0), "dropout"),
            (lambda: pc.LoRA(targets=()), "at least one"),
            (lambda: pc.Houlsby(reduction_factor=4, bottleneck=8), "not both"),
            (lambda: pc.Pfeiffer(bottleneck=0), "bottleneck must be >= 1"),
            (lambda: pc.config_from_dict({"type": "vera"}), "unknown method type 'vera'"),
            (lambda: pc.IA3(feedforward=("q",)), r"feedforward \['q'\] must also be listed"),
            (lambda: pc.DoRA(rank=0), "DoRA rank must be >= 1"),
            (
                lambda: pc.config_from_dict({"type": "lora", "rnak": 4}),
                r"unknown field\(s\) \['rnak'\]",
            ),
        ],
    )
    def test_invalid_config_is_rejected(self, build, message):
        with pytest.raises(pc.ConfigError, match=message):
            build()

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"type": "lora", "rank": "big"}, "lora: rank must be a whole number, got 'big'"),
            ({"type": "lora", "rank": 8.5}, "lora: rank must be a whole number, got 8.5"),
            ({"type": "lora", "alpha": True}, "lora: alpha must be a number, got True"),
            ({"type": "lora", "targets": "q,v"}, "lora: targets must be a list of texts, got 'q,v'"),
            ({"type": "lora", "use_rslora": "yes"}, "lora: use_rslora must be true or false, got 'yes'"),
            ({"type": "lora", "init": "gauss"}, "lora: init must be one of 'default', 'pissa', 'olora', got 'gauss'"),
            ({"type": "houlsby", "reduction_factor": "x"}, "houlsby: reduction_factor must be a whole number or null, got 'x'"),
        ],
    )  # fmt: skip
    def test_a_value_of_the_wrong_type_names_the_type_its_field_takes(self, fields, message):
        """A hand-written adapter.json or a dict from Python failed inside a comparison:
        "'>=' not supported between instances of 'str' and 'int'"."""
        with pytest.raises(pc.ConfigError) as raised:
            pc.config_from_dict(fields)
        assert str(raised.value) == message

    @pytest.mark.parametrize(
        ("build", "message"),
        [
            (lambda: pc.LoRA(rank="8"), "LoRA: rank must be a whole number, got '8'"),
            (lambda: pc.LoRA(rank=None), "LoRA: rank must be a whole number, got None"),
            (lambda: pc.DoRA(dropout="0.1"), "DoRA: dropout must be a number, got '0.1'"),
            (lambda: pc.LoRA(alpha="16"), "LoRA: alpha must be a number, got '16'"),
            (lambda: pc.LoRA(use_rslora="no"), "LoRA: use_rslora must be true or false, got 'no'"),
            (lambda: pc.LoRA(targets="q"), "LoRA: targets must be a list or tuple of texts, got 'q'"),
            (lambda: pc.LoRA(targets=["q", 3]), "LoRA: targets must be a list or tuple of texts, got ('q', 3)"),
            (lambda: pc.Houlsby(bottleneck="64"), "Houlsby: bottleneck must be a whole number or null, got '64'"),
            (lambda: pc.Fusion(members="ab"), "Fusion: members must be a list or tuple of texts, got 'ab'"),
        ],
    )  # fmt: skip
    def test_a_config_built_in_python_names_a_value_of_the_wrong_type(self, build, message):
        """Built directly (not from a dict), the same check: ``pc.LoRA(rank="8")`` failed inside
        a comparison, and ``pc.Fusion(members="ab")`` fused adapters 'a' and 'b'."""
        with pytest.raises(pc.ConfigError) as raised:
            build()
        assert str(raised.value) == message

    def test_a_list_where_a_tuple_goes_is_that_tuple(self, tiny_model):
        """``pc.LoRA(targets=["q", "v"])``, as people write it, was refused for not being a
        tuple (session 28's type check); it is the same config as the tuple's, and hashable."""
        listed, tupled = pc.LoRA(targets=["q", "v"]), pc.LoRA(targets=("q", "v"))
        assert listed == tupled and hash(listed) == hash(tupled) and listed.targets == ("q", "v")
        assert pc.Fusion(members=["a", "b"]).members == ("a", "b")
        # NumPy numbers (computed from arrays) are plain ones, so the config saves as JSON
        computed = pc.LoRA(rank=np.int64(8), alpha=np.float32(16), dropout=np.float64(0.1))
        assert computed == pc.LoRA(rank=8, alpha=16.0, dropout=0.1)
        assert json.loads(json.dumps(pc.config_to_dict(computed)))["rank"] == 8
        with pytest.raises(pc.ConfigError, match=r"^LoRA: rank must be a whole number, got np\."):
            pc.LoRA(rank=np.float32(8))
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", listed)
        from peft_core.state import get_record

        assert sorted({t.role for t in get_record(model, "a").targets}) == ["q", "v"]

    def test_config_round_trips_through_dict(self):
        for config in [
            pc.LoRA(rank=3, targets=("q", "ffn_in")),
            pc.BitFit(targets=("q",)),
            pc.Houlsby(bottleneck=7),
            pc.Pfeiffer(reduction_factor=8),
            pc.FullFineTune(),
        ]:
            assert pc.config_from_dict(json.loads(json.dumps(pc.config_to_dict(config)))) == config


class TestInjectionErrors:
    def test_targets_matching_nothing_list_what_exists(self, tiny_model):
        model = tiny_model("bert", "classification")
        before, modules = snapshot(model), [type(m) for m in model.modules()]
        with pytest.raises(pc.TargetError, match=r"targets \['nope'\] matched no module.*query"):
            pc.add_adapter(model, "a", pc.LoRA(targets=("q", "nope")))
        assert_untouched(model, before, modules)
        assert pc.list_adapters(model) == []

    def test_a_single_layer_is_not_a_model_to_adapt(self):
        """It ended "Adaptable module names here include: " and nothing."""
        layer = torch.nn.Linear(4, 4)
        with pytest.raises(pc.TargetError) as raised:
            pc.add_adapter(layer, "a", pc.LoRA())
        assert str(raised.value) == (
            "targets ['q', 'v'] matched no module (asked for ['q', 'v']); this Linear has no "
            "transformers config naming its model type, so no roles; use module-name patterns "
            "(or all-linear: every linear layer). This Linear has no Linear, Conv1D or "
            "LayerNorm submodule to adapt (adapters go on a transformers model, not on one of "
            "its layers)"
        )
        assert isinstance(layer, torch.nn.Linear) and not list(layer.children())

    def test_roles_on_a_plain_torch_model_say_it_has_none(self):
        """It said "model type '' has no role table"."""
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        with pytest.raises(pc.TargetError) as raised:
            pc.add_adapter(model, "a", pc.LoRA(targets=("q",)))
        assert str(raised.value) == (
            "targets ['q'] matched no module (asked for ['q']); this Sequential has no "
            "transformers config naming its model type, so no roles; use module-name patterns "
            "(or all-linear: every linear layer). Adaptable module names here include: 0, 2"
        )
        pc.add_adapter(model, "a", pc.LoRA(rank=2, targets=("all-linear",)))  # as it says
        assert pc.list_adapters(model) == ["a"]

    def test_unsupported_module_type_is_refused(self, tiny_model):
        model = tiny_model("bert", "classification")
        before, modules = snapshot(model), [type(m) for m in model.modules()]
        with pytest.raises(pc.TargetError, match=r"Embedding, which lora cannot adapt"):
            pc.add_adapter(model, "a", pc.LoRA(targets=("q", "word_embeddings")))
        assert_untouched(model, before, modules)

    def test_bitfit_on_a_model_without_biases(self, tiny_model):
        model = tiny_model("llama", "causal-lm")
        with pytest.raises(pc.TargetError, match=r"BitFit needs bias terms.*has none"):
            pc.add_adapter(model, "a", pc.BitFit())
        with pytest.raises(pc.TargetError, match=r"has no bias term"):
            pc.add_adapter(model, "a", pc.BitFit(targets=("q",)))

    def test_bitfit_subset_by_role(self, tiny_model):
        model = tiny_model("bert", "masked-lm")
        pc.add_adapter(model, "a", pc.BitFit(targets=("q", "ffn_in")))
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == 4  # 2 layers x (query bias, intermediate bias)
        assert all(("query" in n or "intermediate" in n) and "bias_offset" in n for n in trainable)

    def test_duplicate_and_invalid_names(self, tiny_model):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.LoRA())
        with pytest.raises(pc.AdapterExistsError, match=r"already has an adapter 'a'"):
            pc.add_adapter(model, "a", pc.BitFit())
        with pytest.raises(pc.TargetError, match=r"invalid adapter name 'x.y'"):
            pc.add_adapter(model, "x.y", pc.BitFit())

    @pytest.mark.parametrize("config", ["lora", {"type": "lora", "rank": 4}])
    def test_a_config_must_be_a_method_configuration(self, tiny_model, config):
        model = tiny_model("bert", "classification")
        with pytest.raises(pc.ConfigError, match=r"such as pc\.LoRA\(rank=8\), not .*lora"):
            pc.add_adapter(model, "a", config)
        assert pc.list_adapters(model) == []

    def test_unknown_adapter_names_the_known_ones(self, tiny_model):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "sst2", pc.LoRA())
        with pytest.raises(pc.AdapterNotFoundError, match=r"no adapter 'imdb'.*sst2"):
            pc.set_active(model, "imdb")
        with pytest.raises(pc.AdapterNotFoundError, match=r"no adapter 'imdb'"):
            pc.merge(model, "imdb")


class TestMergeSafety:
    @pytest.mark.parametrize(
        "config",
        [
            pc.LoRA(),
            pc.BitFit(),
            pc.IA3(),
            pc.DoRA(),
            pc.AnyPeft(config={"peft_type": "LOHA", "r": 4, "target_modules": ["query"]}),
        ],
        ids=lambda c: c.type if c.type != "peft" else "peft-loha",
    )
    def test_deleting_a_merged_adapter_is_refused(self, tiny_model, config):
        """Its delta stayed in the shared base weights, with nothing left to take it back (peft
        refuses it too since huggingface/peft#3504)."""
        from peft_core.layer import base_state_dict

        def weights() -> dict[str, torch.Tensor]:
            return {k: v.clone() for k, v in base_state_dict(model).items()}

        model = tiny_model("bert", "classification")
        before = weights()
        pc.add_adapter(model, "a", config)
        perturb_adapter(model, "a")
        pc.merge(model, "a")
        merged = weights()
        assert [k for k in before if not torch.equal(merged[k], before[k])] != []
        with pytest.raises(pc.NotMergeableError, match=r"'a' is merged .* pc.unmerge"):
            pc.delete_adapter(model, "a")
        assert pc.list_adapters(model) == ["a"]
        assert [k for k in merged if not torch.equal(weights()[k], merged[k])] == []
        pc.unmerge(model, "a")
        pc.delete_adapter(model, "a")
        after = weights()
        assert after.keys() == before.keys()
        assert [k for k in before if not torch.equal(after[k], before[k])] == []

    def test_redundant_merge_and_unmerge_warn_and_change_nothing(self, tiny_model):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.LoRA())
        perturb_adapter(model, "a")
        pc.merge(model, "a")
        merged = snapshot(model)
        with pytest.warns(UserWarning, match=r"already merged"):
            pc.merge(model, "a")
        assert all(torch.equal(v, merged[k]) for k, v in model.state_dict().items())
        pc.unmerge(model, "a")
        with pytest.warns(UserWarning, match=r"not merged"):
            pc.unmerge(model, "a")

    def test_non_finite_adapter_is_not_merged(self, tiny_model):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.LoRA())
        with torch.no_grad():
            model.bert.encoder.layer[1].attention.self.query.adapters["a"].lora_B.weight.fill_(
                float("nan")
            )
        before = snapshot(model)
        with pytest.raises(pc.NotMergeableError, match=r"non-finite"):
            pc.merge(model, "a")
        after = model.state_dict()
        assert all(torch.equal(after[k], before[k]) or torch.isnan(before[k]).any() for k in after)

    def test_eval_does_not_merge(self, tiny_model):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.LoRA())
        perturb_adapter(model, "a")
        before = snapshot(model)
        model.eval()
        model.train()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class TestActivation:
    def test_switching_and_deleting_adapters(self, tiny_model):
        model = tiny_model("bert", "classification")
        inputs = batch(model)
        base = logits(model, inputs)
        pc.add_adapter(model, "a", pc.LoRA())
        perturb_adapter(model, "a")
        pc.add_adapter(model, "b", pc.BitFit())
        perturb_adapter(model, "b")
        out_b = logits(model, inputs)  # the newest adapter is active
        pc.set_active(model, "a")
        out_a = logits(model, inputs)
        assert not torch.allclose(out_a, out_b)
        pc.set_active(model, None)
        torch.testing.assert_close(logits(model, inputs), base, rtol=0, atol=0)
        pc.delete_adapter(model, "a")
        pc.delete_adapter(model, "b")
        assert pc.list_adapters(model) == []
        assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear"
        torch.testing.assert_close(logits(model, inputs), base, rtol=0, atol=0)


class TestGPT2FusedProjection:
    def test_q_and_v_adapt_only_their_slices(self, tiny_model):
        model = tiny_model("gpt2", "causal-lm")
        pc.add_adapter(model, "a", pc.LoRA(rank=2, targets=("q", "v")))
        perturb_adapter(model, "a")
        base = model.transformer.h[0].attn.c_attn.base_layer.weight.clone()  # (in, 3*hidden)
        merged = pc.merged_state_dict(model, "a")[
            "transformer.h[0]".replace("[0]", ".0") + ".attn.c_attn.weight"
        ]
        delta = merged - base
        hidden = base.shape[0]
        assert delta[:, :hidden].abs().sum() > 0  # q
        assert torch.equal(
            delta[:, hidden : 2 * hidden], torch.zeros_like(delta[:, hidden : 2 * hidden])
        )  # k
        assert delta[:, 2 * hidden :].abs().sum() > 0  # v


class TestSavingAgain:
    """A folder saved into again holds the new adapter only: an adapter.json left by an earlier
    save was what load_adapter read first, silently the old adapter."""

    def test_the_new_format_replaces_the_old_and_other_files_stay(self, tiny_model, tmp_path):
        torch.manual_seed(0)
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "old", pc.LoRA(rank=2))
        folder = pc.save_adapter(model, "old", tmp_path / "a")
        pc.record_probes(model, "old", folder)
        (folder / "notes.txt").write_text("mine")
        pc.add_adapter(model, "new", pc.LoRA(rank=4))
        perturb_adapter(model, "new")
        pc.save_adapter(model, "new", folder, format="peft")
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "adapterops.json", "notes.txt",
        ]  # fmt: skip
        fresh = tiny_model("bert", "classification")
        assert pc.load_adapter(fresh, folder).config.rank == 4
        assert [p.name for p in tmp_path.iterdir()] == ["a"]  # nothing staged left beside it

    def test_a_refused_save_leaves_the_folder_as_it_was(self, tiny_model, tmp_path):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "lora", pc.LoRA())
        folder = pc.save_adapter(model, "lora", tmp_path / "a")
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        pc.add_adapter(model, "bitfit", pc.BitFit())
        for refused in ("peft", "adapterhub"):  # formats without BitFit
            with pytest.raises((pc.ConfigError, pc.AdapterFormatError)):
                pc.save_adapter(model, "bitfit", folder, format=refused)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        # into new folders: none is made (the parents were, and stayed empty)
        with pytest.raises(pc.ConfigError):
            pc.save_adapter(model, "bitfit", tmp_path / "new" / "deeper" / "b", format="peft")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
        saved = pc.save_adapter(model, "bitfit", tmp_path / "new" / "deeper" / "b")
        assert sorted(p.name for p in saved.iterdir()) == ["adapter.json", "adapter.safetensors"]
        assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["b"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "new"]  # nothing staged left

    @pytest.mark.parametrize("inside", [False, True])
    def test_a_file_where_the_folder_goes_is_named_before_anything_is_written(
        self, tiny_model, tmp_path, inside
    ):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "lora", pc.LoRA())
        (tmp_path / "notes.txt").write_text("mine")
        target = tmp_path / "notes.txt" / "a" if inside else tmp_path / "notes.txt"
        with pytest.raises(NotADirectoryError) as raised:  # was mkdir's FileExistsError
            pc.save_adapter(model, "lora", target)
        assert str(raised.value) == (
            f"cannot save adapter 'lora' into {target}: {tmp_path / 'notes.txt'} is a file; "
            "give a folder (new or existing) to write the adapter's files into"
        )
        assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing staged beside it


class TestLoadErrors:
    @pytest.fixture
    def saved(self, tiny_model, tmp_path):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.LoRA())
        return pc.save_adapter(model, "a", tmp_path / "a")

    def load_fresh(self, tiny_model, path, **kwargs):
        model = tiny_model("bert", "classification")
        before, modules = snapshot(model), [type(m) for m in model.modules()]
        return model, before, modules, lambda: pc.load_adapter(model, path, **kwargs)

    def test_missing_folder_and_not_an_adapter(self, tiny_model, tmp_path):
        model = tiny_model("bert", "classification")
        with pytest.raises(pc.AdapterFormatError, match=r"does not exist"):
            pc.load_adapter(model, tmp_path / "nowhere")
        (tmp_path / "empty").mkdir()
        with pytest.raises(pc.AdapterFormatError, match=r"not an adapter folder"):
            pc.load_adapter(model, tmp_path / "empty")

    def test_a_name_taken_says_how_to_load_under_another(self, tiny_model, saved):
        """It said "choose another name", but load_adapter's way to choose one (name=) was
        not named."""
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", pc.BitFit())
        before, modules = snapshot(model), [type(m) for m in model.modules()]
        with pytest.raises(pc.AdapterExistsError) as raised:
            pc.load_adapter(model, saved)
        assert str(raised.value) == (
            f"model already has an adapter 'a'; load this one under another name "
            f"(peft_core.load_adapter(model, '{saved}', name='...')) or "
            "peft_core.delete_adapter the one there first"
        )
        assert_untouched(model, before, modules)
        assert pc.load_adapter(model, saved, name="a2").name == "a2"

    def test_a_file_given_for_the_folder_is_named_a_file(self, tiny_model, saved):
        """Giving the weights file itself said "adapter folder ... does not exist", though it
        does: the user meant the folder that holds it."""
        weights = saved / "adapter.safetensors"
        assert weights.is_file()
        model = tiny_model("bert", "classification")
        expected = rf"{weights} is a file, not an adapter folder: give the folder"
        with pytest.raises(pc.AdapterFormatError, match=expected):
            pc.load_adapter(model, weights)
        with pytest.raises(pc.AdapterFormatError, match=expected):
            pc.convert_adapter(weights, saved.parent / "out", model.config)
        with pytest.raises(pc.AdapterFormatError, match=expected):
            pc.read_metadata(weights)
        assert not (saved.parent / "out").exists()

    def test_a_model_or_folder_of_the_wrong_type_is_named(self, tiny_model, saved):
        """load_adapter(None, path) said the folder was not an adapter's; set_active(None, ...)
        "'NoneType' object has no attribute '__dict__'"; load_adapter(model, 5) was os's error."""
        model, before, modules, _ = self.load_fresh(tiny_model, saved)
        expected = (
            "peft_core works on a torch model (a torch.nn.Module, such as a transformers model), "
            "got NoneType None"
        )
        for call in (
            lambda: pc.load_adapter(None, saved),  # type: ignore[arg-type]
            lambda: pc.set_active(None, "a"),  # type: ignore[arg-type]
            lambda: pc.merge(None, "a"),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError) as raised:
                call()
            assert str(raised.value) == expected
        with pytest.raises(TypeError) as raised:
            pc.load_adapter(model, 5)  # type: ignore[arg-type]
        assert str(raised.value) == "load_adapter takes a folder, not int 5"
        assert_untouched(model, before, modules)
        pc.load_adapter(model, saved)
        with pytest.raises(TypeError) as raised:  # was "unhashable type: 'list'"
            pc.set_trainable(model, ["a"])  # type: ignore[arg-type]
        assert str(raised.value) == (
            "set_trainable takes one adapter's name: one adapter trains at a time, got list ['a']"
        )

    def test_a_folder_holding_two_formats_is_refused_not_guessed(self, tiny_model, saved):
        """Files copied in by hand: our adapter.json beside a PEFT adapter_config.json. Reading
        either one silently could be the other adapter than the one meant."""
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "b", pc.LoRA(rank=4))
        pc.save_adapter(model, "b", saved.parent / "b", format="peft")
        shutil.copy(saved.parent / "b" / "adapter_config.json", saved)
        model, before, modules, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(pc.AdapterFormatError, match=r"holds two adapters' files: adapter.json"):
            load()
        assert_untouched(model, before, modules)

    @pytest.mark.parametrize(
        ("file", "content", "said"),
        [
            pytest.param("adapter.json", b"{broken", "is not valid JSON: Expecting property name",
                         id="ours-broken"),
            pytest.param("adapter.json", b"[1, 2]", "is not a JSON object: list", id="ours-list"),
            pytest.param("adapterops.json", b"\xff\xfe", "is not valid JSON: 'utf-8' codec can't "
                         "decode byte 0xff", id="peft-metadata-not-utf8"),
            pytest.param("adapter_config.json", b"{broken", "is not valid JSON: Expecting",
                         id="peft-config-broken"),
        ],
    )  # fmt: skip
    def test_a_damaged_json_file_is_named(self, tiny_model, saved, file, content, said):
        """A PEFT folder's adapterops.json that was not JSON, or not UTF-8, was the decoder's
        JSONDecodeError or UnicodeDecodeError; an adapter.json holding a list, a TypeError."""
        if file != "adapter.json":  # the files of our PEFT export, which carries our metadata
            model = tiny_model("bert", "classification")
            pc.load_adapter(model, saved)
            shutil.rmtree(saved)
            pc.save_adapter(model, "a", saved, format="peft")
        (saved / file).write_bytes(content)
        model, before, modules, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(pc.AdapterFormatError) as raised:
            load()
        assert str(raised.value).startswith(f"{saved / file} {said}")
        assert_untouched(model, before, modules)

    def test_missing_weights_file(self, tiny_model, saved):
        (saved / "adapter.safetensors").unlink()
        model, before, modules, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(pc.AdapterFormatError, match=r"missing adapter.safetensors"):
            load()
        assert_untouched(model, before, modules)

    def test_extra_and_missing_tensors(self, tiny_model, saved):
        from safetensors.torch import load_file, save_file

        tensors = load_file(saved / "adapter.safetensors")
        dropped = sorted(tensors)[0]
        del tensors[dropped]
        tensors["surprise.weight"] = torch.zeros(2)
        save_file(tensors, saved / "adapter.safetensors")
        model, before, modules, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(
            pc.AdapterFormatError, match=r"1 missing tensor.*1 unexpected.*surprise"
        ):
            load()
        assert_untouched(model, before, modules)
        assert pc.list_adapters(model) == []

    def test_truncated_weights_file(self, tiny_model, saved):
        data = (saved / "adapter.safetensors").read_bytes()
        (saved / "adapter.safetensors").write_bytes(data[: len(data) // 2])
        model, before, modules, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(pc.AdapterFormatError, match=r"cannot read"):
            load()
        assert_untouched(model, before, modules)

    def test_broken_metadata(self, tiny_model, saved):
        (saved / "adapter.json").write_text("{not json")
        _, _, _, load = self.load_fresh(tiny_model, saved)
        with pytest.raises(pc.AdapterFormatError, match=r"not valid JSON"):
            load()

    def test_force_loads_onto_a_compatible_but_different_base(self, tiny_model, saved):
        import transformers as T

        from tests.helpers import TINY_CONFIGS

        config = TINY_CONFIGS["bert"]()
        config.vocab_size = 200  # another tokenizer: same layer shapes, different fingerprint
        other = T.AutoModelForSequenceClassification.from_config(config)
        with pytest.raises(pc.BaseModelMismatchError, match=r"vocab_size: 101 vs 200"):
            pc.load_adapter(other, saved)
        pc.load_adapter(other, saved, force=True)
        assert pc.list_adapters(other) == ["a"]


class TestFingerprint:
    def test_ignores_the_head_and_sees_the_body(self, tiny_model):
        mlm = tiny_model("bert", "masked-lm")
        cls = tiny_model("bert", "classification")
        assert pc.fingerprint(mlm).digest == pc.fingerprint(cls).digest
        assert (
            pc.fingerprint(mlm).digest != pc.fingerprint(tiny_model("roberta", "masked-lm")).digest
        )

    def test_unchanged_by_injection(self, tiny_model):
        model = tiny_model("gpt2", "causal-lm")
        before = pc.fingerprint(model)
        pc.add_adapter(model, "a", pc.LoRA())
        pc.add_adapter(model, "b", pc.Houlsby())
        assert pc.fingerprint(model) == before

    def test_tokenizer_vocabulary_is_recorded_but_not_in_the_digest(self, minilm_dir):
        import dataclasses

        import transformers as T

        tokenizer = T.AutoTokenizer.from_pretrained(minilm_dir)
        model = T.AutoModel.from_pretrained(minilm_dir)
        with_vocab = pc.fingerprint(model, tokenizer)
        # the digest names the base model however the adapter was saved (the registry keys on it)
        assert with_vocab.vocab and with_vocab.digest == pc.fingerprint(model).digest
        assert with_vocab.matches(pc.fingerprint(model))  # absent on one side: not a mismatch
        other_vocab = dataclasses.replace(with_vocab, vocab="0" * 64)
        assert other_vocab.differences(with_vocab) == ["tokenizer vocabularies differ"]


class TestWarningsPolicy:
    def test_library_deprecations_are_errors_in_tests(self):
        with pytest.raises(DeprecationWarning), warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.warn("x", DeprecationWarning, stacklevel=1)
