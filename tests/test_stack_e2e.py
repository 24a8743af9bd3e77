"""End to end on the local stack (`adapterops stack up`): PostgreSQL, SeaweedFS, an MLflow server,
a Prefect server and worker. Two specs are deployed, run by the worker through the Prefect server,
and checked through each service's own client; then the stack restarts and nothing is lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from infra.stack import free_port
from registry import Registry
from tests.flows.test_cli_flows import clean_env
from tests.flows.test_pipelines import write_spec
from tests.helpers import run_cli
from tests.registry.workers import write_fake_adapter

TRIED_BEFORE = "tried-before"  # an adapter in the embedded registry before the stack started
SPECS = {
    "e2e-sst2-en-lora": ("en", {"type": "lora", "rank": 4}),
    "e2e-sst2-pt-pfeiffer": ("pt", {"type": "pfeiffer", "reduction_factor": 32}),
}


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    # Not under pytest's tmp_path (mode 700): the postgres user must enter the stack's folder.
    # One folder holds the stack's home and the user's home folder clean_env makes beside it.
    root = Path(tempfile.mkdtemp(prefix="adapterops-stack-"))
    root.chmod(0o755)
    path = root / "home"
    path.mkdir(mode=0o755)
    yield path
    run_cli("stack", "down", env=clean_env(path))
    shutil.rmtree(root, ignore_errors=True)


def port_options() -> list[str]:
    s3 = free_port(also_free_at=(1, 2, 3, 10000, 10001, 10002, 10003))
    return [
        "--postgres-port", str(free_port()), "--s3-port", str(s3),
        "--mlflow-port", str(free_port()), "--prefect-port", str(free_port()),
    ]  # fmt: skip


def stack_env(home: Path) -> dict[str, str]:
    lines = (home / "stack.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def spec_for(home: Path, sst2_dir: Path, name: str, language: str, method: dict) -> Path:
    return write_spec(
        home, sst2_dir, name=name, language=language, method=method,
        data__train=str(sst2_dir / language / "train.tsv"),
        data__validation=str(sst2_dir / language / "validation.tsv"),
        schedule={"cron": "30 2 * * *"},
    )  # fmt: skip


def up(home: Path, *options: str) -> dict:
    result = run_cli("stack", "up", *options, "--json", env=clean_env(home))
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert all(s["running"] for s in document["services"]), document
    return document


def test_a_port_in_use_is_a_clear_error_before_anything_starts(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("stack", "up", "--mlflow-port", str(port), env=clean_env(tmp_path))
    assert result.returncode == 2
    assert f"mlflow port {port}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "stack" / "postgres").exists()


def test_two_services_on_one_port_are_refused_before_anything_starts(tmp_path: Path):
    """SeaweedFS failed to start after PostgreSQL had started on the port both were given."""
    port = free_port(also_free_at=(1, 2, 3))
    options = ["--postgres-port", str(port + 2), "--s3-port", str(port)]  # the volume server's
    result = run_cli("stack", "up", *options, env=clean_env(tmp_path))
    assert (result.returncode, result.stderr) == (2, (
        f"error: two services on one port: {port + 2} (postgres and s3 volume). Give each its "
        "own (SeaweedFS also takes the three ports after --s3-port, and each of its four + "
        "10000)\n"
    ))  # fmt: skip
    assert not (tmp_path / "stack").exists()


def test_a_failed_up_leaves_nothing_that_down_cannot_stop(home: Path, monkeypatch):
    """SeaweedFS failing after PostgreSQL had started left PostgreSQL running, unrecorded:
    `stack down` said there was no stack, and `stack status` showed it running."""
    from infra.stack.local import LocalStack, StackPorts

    s3 = free_port(also_free_at=(1, 2, 3, 10000, 10001, 10002, 10003))
    stack = LocalStack(home, StackPorts(postgres=free_port(), s3=s3))

    def refuse() -> None:
        raise RuntimeError("SeaweedFS exited with 255")

    monkeypatch.setattr(stack.seaweed, "start", refuse)
    with pytest.raises(RuntimeError, match="SeaweedFS exited"):
        stack.up()
    assert stack.postgres.running and LocalStack(home).exists
    LocalStack(home).down()
    assert not stack.postgres.running


def test_deployed_specs_run_on_the_worker_and_survive_a_restart(home: Path, sst2_dir: Path):
    tried_before = Registry(f"sqlite:///{home / 'registry.db'}", home / "artifacts")
    tried_before.register(write_fake_adapter(home.parent / "adapter", 1), name=TRIED_BEFORE,
                          base_model="tiny-bert", task="sst2", language="en")  # fmt: skip
    up(home, *port_options())
    config = stack_env(home)
    # adapters built on the embedded defaults before the stack: said, then moved into it
    again = run_cli("stack", "up", env=clean_env(home))
    assert (
        again.returncode == 0
        and (
            f"note: the embedded registry {home / 'registry.db'} holds 1 version(s), which the "
            "stack's settings now hide from commands here: `adapterops db move --to-stack` moves "
            "them into the stack\n"
        )
        in again.stderr
    )
    # another S3's address in the shell (as the test run's own): the stack's is used regardless
    elsewhere = {**clean_env(home), "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    moved = run_cli("db", "move", "--to-stack", "--json", env=elsewhere)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert json.loads(moved.stdout)["database"].startswith("postgresql+psycopg://")
    assert "note:" not in run_cli("stack", "up", env=clean_env(home)).stderr  # moved: not hidden
    # up means the worker polls: a deploy straight after said none did
    pool = urllib.request.urlopen(f"{config['PREFECT_API_URL']}/work_pools/adapterops", timeout=5)
    assert json.load(pool)["status"] == "READY"
    # a running service is not moved: it was taken for running on the new port, unreachable
    moved = run_cli("stack", "up", "--postgres-port", str(free_port()), env=clean_env(home))
    port = config["ADAPTEROPS_REGISTRY_URL"].rsplit(":", 1)[1].split("/")[0]
    assert (moved.returncode, moved.stderr) == (2, (
        f"error: postgres runs on port {port}: `adapterops stack down` first, then `stack up` "
        "with the new port (remembered from then on)\n"
    ))  # fmt: skip
    specs = [spec_for(home, sst2_dir, name, *details) for name, details in SPECS.items()]
    deployed = run_cli("deploy", *map(str, specs), "--json", env=clean_env(home))
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert json.loads(deployed.stdout)["pool"] == {"name": "adapterops", "status": "READY"}
    assert "warning" not in deployed.stderr, deployed.stderr[-3000:]

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: config["PREFECT_API_URL"]}):
        runs = [run_deployment(f"build/{name}", timeout=0) for name in SPECS]
        deadline = time.monotonic() + 600
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                states = [client.read_flow_run(r.id).state for r in runs]
                if all(s.is_final() for s in states):
                    break
                time.sleep(3)
        log = (home / "stack" / "logs" / "prefect-worker.log").read_text()[-4000:]
        assert all(s.is_completed() for s in states), log

    check_everything(home, config)

    result = run_cli("stack", "down", "--json", env=clean_env(home))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not any(s["running"] for s in json.loads(result.stdout)["services"])
    stopped = run_cli("stack", "status", env=clean_env(home))
    assert stopped.returncode == 1
    up(home)  # the ports were remembered
    check_everything(home, config)


def check_everything(home: Path, config: dict[str, str]) -> None:
    """Registry (PostgreSQL), artifacts (SeaweedFS), MLflow and Prefect, each by its own client."""
    saved = dict(os.environ)
    os.environ.update({**config, "ADAPTEROPS_HOME": str(home)})
    try:
        from registry import Registry

        registry = Registry()
        assert registry.database.url.startswith("postgresql+psycopg://")
        versions = {v.name: v for v in registry.find()}
        assert set(versions) == {*SPECS, TRIED_BEFORE}
        assert versions.pop(TRIED_BEFORE).artifact_uri.startswith("s3://")
        # A new session: boto3's default one keeps the first credentials this process resolved
        # (another test's S3 server, when tests run in another order).
        s3 = boto3.session.Session().client("s3", endpoint_url=config["AWS_ENDPOINT_URL_S3"])
        mlflow = MlflowClient(config["MLFLOW_TRACKING_URI"], config["MLFLOW_TRACKING_URI"])
        for name, version in versions.items():
            assert version.version == 1 and version.aliases == ("champion",)
            assert {"dataset_fingerprint", "code_version", "run_id", "build_key"} <= set(
                version.lineage
            )
            bucket, _, key = version.artifact_uri.removeprefix("s3://").partition("/")
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == version.digest  # the manifest's bytes

            run = mlflow.get_run(version.lineage["run_id"])
            assert run.info.status == "FINISHED" and "eval_accuracy" in run.data.metrics
            assert mlflow.get_model_version_by_alias(name, "champion").version == "1"
            assert len(mlflow.search_model_versions(f"name='{name}'")) == 1

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: config["PREFECT_API_URL"]}),
            get_client(sync_client=True) as client,
        ):
            for name in SPECS:
                deployment = client.read_deployment_by_name(f"build/{name}")
                assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * *"]
                assert deployment.work_pool_name == "adapterops"
            builds = {client.read_deployment_by_name(f"build/{n}").id for n in SPECS}
            runs = client.read_flow_runs()
            completed = [r for r in runs if r.deployment_id in builds and r.state.is_completed()]
            assert len(completed) == len(SPECS)  # (sync/aliases runs on its own interval)
            syncing = client.read_deployment_by_name("sync/aliases")
            assert [s.schedule.interval.total_seconds() for s in syncing.schedules] == [300]
    finally:
        os.environ.clear()
        os.environ.update(saved)
