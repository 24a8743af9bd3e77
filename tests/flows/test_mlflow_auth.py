"""A real MLflow server with users and permissions (MLflow's ``basic-auth`` app): missing
credentials and a user without the permission are one line each that says what to set or ask
for (exit 2), before anything is stored; not "check that the server runs; re-running
completes the work", which it never did. And a registry in a local folder beside such a
server mirrors its pushes (the server cannot read that folder)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from infra.stack import MlflowServer, free_port
from registry import Registry
from tests.helpers import run_cli
from tests.registry.conftest import fresh_bucket_url
from tests.registry.workers import write_fake_adapter

ADMIN = ("admin", "a-long-admin-password-7")
READER = ("bob", "a-long-reader-password-7")  # MLflow's default permission: READ


@pytest.fixture(scope="module")
def guarded_mlflow(seaweed, service_dir, tmp_path_factory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow-auth")
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'users.db'}\n"
        f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifacts_destination=str(folder / "artifacts"),
        log=service_dir / "mlflow-auth.log",
        env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"},
        app_name="basic-auth",
    )
    server.start()
    created = requests.post(
        f"{server.url}/api/2.0/mlflow/users/create",
        json={"username": READER[0], "password": READER[1]},
        auth=ADMIN,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    yield server
    server.stop()


def environment(server: MlflowServer, tmp_path: Path, user: tuple[str, str] | None) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "ADAPTEROPS_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "ADAPTEROPS_ARTIFACTS_URL": fresh_bucket_url(),  # a source the server accepts
        "MLFLOW_TRACKING_URI": server.url,
    }
    if user is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}
    return env


PUSH = ("--name", "guarded", "--task", "sst2", "--language", "en", "--base-model", "b")


def test_no_credentials_is_one_line_and_nothing_is_stored(guarded_mlflow, tmp_path):
    folder = write_fake_adapter(tmp_path / "adapter", 1)
    env = environment(guarded_mlflow, tmp_path, None)
    refused = run_cli("push", str(folder), *PUSH, "--json", env=env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    answer = json.loads(refused.stdout)
    assert answer["kind"] == "TrackingAccessError"
    assert answer["error"].startswith(
        f"MLflow at {guarded_mlflow.url} refused to find the experiment without valid credentials ("
    )
    assert answer["error"].endswith(
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
        "to a user of that server"
    )
    assert Registry(env["ADAPTEROPS_REGISTRY_URL"], env["ADAPTEROPS_ARTIFACTS_URL"]).find() == []


def test_a_user_without_the_permission_is_told_who_and_what_to_ask_for(guarded_mlflow, tmp_path):
    folder = write_fake_adapter(tmp_path / "adapter", 2)
    admin = environment(guarded_mlflow, tmp_path, ADMIN)
    pushed = run_cli("push", str(folder), *PUSH, "--json", env=admin)  # mirrored by the admin
    assert pushed.returncode == 0 and "warning" not in pushed.stderr, pushed.stderr[-3000:]
    reader = environment(guarded_mlflow, tmp_path, READER)
    refused = run_cli("promote", "guarded@1", "--json", env=reader)
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = json.loads(refused.stdout)["error"]
    assert error.startswith(
        f"MLflow at {guarded_mlflow.url} refused to set alias champion of guarded: user bob "
        "lacks the permission ("
    )
    assert error.endswith(
        "An MLflow admin grants it (EDIT on the adapterops experiment and MANAGE on the "
        "registered models this registry mirrors), or run as a user who has it"
    )
    registry = Registry(admin["ADAPTEROPS_REGISTRY_URL"], admin["ADAPTEROPS_ARTIFACTS_URL"])
    assert registry.get("guarded@1").aliases == ()
    promoted = run_cli("promote", "guarded@1", "--json", env=admin)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert json.loads(promoted.stdout)["aliases"] == ["champion"]


def test_a_registry_in_a_local_folder_mirrors_its_pushes_to_a_server(
    guarded_mlflow, tmp_path, monkeypatch
):
    """A server refuses a file of this machine as a version's source: every push warned
    "registered, but not in MLflow yet ... re-running completes the work", which it never did.
    The files go to a run of their own (one, however often it is pushed or promoted)."""
    env = environment(guarded_mlflow, tmp_path, ADMIN) | {
        "ADAPTEROPS_ARTIFACTS_URL": str(tmp_path / "artifacts"),
        "ADAPTEROPS_HOME": str(tmp_path / "home"),
    }
    folder = write_fake_adapter(tmp_path / "adapter", 3)
    for _ in range(2):
        pushed = run_cli("push", str(folder), *PUSH[:1], "local-folder", *PUSH[2:], env=env)
        assert pushed.returncode == 0 and "warning" not in pushed.stderr, pushed.stderr[-3000:]
    promoted = run_cli("promote", "local-folder@1", "--json", env=env)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    client = MlflowClient(guarded_mlflow.url, registry_uri=guarded_mlflow.url)
    (mirror,) = client.search_model_versions("name='local-folder'")
    assert mirror.source == f"runs:/{mirror.run_id}/adapter"
    files = {a.path for a in client.list_artifacts(mirror.run_id, "adapter")}
    assert files == {"adapter/adapter.json", "adapter/adapter.safetensors"}
    experiment = client.get_experiment_by_name("adapterops").experiment_id
    runs = client.search_runs([experiment], "tags.`adapterops.files_of` = 'local-folder@1'")
    assert len(runs) == 1
