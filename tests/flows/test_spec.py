"""Spec files: valid specs parse, every problem of an invalid one is reported by its YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import peft_core as pc
from flows.spec import SpecError, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

VALID = {
    "name": "minilm-sst2-en-lora",
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "task": "sst2",
    "language": "en",
    "head": {"type": "classification", "num_labels": 2},
    "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q", "v"]},
    "data": {"train": "t.tsv", "validation": "v.tsv", "text": "sentence", "label": "label"},
    "train": {"epochs": 1, "max_steps": None, "batch_size": 32, "learning_rate": 5.0e-4},
    "evaluate": {"metric": "accuracy"},
    "promote": {"alias": "champion", "min_delta": 0.0},
    "schedule": {"cron": "0 3 * * 1"},
}


def with_(**changes):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    for dotted, value in changes.items():
        node = document
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return document


def problems(document) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    return dict(caught.value.problems)


class TestValidSpecs:
    def test_the_documented_shape_parses_into_a_method_config(self):
        spec = parse_spec(VALID)
        assert spec.method.to_config() == pc.LoRA(rank=8, alpha=16, targets=("q", "v"))

    @pytest.mark.parametrize(
        ("method", "expected"),
        [
            ({"type": "bitfit"}, pc.BitFit()),
            ({"type": "houlsby", "reduction_factor": 16}, pc.Houlsby(reduction_factor=16)),
            ({"type": "pfeiffer", "bottleneck": 24}, pc.Pfeiffer(bottleneck=24)),
            ({"type": "full"}, pc.FullFineTune()),
        ],
    )
    def test_every_method(self, method, expected):
        assert parse_spec(with_(method=method)).method.to_config() == expected

    def test_every_example_file_is_valid(self):
        files = sorted(EXAMPLES.rglob("*.yaml"))
        assert EXAMPLES / "llm" / "llama-3.2-1b-chat-qlora.yaml" in files and len(files) > 10
        for file in files:
            load_spec(file)

    def test_the_llm_example_plans_its_memory_on_llama_3_2_1b(self, tmp_path):
        """The QLoRA example on Llama-3.2-1B's shapes (config.json only, as ``plan`` needs):
        the README's figures."""
        from transformers import LlamaConfig

        from flows.planning import plan_spec, plan_step

        LlamaConfig(
            hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        ).save_pretrained(tmp_path)  # fmt: skip
        spec = load_spec(EXAMPLES / "llm" / "llama-3.2-1b-chat-qlora.yaml")
        spec = spec.model_copy(update={"base_model": str(tmp_path)})
        costs = plan_spec(spec)
        assert costs.total_params - costs.trainable_params == 1_235_814_400
        assert costs.trainable_params == 11_272_192  # r=16 on the 7 linear layers of 16 blocks
        assert round(costs.base_bytes / 2**30, 2) == 0.96  # NF4 body, bf16 embeddings (tied)
        assert costs.training_bytes == 16 * costs.trainable_params  # 172 MiB
        assert costs.adapter_bytes == 2 * costs.trainable_params  # written in bf16: 21.5 MiB
        # one step of 8 x 1024 tokens in bf16 with checkpointing: the 128k-word logits and
        # their loss hold most of it
        step = plan_step(spec)
        assert step is not None and step.weights_bytes == costs.base_bytes + 4 * 11_272_192
        assert round(step.peak_bytes / 2**30, 1) == 13.4
        without = plan_step(
            spec.model_copy(
                update={"train": spec.train.model_copy(update={"gradient_checkpointing": False})}
            )
        )
        assert without is not None and round(without.peak_bytes / 2**30, 1) == 38.0

    def test_data_paths_are_relative_to_the_spec_file(self, tmp_path):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(VALID))
        spec = load_spec(tmp_path / "spec.yaml")
        assert spec.data.train == str(tmp_path / "t.tsv")

    def test_overrides(self, tmp_path):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(VALID))
        spec = load_spec(tmp_path / "spec.yaml", ["train.max_steps=7", "method.targets=[q, k]"])
        assert spec.train.max_steps == 7
        assert spec.method.to_config().targets == ("q", "k")

    def test_a_value_that_is_not_yaml_is_a_spec_error(self, tmp_path):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(VALID))
        with pytest.raises(SpecError) as raised:  # was yaml's ParserError, a traceback
            load_spec(tmp_path / "spec.yaml", ["train.batch_size=[", "method.type=["])
        assert str(raised.value) == (
            f"{tmp_path / 'spec.yaml'}: 2 problems: train.batch_size: the value '[' is not YAML "
            "(while parsing a flow node); method.type: the value '[' is not YAML (while parsing "
            "a flow node)"
        )

    def test_an_empty_value_is_refused_and_null_clears(self, tmp_path):
        """``--set train.max_steps=$STEPS`` with STEPS unset: YAML read the empty value as null,
        which trained by epochs instead of the steps meant."""
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(with_(train={"max_steps": 5})))
        with pytest.raises(SpecError) as raised:
            load_spec(tmp_path / "spec.yaml", ["train.max_steps=", "train.seed= "])
        assert str(raised.value) == (
            f"{tmp_path / 'spec.yaml'}: 2 problems: train.max_steps: no value after '=' (an "
            "unset variable?); key=null clears it; train.seed: no value after '=' (an unset "
            "variable?); key=null clears it"
        )
        assert load_spec(tmp_path / "spec.yaml", ["train.max_steps=null"]).train.max_steps is None

    def test_another_method_type_starts_that_methods_fields_afresh(self, tmp_path):
        """--set method.type=bitfit on a LoRA spec: LoRA's rank and alpha were four "unknown
        field" errors of BitFit."""
        (tmp_path / "spec.yaml").write_text(
            yaml.safe_dump(with_(method={"type": "lora", "rank": 8}))
        )
        assert load_spec(tmp_path / "spec.yaml", ["method.type=bitfit"]).method.type == "bitfit"
        same = load_spec(tmp_path / "spec.yaml", ["method.type=lora", "method.alpha=4"])
        assert (same.method.to_config().rank, same.method.to_config().alpha) == (8, 4.0)
        for overrides in (
            ["method.type=bitfit", "method.rank=4"],
            ["method.rank=4", "method.type=ia3"],
        ):
            with pytest.raises(SpecError, match=r"method.rank: unknown field"):  # given: told
                load_spec(tmp_path / "spec.yaml", overrides)


