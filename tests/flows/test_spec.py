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
        files = sorted(EXAMPLES.glob("*.yaml"))
        assert files
        for file in files:
            load_spec(file)

    def test_data_paths_are_relative_to_the_spec_file(self, tmp_path):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(VALID))
        spec = load_spec(tmp_path / "spec.yaml")
        assert spec.data.train == str(tmp_path / "t.tsv")

    def test_overrides(self, tmp_path):
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(VALID))
        spec = load_spec(tmp_path / "spec.yaml", ["train.max_steps=7", "method.targets=[q, k]"])
        assert spec.train.max_steps == 7
        assert spec.method.to_config().targets == ("q", "k")


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

    def test_unknown_method_type(self):
        found = problems(with_(method={"type": "vera"}))
        assert "method" in found and "'lora'" in found["method"] and "'ia3'" in found["method"]

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
