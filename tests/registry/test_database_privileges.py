"""A PostgreSQL user without the privileges the registry needs (PostgreSQL 15 and later let only a
database's owner create tables in ``public``; operators give applications a least-privilege
user): one line naming what to grant, not the server's message followed by the whole SQL
statement over many lines."""

from __future__ import annotations

import os
from itertools import count

from tests.helpers import run_cli
from tests.registry.workers import write_fake_adapter

_roles = count()


def test_a_user_without_privileges_is_told_what_to_grant(postgres, tmp_path):
    role, database = f"app_{os.getpid()}_{next(_roles)}", f"privileges_{os.getpid()}_{next(_roles)}"
    postgres.create_database(database)
    postgres.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'app-pass-123'")
    app_url = postgres.url(database, user=role, password="app-pass-123")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))},
        "ADAPTEROPS_HOME": str(tmp_path / "home"),
        "ADAPTEROPS_REGISTRY_URL": app_url,
        "ADAPTEROPS_ARTIFACTS_URL": str(tmp_path / "artifacts"),
    }
    grants = (
        f"To migrate (`adapterops db upgrade`), connect as the database's owner or GRANT CREATE "
        f"ON SCHEMA public TO {role}; to use it, GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
        f"TABLES IN SCHEMA public TO {role} and GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "
        f"{role}\n"
    )
    safe_url = app_url.replace(":app-pass-123@", ":***@")
    upgrade = run_cli("db", "upgrade", env=env)
    assert (upgrade.returncode, upgrade.stderr) == (
        2,
        f"error: the registry database {safe_url} refused user {role}: permission denied for "
        f"schema public. {grants}",
    )
    owner = run_cli("db", "upgrade", env={**env, "ADAPTEROPS_REGISTRY_URL": postgres.url(database)})
    assert owner.returncode == 0, owner.stderr
    folder = write_fake_adapter(tmp_path / "adapter", 1)
    push = ("push", str(folder), "--name", "x", "--task", "sst2", "--language", "en", "--base-model", "b")  # fmt: skip
    refused = run_cli(*push, env=env)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: the registry database {safe_url} refused user {role}: permission denied for "
        f"table alembic_version. {grants}"
    )
    postgres.psql(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        database,
    )
    granted = run_cli(*push, env=env)
    assert granted.returncode == 0, granted.stderr