def test_the_default_metric_follows_the_head():
    causal = with_(head={"type": "causal-lm"})
    del causal["evaluate"]
    assert parse_spec(causal).evaluate.metric == "perplexity"
    classifier = with_()
    del classifier["evaluate"]
    assert parse_spec(classifier).evaluate.metric == "accuracy"
    wrong = with_(head={"type": "causal-lm"}, evaluate={"metric": "accuracy"})  # written: kept
    assert "does not fit a causal-lm head" in problems(wrong)["(top)"]


def test_labels_can_be_named():
    named = parse_spec(with_(head={"type": "classification", "label_names": ["neg", "pos"]}))
    assert (named.head.num_labels, named.head.label_names) == (2, ["neg", "pos"])
    both = parse_spec(with_(head__label_names=["neg", "pos"]))  # num_labels 2 as well: agree
    assert both.head.label_names == ["neg", "pos"]
    assert problems(with_(head__label_names=["a", "b", "c"]))["head"].startswith(
        "label_names has 3 names for 2 labels: give one name per label, label 0 first"
    )
    assert "must differ" in problems(with_(head__label_names=["a", "a"]))["head"]
    empty = problems(with_(head__label_names=["a", ""]))
    assert empty == {"head.label_names.1": "String should have at least 1 character"}
    lm = with_(
        head={"type": "masked-lm", "label_names": ["a", "b"]}, evaluate={"metric": "perplexity"}
    )
    assert "apply to classification heads, not masked-lm" in problems(lm)["head"]


