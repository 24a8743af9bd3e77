"""End to end against a real MLflow server (PostgreSQL backend, artifacts on SeaweedFS S3):
two builds of an adapter through the CLI, a promotion, then the registered model's page in
headless Chromium must show both versions, the ``champion`` alias and our tags.

The screenshot is kept in ``test-artifacts/mlflow-registered-model.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from mlflow.tracking import MlflowClient

from infra.stack import MlflowServer, free_port
from infra.stack.seaweedfs import SeaweedS3
from tests.helpers import run_cli
from tests.registry.conftest import fresh_bucket_url, fresh_postgres_url

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NAME = "e2e-sst2-en-lora"


@pytest.fixture(scope="module")
def mlflow_server(postgres, seaweed, service_dir) -> Iterator[MlflowServer]:
    postgres.create_database("mlflow_e2e")
    bucket = fresh_bucket_url().removesuffix("/adapters")
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=postgres.url("mlflow_e2e"),
        artifacts_destination=f"{bucket}/mlflow",
        log=service_dir / "mlflow.log",
    )
    server.start()
    yield server
    server.stop()


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is needed for the MLflow UI test: make services installs it")
    return found


def open_page(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000",
    ]  # fmt: skip
    try:
        return subprocess.run(
            [browser(), *flags, *extra, url],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def production_env(server: MlflowServer, postgres: Any, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment on production's services: PostgreSQL, S3 and the MLflow server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "ADAPTEROPS_HOME": str(tmp_path / "home"),
        "ADAPTEROPS_REGISTRY_URL": fresh_postgres_url(postgres),
        "ADAPTEROPS_ARTIFACTS_URL": fresh_bucket_url(),
        "MLFLOW_TRACKING_URI": server.url,
        # as the CI workflow (infra/ci) passes login secrets a repository does not set
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
        "PREFECT_API_AUTH_STRING": "",
    }


def test_versions_and_champion_reviewed_in_the_mlflow_ui(mlflow_server, postgres, tmp_path):
    env = production_env(mlflow_server, postgres, tmp_path)
    for seed in (0, 1):
        result = run_cli(
            "build", str(EXAMPLE), "--out", str(tmp_path / f"out-{seed}"),
            "--set", f"name={NAME}", "--set", "train.max_steps=4", "--set", f"train.seed={seed}",
            "--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=64",
            *(("--json",) if seed == 0 else ()), env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        # MLflow's log of waiting for each new version (READY at once) printed on every build,
        # and its two links at each run's end (four lines on stdout)
        assert " INFO mlflow" not in result.stderr, result.stderr[-3000:]
        assert "View run" not in result.stdout + result.stderr, result.stdout
        if seed == 0:
            built = json.loads(result.stdout)
            assert built["version"] == 1
            assert built["review_url"] == f"{mlflow_server.url}/#/models/{NAME}/versions/1"
        else:  # what a person reads: the verdict, then where a reviewer finds the version
            lines = result.stdout.splitlines()
            assert lines[0].startswith(f"{NAME}@2 "), result.stdout
            review = f"review: {mlflow_server.url}/#/models/{NAME}/versions/2"
            assert review in lines, result.stdout  # (the page it opens: below)
    # --force: whether @2 scores above @1 after 4 steps is chance; the guard is tested elsewhere
    promoted = run_cli("promote", f"{NAME}@2", "--force", "--json", env=env)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "champion" in json.loads(promoted.stdout)["aliases"]

    # both URIs explicit: earlier tests in this process set MLflow's global registry URI
    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    model = client.get_registered_model(NAME)
    assert model.aliases["champion"] == "2" and model.aliases["previous"] == "1"
    assert "challenger" not in model.aliases  # a promoted challenger stops being one
    assert client.get_model_version(NAME, "2").tags["adapterops.version"] == "2"
    run_id = client.get_model_version(NAME, "1").run_id
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        "adapter",
        "README.md",
        "loss_curve.png",
        "validation_answers.csv",
    }

    page = f"{mlflow_server.url}/#/models/{NAME}"
    dom = open_page(page, "--dump-dom").stdout
    expected_on_page = (
        NAME, "Version 1", "Version 2", "champion", "adapterops.version",
        "accuracy 0.",  # the description column starts with the score
    )  # fmt: skip
    for expected in expected_on_page:
        assert expected in dom, f"{expected!r} is not on {page}"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "mlflow-registered-model.png"
    screenshot.unlink(missing_ok=True)
    open_page(page, f"--screenshot={screenshot}", "--window-size=1400,1300")
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000

    # the links the commands print open those pages: the version a build mirrored, a run
    version_page = f"{mlflow_server.url}/#/models/{NAME}/versions/2"
    assert review in lines  # printed by the second build above
    dom = open_page(version_page, "--dump-dom").stdout
    assert "Version 2" in dom and "adapterops.version" in dom, f"not the version at {version_page}"
    scored = run_cli("evaluate", f"{NAME}@2", "--max-samples", "8", env=env)
    assert scored.returncode == 0, scored.stderr[-3000:]
    run_id = scored.stdout.split("recorded as MLflow run ")[1].split()[0]
    run_page = f"{mlflow_server.url}/#/runs/{run_id}"
    assert f"review: {run_page}" in scored.stdout.splitlines(), scored.stdout
    dom = open_page(run_page, "--dump-dom").stdout
    assert f"evaluate {NAME}@2" in dom, f"not the evaluation run at {run_page}"
    compared = run_cli("evaluate", f"{NAME}@1", f"{NAME}@2", "--max-samples", "8", env=env)
    assert compared.returncode == 0, compared.stderr[-3000:]
    reviews = [line for line in compared.stdout.splitlines() if line.startswith("review ")]
    assert [line.split(": ")[0] for line in reviews] == [f"review {NAME}@1", f"review {NAME}@2"]
    for line in reviews:  # each its own run's page, in the table's order
        run_id = line.rsplit("/", 1)[1]
        assert line.endswith(f": {mlflow_server.url}/#/runs/{run_id}") and run_id in compared.stdout


def test_a_long_description_fits_a_server_on_postgresql(mlflow_server, postgres, tmp_path):
    """MLflow's PostgreSQL store keeps 5,000 characters of a model version's description: a
    version pushed with longer release notes failed to mirror ("not in MLflow yet ...
    re-running completes the work", which it never did), and so did every promotion of it."""
    from tests.registry.workers import write_fake_adapter

    env = production_env(mlflow_server, postgres, tmp_path)
    notes = "A release note line that goes on for a while. " * 250  # 11,750 characters
    folder = write_fake_adapter(tmp_path / "adapter", 5)
    pushed = run_cli(
        "push", str(folder), "--name", "long-notes", "--task", "sst2", "--language", "en",
        "--base-model", "b", "--metric", "accuracy=0.8", "--description", notes, "--json",
        env=env,
    )  # fmt: skip
    assert pushed.returncode == 0 and "warning" not in pushed.stderr, pushed.stderr[-3000:]
    promoted = run_cli("promote", "long-notes@1", "--json", env=env)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    description = client.get_model_version("long-notes", "1").description
    assert len(description) == 5000
    assert description.startswith("accuracy 0.8000 · lora · sst2 (en)\n\nA release note")
    assert description.endswith(
        "… (cut: MLflow keeps 5,000 characters; `adapterops show long-notes@1` has it all)"
    )


def small_build(name: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``adapterops build`` of the example under ``name``: four steps on 64 rows."""
    return run_cli(
        "build", str(EXAMPLE), "--out", str(out), "--set", f"name={name}",
        "--set", "train.max_steps=4", "--set", "data.max_train_samples=64",
        "--set", "data.max_eval_samples=64", env=env,
    )  # fmt: skip


def direct_s3_error(result: subprocess.CompletedProcess[str], server: MlflowServer) -> str:
    """The one error line of a build stopped before training because this machine could not
    write its run's artifacts to S3 itself (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(
        f"error: MLflow at {server.url} could not write to its artifact store (the run's "
        "spec.yaml): this machine writes the run's artifacts to S3 itself"
    ), errors[0]
    assert "Traceback" not in result.stderr and "step 1/" not in result.stderr
    return errors[0]


def test_an_artifact_store_the_server_cannot_write_fails_the_build_before_it_trains(
    postgres, seaweed, service_dir, tmp_path
):
    """The server's --artifacts-destination names a bucket that is not there (or credentials it
    lacks): the build trained, then failed logging its results."""
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_destination="s3://no-such-bucket/mlflow",
        log=service_dir / "mlflow-no-bucket.log",
        env={"MLFLOW_S3_ENDPOINT_URL": seaweed.endpoint},
    )
    server.start()
    try:
        env = production_env(server, postgres, tmp_path) | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        result = small_build(f"{NAME}-x", tmp_path / "out", env)
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: MLflow at {server.url} could not write to its artifact store (the run's spec.yaml)" in result.stderr  # fmt: skip
    assert "step 1/" not in result.stderr  # nothing trained


def test_artifacts_the_client_writes_to_s3_itself_fail_in_one_line_before_training(
    seaweed, prefect_server, service_dir, tmp_path
):
    """A server with an s3:// ``--default-artifact-root`` hands its runs that location: this
    machine writes the artifacts itself, and without S3 credentials (or the S3 server's
    address) boto3's bare ``NoCredentialsError`` ended the build, exit 1."""
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_destination=f"{fresh_bucket_url().removesuffix('/adapters')}/mlflow",
        default_artifact_root=f"{fresh_bucket_url().removesuffix('/adapters')}/runs",
        log=service_dir / "mlflow-direct-s3.log",
        env={"MLFLOW_S3_ENDPOINT_URL": seaweed.endpoint},
    )
    # the registry in its embedded defaults: only MLflow's artifacts go to S3
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ADAPTEROPS_", "MLFLOW_"))
    } | {
        "HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": server.url, "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    credentials = {"AWS_ACCESS_KEY_ID": "adapterops", "AWS_SECRET_ACCESS_KEY": "adapterops-secret"}
    cases = {  # what the client lacks: what the line tells them
        "credentials": ({}, "Unable to locate credentials): set AWS_ACCESS_KEY_ID and "),
        # credentials, but not where S3 is: boto3 goes elsewhere (AWS; here a closed port)
        "the S3 address": (
            credentials | {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"},
            "): set MLFLOW_S3_ENDPOINT_URL to the S3 server's address",
        ),
    }
    server.start()
    try:
        results = {
            lacking: small_build(f"{NAME}-s3", tmp_path / "out", env | extra)
            for lacking, (extra, _) in cases.items()
        }
    finally:
        server.stop()
    for lacking, (_, said) in cases.items():
        assert said in direct_s3_error(results[lacking], server), lacking


def test_s3_refusing_the_clients_secret_is_one_line_before_training(tmp_path, prefect_server):
    """An S3 server that checks keys (SeaweedFS with identities) and a wrong secret here: boto3
    raised its S3UploadFailedError (SignatureDoesNotMatch), which reached the terminal bare."""
    config = tmp_path / "s3.json"
    keys = {"accessKey": "adapterops", "secretKey": "adapterops-secret"}
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [keys], "actions": ["Admin", "Read", "Write", "List"]}
    ]}))  # fmt: skip
    s3 = SeaweedS3.on_free_ports(tmp_path / "seaweedfs", s3_config=config)
    s3.start()
    boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=keys["accessKey"],
        aws_secret_access_key=keys["secretKey"], region_name="us-east-1",
    ).create_bucket(Bucket="mlflow-runs")  # fmt: skip
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_destination=str(tmp_path / "unused"),
        default_artifact_root="s3://mlflow-runs/runs",
        log=tmp_path / "mlflow.log",
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ADAPTEROPS_", "MLFLOW_"))
    } | {
        "HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": server.url, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": keys["accessKey"], "AWS_SECRET_ACCESS_KEY": "not-the-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }  # fmt: skip
    try:
        server.start()
        result = small_build(f"{NAME}-key", tmp_path / "out", env)
    finally:
        server.stop()
        s3.stop(grace=5)
    error = direct_s3_error(result, server)
    assert "SignatureDoesNotMatch" in error
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY here" in error


