"""What ships beside the code: example specs and the CI workflow that builds changed specs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from flows.cli.build import plan_spec
from flows.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
METHODS = ("lora", "bitfit", "houlsby", "pfeiffer", "full")


class TestExamples:
    def test_sst2_in_both_languages_with_every_method_and_a_language_adapter(self):
        names = {p.stem for p in EXAMPLES}
        assert {f"minilm-sst2-{lang}-{m}" for lang in ("en", "pt") for m in METHODS} <= names
        assert "minilm-pt-language-pfeiffer" in names

    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_each_example_is_valid_and_its_data_exists(self, path: Path, sst2_dir: Path):
        spec = load_spec(path)
        assert spec.name == path.stem
        assert spec.data.train is not None and Path(spec.data.train).is_file()
        assert spec.schedule.cron is not None
        costs = plan_spec(spec)
        expected_fraction = 1.0 if spec.method.type == "full" else 0.05
        assert 0 < costs.trainable_fraction <= expected_fraction


class TestCiWorkflow:
    workflow = yaml.safe_load((ROOT / "infra" / "ci" / "build-adapters.yml").read_text())

    def test_builds_changed_specs_against_the_configured_stack(self):
        (job,) = self.workflow["jobs"].values()
        script = "\n".join(step.get("run", "") for step in job["steps"])
        assert "infra/ci/changed-specs.sh" in script and 'adapterops build "$spec" --json' in script
        expected = {
            "ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL", "MLFLOW_TRACKING_URI",
            "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        }  # fmt: skip
        assert expected <= set(job["env"])
        # PyYAML reads the key `on` as True (YAML 1.1).
        assert self.workflow[True]["push"]["paths"] == ["examples/**.yaml", "specs/**.yaml"]

    def test_changed_specs_lists_added_and_modified_specs_only(self, tmp_path: Path):
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
            ).stdout.strip()

        git("init", "-q")
        git("config", "user.email", "ci@example.com")
        git("config", "user.name", "ci")
        (tmp_path / "examples").mkdir()
        for name in ("a", "b", "c"):
            (tmp_path / "examples" / f"{name}.yaml").write_text(f"name: {name}\n")
        git("add", ".")
        git("commit", "-qm", "first")
        base = git("rev-parse", "HEAD")
        (tmp_path / "examples" / "a.yaml").write_text("name: a\nchanged: true\n")
        (tmp_path / "examples" / "c.yaml").unlink()
        (tmp_path / "examples" / "d.yaml").write_text("name: d\n")
        (tmp_path / "README.md").write_text("not a spec\n")
        git("add", "-A")
        git("commit", "-qm", "second")
        head = git("rev-parse", "HEAD")

        script = str(ROOT / "infra" / "ci" / "changed-specs.sh")

        def changed(old: str) -> list[str]:
            return subprocess.run(
                [script, old, head], cwd=tmp_path, capture_output=True, text=True, check=True
            ).stdout.split()

        assert changed(base) == ["examples/a.yaml", "examples/d.yaml"]
        assert changed("0" * 40) == ["examples/a.yaml", "examples/b.yaml", "examples/d.yaml"]