class TestInvalidSpecs:
    def test_every_problem_is_listed_by_path(self):
        found = problems(
            with_(
                name="bad/name",
                method={"type": "lora", "rank": 0},
                train__batch_size=0,
                head={"type": "classification"},
                schedule={"cron": "every monday"},
                extra_field=1,
            )
        )
        assert set(found) == {
            "name",
            "method",
            "train.batch_size",
            "head",
            "schedule.cron",
            "extra_field",
        }
        assert "rank must be >= 1" in found["method"]
        assert "num_labels" in found["head"]
        assert "unknown field" in found["extra_field"]
        # in words, not pydantic's "String should match pattern '^[A-Za-z0-9]...'"
        assert found["name"] == (
            "use 1-128 letters, digits, '_' or '-', starting with a letter or digit (no '/', "
            "'.' or spaces), got 'bad/name'"
        )
        assert problems(with_(language="English")) == {
            "language": "a language code: 2-3 lowercase letters, then optionally '-' or '_' and "
            "a region or script (en, pt, pt-BR, zh_Hant), got 'English'"
        }

    @pytest.mark.parametrize(
        ("given", "told"),
        [
            ("loraa", "unknown method type 'loraa': did you mean 'lora'? one of lora, dora, ia3, "),
            ("IA_3", "unknown method type 'IA_3': did you mean 'ia3'? one of lora, dora, ia3, "),
            ("xyz", "unknown method type 'xyz': one of lora, dora, ia3, bitfit, "),
            ("QLoRA", "QLoRA is written method: {type: lora, ...} with load: {quantization: nf4}"),
            ("vera", "'vera' is one of peft's methods: write method: {type: peft, config: "
             "{peft_type: VERA, ...}}"),
            ("prefix-tuning", "{type: peft, config: {peft_type: PREFIX_TUNING, ...}}"),
        ],
    )  # fmt: skip
    def test_unknown_method_type_says_what_to_write(self, given, told):
        assert told in problems(with_(method={"type": given}))["method"]

    @pytest.mark.parametrize(
        ("given", "dtype"),
        [("bfloat16", "bf16"), ("torch.float16", "fp16"), ("half", "fp16"), ("BF16", "bf16"),
         ("float32", "fp32"), ("fp32", "fp32")],
    )  # fmt: skip
    def test_a_dtype_as_torch_names_it_is_that_dtype(self, given, dtype):
        """transformers' torch_dtype: bfloat16 was "Input should be 'auto', 'bf16', ..."."""
        spec = parse_spec(with_(load={"dtype": given}))
        assert spec.load.dtype == dtype and spec.model_dump()["load"]["dtype"] == dtype

    @pytest.mark.parametrize(
        ("given", "told"),
        [("4bit", "4-bit is written nf4 (QLoRA's 4-bit NormalFloat, through torchao), got '4bit'"),
         ("load_in_4bit", "4-bit is written nf4 (QLoRA's 4-bit NormalFloat, through torchao), "
          "got 'load_in_4bit'"),
         ("8-bit", "8-bit is written int8 (weight-only, per channel), got '8-bit'"),
         ("int3", "Input should be 'none', 'nf4' or 'int8'")],
    )  # fmt: skip
    def test_quantization_in_other_words_says_how_it_is_written(self, given, told):
        assert problems(with_(load={"quantization": given})) == {"load.quantization": told}
        assert parse_spec(with_(load={"quantization": "NF4"})).load.quantization == "nf4"

    def test_a_head_written_as_its_type_alone_is_that_head(self):
        """head: causal-lm was "Input should be a valid dictionary or instance of HeadSpec"."""
        spec = parse_spec(with_(head="causal-lm", evaluate={"metric": "perplexity"}))
        assert spec.head.type == "causal-lm" and spec.model_dump()["head"]["num_labels"] is None
        document = with_(head="masked-lm")
        document.pop(
            "evaluate", None
        )  # the metric follows the head written alone, as a whole one's
        assert parse_spec(document).evaluate.metric == "perplexity"
        assert problems(with_(head="classification")) == {
            "head": "a classification head needs num_labels (>= 2) or label_names"
        }

    @pytest.mark.parametrize(
        ("given", "fields"),
        [("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"), ("@HOURLY", "0 * * * *")],
    )
    def test_a_cron_shorthand_is_its_five_fields(self, given, fields):
        """Prefect takes @daily; retrain's reading of the schedule did not, so it was refused."""
        assert parse_spec(with_(schedule={"cron": given})).schedule.cron == fields
        assert problems(with_(schedule={"cron": "daily"})) == {
            "schedule.cron": "cron must have 5 fields (minute hour day month weekday) or be one "
            "of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually, got 'daily'"
        }

    @pytest.mark.parametrize(
        ("fields", "told"),
        [({"train": {"eval_evry": 10}}, ("train.eval_evry", "unknown field: did you mean eval_every?")),
         ({"method": {"type": "lora", "rnak": 4}}, ("method.rnak", "unknown field: did you mean rank?")),
         ({"trian": {}}, ("trian", "unknown field: did you mean train?")),
         ({"train": {"zzz": 1}}, ("train.zzz", "unknown field (check the spelling)"))],
    )  # fmt: skip
    def test_a_misspelt_field_names_the_one_it_is_closest_to(self, fields, told):
        document = with_()
        for section, values in fields.items():
            document[section] = {**document.get(section, {}), **values}
        assert problems(document) == dict([told])

    @pytest.mark.parametrize(
        ("changes", "told"),
        [({"data__text": ""}, ("data.text", "empty: give a column's name")),
         ({"data__label": " "}, ("data.label", "empty: give a column's name, or null for none")),
         ({"data__text_pair": ""}, ("data.text_pair", "empty: give a column's name, or null for none")),
         ({"data__train": ""}, ("data.train", "empty: give a file, or null for none")),
         ({"data__validation_split": ""}, ("data.validation_split", "empty: give a split's name, or null for none")),
         ({"base_model": ""}, ("base_model", "empty: give a Hugging Face model id or a folder with its config.json"))],
    )  # fmt: skip
    def test_a_blank_name_is_said_as_such(self, changes, told):
        """An unset variable in a spec template: ``text: ''`` ended in a KeyError mid-build,
        ``label: ''`` trained a classifier with no labels ("the model returned no loss"),
        ``train: ''`` read the spec's folder, ``text_pair: ''`` was taken for none,
        ``base_model: ''`` was the folder ``.``, "not a model"."""
        assert problems(with_(**changes)) == dict([told])

    def test_text_the_registry_cannot_store_is_refused_before_training(self):
        """A NUL in the base model's name was stored by SQLite (refused by PostgreSQL) and a
        lone surrogate failed in the SQL driver: both after the whole build had trained."""
        assert problems(with_(base_model="base\x00", description="caf\udce9")) == {
            "base_model": "base model 'base\\x00' holds the control character '\\x00' at "
            "position 4, which no registry database stores; remove it",
            "description": "text 'caf\\udce9' is not UTF-8 text: '\\udce9' at position 3 stands "
            "for a byte that was not decoded (a file, terminal or variable in another "
            "encoding?); give it as UTF-8",
        }

    def test_a_stored_spec_with_a_blank_field_that_may_be_none_reads_as_it_built(self):
        """A version registered before blank fields were refused (``text_pair: ''``, which its
        training took for none) still has a readable spec; a blank field no build got past
        stays refused."""
        from types import SimpleNamespace

        from flows.spec import spec_of_version

        stored = SimpleNamespace(ref="old@1", spec=with_(data__text_pair="", data__subset=" "))
        spec = spec_of_version(stored, "evaluate")
        assert (spec.data.text_pair, spec.data.subset, spec.data.text) == (None, None, "sentence")
        with pytest.raises(SpecError, match=r"data\.text: empty: give a column's name"):
            spec_of_version(SimpleNamespace(ref="old@2", spec=with_(data__text="")), "evaluate")

    def test_validation_during_training_needs_its_step_count_and_no_shards(self):
        assert problems(with_(train={"keep_best": True})) == {
            "train": "train.keep_best keeps the weights of the lowest validation loss, which "
            "train.eval_every measures: set it too (e.g. eval_every: 100)"
        }
        assert problems(with_(train={"patience": 3})) == {
            "train": "train.patience counts evaluations without a lower validation loss, which "
            "train.eval_every makes: set it too (e.g. eval_every: 100)"
        }
        assert problems(with_(train={"eval_rows": 500})) == {
            "train": "train.eval_rows is how many validation rows each evaluation during "
            "training scores, which train.eval_every asks for: set it too (e.g. eval_every: 100)"
        }
        assert problems(with_(train={"eval_every": 5, "eval_rows": 0})) == {
            "train.eval_rows": "Input should be greater than or equal to 1"
        }
        for sharding in ("ddp", "fsdp"):
            train = {"eval_every": 5, "keep_best": True, "processes": 2, "sharding": sharding}
            spec = parse_spec(with_(train=train))
            assert (spec.train.eval_every, spec.train.keep_best) == (5, True)

    def test_peft_fields_beside_type_peft_are_told_to_go_under_config(self):
        """They were four problems: config required, and each of peft's fields an unknown
        field "(check the spelling)", though each was spelt right."""
        method = {"type": "peft", "peft_type": "LOHA", "r": 8, "target_modules": ["query"]}
        assert problems(with_(method=method)) == {
            "method": "peft's own fields (peft_type, r, target_modules) go under config: write "
            "method: {type: peft, config: {peft_type: ..., r: ..., target_modules: ...}}"
        }
        method = {"type": "peft", "config": {"peft_type": "LOHA", "target_modules": ["query"]}}
        assert parse_spec(with_(method=method)).method.to_config().config["peft_type"] == "LOHA"
        with pytest.raises(pc.ConfigError) as raised:  # the Python API says the same
            pc.config_from_dict({"type": "peft", "peft_type": "LOHA", "r": 8})
        assert str(raised.value) == (
            "peft: unknown field(s) ['peft_type', 'r']; known fields: ['config']; peft's own "
            "fields go under config: {type: peft, config: {peft_type: ...}}"
        )

    @pytest.mark.parametrize(
        ("given", "kind"),
        [("LoRA", "lora"), ("IA3", "ia3"), ("BitFit", "bitfit"), ("DORA", "dora")],
    )
    def test_a_method_type_in_any_case_is_stored_in_one(self, given, kind):
        spec = parse_spec(with_(method={"type": given}))
        assert spec.method.type == kind and spec.model_dump()["method"]["type"] == kind

    def test_method_fields_and_defaults_come_from_the_peft_core_configs(self):
        spec = parse_spec(with_(method={"type": "ia3", "targets": ["k", "v"], "feedforward": []}))
        assert spec.method.to_config() == pc.IA3(targets=("k", "v"), feedforward=())
        spec = parse_spec(with_(method={"type": "dora", "rank": 4}))
        assert spec.method.to_config() == pc.DoRA(rank=4)  # alpha, targets: DoRA's own defaults
        found = problems(with_(method={"type": "dora", "rank": 0}))
        assert found == {"method": "DoRA rank must be >= 1, got 0"}
        found = problems(with_(method={"type": "ia3", "feedforward": ["q"]}))
        assert found == {"method": "feedforward ['q'] must also be listed in targets"}

    def test_metric_must_fit_the_head(self):
        found = problems(with_(head={"type": "masked-lm"}))
        assert "perplexity" in found["(top)"]

    def test_unreadable_yaml_and_missing_file(self, tmp_path):
        (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
        with pytest.raises(SpecError, match="yaml"):
            load_spec(tmp_path / "broken.yaml")
        with pytest.raises(SpecError, match="no such file"):
            load_spec(tmp_path / "missing.yaml")


class TestHostileSpecs:
    """What an adversarial trial fed a CI build (#16.3): each is a clear spec error now."""

    @pytest.mark.parametrize(
        ("changes", "path", "words"),
        [
            (
                {"head__num_labels": 1_000_000_000},
                "head.num_labels",
                "less than or equal to 100000",
            ),
            ({"method__rank": 10**30}, "method", "rank must be a whole number from 1 to 65536"),
            ({"method__alpha": float("inf")}, "method.alpha", "finite number"),
            ({"method__targets": ["q"] * 300_000}, "method", "at most 256"),
            ({"method__targets": ["x" * 5_000_000]}, "method", "at most 512"),
            ({"train__learning_rate": float("inf")}, "train.learning_rate", "finite number"),
            ({"train__epochs": float("inf")}, "train.epochs", "finite number"),
            ({"train__batch_size": 10**12}, "train.batch_size", "less than or equal to 65536"),
            ({"promote__min_delta": float("nan")}, "promote.min_delta", "finite number"),
            ({"promote__alias": "123"}, "promote.alias", "an alias cannot be a number"),
            ({"promote__alias": "a" * 65}, "promote.alias", "at most 64"),
            ({"promote__alias": "latest"}, "promote.alias", "MLflow, where reviewers see"),
            # accepted, then retrain failed on it at the scheduled run
            ({"schedule__cron": "61 * * * *"}, "schedule.cron", "cron '61 * * * *': bad minute"),
            ({"schedule__cron": "0 0 31 2 *"}, "schedule.cron", "bad day-of-month (minute 0-59"),
        ],
    )
    def test_each_is_refused_by_path(self, changes, path, words):
        found = problems(with_(**changes))
        assert path in found, found
        assert words in found[path], found[path]

    @pytest.mark.parametrize(
        "changes",
        [{"train__sharding": "fsdp", "train__precision": "fp16"},
         {"train__sharding": "fsdp", "load": {"dtype": "fp16"}}],  # auto: fp16 on an fp16 base
    )  # fmt: skip
    def test_fp16_with_fsdp_is_refused(self, changes):
        (message,) = problems(with_(**changes)).values()
        assert "fp16 loss scaling is not done for sharded models" in message
        parse_spec(with_(**{**changes, "train__precision": "bf16"}))  # bf16 autocast shards

    def test_an_int8_base_cannot_be_sharded(self):
        (message,) = problems(with_(train__sharding="fsdp", load={"quantization": "int8"})).values()
        assert message.startswith("load.quantization int8 cannot be sharded by FSDP2")
        assert "use nf4, or train.sharding: ddp" in message
        parse_spec(with_(load={"quantization": "int8"}))  # DDP replicates it: fine

    def test_a_lora_started_from_the_weights_is_a_spec_field(self):
        pissa = {"method__init": "pissa"}
        assert parse_spec(with_(**pissa)).method.init == "pissa"
        # FSDP holds the start shard by shard (tests/distributed/test_fsdp.py)
        assert parse_spec(with_(**pissa, train__sharding="fsdp")).train.sharding == "fsdp"
        assert "'default', 'pissa' or 'olora'" in problems(with_(method__init="svd"))["method.init"]

    def test_a_huge_reduction_factor_is_refused(self):
        document = with_(method={"type": "pfeiffer", "reduction_factor": 10**9})
        assert (
            "reduction_factor must be a whole number from 1 to 65536"
            in problems(document)["method"]
        )

    def test_unreadable_files(self, tmp_path):
        latin = tmp_path / "latin.yaml"
        latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
        nested = tmp_path / "nested.yaml"
        nested.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
        huge = tmp_path / "huge.yaml"
        huge.write_text("description: " + "x" * 1_100_000 + "\n")
        for file, words in [
            (latin, "not UTF-8 text"),
            (nested, "nested too deeply"),
            (huge, "a spec is at most 1048576"),
        ]:
            with pytest.raises(SpecError, match=words):
                load_spec(file)


def test_a_base_folder_beside_the_spec_read_from_elsewhere_says_where_it_is(tmp_path, monkeypatch):
    """``base_model: ./base`` is read from the current folder, data paths from the spec's: run
    from elsewhere (a build started from the repository root, a deployment's worker) it was
    "unknown base model './base'"; now the line says where it is and what to write."""
    specs = tmp_path / "specs"
    (specs / "base").mkdir(parents=True)
    (specs / "sentence-transformers" / "all-MiniLM-L6-v2").mkdir(parents=True)  # a mirror
    file = specs / "spec.yaml"
    file.write_text(yaml.safe_dump(with_(base_model="./base")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as refused:
        load_spec(file)
    assert str(refused.value) == (
        f"{file}: base_model: './base' is read from the current folder ({tmp_path}), which has "
        f"no such folder; the spec's folder has it: write its absolute path, {specs / 'base'}, "
        f"or run from {specs} (data paths are read from the spec's folder, base_model from the "
        "current one)"
    )
    monkeypatch.chdir(specs)  # from the spec's folder, as before
    assert load_spec(file).base_model == "./base"
    monkeypatch.chdir(tmp_path)  # a Hub name the machine has (here packaged) is that model
    file.write_text(yaml.safe_dump(VALID))
    assert load_spec(file).base_model == "sentence-transformers/all-MiniLM-L6-v2"