MLFLOW2 = Path(__file__).resolve().parents[2] / ".venv-mlflow2" / "bin" / "python"


def test_an_mlflow_2_server_takes_builds_pushes_promotions_and_review(postgres, tmp_path):
    """Teams that have not moved to MLflow 3 run an MLflow 2 server (2.22, its last release):
    this client (MLflow 3) builds, pushes, promotes and syncs against it as against its own."""
    assert MLFLOW2.is_file(), "the MLflow 2 server's environment is missing: run make test"
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow2.db'}",
        artifacts_destination=str(tmp_path / "mlflow2-artifacts"),
        log=tmp_path / "mlflow2.log",
        python=str(MLFLOW2),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {  # artifacts in a local folder (the default): its versions are logged to MLflow
        "HF_HUB_OFFLINE": "1",
        "ADAPTEROPS_HOME": str(tmp_path / "home"),
        "ADAPTEROPS_REGISTRY_URL": fresh_postgres_url(postgres),
        "MLFLOW_TRACKING_URI": server.url,
    }
    server.start()
    try:
        said = subprocess.run(
            [str(MLFLOW2), "-m", "mlflow", "--version"], capture_output=True, text=True, check=True
        )
        assert said.stdout.split()[-1].startswith("2."), said.stdout
        for seed in (0, 1):
            built = run_cli(
                "build", str(EXAMPLE), "--json", "--out", str(tmp_path / f"out-{seed}"),
                "--set", "name=old", "--set", f"train.seed={seed}", "--set", "train.max_steps=2",
                "--set", "data.max_train_samples=32", "--set", "data.max_eval_samples=32", env=env,
            )  # fmt: skip
            assert built.returncode == 0, built.stderr[-3000:]
        pushed = run_cli(  # no run trained it: its files are logged to a run of their own
            "push", str(tmp_path / "out-0"), "--name", "pushed", "--base-model",
            "sentence-transformers/all-MiniLM-L6-v2", "--task", "sst2", "--language", "en",
            "--json", env=env,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        promoted = run_cli("promote", "old@2", "--force", "--json", env=env)
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        reviewers = MlflowClient(server.url, registry_uri=server.url)
        reviewers.set_registered_model_alias("old", "staging", "1")  # in the UI
        synced = run_cli("sync", "--json", env=env)
        assert synced.returncode == 0, synced.stderr[-3000:]
        model = reviewers.get_registered_model("old")
        versions = {v.version: v for v in reviewers.search_model_versions("name='old'")}
        files = reviewers.get_model_version("pushed", "1")
        saved = run_cli(
            "composition", "save", "duo", "old@2", "pushed@1", "--definition", "average",
            "--metric", "accuracy=0.6", "--json", env=env,
        )  # fmt: skip
        assert saved.returncode == 0, saved.stderr[-3000:]
        aliased = run_cli("composition", "alias", "duo@1", "champion", "--json", env=env)
        assert aliased.returncode == 0, aliased.stderr[-3000:]
        composition = reviewers.get_registered_model("composition.duo")
        for command in (
            ("composition", "unalias", "duo", "champion"),
            ("composition", "rm", "duo@1"),
            ("rm", "pushed@1"),  # a member no composition holds any more
        ):
            removed = run_cli(*command, "--json", env=env)
            assert removed.returncode == 0, (command, removed.stderr[-3000:])
        left = [
            *reviewers.search_model_versions("name='pushed'"),
            *reviewers.search_model_versions("name='composition.duo'"),
        ]
    finally:
        server.stop()
    assert model.aliases == {"champion": "2", "previous": "1", "staging": "1"}
    assert {n: v.tags["adapterops.version"] for n, v in versions.items()} == {"1": "1", "2": "2"}
    assert versions["1"].source == f"runs:/{versions['1'].run_id}/adapter"
    assert files.source == f"runs:/{files.run_id}/adapter"
    assert left == []  # their mirrors left with them
    assert composition.aliases == {"champion": "1"}
    # where the server keeps it (an MLflow 3 client lists a run's files through an API that
    # MLflow 2 lacks: the test reads the server's folder)
    stored = tmp_path / "mlflow2-artifacts"
    assert len(list(stored.glob(f"*/{files.run_id}/artifacts/adapter/adapter.safetensors"))) == 1
    listed = run_cli("ls", "old", "--json", env=env)
    assert [(v["ref"], v["aliases"]) for v in json.loads(listed.stdout)] == [
        ("old@1", ["previous", "staging"]),
        ("old@2", ["champion"]),
    ]


def test_a_server_whose_database_is_down_is_one_line_before_any_work(tmp_path, service_dir):
    """MLflow's own PostgreSQL stopped: its server answers /health, then 503 to every API call
    (a store it had reached), or nothing for minutes while it retries the connection (one it
    had not: here). A build (and `promote`, `sync`) sat silent through MLflow's retries (four
    minutes; a quarter of an hour), then blamed MLFLOW_TRACKING_URI ("could not find the
    experiment ... too many 503 error responses. Check MLFLOW_TRACKING_URI and that the server
    runs"). Now one request without retries says that the server's database is down, before
    anything is trained."""
    from infra.stack.postgres import PostgresServer

    database = PostgresServer(service_dir / "mlflow-down-postgres", free_port())  # (stopped)
    database.start()
    server = MlflowServer(
        port=free_port(), backend_store_uri=database.url("postgres"),
        artifacts_destination=str(tmp_path / "mlflow-artifacts"),
        log=service_dir / "mlflow-database-down.log",
    )  # fmt: skip
    try:
        server.start()
        database.stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
        env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home")}
        result = small_build("database-down-en", tmp_path / "out", env | {"MLFLOW_TRACKING_URI": server.url})  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "step 1/" not in result.stderr, result.stderr[-3000:]
        assert errors == [
            f"error: MLflow at {server.url} runs but cannot answer now (/health answers, but an "
            "API call got no answer within 30 s): the database it keeps runs and models in "
            "(its --backend-store-uri) is likely down or unreachable from it; check that "
            "database and the MLflow server's log; re-running the command completes the work."
        ]
        database.start()  # the server reaches it, then loses it: 503 at once
        assert MlflowClient(server.url).search_experiments() is not None
        database.stop()
        refused = run_cli("sync", env=env | {"MLFLOW_TRACKING_URI": server.url})
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert refused.stderr.startswith(
            f"error: MLflow at {server.url} runs but cannot answer now (503 Service "
            "Unavailable: (psycopg.OperationalError) connection failed:"
        ), refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert refused.stderr.endswith(
            "): the database it keeps runs and models in (its --backend-store-uri) is likely "
            "down or unreachable from it; check that database and the MLflow server's log; "
            "re-running the command completes the work.\n"
        ), refused.stderr
    finally:
        server.stop()
        if database.running:
            database.stop()
