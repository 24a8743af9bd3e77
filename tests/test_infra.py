"""What ships beside the code: example specs and the CI workflow that builds changed specs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from flows.planning import plan_spec
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
        job = self.workflow["jobs"]["build"]
        assert job["if"] == "github.event_name == 'push'"
        script = "\n".join(step.get("run", "") for step in job["steps"])
        assert "infra/ci/changed-specs.sh" in script and 'adapterops build "$spec" --json' in script
        expected = {
            "ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL", "MLFLOW_TRACKING_URI",
            "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        }  # fmt: skip
        assert expected <= set(job["env"])
        # servers with logins; unset secrets arrive empty (tests/flows/test_mlflow_server.py
        # runs its builds and promotions with these empty)
        logins = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"}
        assert {job["env"][k] for k in logins} == {f"${{{{ secrets.{k} }}}}" for k in logins}
        # PyYAML reads the key `on` as True (YAML 1.1).
        assert self.workflow[True]["push"]["paths"] == ["examples/**.yaml", "specs/**.yaml"]

    def test_a_pull_request_is_checked_with_a_dry_run_that_builds_nothing(self):
        job = self.workflow["jobs"]["check"]
        assert job["if"] == "github.event_name == 'pull_request'"
        script = "\n".join(step.get("run", "") for step in job["steps"])
        assert "infra/ci/changed-specs.sh" in script
        assert "adapterops retrain $specs --dry-run" in script and "adapterops build" not in script
        # it reads the registry; it neither tracks runs nor starts flows
        assert {"ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL"} <= set(job["env"])
        assert not {"MLFLOW_TRACKING_URI", "PREFECT_API_URL"} & set(job["env"])
        assert self.workflow[True]["pull_request"]["paths"] == self.workflow[True]["push"]["paths"]

    def test_a_secret_that_is_not_set_fails_the_job_before_it_builds(self):
        """An unset secret arrives empty, and an empty ADAPTEROPS_REGISTRY_URL is the embedded
        default: the build job trained and promoted into a new registry on the runner, and
        passed."""
        script = str(ROOT / "infra" / "ci" / "require-variables.sh")
        for job, needed in (
            ("check", ["ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL"]),
            ("build", ["ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL",
                       "MLFLOW_TRACKING_URI", "PREFECT_API_URL"]),
        ):  # fmt: skip
            steps = [step.get("run", "") for step in self.workflow["jobs"][job]["steps"]]
            [check] = [i for i, run in enumerate(steps) if "require-variables.sh" in run]
            assert check < next(i for i, run in enumerate(steps) if "adapterops" in run)
            assert steps[check].split()[1:] == needed, job
        given = {"PATH": os.environ["PATH"], "ADAPTEROPS_REGISTRY_URL": "postgresql://db/r",
                 "ADAPTEROPS_ARTIFACTS_URL": " "}  # fmt: skip
        names = ["ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL", "MLFLOW_TRACKING_URI"]
        refused = subprocess.run(
            [script, *names], env=given, capture_output=True, text=True, check=False
        )
        assert (refused.returncode, refused.stdout.splitlines()) == (1, [
            f"::error::{name} is empty: set the repository secret {name} (see "
            "infra/ci/build-adapters.yml)" for name in names[1:]
        ])  # fmt: skip
        given |= {"ADAPTEROPS_ARTIFACTS_URL": "s3://b/r", "MLFLOW_TRACKING_URI": "http://m"}
        passed = subprocess.run(
            [script, *names], env=given, capture_output=True, text=True, check=False
        )
        assert (passed.returncode, passed.stdout) == (0, "")

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


INFRA = ROOT / "infra"


def client_variables() -> set[str]:
    """What the code reads to find the stack: the keys `adapterops stack up` writes."""
    from infra.stack.local import LocalStack

    with tempfile.TemporaryDirectory() as home:  # client_env writes the stack's password file
        return set(LocalStack(home=Path(home)).client_env())


class TestCompose:
    compose = yaml.safe_load((INFRA / "compose" / "docker-compose.yml").read_text())

    def test_every_service_the_stack_needs_is_there_with_its_port(self):
        services = self.compose["services"]
        assert {"postgres", "s3", "buckets", "mlflow", "prefect", "worker"} <= set(services)
        published = {name: s.get("ports", []) for name, s in services.items()}
        assert published["postgres"] == ["5432:5432"] and published["s3"] == ["8333:8333"]
        assert published["mlflow"] == ["5000:5000"] and published["prefect"] == ["4200:4200"]

    def test_dependencies_and_volumes_resolve(self):
        services = self.compose["services"]
        for name, service in services.items():
            depends = service.get("depends_on", [])
            assert set(depends) <= set(services), f"{name} depends on an unknown service"
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if not source.startswith("."):
                    assert source in self.compose["volumes"], f"{name}: undeclared {source}"
                else:
                    assert (INFRA / "compose" / source).exists(), f"{name}: missing {source}"

    def test_the_worker_gets_every_client_variable_and_a_gpu(self):
        worker = self.compose["services"]["worker"]
        assert client_variables() <= set(worker["environment"])
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        assert worker["command"][:4] == ["worker", "start", "--pool", "adapterops"]

    def test_postgres_creates_the_three_databases(self):
        sql = (INFRA / "compose" / "postgres-init.sql").read_text()
        for database in ("adapterops_registry", "mlflow", "prefect"):
            assert f"CREATE DATABASE {database};" in sql
        urls = " ".join(
            str(v) for s in self.compose["services"].values() for v in s.get("command", [])
        ) + str(self.compose["x-client-env"])
        assert "/mlflow" in urls and "/adapterops_registry" in urls

    def test_variables_used_are_documented_in_the_env_example(self):
        text = (INFRA / "compose" / "docker-compose.yml").read_text()
        example = (INFRA / "compose" / ".env.example").read_text()
        for variable in set(re.findall(r"\$\{(\w+)\}", text)):
            assert f"{variable}=" in example


class TestDockerfile:
    text = (INFRA / "docker" / "Dockerfile").read_text()

    def test_cuda_base_torch_first_and_the_package_installed(self):
        lines = [line.strip() for line in self.text.splitlines()]
        assert any(line.startswith("FROM nvidia/cuda:") for line in lines)
        torch = next(i for i, line in enumerate(lines) if "pip install torch" in line)
        package = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install ."))
        assert torch < package
        for folder in ("peft_core", "registry", "flows"):
            assert f"COPY {folder} ./{folder}" in self.text and (ROOT / folder).is_dir()
        assert 'ENTRYPOINT ["adapterops"]' in self.text


K8S_DOCUMENTS = [
    doc
    for path in sorted((INFRA / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]


class TestKubernetes:
    documents = K8S_DOCUMENTS
    template = json.loads((INFRA / "k8s" / "work-pool-gpu.json").read_text())

    def test_manifests_are_well_formed(self):
        for doc in self.documents:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
            assert doc["metadata"]["name"]
        kinds = {d["kind"] for d in self.documents}
        assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Role", "RoleBinding"} <= kinds

    def test_pods_get_every_client_variable(self):
        by_kind = {d["kind"]: d for d in self.documents}
        provided = set(by_kind["ConfigMap"]["data"]) | set(by_kind["Secret"]["stringData"])
        assert client_variables() <= provided
        (container,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
        sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {
            by_kind["ConfigMap"]["metadata"]["name"],
            by_kind["Secret"]["metadata"]["name"],
        }

    def test_the_worker_migrates_the_registry_schema_before_it_starts(self):
        deployment = next(d for d in self.documents if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["command"] == ["adapterops", "db", "upgrade"]
        assert init["image"] == pod["containers"][0]["image"]
        assert init["envFrom"] == pod["containers"][0]["envFrom"]

    def test_training_jobs_request_gpus(self):
        job = self.template["job_configuration"]["job_manifest"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
        assert self.template["variables"]["properties"]["gpu_count"]["default"] == 1
        # Every {{ placeholder }} in the job is a declared variable.
        used = set(re.findall(r"\{\{ (\w+) \}\}", str(self.template["job_configuration"])))
        assert used <= set(self.template["variables"]["properties"])
