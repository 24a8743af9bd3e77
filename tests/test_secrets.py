"""No password or key ever shows: not on the terminal, not in ``--json``, not in the files a
build leaves (Prefect's run logs included), not in MLflow (params, tags, descriptions,
artifacts) and not in a registry row.

Every credential below contains the marker ``Mk3r``; the tests grep everything for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from infra.stack import MlflowServer, free_port
from registry.redaction import redact
from tests.flows.test_pipelines import write_spec
from tests.helpers import empty_registry, run_cli
from tests.registry.conftest import fresh_bucket_url
from tests.registry.workers import write_fake_adapter

MARKER = "Mk3r"
PG_PASSWORD = "Mk3r@pg-secret"  # an '@' in a password: written encoded, or (by mistake) not
ML_PASSWORD = "Mk3r-ml-secret"
S3_PASSWORD = "Mk3r-s3-secret"
AWS_KEY_ID, AWS_SECRET = "AKIAMK3RKEYID", "Mk3r-aws-secret"


def user_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ADAPTEROPS_", "MLFLOW_", "AWS_", "PREFECT_"))
    }
    return {**environment, "HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"),
            "COLUMNS": "200", **settings}  # fmt: skip


def assert_no_secret(where: str, text: str) -> None:
    for secret in (MARKER, MARKER.lower(), "AKIAMK3R", quote(PG_PASSWORD, safe="")):
        assert secret not in text, f"{secret!r} shows in {where}:\n{text[-2000:]}"


class TestErrorsMaskSecrets:
    """Unreachable services, each named with credentials: the error names the place, masked."""

    def dead(self) -> str:
        return f"127.0.0.1:{free_port()}"

    @pytest.mark.parametrize("password", [quote(PG_PASSWORD, safe=""), PG_PASSWORD])
    def test_database_url(self, tmp_path, password):
        url = f"postgresql+psycopg://marker:{password}@{self.dead()}/registry"
        env = user_env(tmp_path, ADAPTEROPS_REGISTRY_URL=url)
        for extra in ([], ["--json"]):
            result = run_cli("ls", *extra, env=env)
            assert result.returncode == 2
            assert_no_secret("ls " + " ".join(extra), result.stdout + result.stderr)
            assert "marker:***@127.0.0.1:" in result.stdout + result.stderr

    def test_mlflow_tracking_uri(self, tmp_path):
        url = f"http://reviewer:{ML_PASSWORD}@{self.dead()}"
        env = user_env(tmp_path, MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        empty_registry(tmp_path / "home")  # sync reads the registry before MLflow
        for extra in ([], ["--json"]):
            result = run_cli("sync", *extra, env=env)
            assert result.returncode == 2
            output = result.stdout + result.stderr
            assert_no_secret("sync " + " ".join(extra), output)
            assert "MLflow at http://reviewer:***@127.0.0.1:" in output

    def test_s3_endpoint_and_keys(self, tmp_path):
        env = user_env(
            tmp_path,
            ADAPTEROPS_ARTIFACTS_URL="s3://adapters/prefix",
            AWS_ENDPOINT_URL_S3=f"http://s3user:{S3_PASSWORD}@{self.dead()}",
            AWS_ACCESS_KEY_ID=AWS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET,
            AWS_MAX_ATTEMPTS="1",
        )
        folder = write_fake_adapter(tmp_path / "adapter", 1)
        push = ["push", str(folder), "--name", "x", "--base-model", "b", "--task", "t",
                "--language", "en"]  # fmt: skip
        for extra in ([], ["--json"]):
            result = run_cli(*push, *extra, env=env)
            assert result.returncode == 2, result.stderr
            assert_no_secret("push " + " ".join(extra), result.stdout + result.stderr)
            assert "cannot reach S3" in result.stdout + result.stderr


def test_redact_masks_url_passwords_and_the_environments_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://u:{quote(PG_PASSWORD, safe='')}@h:1")
    assert (
        redact("at http://user:pw@host:5000/api failed")
        == "at http://user:***@host:5000/api failed"
    )
    assert redact("postgresql://u:a@b@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact(f"key {AWS_SECRET}; password {PG_PASSWORD}") == "key ***; password ***"
    unchanged = "sqlite:////tmp/registry.db, s3://bucket/prefix, write to ops@example.com"
    assert redact(unchanged) == unchanged
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:Prefect-pass-9")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_0123456789abcdef")
    assert redact("sent admin:Prefect-pass-9 and pnu_0123456789abcdef") == "sent *** and ***"
    # a key that is a plain word (the tests' local S3 key) must not mask ordinary text
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "adapterops")
    assert redact("run adapterops db upgrade") == "run adapterops db upgrade"


def test_a_build_on_production_services_leaves_no_secret_anywhere(
    tmp_path, postgres, seaweed, service_dir, sst2_dir
):
    """PostgreSQL with a password that needs encoding, S3 keys, an MLflow URL with credentials:
    build, show, ls, history; then grep the outputs, every file under ADAPTEROPS_HOME (Prefect's
    run logs, the data cache), the MLflow run and model version and every registry row."""
    role, database = f"marker_{os.getpid()}", f"secrets_{os.getpid()}"
    postgres.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{PG_PASSWORD}'")
    postgres.create_database(database, owner=role)
    registry_url = (
        f"postgresql+psycopg://{role}:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{postgres.port}/"
        f"{database}"
    )
    postgres.create_database(f"mlflow_{database}")
    bucket = fresh_bucket_url().removesuffix("/adapters")
    mlflow = MlflowServer(
        port=free_port(), backend_store_uri=postgres.url(f"mlflow_{database}"),
        artifacts_destination=f"{bucket}/mlflow", log=service_dir / "mlflow-secrets.log",
    )  # fmt: skip
    mlflow.start()
    try:
        # the server's store URI (with the database password) is not on its command line (ps)
        command_line = Path(f"/proc/{mlflow.process.pid}/cmdline").read_bytes().decode()
        assert postgres.password not in command_line and "mlflow_secrets" not in command_line
        tracking = mlflow.url.replace("http://", f"http://reviewer:{ML_PASSWORD}@")
        env = user_env(
            tmp_path,
            ADAPTEROPS_REGISTRY_URL=registry_url,
            ADAPTEROPS_ARTIFACTS_URL=fresh_bucket_url(),
            MLFLOW_TRACKING_URI=tracking,
            AWS_ENDPOINT_URL_S3=os.environ["AWS_ENDPOINT_URL_S3"],
            AWS_ACCESS_KEY_ID=AWS_KEY_ID,  # SeaweedFS without an identity file takes any key
            AWS_SECRET_ACCESS_KEY=AWS_SECRET,
            AWS_DEFAULT_REGION="us-east-1",
        )
        assert run_cli("db", "upgrade", env=env).returncode == 0
        spec = write_spec(tmp_path, sst2_dir, name="secret-keeper")
        outputs = {}
        for command in (
            ["build", str(spec), "--json"],
            ["build", str(spec)],
            ["show", "secret-keeper@1"],
            ["ls"],
            ["history", "secret-keeper", "--json"],
        ):
            result = run_cli(*command, env=env, cwd=tmp_path)
            assert result.returncode == 0, result.stderr[-3000:]
            outputs[" ".join(command)] = result.stdout + result.stderr
        for where, text in outputs.items():
            assert_no_secret(where, text)

        for file in (tmp_path / "home").rglob("*"):
            if file.is_file():
                assert_no_secret(str(file), file.read_bytes().decode("latin-1"))

        client = MlflowClient(mlflow.url, registry_uri=mlflow.url)
        version = client.get_model_version("secret-keeper", "1")
        run = client.get_run(version.run_id)
        assert_no_secret("MLflow run", json.dumps([run.data.params, run.data.tags]))
        assert_no_secret("MLflow version", json.dumps([version.tags, version.description]))
        downloads = Path(client.download_artifacts(version.run_id, "", str(tmp_path / "dl")))
        for file in downloads.rglob("*"):
            if file.is_file():
                assert_no_secret(
                    f"MLflow artifact {file.name}", file.read_bytes().decode("latin-1")
                )

        plain_url = registry_url.replace("+psycopg", "")
        with psycopg.connect(plain_url) as connection:
            tables = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            for (table,) in tables:
                rows = connection.execute(
                    f'SELECT row_to_json(t)::text FROM "{table}" t'
                ).fetchall()
                assert_no_secret(f"registry table {table}", json.dumps(rows))
    finally:
        mlflow.stop()
