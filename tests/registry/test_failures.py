"""Unreachable services, unmigrated databases and the real adapter path through peft_core."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import transformers as T

import peft_core as pc
import registry as rg
from infra.stack import free_port
from peft_core.state import get_record
from registry import Registry
from registry.db import Database
from tests.helpers import TINY_CONFIGS, batch, logits, perturb_adapter
from tests.registry.conftest import fresh_postgres_url


def test_unreachable_database_is_a_clear_error(tmp_path):
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/registry"
    with pytest.raises(
        rg.DatabaseUnavailableError,
        match=r"cannot use the registry database.*ADAPTEROPS_REGISTRY_URL",
    ):
        Registry(url, (tmp_path / "a").as_uri())


def test_invalid_urls(tmp_path):
    with pytest.raises(rg.DatabaseUnavailableError) as a_path:
        Registry(f"{tmp_path}/r.db", (tmp_path / "a").as_uri())  # a path, not a URL
    assert str(a_path.value).endswith(
        "; write sqlite:///relative/path.db or sqlite:////absolute/path.db (three slashes, then "
        "the path), or postgresql+psycopg://USER@HOST:5432/DB"
    )
    with pytest.raises(rg.DatabaseUnavailableError) as two_slashes:
        Registry("sqlite://home/r.db", (tmp_path / "a").as_uri())  # "home" read as a host
    assert str(two_slashes.value) == (
        "invalid SQLite URL 'sqlite://home/r.db': a SQLite URL has no host ('home'); write "
        "sqlite:///home/r.db (three slashes, then the path; four for an absolute one)"
    )
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(rg.StorageUnavailableError) as a_file:
        Registry(f"sqlite:///{tmp_path}/r.db", (tmp_path / "a-file").as_uri())
    assert str(a_file.value) == (
        f"cannot use artifact folder {tmp_path / 'a-file'}: it is a file; ADAPTEROPS_ARTIFACTS_URL "
        "names the folder the registry's files go in (file:///path or a folder path), or "
        "s3://bucket/prefix"
    )
    assert (tmp_path / "a-file").read_text() == "mine"
    with pytest.raises(rg.StorageUnavailableError, match="unsupported artifacts URL"):
        Registry(f"sqlite:///{tmp_path}/r.db", "ftp://x/y")
    with pytest.raises(rg.StorageUnavailableError) as bad_bucket:  # was "cannot reach S3" at a push
        Registry(f"sqlite:///{tmp_path}/r.db", "s3://my bucket/adapters")
    assert str(bad_bucket.value) == (
        "S3 URL 's3://my bucket/adapters': 'my bucket' is not a bucket's name (letters, digits, "
        "'.', '-' and '_'; on AWS 3 to 63 lowercase letters, digits, '.' and '-'): use "
        "s3://bucket/prefix"
    )
    with pytest.raises(
        rg.DatabaseUnavailableError, match="runs on SQLite or PostgreSQL, not mysql"
    ):
        Registry("mysql://u:pw@db/registry", (tmp_path / "a").as_uri())  # was a traceback
    with pytest.raises(rg.DatabaseUnavailableError, match=r"its driver is not installed"):
        Registry("postgresql+psycopg2://u@127.0.0.1/r", (tmp_path / "a").as_uri())
    assert not (tmp_path / "a").exists()


def test_a_registry_opened_to_read_is_not_created(tmp_path, make_adapter):
    url, store = f"sqlite:///{tmp_path}/typo/r.db", (tmp_path / "a").as_uri()
    with pytest.raises(rg.NoRegistryError) as refused:
        Registry(url, store, create=False)
    assert (
        str(refused.value) == f"no registry at {tmp_path}/typo/r.db: nothing was registered there"
    )
    assert not (tmp_path / "typo").exists() and not (tmp_path / "a").exists()
    # an empty file (touched, or left by a crash before SQLite wrote anything) is none either:
    # opening it to read wrote SQLite's 4 KB header into it
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "r.db").touch()
    with pytest.raises(rg.NoRegistryError, match="nothing was registered there"):
        Registry(url, store, create=False)
    assert (tmp_path / "typo" / "r.db").stat().st_size == 0
    Registry(url, store).register(
        make_adapter(1), name="a", base_model="b", task="t", language="en"
    )
    assert [v.ref for v in Registry(url, store, create=False).find()] == ["a@1"]  # it exists now
    assert Registry("sqlite://", store, create=False).find() == []  # in memory: nothing to find


def test_a_mistyped_artifact_folder_is_not_made_by_reads_nor_a_refused_pull(tmp_path, make_adapter):
    """Reading commands given a mistyped artifacts folder made it (empty), and a pull refused
    for a missing manifest left its new destination folders behind."""
    url = f"sqlite:///{tmp_path}/r.db"
    Registry(url, (tmp_path / "store").as_uri()).register(
        make_adapter(1), name="a", base_model="b", task="t", language="en"
    )
    typo = tmp_path / "stroe"
    reading = Registry(url, typo.as_uri(), create=False)
    assert [v.ref for v in reading.find()] == ["a@1"]
    assert reading.gc(dry_run=True) == []
    with pytest.raises(rg.CorruptArtifactError, match="manifest is missing"):
        reading.fetch("a@1", tmp_path / "new" / "pulled")
    assert not typo.exists() and not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(rg.CorruptArtifactError, match="manifest is missing"):
        reading.fetch("a@1", existing / "pulled")
    assert existing.is_dir() and list(existing.iterdir()) == []  # its own folder stays
    # the first write makes it, parents too
    deeper = tmp_path / "new" / "store"
    Registry(url, deeper.as_uri()).register(
        make_adapter(2), name="a", base_model="b", task="t", language="en"
    )
    assert (deeper / "blobs" / "sha256").is_dir()


def _foreign_schema(url: str) -> None:
    """What MLflow's (or Prefect's) own database holds: an Alembic revision of theirs, a table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('dc11669786a5')"))
        connection.execute(text("CREATE TABLE experiments (id INTEGER)"))
    engine.dispose()


def _tables(url: str) -> list[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    names = sorted(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_another_applications_database_is_refused_and_left_as_it_was(tmp_path, postgres):
    """ADAPTEROPS_REGISTRY_URL pointed at MLflow's database (same server, a likely mix-up): the
    migration crashed with Alembic's traceback (SQLite), or said to run `db upgrade`, which
    crashed (PostgreSQL)."""
    postgres.create_database("mlflow_lookalike")
    for url in (f"sqlite:///{tmp_path}/mlflow.db", postgres.url("mlflow_lookalike")):
        _foreign_schema(url)
        shown = url if url.startswith("sqlite") else url.replace(postgres.password, "***")
        refused = (
            f"{shown} is not a registry database: its schema revision 'dc11669786a5' is none of "
            "adapterops' (another application's database? MLflow and Prefect keep theirs with "
            "Alembic too); point ADAPTEROPS_REGISTRY_URL at the registry's own database "
            "(nothing was written)"
        )
        with pytest.raises(rg.ForeignDatabaseError) as opened:
            Registry(url, (tmp_path / "a").as_uri())
        assert str(opened.value) == refused
        with pytest.raises(rg.ForeignDatabaseError):
            Database(url, auto_migrate=True)  # `adapterops db upgrade`
        assert _tables(url) == ["alembic_version", "experiments"]


def test_a_file_that_is_not_a_registry_is_refused_and_left_as_it_was(tmp_path, postgres):
    """A SQLite URL at a text file was SQLAlchemy's "file is not a database" and its link; at
    another application's SQLite file (no Alembic) our tables were written into it, or the
    migration failed half-way on a table name of ours ("table versions already exists. Check
    that the server runs"); at a folder, "unable to open database file"."""
    store = (tmp_path / "a").as_uri()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(rg.ForeignDatabaseError) as text_file:
        Registry(f"sqlite:///{tmp_path}/notes.txt", store)
    assert str(text_file.value) == (
        f"sqlite:///{tmp_path}/notes.txt is not a registry database: {tmp_path}/notes.txt is not "
        "a SQLite file (a data file or a text file?); point ADAPTEROPS_REGISTRY_URL at the "
        "registry's .db file, or at a path where none exists yet for a new registry "
        "(nothing was written)"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"

    def shop(url: str, tables: tuple[str, ...]) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.begin() as connection:
            for table in tables:
                connection.execute(text(f"CREATE TABLE {table} (id INTEGER)"))
        engine.dispose()

    other = f"sqlite:///{tmp_path}/shop.db"
    shop(other, ("customers", "orders"))
    for create in (True, False):
        with pytest.raises(rg.ForeignDatabaseError) as foreign:
            Registry(other, store, create=create)
        assert str(foreign.value) == (
            f"{other} is not a registry database: it holds tables of another application "
            "(customers, orders) and no registry schema; point ADAPTEROPS_REGISTRY_URL at the "
            "registry's own database, or at a new file for a new registry (nothing was written)"
        )
    assert _tables(other) == ["customers", "orders"]

    # PostgreSQL: a database shared with other applications' tables is allowed, unless one has
    # a name of ours (the migration would stop half-way)
    postgres.create_database("shared_db")
    postgres.create_database("clashing_db")
    shared, clashing = postgres.url("shared_db"), postgres.url("clashing_db")
    shop(shared, ("customers",))
    shop(clashing, ("customers", "versions"))
    with pytest.raises(rg.ForeignDatabaseError, match=r"\(versions\) and no registry schema"):
        Database(clashing, auto_migrate=True)  # `adapterops db upgrade`
    assert _tables(clashing) == ["customers", "versions"]
    Database(shared, auto_migrate=True).dispose()
    assert "customers" in _tables(shared) and "versions" in _tables(shared)

    with pytest.raises(rg.DatabaseUnavailableError) as folder:
        Registry(f"sqlite:///{tmp_path}", store, create=False)
    assert str(folder.value) == (
        f"sqlite:///{tmp_path} names a folder, not a database file: write "
        f"sqlite:///{tmp_path}/registry.db (nothing was written)"
    )
    assert not (tmp_path / "a").exists()


def test_holds_registry_schema_tells_a_registry_from_any_other_database(tmp_path, postgres):
    from registry.db import holds_registry_schema

    registry_url = fresh_postgres_url(postgres)
    Registry(registry_url, (tmp_path / "a").as_uri()).close()
    sqlite_registry = f"sqlite:///{tmp_path}/registry.db"
    Registry(sqlite_registry, (tmp_path / "a").as_uri()).close()
    assert holds_registry_schema(registry_url) and holds_registry_schema(sqlite_registry)
    _foreign_schema(f"sqlite:///{tmp_path}/mlflow.db")
    assert not holds_registry_schema(f"sqlite:///{tmp_path}/mlflow.db")
    assert not holds_registry_schema(f"sqlite:///{tmp_path}/none.db")  # and not created:
    assert not (tmp_path / "none.db").exists()
    assert not holds_registry_schema(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x")


def test_a_folder_path_is_an_artifacts_url(tmp_path, make_adapter, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = Registry(f"sqlite:///{tmp_path}/r.db", "./artifacts")
    version = registry.register(make_adapter(1), name="a", base_model="b", task="t", language="en")
    assert registry.artifacts.uri(version.digest).startswith((tmp_path / "artifacts").as_uri())
    assert (tmp_path / "artifacts").is_dir()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_a_postgres_url_as_hosting_services_print_it(postgres, tmp_path, make_adapter, scheme):
    """postgres:// and postgresql:// mean psycopg 3 (SQLAlchemy's default driver is psycopg2,
    not installed: a traceback before)."""
    url = fresh_postgres_url(postgres).replace("postgresql+psycopg://", f"{scheme}://")
    registry = Registry(url, (tmp_path / "a").as_uri())
    registry.register(make_adapter(1), name="a", base_model="b", task="t", language="en")
    assert [v.ref for v in registry.find()] == ["a@1"]


def test_unreachable_s3_stores_no_record(tmp_path, make_adapter, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    registry = Registry(f"sqlite:///{tmp_path}/r.db", "s3://bucket/prefix")
    with pytest.raises(rg.StorageUnavailableError, match="cannot reach S3"):
        registry.register(make_adapter(1), name="a", base_model="b", task="t", language="en")
    assert registry.find() == []


def test_missing_bucket_says_so(seaweed, tmp_path, make_adapter):
    registry = Registry(f"sqlite:///{tmp_path}/r.db", f"s3://no-such-bucket-{os.getpid()}/x")
    with pytest.raises(rg.StorageUnavailableError, match=r"does not exist.*create it"):
        registry.register(make_adapter(1), name="a", base_model="b", task="t", language="en")
    assert registry.find() == []


def test_server_database_must_be_migrated(postgres, tmp_path):
    postgres.create_database("unmigrated")
    url = postgres.url("unmigrated")
    with pytest.raises(rg.NotMigratedError, match="adapterops db upgrade"):
        Registry(url, (tmp_path / "a").as_uri())
    Database(url, auto_migrate=True).dispose()
    Registry(url, (tmp_path / "a").as_uri()).close()


class TestRealAdapters:
    def test_register_fetch_and_load_a_peft_core_adapter(self, registry, tmp_path):
        model = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS["bert"]()).eval()
        pristine = {k: v.clone() for k, v in model.state_dict().items()}
        pc.add_adapter(model, "sst2", pc.LoRA(rank=4))
        perturb_adapter(model, "sst2")
        inputs = batch(model)
        expected = logits(model, inputs)
        pc.save_adapter(model, "sst2", tmp_path / "sst2")
        version = registry.register(
            tmp_path / "sst2", name="tiny-sst2", base_model="tiny-bert", task="sst2", language="en"
        )
        assert version.base_model_fingerprint == pc.fingerprint(model).digest

        fresh = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS["bert"]()).eval()
        fresh.load_state_dict(pristine)
        registry.load_into(fresh, "tiny-sst2@1")
        torch.testing.assert_close(logits(fresh, inputs), expected, rtol=0, atol=0)

        other = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS["gpt2"]())
        with pytest.raises(pc.BaseModelMismatchError) as refused:
            registry.load_into(other, "tiny-sst2@1")
        # said of the version: its scratch folder is gone by then, and predict over several
        # versions did not say which one failed
        assert str(refused.value).startswith("tiny-sst2@1: adapter 'sst2' was trained on ")
        assert tempfile.gettempdir() not in str(refused.value)

    def test_a_composition_loads_as_one_and_a_failed_load_leaves_the_model_as_it_was(
        self, registry, tmp_path
    ):
        def bert() -> T.PreTrainedModel:
            torch.manual_seed(0)
            return T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS["bert"]()).eval()

        model = bert()
        for name in ("lang", "task"):
            pc.add_adapter(model, name, pc.Pfeiffer())
            perturb_adapter(model, name)
            pc.save_adapter(model, name, tmp_path / name)
            registry.register(
                tmp_path / name, name=name, base_model="tiny-bert", task=name, language="pt"
            )
        registry.register_composition("madx", {"type": "stack"}, ["lang", "task"])
        registry.set_composition_alias("madx@1", "champion")
        pc.set_active(model, pc.Stack("lang", "task"))
        inputs = batch(model)
        expected = logits(model, inputs)

        fresh = bert()
        assert registry.load_composition(fresh, "madx@champion").ref == "madx@1"
        assert pc.active_adapters(fresh) == ["lang", "task"]
        torch.testing.assert_close(logits(fresh, inputs), expected, rtol=0, atol=0)

        holding = bert()
        pc.add_adapter(holding, "task", pc.LoRA(rank=2))
        with pytest.raises(rg.InvalidCompositionError, match=r"already holds adapter.*task"):
            registry.load_composition(holding, "madx")
        assert pc.list_adapters(holding) == ["task"]
        other = T.AutoModelForSequenceClassification.from_config(TINY_CONFIGS["gpt2"]())
        with pytest.raises(pc.BaseModelMismatchError):
            registry.load_composition(other, "madx")
        assert pc.list_adapters(other) == []

    def test_peft_format_folders_register_too(self, registry, tmp_path):
        model = T.AutoModelForCausalLM.from_config(TINY_CONFIGS["gpt2"]())
        pc.add_adapter(model, "lm", pc.LoRA(rank=2))
        pc.save_adapter(model, "lm", tmp_path / "lm", format="peft")
        version = registry.register(
            tmp_path / "lm", name="tiny-lm", base_model="tiny-gpt2", task="lm", language="en"
        )
        assert (version.method, version.head) == ("lora", "causal-lm")
        pulled = registry.fetch("tiny-lm", tmp_path / "pulled")
        assert sorted(p.name for p in pulled.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "adapterops.json",
        ]

    @pytest.mark.parametrize(
        ("head", "config", "method"),
        [
            ("classification", {"peft_type": "IA3", "target_modules": ["query", "value"],
                                "feedforward_modules": []}, "ia3"),
            ("classification", {"peft_type": "LORA", "r": 2, "target_modules": ["query"],
                                "use_dora": True}, "dora"),
            ("causal-lm", {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}, "lora"),
            ("causal-lm", {"peft_type": "OFT", "oft_block_size": 4,
                           "target_modules": ["q_proj"]}, "peft"),
        ],
    )  # fmt: skip
    def test_folders_peft_wrote_are_recorded_with_the_method_and_head_peft_core_loads(
        self, registry, tmp_path, head, config, method
    ):
        import peft

        family = "bert" if head == "classification" else "llama"
        auto = {"classification": T.AutoModelForSequenceClassification}
        model = auto.get(head, T.AutoModelForCausalLM).from_config(TINY_CONFIGS[family]())
        task_type = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}[head]
        peft_config = peft.get_peft_config({**config, "task_type": task_type})
        peft.get_peft_model(model, peft_config).save_pretrained(tmp_path / "by-peft")
        (tmp_path / "by-peft" / "README.md").unlink()  # (peft's model card: not needed)
        version = registry.register(
            tmp_path / "by-peft", name="by-peft", base_model=family, task="t", language="en"
        )
        assert (version.method, version.head) == (method, head)
        # what peft_core loads the folder as, the registry's torch-free reading agrees with
        fresh = auto.get(head, T.AutoModelForCausalLM).from_config(TINY_CONFIGS[family]())
        pc.load_adapter(fresh, registry.fetch("by-peft@1", tmp_path / "pulled"), name="x")
        assert get_record(fresh, "x").config.type == method
