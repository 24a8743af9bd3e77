"""The registry's Python API on both backends: SQLite + a local folder, PostgreSQL + SeaweedFS S3."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import registry as rg
from registry import Registry, verification
from registry.artifacts import ArtifactStore, S3Store
from registry.artifacts import local as local_store
from registry.artifacts.local import LocalStore
from registry.bundles import Manifest
from registry.verification import DamagedFile
from tests.helpers import store_from_outside
from tests.registry.conftest import fresh_bucket_url, fresh_postgres_url

BASE = "tiny-bert"


def register(reg: Registry, folder: Path, name: str = "tiny-sst2-en-lora", **overrides):
    fields = {"base_model": BASE, "task": "sst2", "language": "en"} | overrides
    return reg.register(folder, name=name, **fields)


def count_uploads(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The blobs ``store`` writes from now on (an S3 upload or a folder's copy)."""
    uploads: list[str] = []
    if isinstance(store, S3Store):
        real_upload = store.client.upload_file

        def upload_file(source, bucket, key, **kwargs):
            uploads.append(key)
            return real_upload(source, bucket, key, **kwargs)

        monkeypatch.setattr(store.client, "upload_file", upload_file)
    else:
        real_copy = local_store._copy

        def copy(source, target, on_bytes):
            uploads.append(str(target))
            return real_copy(source, target, on_bytes)

        monkeypatch.setattr(local_store, "_copy", copy)
    return uploads


def recorded_manifests(reg: Registry) -> set[str]:
    """The manifests whose files the registry's SQL knows (``manifest_files``)."""
    with reg.database.engine.connect() as connection:
        return set(connection.scalars(sa.text("SELECT DISTINCT manifest FROM manifest_files")))


def as_if_registered_before_0008(reg: Registry) -> None:
    """Forget every manifest's files, as a registry upgraded from 0007 has none recorded."""
    with reg.database.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM manifest_files"))


def another_registry(locations, tmp_path: Path, request) -> tuple[Registry, str]:
    """A second registry (its own database, on the same kind of server) over the same store, as
    a staging registry given production's bucket; and its database URL."""
    url, artifacts = locations
    other_url = (
        f"sqlite:///{tmp_path / 'staging.db'}"
        if url.startswith("sqlite")
        else fresh_postgres_url(request.getfixturevalue("postgres"))
    )
    return Registry(other_url, artifacts), other_url


class TestRegister:
    def test_first_version_and_its_record(self, registry, make_adapter):
        folder = make_adapter(1)
        version = register(
            registry,
            folder,
            metrics={"accuracy": 0.81},
            lineage={"dataset": "d1"},
            base_model_revision="abc123",
        )
        assert version.base_model_revision == "abc123"
        assert (version.name, version.version, version.method, version.head) == (
            "tiny-sst2-en-lora",
            1,
            "lora",
            "classification",
        )
        files = tuple(
            sorted(
                (p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
                for p in folder.iterdir()
            )
        )
        assert version.digest == Manifest(files).digest
        assert version.size == sum(p.stat().st_size for p in folder.iterdir())
        assert version.metrics == {"accuracy": 0.81}
        assert version.lineage == {"dataset": "d1"}
        data = version.to_dict()
        for key in (
            "name",
            "version",
            "base_model",
            "task",
            "language",
            "method",
            "digest",
            "aliases",
        ):
            assert key in data
        json.dumps(data)
        # printed in a notebook: what tells versions apart, not a screen of digests and spec
        assert repr(version) == (
            f"AdapterVersion(name='tiny-sst2-en-lora', version=1, base_model="
            f"{version.base_model!r}, task='sst2', language='en', method='lora', "
            f"head='classification', size={version.size}, description='', "
            "metrics={'accuracy': 0.81}, aliases=())"
        )

    def test_versions_count_up_and_same_bytes_are_the_same_version(self, registry, make_adapter):
        first = register(registry, make_adapter(1))
        second = register(registry, make_adapter(2))
        again = register(registry, make_adapter(1))  # identical bytes: no new version
        assert (first.version, second.version, again.version) == (1, 2, 1)
        assert again.digest == first.digest
        assert [e.kind for e in registry.history("tiny-sst2-en-lora")] == [
            "registered",
            "registered",
        ]

    def test_a_deleted_versions_number_is_never_given_again(self, registry, make_adapter):
        register(registry, make_adapter(1))
        second = register(registry, make_adapter(2))
        registry.delete(second.ref)
        third = register(registry, make_adapter(3))
        assert third.version == 3  # name@2 keeps meaning the bytes it meant
        registry.delete(third.ref)
        registry.delete("tiny-sst2-en-lora@1")
        assert register(registry, make_adapter(4)).version == 4
        # the same bytes as a deleted version come back under a new number, never the old one
        assert register(registry, make_adapter(2)).version == 5
        with pytest.raises(rg.NotFoundError):
            registry.get("tiny-sst2-en-lora@2")

    def test_identical_files_are_stored_once(self, registry, make_adapter):
        register(registry, make_adapter(1), name="one")
        register(registry, make_adapter(1), name="two")
        blobs = list(registry.artifacts.blobs())
        assert len(blobs) == 3  # adapter.json, adapter.safetensors, manifest: shared by both

    def test_an_adapter_keeps_its_base_model_task_language_and_method(self, registry, make_adapter):
        register(registry, make_adapter(1))
        blobs = set(registry.artifacts.blobs())
        with pytest.raises(
            rg.InvalidNameError,
            match=r"registered for base model 'tiny-bert'.*this folder is for 'tiny-bert', "
            r"'sst2', 'pt', 'lora'\. Use another adapter name",
        ):
            register(registry, make_adapter(2), language="pt")
        with pytest.raises(rg.InvalidNameError):
            register(registry, make_adapter(3, method="bitfit"))
        assert set(registry.artifacts.blobs()) == blobs  # refused before a byte was uploaded
        # what a build asks before it trains: the same refusal, naming what is checked
        binding = {"base_model": BASE, "task": "sst2", "language": "en", "method": "lora"}
        registry.check_binding("tiny-sst2-en-lora", **binding)  # its own binding: no error
        registry.check_binding("never-registered", **{**binding, "task": "other"})
        with pytest.raises(rg.InvalidNameError, match=r"; this spec is for 'tiny-bert', 'topic'"):
            registry.check_binding(
                "tiny-sst2-en-lora", **{**binding, "task": "topic"}, what="this spec"
            )

    def test_a_base_model_folder_with_a_trailing_slash_is_the_same_base(
        self, registry, make_adapter
    ):
        # a shell's completion writes the folder "models/base/"; it is the base "models/base"
        first = register(registry, make_adapter(1), base_model="models/base/")
        second = register(registry, make_adapter(2), base_model="models/base")
        assert (first.base_model, second.base_model) == ("models/base", "models/base")
        assert second.version == 2
        found = registry.find(base_model="models/base//")
        assert [v.ref for v in found] == ["tiny-sst2-en-lora@1", "tiny-sst2-en-lora@2"]
        resolved = registry.resolve(base_model="models/base/", task="sst2", language="en")
        assert resolved.versions[0].ref == "tiny-sst2-en-lora@2"

    def test_wrong_base_model_is_refused(self, registry, make_adapter):
        register(registry, make_adapter(1))
        with pytest.raises(rg.BaseModelMismatchError, match=r"wrong base model") as refused:
            register(registry, make_adapter(2, fingerprint="0" * 64), name="other")
        assert "registered as" not in str(refused.value)  # its base is registered nowhere yet
        assert registry.find(name="other") == []
        # once its base is registered, the refusal names it: the --base-model the user meant
        register(registry, make_adapter(3, fingerprint="0" * 64), name="x", base_model="gpt-ish")
        with pytest.raises(
            rg.BaseModelMismatchError,
            match=r"fingerprint 000000000000 \(registered as 'gpt-ish'\), but 'tiny-bert'",
        ):
            register(registry, make_adapter(4, fingerprint="0" * 64), name="other")

    def test_a_spec_must_state_the_folders_method_and_head(self, registry, make_adapter):
        spec = {"method": {"type": "lora"}, "head": {"type": "classification"}}
        assert register(registry, make_adapter(1), spec=spec).spec == spec
        folder = make_adapter(2)
        for field, wrong in (("method", {"type": "bitfit"}), ("head", {"type": "causal-lm"})):
            with pytest.raises(rg.AdapterFolderError) as refused:
                register(registry, folder, name="other", spec={**spec, field: wrong})
            stated = "lora" if field == "method" else "classification"
            assert str(refused.value) == (
                f"the spec's {field}.type is {wrong['type']!r}, but {folder} holds a "
                f"{stated!r} adapter: give the spec it was trained with (a field set when "
                f"training, --set {field}.type={stated}, is set again when pushing)"
            )
        assert registry.find(name="other") == []
        headless = make_adapter(3, head="none")  # a head the metadata does not state: any
        assert register(registry, headless, name="h", spec=spec).head == "none"

    def test_the_names_a_folders_base_model_is_registered_under(self, registry, make_adapter):
        folder = make_adapter(1)
        assert registry.base_models_for(folder) == []
        register(registry, folder, base_model="tiny-bert")
        register(registry, make_adapter(2), name="b", base_model="tiny-bert-instruct")
        register(registry, make_adapter(3, fingerprint="0" * 64), name="c", base_model="other")
        assert registry.base_models_for(folder) == ["tiny-bert", "tiny-bert-instruct"]
        assert registry.base_models_for(make_adapter(4, fingerprint="0" * 64)) == ["other"]
        unreadable = make_adapter(5)
        (unreadable / "adapter.json").write_text("{not json")
        assert registry.base_models_for(unreadable) == []

    def test_a_name_whose_versions_are_all_deleted_takes_a_new_binding(
        self, registry, make_adapter
    ):
        """A version pushed under the wrong base model or language is fixed by removing it and
        pushing again: the name is not held by a binding nothing refers to any more."""
        first = register(registry, make_adapter(1), language="en")
        second = register(registry, make_adapter(2), language="en")
        registry.delete(first.ref)
        with pytest.raises(rg.InvalidNameError, match=r"remove them all with adapterops rm"):
            register(registry, make_adapter(3), language="pt")  # en@2 still holds the name
        registry.delete(second.ref)
        moved = register(registry, make_adapter(3), language="pt", base_model="tiny-bert-2")
        assert (moved.version, moved.language, moved.base_model) == (3, "pt", "tiny-bert-2")
        events = registry.history(moved.name)
        assert [e.kind for e in events] == [
            "registered",
            "registered",
            "deleted",
            "deleted",
            "rebound",
            "registered",
        ]
        assert events[4].detail == {
            "before": {"base_model": BASE, "task": "sst2", "language": "en", "method": "lora"}
        }
        assert registry.find(language="en") == []


class TestBadInput:
    @pytest.mark.parametrize("name", ["a/b", "..", "../x", "", "with space", "x" * 200])
    def test_bad_names(self, registry, make_adapter, name):
        with pytest.raises(rg.InvalidNameError, match=r"invalid adapter name"):
            register(registry, make_adapter(1), name=name)

    @pytest.mark.parametrize("language", ["English", "EN", "e", "en US", "pt/BR"])
    def test_a_language_is_a_code(self, registry, make_adapter, language):
        """The registry took any name (a spec never did): `English` was never found for `en`."""
        with pytest.raises(rg.InvalidNameError) as raised:
            register(registry, make_adapter(1), language=language)
        assert str(raised.value) == (
            f"invalid language {language!r}: a language code: 2-3 lowercase letters, then "
            "optionally '-' or '_' and a region or script (en, pt, pt-BR, zh_Hant)"
        )
        assert registry.find() == []
        assert [register(registry, make_adapter(2), language="pt-BR").language] == ["pt-BR"]

    @pytest.mark.parametrize("ref", ["x@²", "x@99999999999999999999999", "x@0", "x@-1"])
    def test_bad_references_are_clear_errors_everywhere(
        self, registry, make_adapter, ref, tmp_path
    ):
        register(registry, make_adapter(1), name="x")
        for call in (
            lambda: registry.get(ref),
            lambda: registry.delete(ref),
            lambda: registry.fetch(ref, tmp_path / "out"),
            lambda: registry.set_alias(ref, "champion"),
        ):
            with pytest.raises(rg.InvalidNameError):
                call()

    @pytest.mark.parametrize(("ref", "meant"), [("x:3", "x@3"), ("x/champion", "x@champion")])
    def test_other_tools_reference_habits_get_the_spelling_meant(self, registry, ref, meant):
        with pytest.raises(
            rg.InvalidNameError, match=rf"invalid reference '{ref}': write {meant} "
        ):
            registry.get(ref)

    def test_mlflows_spellings_of_latest_and_of_a_version_name_those_versions(
        self, registry, make_adapter
    ):
        """``x@latest`` was "no alias 'latest'" and ``x@v1`` "no alias 'v1'": names MLflow keeps
        from aliases (so here they can mean nothing else), which reviewers carry over."""
        for content in (1, 2):
            register(registry, make_adapter(content), name="x")
        registry.register_composition("c", {"type": "stack"}, ["x@1"])
        registry.register_composition("c", {"type": "stack"}, ["x@2"])
        assert [registry.get(r).ref for r in ("x@latest", "x@LATEST", "x@v1", "x@V2")] == [
            "x@2", "x@2", "x@1", "x@2",
        ]  # fmt: skip
        assert [registry.composition(r).ref for r in ("c@latest", "c@v1")] == ["c@2", "c@1"]
        with pytest.raises(rg.InvalidNameError, match=r"versions are numbered 1 to"):
            registry.get("x@v0")
        with pytest.raises(rg.NotFoundError, match=r"has no alias 'v1-rc'"):
            registry.get("x@v1-rc")  # an alias of its own

    def test_one_length_limit_for_aliases_and_metric_names_on_every_backend(
        self, registry, make_adapter
    ):
        version = register(registry, make_adapter(1))
        with pytest.raises(
            rg.InvalidNameError, match=r"invalid alias .*\(65 characters\): at most 64"
        ):
            registry.set_alias(version.ref, "a" * 65)
        registry.set_alias(version.ref, "a" * 64)
        with pytest.raises(rg.InvalidNameError, match=r"invalid metric name .*: at most 64"):
            register(registry, make_adapter(2), metrics={"m" * 65: 0.5})
        assert [v.version for v in registry.find()] == [1]

    @pytest.mark.parametrize("alias", ["latest", "LATEST", "v2", "V10"])
    def test_aliases_mlflow_reserves_are_refused_before_anything_moves(
        self, registry, make_adapter, alias
    ):
        """MLflow refused them after the registry's checks, in a line that blamed the server."""
        version = register(registry, make_adapter(1))
        registry.register_composition("c", {"type": "stack"}, [version.ref])
        for move in (registry.set_alias, registry.set_composition_alias):
            with pytest.raises(rg.InvalidNameError) as raised:
                move("c@1" if move == registry.set_composition_alias else version.ref, alias)
            assert str(raised.value) == (
                f"invalid alias {alias!r}: MLflow, where reviewers see and move aliases, reserves "
                "'latest' and 'v' followed by a number for its own version names; choose another "
                "(champion, staging, production...)"
            )
        assert registry.get(version.ref).aliases == ()
        assert registry.composition("c").aliases == ()
        registry.set_alias(version.ref, "v2-candidate")  # only the whole name is reserved

    def test_an_alias_differing_only_by_case_from_one_held_is_refused(self, registry, make_adapter):
        """Champion beside champion: two aliases here and in MLflow's API, one in MLflow's UI
        (which lowercases what a reviewer types) and in Unity Catalog."""
        first, second = register(registry, make_adapter(1)), register(registry, make_adapter(2))
        registry.set_alias(first.ref, "champion")
        registry.register_composition("c", {"type": "stack"}, [first.ref])
        registry.register_composition("c", {"type": "stack"}, [second.ref])
        registry.set_composition_alias("c@1", "champion")
        for move, ref, owner in (
            (registry.set_alias, second.ref, f"adapter {first.name!r}"),
            (registry.set_composition_alias, "c@2", "composition 'c'"),
        ):
            with pytest.raises(rg.InvalidNameError) as raised:
                move(ref, "Champion")
            assert str(raised.value) == (
                f"alias 'Champion': {owner} already has the alias 'champion', which differs only "
                "by case, and MLflow's UI lowercases aliases; use 'champion' (or remove it first)"
            )
        assert registry.get(second.ref).aliases == () and registry.composition("c@2").aliases == ()
        registry.set_alias(second.ref, "champion")  # the same spelling moves, as always
        assert registry.get(f"{first.name}@champion").version == 2

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), "high"])
    def test_metrics_must_be_finite_numbers_and_nothing_is_stored(
        self, registry, make_adapter, value
    ):
        blobs = {b.digest for b in registry.artifacts.blobs()}
        with pytest.raises(rg.RegistryError, match=r"metric accuracy=.* is not a (finite )?number"):
            register(registry, make_adapter(1), metrics={"accuracy": value})
        assert registry.find() == [] and {b.digest for b in registry.artifacts.blobs()} == blobs

    @pytest.mark.parametrize(
        ("field", "value", "words"),
        [
            ("lineage", {"datasets": {"a", "b"}}, "Object of type set is not JSON serializable"),
            ("spec", {"train": {"learning_rate": float("nan")}}, "Out of range float values"),
        ],
    )
    def test_json_fields_are_checked_before_any_byte_is_uploaded(
        self, registry, make_adapter, field, value, words
    ):
        """The database refused them at the insert, in a line quoting its SQL, after the upload."""
        blobs = {b.digest for b in registry.artifacts.blobs()}
        with pytest.raises(rg.RegistryError) as raised:
            register(registry, make_adapter(1), **{field: value})
        assert str(raised.value).startswith(f"{field} must be plain JSON (strings, numbers, ")
        assert words in str(raised.value)
        assert registry.find() == [] and {b.digest for b in registry.artifacts.blobs()} == blobs

    @pytest.mark.parametrize(
        ("arguments", "words"),
        [
            pytest.param(
                {"base_model": "base\x00"},
                "base model 'base\\x00' holds the control character",
                id="base-nul",
            ),
            pytest.param(
                {"base_model": "base\nmodel"},
                "base model 'base\\nmodel' holds the control",
                id="base-newline",
            ),
            pytest.param(
                {"base_model": "caf\udce9"},
                "base model 'caf\\udce9' is not UTF-8 text: '\\udce9'",
                id="base-surrogate",
            ),
            pytest.param(
                {"description": "caf\udce9"},
                "description 'caf\\udce9' is not UTF-8 text",
                id="description-surrogate",
            ),
            pytest.param(
                {"description": "a\x00b"},
                "description 'a\\x00b' holds the control character",
                id="description-nul",
            ),
            pytest.param(
                {"lineage": {"dataset": "caf\udce9"}},
                "lineage text 'caf\\udce9' is not UTF-8",
                id="lineage-surrogate",
            ),
            pytest.param(
                {"spec": {"data\x00": 1}},
                "spec text 'data\\x00' holds the control character",
                id="spec-key-nul",
            ),
        ],
    )
    def test_text_no_database_holds_is_refused_before_any_byte_is_uploaded(
        self, registry, make_adapter, arguments, words
    ):
        """A lone surrogate (a byte Python could not decode) failed inside the SQL driver with a
        UnicodeEncodeError; a NUL in a base model's name was stored by SQLite; JSON stored them
        escaped, to fail where the record was printed."""
        blobs = {b.digest for b in registry.artifacts.blobs()}
        with pytest.raises(rg.InvalidNameError) as raised:
            register(registry, make_adapter(1), **arguments)
        assert str(raised.value).startswith(words)
        assert registry.find() == [] and {b.digest for b in registry.artifacts.blobs()} == blobs

    def test_queries_name_text_no_database_holds(self, registry, make_adapter):
        """find, resolve and the composition reads failed inside the SQL driver on a lone
        surrogate (UnicodeEncodeError) and, on PostgreSQL, on a NUL."""
        register(registry, make_adapter(), name="kept")
        for call, message in [
            (lambda: registry.find(task="t\udcff"), "find: task 't\\udcff' is not UTF-8 text: "
             "'\\udcff' at position 1 stands for a byte that was not decoded (a file, terminal "
             "or variable in another encoding?); give it as UTF-8"),
            (lambda: registry.find(base_model="b\x00"), "find: base_model 'b\\x00' holds the "
             "control character '\\x00' at position 1, which no registry database stores; "
             "remove it"),
            (lambda: registry.resolve(base_model="b", task="t\udcff", language="en"),
             "resolve: task 't\\udcff' is not UTF-8 text"),
            (lambda: registry.composition_versions("c\udcff"),
             "composition_versions: name 'c\\udcff' is not UTF-8 text"),
        ]:  # fmt: skip
            with pytest.raises(rg.InvalidNameError) as raised:
                call()
            assert str(raised.value).startswith(message)
        assert [v.ref for v in registry.find(task="sst2")] == ["kept@1"]

    def test_text_no_check_saw_is_one_line_from_the_driver_and_nothing_is_written(
        self, registry, make_adapter
    ):
        """What the API's checks miss (here an event's origin) is still one line, not the
        driver's UnicodeEncodeError."""
        version = register(registry, make_adapter(), name="kept")
        with pytest.raises(rg.InvalidNameError) as raised:
            registry.set_alias(version.ref, "staging", origin="ci\udcff")
        assert str(raised.value) == (
            "'ci\\udcff' is not UTF-8 text: '\\udcff' at position 2 stands for a byte that was "
            "not decoded (a file, terminal or variable in another encoding?); give it as UTF-8 "
            "(nothing was written)"
        )
        assert registry.get(version.ref).aliases == ()
        assert [e.kind for e in registry.history("kept")] == ["registered"]

    def test_fetch_into_a_file_or_a_failed_fetch_leaves_nothing_behind(
        self, registry, make_adapter, tmp_path
    ):
        version = register(registry, make_adapter(1))
        a_file = tmp_path / "a-file"
        a_file.write_text("mine")
        with pytest.raises(rg.AdapterFolderError, match=r"it is a file; give a folder"):
            registry.fetch(version.ref, a_file)
        with pytest.raises(rg.AdapterFolderError) as through_a_file:
            registry.fetch(version.ref, a_file / "sub")
        assert str(through_a_file.value) == (
            f"cannot download {version.ref} into {a_file / 'sub'}: {a_file} is a file; give a "
            "folder (new or existing) to write the adapter's files into"
        )
        assert a_file.read_text() == "mine"
        refused = Path("/proc/adapterops-no-folder")  # the permission bits allow it (as root)
        with pytest.raises(rg.AdapterFolderError, match=rf"cannot download .* into {refused}: "):
            registry.fetch(version.ref, refused)
        manifest = Manifest.from_bytes(_blob_bytes(registry, version.digest))
        _, tensor_digest, _ = next(f for f in manifest.files if f[0] == "adapter.safetensors")
        registry.artifacts.delete(tensor_digest)  # a broken store: the download fails midway
        destination = tmp_path / "pulled"
        with pytest.raises(rg.CorruptArtifactError) as missing:
            registry.fetch(version.ref, destination)
        assert str(missing.value) == (
            f"{version.ref}: adapter.safetensors is missing from the artifact store (expected "
            f"sha256 {tensor_digest} at {registry.artifacts.uri(tensor_digest)}): it was "
            "removed from the store it was registered into, outside adapterops; pushing the "
            "folder it came from again (`adapterops push FOLDER`) puts it back"
        )
        assert not destination.exists()  # staged beside it, never inside; made, then removed
        elsewhere = Registry(registry.database.url, (tmp_path / "elsewhere").as_uri())
        with pytest.raises(rg.CorruptArtifactError) as in_another_store:  # says which store
            elsewhere.fetch(version.ref, destination)
        assert str(in_another_store.value).endswith(
            f"): it was registered into {registry.artifacts.url}: point ADAPTEROPS_ARTIFACTS_URL "
            "there"
        )
        elsewhere.close()
        assert [p.name for p in tmp_path.iterdir() if ".incoming-" in p.name] == []

    def test_fetch_again_replaces_and_another_adapters_files_are_refused(
        self, registry, make_adapter, tmp_path
    ):
        first = register(registry, make_adapter(1, extra={"probes.json": "{}"}))
        second = register(registry, make_adapter(2))  # no probes.json
        pulled = tmp_path / "pulled"
        registry.fetch(first.ref, pulled)
        (pulled / "notes.txt").write_text("mine")
        registry.fetch(first.ref, pulled)  # the daily habit: same files, replaced in place
        before = {p.name: p.read_bytes() for p in pulled.iterdir()}
        # the first version's probes would stay beside the second's weights
        with pytest.raises(rg.AdapterFolderError, match=r"holds \['probes.json'\] of another"):
            registry.fetch(second.ref, pulled)
        assert {p.name: p.read_bytes() for p in pulled.iterdir()} == before
        (pulled / "probes.json").unlink()
        registry.fetch(second.ref, pulled)
        assert (pulled / "notes.txt").read_text() == "mine"  # not an adapter file: left alone

    def test_gc_refuses_a_negative_grace_period(self, registry):
        with pytest.raises(rg.RegistryError, match="must not be negative"):
            registry.gc(older_than=timedelta(minutes=-1))

    def test_gc_names_the_type_of_its_grace_period(self, registry, make_adapter):
        register(registry, make_adapter(), name="kept")
        with pytest.raises(TypeError, match=r"timedelta \(timedelta\(hours=1\)\), not int 3600"):
            registry.gc(older_than=3600)  # type: ignore[arg-type]
        assert registry.get("kept").version == 1

    def test_a_reference_that_is_not_a_string_is_named_for_what_it_is(self, registry, make_adapter):
        version = register(registry, make_adapter(), name="kept")
        with pytest.raises(
            TypeError, match=r"string \(name, name@VERSION or name@ALIAS\), not NoneType$"
        ):
            registry.get(None)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"not AdapterVersion \(a version record: pass its \.ref\)"
        ):
            registry.set_alias(version, "champion")  # type: ignore[arg-type]
        assert registry.get(version.ref).aliases == ()
        assert registry.get(rg.parse_ref("kept@1")) == registry.get("kept@1")  # a Ref is fine
        with pytest.raises(TypeError, match=r"not one string: \['kept@1'\]"):
            registry.register_composition("one", {"type": "stack"}, "kept@1")  # type: ignore[arg-type]
        assert registry.compositions() == []

    def test_find_names_an_argument_of_the_wrong_type(self, registry, make_adapter):
        """Python compared what it was given: task=3 matched nothing and descending="no" was
        true (the worst version first)."""
        register(registry, make_adapter(), name="kept", metrics={"accuracy": 0.8})
        for arguments, message in [
            ({"task": 3}, "find: task is text or None, not int 3"),
            ({"descending": "no"}, "find: descending is True or False or None, not str 'no'"),
            ({"limit": "3"}, "find: limit is a whole number or None, not str '3'"),
        ]:
            with pytest.raises(TypeError) as raised:
                registry.find(**arguments)
            assert str(raised.value) == message
        assert [v.ref for v in registry.find(task="sst2", descending=False, limit=1)] == ["kept@1"]
        assert [v.ref for v in registry.find(limit=np.int64(1))] == ["kept@1"]  # from an array

    def test_find_refuses_a_value_no_version_could_hold(self, registry, make_adapter):
        """language="EN" (or "English") matched nothing, as if nothing were registered."""
        register(registry, make_adapter(), name="kept", language="en")
        for arguments, message in [
            ({"language": "EN"}, "invalid language 'EN': a language code: 2-3 lowercase"),
            ({"alias": "the champion"}, "invalid alias 'the champion': use 1-128 letters"),
            ({"name": "kept@1"}, "invalid adapter name 'kept@1': use 1-128 letters"),
        ]:
            with pytest.raises(rg.InvalidNameError) as raised:
                registry.find(**arguments)
            assert str(raised.value).startswith(message)
        assert [v.ref for v in registry.find(language="en")] == ["kept@1"]
        assert registry.find(alias="champion", name="other") == []  # well formed: no match
        with pytest.raises(
            rg.InvalidNameError, match=r"^invalid language 'EN'"
        ):  # "nothing serves"
            registry.resolve(base_model="minilm", task="sst2", language="EN")
        with pytest.raises(
            rg.InvalidNameError,
            match=r"^the history is an adapter's, not a version's \('kept@1'\): ask for 'kept'",
        ):  # was "no adapter named 'kept@1'"
            registry.history("kept@1")
        assert [e.kind for e in registry.history("kept")] == ["registered"]
        for call, message in [  # '' was "no adapter named ''; similar names: ..."
            (lambda: registry.history(""), "invalid adapter name ''"),
            # a script's unset variable padded with spaces was stored as a base model's name
            (
                lambda: register(registry, make_adapter(), base_model="  "),
                "invalid base model name '  '",
            ),
            (lambda: registry.composition_history(""), "invalid composition name ''"),
            (
                lambda: registry.composition_history("c@1"),
                "the history is a composition's, not a version's ('c@1'): ask for 'c'",
            ),
        ]:
            with pytest.raises(rg.InvalidNameError) as raised:
                call()
            assert str(raised.value).startswith(message)

    def test_reads_name_an_argument_of_the_wrong_type(self, registry, make_adapter):
        """history(5) failed with "not subscriptable", resolve(metric=5) with "no attribute
        'lower'", load_into(None, ref) after downloading the version."""
        register(registry, make_adapter(), name="kept", metrics={"accuracy": 0.8})
        triple = {"base_model": "minilm", "task": "sst2", "language": "en"}
        for call, message in [
            (lambda: registry.history(5), "history: name is an adapter's name, not int 5"),
            (
                lambda: registry.resolve(**triple, metric=5),
                "resolve: metric is a metric's name or None, not int 5",
            ),
            (
                lambda: registry.resolve(**{**triple, "task": None}),
                "resolve: task is text, not NoneType None",
            ),
            (
                lambda: registry.composition("kept", "2"),
                "composition: version is a whole number or None, not str '2'",
            ),
            (
                lambda: registry.load_into(None, "kept@1"),
                "peft_core works on a torch model (a torch.nn.Module, such as a transformers "
                "model), got NoneType None",
            ),
        ]:
            with pytest.raises(TypeError) as raised:
                call()
            assert str(raised.value) == message
        assert [event.kind for event in registry.history("kept")] == ["registered"]

    def test_locations_of_the_wrong_type_are_named_and_a_folder_may_be_a_path(self, tmp_path):
        with pytest.raises(TypeError) as raised:
            rg.Registry(f"sqlite:///{tmp_path}/r.db", 5)  # type: ignore[arg-type]
        assert (
            str(raised.value) == "Registry: artifacts_url is a URL or a folder or None, not int 5"
        )
        with pytest.raises(TypeError, match=r"^Registry: database_url is a URL or None, not Posix"):
            rg.Registry(tmp_path / "r.db")  # type: ignore[arg-type]
        assert not (tmp_path / "r.db").exists()
        with rg.Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "artifacts") as opened:
            assert opened.artifacts.url == (tmp_path / "artifacts").as_uri()
            assert opened.find() == [] and opened.database.engine.pool.checkedin() == 1
        assert opened.database.engine.pool.checkedin() == 0  # released when the block ended

    def test_metrics_given_as_pairs_are_named_before_anything_is_stored(
        self, registry, make_adapter
    ):
        with pytest.raises(rg.RegistryError, match=r"metrics is a mapping .*, not list$"):
            register(registry, make_adapter(), name="kept", metrics=[("accuracy", 0.8)])
        assert registry.find() == []

    def test_a_base_saved_with_or_without_a_tokenizer_is_the_same_base(
        self, registry, tmp_path, minilm_dir
    ):
        import transformers as T

        import peft_core as pc
        from registry.bundles import base_digests

        model = T.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
        tokenizer = T.AutoTokenizer.from_pretrained(minilm_dir)
        pc.add_adapter(model, "a", pc.LoRA(rank=2))
        plain = pc.save_adapter(model, "a", tmp_path / "plain")
        pc.add_adapter(model, "b", pc.LoRA(rank=4))
        with_vocab = pc.save_adapter(model, "b", tmp_path / "vocab", tokenizer=tokenizer)
        saved = json.loads((with_vocab / "adapter.json").read_text())["fingerprint"]
        assert base_digests(saved)[0] == pc.fingerprint(model).digest  # the registry's formula
        register(registry, plain, name="plain", base_model="minilm")
        register(
            registry, with_vocab, name="vocab", base_model="minilm"
        )  # the README's way, then a build's
        # a base recorded by older code with the vocabulary in its digest is recognised and healed
        old_form = base_digests(saved)[1]
        with registry.database.session() as session:
            session.execute(sa.text("UPDATE base_models SET fingerprint = :f"), {"f": old_form})
        register(registry, with_vocab, name="vocab-again", base_model="minilm")
        with registry.database.session() as session:
            stored = session.scalar(sa.text("SELECT fingerprint FROM base_models"))
        assert stored == pc.fingerprint(model).digest

    def test_missing_and_extra_files_store_nothing(self, registry, make_adapter):
        folder = make_adapter(1)
        (folder / "adapter.safetensors").unlink()
        with pytest.raises(rg.AdapterFolderError, match=r"missing \['adapter.safetensors'\]"):
            register(registry, folder)
        folder = make_adapter(2, extra={"notes.txt": "hi"})
        with pytest.raises(rg.AdapterFolderError, match=r"unexpected \['notes.txt'\]"):
            register(registry, folder)
        empty = folder.parent / "empty"
        empty.mkdir()
        with pytest.raises(rg.AdapterFolderError) as refused:
            register(registry, empty)
        assert str(refused.value) == (
            f"{empty} is empty: give the folder peft_core.save_adapter (or peft's "
            "save_pretrained) wrote the adapter into"
        )
        assert list(registry.artifacts.blobs()) == []
        assert registry.find() == []

    def test_weights_that_are_not_whole_safetensors_or_unreadable_json_store_nothing(
        self, registry, make_adapter
    ):
        """Registered, such files were a version every load failed on (push said nothing)."""
        folder = make_adapter(1)
        tensors = folder / "adapter.safetensors"
        whole = tensors.read_bytes()
        for damaged, why in [
            (whole[:-100], "incomplete metadata, file not fully covered"),  # a copy cut short
            (b"garbage", "header too small"),
        ]:
            tensors.write_bytes(damaged)
            with pytest.raises(rg.AdapterFolderError) as refused:
                register(registry, folder)
            assert str(refused.value) == (
                f"{tensors} is not a whole safetensors file (Error while deserializing header: "
                f"{why}): push the folder as peft or adapterops wrote it (a copy cut short, or "
                "another file under its name?)"
            )
        tensors.write_bytes(whole)
        for name, text, why in [  # probes.json was a JSONDecodeError's traceback at each load
            ("probes.json", "{bad", "is not valid JSON: Expecting property name enclosed in "
             "double quotes: line 1 column 2 (char 1)"),
            ("report.json", "[1, 2]", "must hold a JSON object"),
        ]:  # fmt: skip
            (folder / name).write_text(text)
            with pytest.raises(rg.AdapterFolderError) as refused:
                register(registry, folder)
            assert str(refused.value) == f"{folder / name} {why}"
            (folder / name).unlink()
        assert list(registry.artifacts.blobs()) == []
        assert registry.find() == []
        assert register(registry, folder).version == 1

    def test_unknown_references_name_what_exists(self, registry, make_adapter):
        register(registry, make_adapter(1))
        register(registry, make_adapter(2))
        with pytest.raises(rg.NotFoundError, match=r"no adapter named 'nope'"):
            registry.get("nope")
        with pytest.raises(rg.NotFoundError, match=r"has no version 7; known versions: 1, 2"):
            registry.get("tiny-sst2-en-lora@7")
        with pytest.raises(rg.NotFoundError, match=r"has no alias 'champion'; aliases: none"):
            registry.get("tiny-sst2-en-lora@champion")
        with pytest.raises(rg.InvalidNameError):
            registry.get("tiny-sst2-en-lora@0")


class TestLookups:
    def test_get_by_name_version_and_alias(self, registry, make_adapter):
        register(registry, make_adapter(1))
        register(registry, make_adapter(2))
        registry.set_alias("tiny-sst2-en-lora@1", "champion")
        assert registry.get("tiny-sst2-en-lora").version == 2  # newest
        assert registry.get("tiny-sst2-en-lora@2").version == 2
        champion = registry.get("tiny-sst2-en-lora@champion")
        assert champion.version == 1 and champion.aliases == ("champion",)

    def test_find_filters_and_orders_by_metric(self, registry, make_adapter):
        register(registry, make_adapter(1), name="en-lora", metrics={"accuracy": 0.80})
        register(registry, make_adapter(2), name="en-lora", metrics={"accuracy": 0.85})
        register(
            registry, make_adapter(3, method="bitfit"), name="en-bitfit", metrics={"accuracy": 0.78}
        )
        register(
            registry, make_adapter(4), name="pt-lora", language="pt", metrics={"accuracy": 0.70}
        )
        register(
            registry,
            make_adapter(5, fingerprint="e" * 64),
            name="other-base",
            base_model="tiny-gpt2",
        )
        assert [
            v.ref for v in registry.find(base_model=BASE, language="en", order_by="accuracy")
        ] == [
            "en-lora@2",
            "en-lora@1",
            "en-bitfit@1",
        ]
        assert [v.ref for v in registry.find(method="bitfit")] == ["en-bitfit@1"]
        assert [v.ref for v in registry.find(base_model="tiny-gpt2")] == ["other-base@1"]
        assert [
            v.ref
            for v in registry.find(
                base_model=BASE, language="en", order_by="accuracy", descending=False, limit=1
            )
        ] == ["en-bitfit@1"]
        registry.set_alias("en-lora@1", "champion")
        assert [v.ref for v in registry.find(alias="champion")] == ["en-lora@1"]
        # a metric no version recorded (a typo) ordered nothing, silently
        with pytest.raises(rg.NotFoundError) as typo:
            registry.find(base_model=BASE, order_by="acuracy")
        assert str(typo.value) == (
            "no version here recorded 'acuracy' to order by; did you mean 'accuracy'? they "
            "recorded: accuracy"
        )
        with pytest.raises(rg.NotFoundError, match=r"they recorded: no metric$"):
            registry.find(base_model="tiny-gpt2", order_by="accuracy")
        assert registry.find(name="nothing", order_by="acuracy") == []  # nothing to order
        for limit in (0, -1):  # SQLite read LIMIT -1 as every version, PostgreSQL refused it
            with pytest.raises(rg.RegistryError, match=rf"^limit must be at least 1, got {limit}$"):
                registry.find(base_model=BASE, limit=limit)
        every = [v.ref for v in registry.find(base_model=BASE)]
        assert len(every) == 4
        for limit in (2**63 - 1, 2**63, 10**20):  # `ls --limit 10**20`: an OverflowError traceback
            assert [v.ref for v in registry.find(base_model=BASE, limit=limit)] == every
        chosen = registry.resolve(base_model=BASE, task="sst2", language="en", metric="bleu")
        assert [v.ref for v in chosen.versions] == ["en-lora@1"]  # resolve still answers

    def test_best_first_is_the_lowest_perplexity_or_loss(self, registry, make_adapter):
        for seed, perplexity in ((1, 12.0), (2, 30.0), (3, 18.0)):
            register(
                registry, make_adapter(seed, head="masked-lm"), name="lang-en", task="mlm",
                metrics={"perplexity": perplexity, "eval_loss": math.log(perplexity)},
            )  # fmt: skip
        for metric in ("perplexity", "eval_loss"):  # was: the worst first
            assert [v.version for v in registry.find(order_by=metric)] == [1, 3, 2]
        # an explicit direction is still obeyed
        assert [v.version for v in registry.find(order_by="perplexity", descending=True)] == [
            2,
            3,
            1,
        ]
        assert (rg.higher_is_better("accuracy"), rg.higher_is_better("perplexity")) == (
            True,
            False,
        )
        assert (rg.higher_is_better("val_loss"), rg.higher_is_better("exact_match")) == (
            False,
            True,
        )


class TestAliasesAndHistory:
    def test_move_alias_and_history_with_origin(self, registry, make_adapter):
        register(registry, make_adapter(1))
        register(registry, make_adapter(2))
        registry.set_alias("tiny-sst2-en-lora@1", "champion")
        registry.set_alias("tiny-sst2-en-lora@2", "champion", origin="mlflow-ui")
        registry.set_alias("tiny-sst2-en-lora@2", "champion")  # no move: no event
        assert registry.get("tiny-sst2-en-lora@champion").version == 2
        events = [
            (e.kind, e.version, e.alias, e.origin) for e in registry.history("tiny-sst2-en-lora")
        ]
        assert events == [
            ("registered", 1, None, "registry"),
            ("registered", 2, None, "registry"),
            ("alias_set", 1, "champion", "registry"),
            ("alias_set", 2, "champion", "mlflow-ui"),
        ]
        registry.remove_alias("tiny-sst2-en-lora", "champion")
        assert registry.get("tiny-sst2-en-lora@2").aliases == ()

    def test_each_event_goes_to_its_own_history_and_says_what_happened(
        self, registry, make_adapter
    ):
        """Adapters and compositions log into one table: an event recorded for one never shows
        in the other's history, and each row's summary is what ``history`` prints."""
        register(registry, make_adapter(1), name="ab")
        register(registry, make_adapter(2), name="ab")
        registry.set_alias("ab@1", "champion")
        registry.set_alias("ab@2", "champion")
        registry.register_composition("ab", {"type": "stack"}, ["ab@1"])  # one name, both kinds
        outcome = {"status": "not promoted", "candidate": None, "reason": "0.80 vs 0.82"}
        registry.record_composition_event(
            "composition_cascade", "ab", 1, origin="cascade", detail={"trigger": "ab@2", **outcome}
        )
        registry.record_event("cascade", "ab", 2, origin="cascade", detail={"trigger": "ab@2"})
        adapter = [(e.kind, e.summary()) for e in registry.history("ab")]
        digests = [v.digest[:12] for v in registry.find(name="ab")]
        assert adapter == [
            ("registered", f"sha256 {digests[0]}"),
            ("registered", f"sha256 {digests[1]}"),
            ("alias_set", ""),
            ("alias_set", "moved from version 1"),
            ("cascade", "? (ab@2)"),
        ]
        assert [(e.kind, e.summary()) for e in registry.composition_history("ab")] == [
            ("composition", "over ab@1"),
            ("composition_cascade", "not promoted (ab@2): 0.80 vs 0.82"),
        ]
        refusals = {
            ("composition_cascade", False): "kinds starting with 'composition' belong to "
            "compositions' histories (record_composition_event)",
            ("cascade", True): "a composition's event kind starts with 'composition_', got "
            "'cascade'",
            ("x" * 33, False): "an event kind is 1 to 32 characters",
        }
        for (kind, composition), words in refusals.items():
            record = registry.record_composition_event if composition else registry.record_event
            with pytest.raises(rg.RegistryError) as raised:
                record(kind, "ab", 1, origin="test")
            assert words in str(raised.value)
        with pytest.raises(rg.NotFoundError, match="no composition 'ab' version 7"):
            registry.record_composition_event("composition_x", "ab", 7, origin="test")
        assert len(registry.history("ab")) == 5 and len(registry.composition_history("ab")) == 2
        solo = register(registry, make_adapter(3), name="solo")
        registry.delete(solo.ref)
        register(registry, make_adapter(4), name="solo", base_model="other-base")
        assert [(e.kind, e.summary()) for e in registry.history("solo")][1:3] == [
            ("deleted", f"sha256 {solo.digest[:12]}"),
            ("rebound", f"was base_model {BASE}, task sst2, language en, method lora"),
        ]

    def test_numeric_alias_is_refused(self, registry, make_adapter):
        register(registry, make_adapter(1))
        with pytest.raises(rg.InvalidNameError, match=r"cannot be a number"):
            registry.set_alias("tiny-sst2-en-lora@1", "3")


class TestResolve:
    def test_promoted_then_latest_then_madx_stack(self, registry, make_adapter):
        register(registry, make_adapter(1), name="sst2-en", metrics={"accuracy": 0.8})
        register(
            registry,
            make_adapter(2, method="pfeiffer", head="masked-lm"),
            name="lang-pt",
            task="mlm",
            language="pt",
        )
        stack = registry.resolve(base_model=BASE, task="sst2", language="pt")
        assert stack.kind == "stack"
        assert [v.ref for v in stack.versions] == ["lang-pt@1", "sst2-en@1"]
        assert stack.composition == {"type": "stack", "children": ["lang-pt@1", "sst2-en@1"]}
        assert "MAD-X" in stack.explanation

        register(registry, make_adapter(3), name="sst2-pt", language="pt")
        latest = registry.resolve(base_model=BASE, task="sst2", language="pt")
        assert (latest.kind, latest.versions[0].ref) == ("latest", "sst2-pt@1")
        assert "no version for sst2/pt is promoted" in latest.explanation

        register(registry, make_adapter(4), name="sst2-pt", language="pt")
        registry.set_alias("sst2-pt@1", "champion")
        promoted = registry.resolve(base_model=BASE, task="sst2", language="pt")
        assert (promoted.kind, promoted.versions[0].ref) == ("promoted", "sst2-pt@1")

    def test_the_stack_takes_the_language_adapter_of_lowest_perplexity(
        self, registry, make_adapter
    ):
        register(registry, make_adapter(1), name="sst2-en", metrics={"accuracy": 0.8})
        for seed, (name, perplexity) in enumerate((("lang-pt-a", 9.0), ("lang-pt-b", 40.0)), 2):
            register(
                registry, make_adapter(seed, method="pfeiffer", head="masked-lm"), name=name,
                task="mlm", language="pt", metrics={"perplexity": perplexity},
            )  # fmt: skip
        stack = registry.resolve(base_model=BASE, task="sst2", language="pt", metric="perplexity")
        assert [v.ref for v in stack.versions] == ["lang-pt-a@1", "sst2-en@1"]  # was lang-pt-b

    def test_nothing_to_resolve_explains_why(self, registry, make_adapter):
        register(registry, make_adapter(1), name="sst2-en")
        with pytest.raises(rg.NotFoundError, match=r"no language adapter for 'de'"):
            registry.resolve(base_model=BASE, task="sst2", language="de")


class TestBytes:
    def test_fetch_verifies_and_corruption_is_caught(self, registry, make_adapter, tmp_path):
        folder = make_adapter(1)
        version = register(registry, folder)
        pulled = registry.fetch(version.ref, tmp_path / "pulled")
        assert sorted(p.name for p in pulled.iterdir()) == ["adapter.json", "adapter.safetensors"]
        assert (pulled / "adapter.safetensors").read_bytes() == (
            folder / "adapter.safetensors"
        ).read_bytes()

        tensors_digest = hashlib.sha256((folder / "adapter.safetensors").read_bytes()).hexdigest()
        truncated = tmp_path / "truncated"
        truncated.write_bytes((folder / "adapter.safetensors").read_bytes()[:100])
        registry.artifacts.delete(tensors_digest)
        registry.artifacts.put_file(tensors_digest, truncated)  # damage the stored blob
        with pytest.raises(
            rg.CorruptArtifactError,
            match=rf"tiny-sst2-en-lora@1: adapter.safetensors is corrupted.*{tensors_digest}",
        ):
            registry.fetch(version.ref, tmp_path / "second")
        assert not (tmp_path / "second" / "adapter.safetensors").exists()

    def test_registering_the_folder_again_repairs_a_damaged_file(
        self, registry, make_adapter, tmp_path
    ):
        """The error said to re-register the adapter from its source, but the same bytes
        found their blob stored and skipped it: the version stayed broken however often it was
        pushed."""
        folder = make_adapter(1)
        version = register(registry, folder)
        tensors = (folder / "adapter.safetensors").read_bytes()
        digest = hashlib.sha256(tensors).hexdigest()
        flipped = bytearray(tensors)
        flipped[-1] ^= 0xFF  # the same size: only a checksum tells it from the original
        store_from_outside(registry, digest, bytes(flipped), tmp_path)
        with pytest.raises(rg.CorruptArtifactError) as refused:
            registry.fetch(version.ref, tmp_path / "broken")
        assert "register the folder it came from again (`adapterops push FOLDER`" in str(
            refused.value
        )
        damaged = DamagedFile(
            (version.ref,), "adapter.safetensors", digest, registry.artifacts.uri(digest),
            "corrupted",
        )  # fmt: skip
        assert registry.verify().damaged == (damaged,)
        assert registry.verify(quick=True).damaged == ()  # the same size: only a download tells

        assert register(registry, folder).ref == version.ref  # the same bytes: the same version
        assert registry.verify().damaged == ()
        whole = registry.fetch(version.ref, tmp_path / "whole")
        assert (whole / "adapter.safetensors").read_bytes() == tensors

    def test_a_whole_stored_copy_is_kept_and_a_damaged_one_replaced(
        self, registry, tmp_path, monkeypatch
    ):
        """17 MiB: uploaded in three parts on S3, whose ETag is then no plain MD5."""
        source = tmp_path / "big"
        source.write_bytes(np.random.default_rng(0).bytes(17 * 2**20))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        store = registry.artifacts
        store.put_file(digest, source)
        uploads = count_uploads(store, monkeypatch)
        store.put_file(digest, source)
        assert uploads == []  # whole: kept
        store_from_outside(registry, digest, b"\0" * source.stat().st_size, tmp_path)
        uploads.clear()  # the outside store's own
        store.put_file(digest, source)
        assert len(uploads) == 1  # the same size, other bytes: replaced
        assert store.read_bytes(digest) == source.read_bytes()

    def test_a_quick_check_asks_for_each_files_size_or_lists_the_store(
        self, registry, make_adapter, tmp_path, monkeypatch
    ):
        """A quick check listed the whole store (a request per 1,000 blobs) even for one
        version's files, which the gate checks before it loads its champion: a few files are
        now asked for one by one; many, from the listing. Either finds the same damage."""
        version = register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        tensors = registry.fetch(version.ref, tmp_path / "a") / "adapter.safetensors"
        digest = hashlib.sha256(tensors.read_bytes()).hexdigest()
        store_from_outside(registry, digest, tensors.read_bytes()[:100], tmp_path)
        listed: list[int] = []
        real_blobs = registry.artifacts.blobs
        monkeypatch.setattr(registry.artifacts, "blobs", lambda: listed.append(1) or real_blobs())
        asked = registry.verify([version.ref], quick=True)
        assert listed == []
        monkeypatch.setattr(verification, "LISTING_FROM", 0)
        assert registry.verify([version.ref], quick=True) == asked and listed == [1]
        assert [(d.versions, d.file, d.problem) for d in asked.damaged] == [
            (("a@1",), "adapter.safetensors", f"100 bytes, not {tensors.stat().st_size}")
        ]
        registry.artifacts.delete(digest)
        assert registry.artifacts.size(digest) is None
        assert registry.verify(["a"], quick=True).damaged[0].problem == "missing"

    def test_verify_names_the_versions_each_damaged_file_breaks(
        self, registry, locations, make_adapter, tmp_path
    ):
        folders = [make_adapter(seed) for seed in (1, 2, 3)]
        for folder, name in zip(folders, ("a", "a", "b"), strict=True):
            register(registry, folder, name=name)
        shared = hashlib.sha256((folders[0] / "adapter.json").read_bytes()).hexdigest()
        whole = registry.verify()
        assert (whole.versions, whole.files, whole.damaged) == (3, 4, ())  # adapter.json once
        tensors = sum((folder / "adapter.safetensors").stat().st_size for folder in folders)
        assert whole.bytes == tensors + (folders[0] / "adapter.json").stat().st_size

        registry.artifacts.delete(shared)
        b_manifest = registry.get("b@1").digest
        registry.artifacts.delete(b_manifest)
        assert registry.verify().damaged == (
            DamagedFile(("a@1", "a@2"), "adapter.json", shared, registry.artifacts.uri(shared),
                        "missing"),
            DamagedFile(("b@1",), "manifest", b_manifest, registry.artifacts.uri(b_manifest),
                        "missing"),
        )  # fmt: skip
        one = registry.verify(["a@2"])
        assert (one.versions, one.files, [d.versions for d in one.damaged]) == (1, 2, [("a@2",)])
        assert registry.verify(["b"]).damaged[0].file == "manifest"
        assert registry.verify(quick=True) == registry.verify()  # missing: the listing tells
        registry.register_composition("both", {"type": "stack"}, ["a@2", "b@1"])
        members = registry.verify(["both@1"])  # a composition: the versions it loads
        assert members.versions == 2 and [d.versions for d in members.damaged] == [
            ("a@2",),
            ("b@1",),
        ]
        assert registry.verify(["both"]) == members
        with pytest.raises(rg.NotFoundError, match=r"^no adapter named 'c'"):
            registry.verify(["c"])
        other_store = (
            (tmp_path / "other").as_uri() if "sqlite" in locations[0] else fresh_bucket_url()
        )
        elsewhere = Registry(locations[0], other_store)
        with pytest.raises(rg.StorageUnavailableError) as wrong_store:  # not "push them all"
            elsewhere.verify()
        assert str(wrong_store.value) == (
            f"the artifact store {other_store} holds none of the 3 version(s)' files: "
            "ADAPTEROPS_ARTIFACTS_URL names another store than the one they were registered "
            f"into (b@1's files went to {registry.artifacts.url}); point it there and run this "
            "again (if it is that store, everything was removed from it outside adapterops)"
        )
        elsewhere.close()
        with pytest.raises(TypeError, match="a list of names or refs"):
            registry.verify("a")
        with pytest.raises(rg.InvalidNameError, match="invalid adapter name ''"):
            registry.verify([""])  # not every version

    def test_deleted_versions_are_listed_by_name_for_adapters_and_compositions(
        self, registry, make_adapter
    ):
        for seed in (1, 2, 3):
            register(registry, make_adapter(seed), name="a")
        registry.register_composition("c", {"type": "stack"}, ["a@1"])
        registry.register_composition("c", {"type": "stack"}, ["a@3"])
        assert registry.deleted_versions() == {} == registry.deleted_versions(compositions=True)
        registry.delete("a@2")
        registry.delete_composition("c@1")
        registry.delete("a@1")  # free once c@1 is gone
        assert registry.deleted_versions() == {"a": {1, 2}}
        assert registry.deleted_versions(compositions=True) == {"c": {1}}

    def test_delete_refuses_referenced_versions_then_gc_frees_bytes(
        self, registry, make_adapter, tmp_path
    ):
        register(registry, make_adapter(1))
        register(registry, make_adapter(2))
        registry.set_alias("tiny-sst2-en-lora@1", "champion")
        registry.set_alias("tiny-sst2-en-lora@1", "staging")
        registry.register_composition("c", {"type": "stack"}, ["tiny-sst2-en-lora@1"])
        with pytest.raises(rg.InUseError) as raised:
            registry.delete("tiny-sst2-en-lora@1")
        assert str(raised.value) == (  # each hold, and the command that takes it off
            "cannot delete tiny-sst2-en-lora@1: still referred to by alias 'champion', alias "
            "'staging', composition c@1; first move the aliases to another version or take them off "
            "(`adapterops unalias tiny-sst2-en-lora champion`, `adapterops unalias "
            "tiny-sst2-en-lora staging`) and delete what runs over it (`adapterops composition "
            "rm c@1`)"
        )
        before = {b.digest for b in registry.artifacts.blobs()}
        deleted = registry.delete("tiny-sst2-en-lora@2")
        spared: list[str] = []
        assert registry.gc(spared=spared) == []  # written within the hour's grace: kept
        removed = registry.gc(older_than=timedelta(0))
        assert sorted(spared) == sorted(removed)
        assert deleted.digest in removed
        assert len(removed) == 2  # its manifest and tensors; adapter.json is shared with version 1
        assert {b.digest for b in registry.artifacts.blobs()} == before - set(removed)
        registry.fetch(
            "tiny-sst2-en-lora@1", tmp_path / "still-whole"
        )  # the kept version is intact

    def test_registrations_go_on_while_gc_reads_the_manifests(
        self, registry, locations, make_adapter, tmp_path, monkeypatch
    ):
        """gc downloads the manifests no registration recorded (minutes at scale, once, after
        an upgrade from 0007) before it takes the blob lock, which it holds only to decide and delete: a registration meanwhile is not held
        up, and the orphaned bytes it registers again are kept."""
        register(registry, make_adapter(1))
        folder = make_adapter(2)
        gone = register(registry, folder, name="gone")
        registry.delete(gone.ref)  # its blobs are orphans now
        as_if_registered_before_0008(registry)  # so gc downloads the manifests
        other, meanwhile = Registry(*locations), []
        real_read_bytes = registry.artifacts.read_bytes

        def register_while_reading(digest):
            if not meanwhile:  # the first manifest gc reads: another process registers
                done: dict[str, rg.AdapterVersion] = {}
                writer = threading.Thread(
                    target=lambda: done.update(v=register(other, folder, name="back"))
                )
                writer.start()
                writer.join(timeout=30)
                meanwhile.append(done.get("v"))
            return real_read_bytes(digest)

        monkeypatch.setattr(registry.artifacts, "read_bytes", register_while_reading)
        removed = registry.gc(older_than=timedelta(0))
        assert meanwhile[0] is not None, "the registration waited for gc"
        assert meanwhile[0].digest == gone.digest  # the orphaned bytes, registered again
        assert removed == []  # kept: nothing else was orphaned
        monkeypatch.undo()
        registry.fetch("back@1", tmp_path / "back")

    def test_gc_refuses_while_a_versions_manifest_is_missing(self, registry, make_adapter):
        """Its files are unknown without it and looked unreferenced: gc deleted the tensors that
        pushing the folder again (which puts the manifest back) would have made whole again."""
        folder = make_adapter(1)
        broken = register(registry, folder)
        register(registry, make_adapter(2), name="gone")
        registry.delete("gone@1")
        registry.artifacts.delete(broken.digest)  # the store lost the manifest
        as_if_registered_before_0008(registry)  # and SQL never knew its files
        blobs = {b.digest for b in registry.artifacts.blobs()}
        with pytest.raises(rg.CorruptArtifactError) as refused:
            registry.gc(older_than=timedelta(0))
        assert str(refused.value) == (
            f"gc refused: the manifest of {broken.ref} is missing from the artifact store "
            f"{registry.artifacts.url} (sha256 {broken.digest}), so the files it lists are unknown "
            "and would look unreferenced. Push the version's folder again (the same bytes put "
            f"its manifest back) or delete the version (`adapterops rm {broken.ref}`); nothing "
            "was deleted"
        )
        assert {b.digest for b in registry.artifacts.blobs()} == blobs
        assert register(registry, folder).ref == broken.ref  # the same bytes: put back
        assert len(registry.gc(older_than=timedelta(0))) == 2  # gone@1's manifest and tensors
        registry.fetch(broken.ref, folder.parent / "pulled")  # whole again, every file verified

    def test_gc_reads_what_manifests_list_from_sql_not_from_the_store(
        self, registry, make_adapter, tmp_path, monkeypatch
    ):
        """A registration records its manifest's files, so gc downloads no manifest (it did,
        one per version, on every run); the rows of the manifests it deletes go with them."""
        kept = register(registry, make_adapter(1))
        gone = register(registry, make_adapter(2), name="gone")
        assert recorded_manifests(registry) == {kept.digest, gone.digest}
        registry.delete(gone.ref)

        def no_download(digest):
            raise AssertionError(f"gc downloaded {digest}")

        monkeypatch.setattr(registry.artifacts, "read_bytes", no_download)
        assert len(registry.gc(older_than=timedelta(0), dry_run=True)) == 2
        removed = registry.gc(older_than=timedelta(0))
        assert gone.digest in removed and len(removed) == 2  # manifest and tensors
        monkeypatch.undo()
        assert recorded_manifests(registry) == {kept.digest}
        registry.fetch(kept.ref, tmp_path / "whole")

    def test_manifests_recorded_before_0008_are_downloaded_once(
        self, registry, make_adapter, monkeypatch
    ):
        """A registry upgraded from 0007 knows no manifest's files: the first gc downloads
        each and records it (a dry run writes nothing); the next downloads none."""
        versions = [register(registry, make_adapter(n), name=f"a{n}") for n in (1, 2, 3)]
        as_if_registered_before_0008(registry)
        read, real_read_bytes = [], registry.artifacts.read_bytes

        def counted(digest):
            read.append(digest)
            return real_read_bytes(digest)

        monkeypatch.setattr(registry.artifacts, "read_bytes", counted)
        assert registry.gc(older_than=timedelta(0), dry_run=True) == []
        assert (sorted(read), recorded_manifests(registry)) == (
            sorted(v.digest for v in versions),
            set(),
        )
        read.clear()
        assert registry.gc(older_than=timedelta(0)) == []
        assert len(read) == 3 and recorded_manifests(registry) == {v.digest for v in versions}
        read.clear()
        assert registry.gc(older_than=timedelta(0)) == []
        assert read == []

    def test_a_lost_manifest_whose_files_sql_knows_keeps_them(self, registry, make_adapter):
        """Its files are known from SQL: gc keeps them and collects the real orphans, and
        pushing the folder again makes the version whole."""
        folder = make_adapter(1)
        lost = register(registry, folder)
        gone = register(registry, make_adapter(2), name="gone")
        registry.delete(gone.ref)
        registry.artifacts.delete(lost.digest)  # the store lost the manifest
        before = {b.digest for b in registry.artifacts.blobs()}
        removed = registry.gc(older_than=timedelta(0))
        assert gone.digest in removed and len(removed) == 2
        assert {b.digest for b in registry.artifacts.blobs()} == before - set(removed)
        assert register(registry, folder).ref == lost.ref
        registry.fetch(lost.ref, folder.parent / "pulled")  # every file verified

    def test_gc_deletes_in_batches(self, registry, make_adapter, tmp_path, monkeypatch):
        """gc holds the blob lock (registrations wait) while it deletes: on S3 one DeleteObjects
        request per batch of keys, not one request per blob; absent blobs are no-ops."""
        import registry.artifacts.s3 as s3_module

        monkeypatch.setattr(s3_module, "DELETE_BATCH", 4)  # 1,000 in use: 6 blobs, 2 batches
        requests: list[int] = []
        if isinstance(registry.artifacts, s3_module.S3Store):
            client = registry.artifacts.client
            real = client.delete_objects

            def counted(**kwargs):
                requests.append(len(kwargs["Delete"]["Objects"]))
                return real(**kwargs)

            monkeypatch.setattr(client, "delete_objects", counted)
        kept = register(registry, make_adapter(0), name="kept")
        doomed = [register(registry, make_adapter(seed), name=f"gone{seed}") for seed in (1, 2, 3)]
        for version in doomed:
            registry.delete(version.ref)
        removed = registry.gc(older_than=timedelta(0))
        # each one's manifest and tensors (adapter.json is the same bytes as kept's)
        assert {v.digest for v in doomed} <= set(removed) and len(removed) == 6
        assert not {b.digest for b in registry.artifacts.blobs()} & set(removed)
        if isinstance(registry.artifacts, s3_module.S3Store):
            assert requests == [4, 2]
        registry.artifacts.delete_many(removed[:2])  # gone already: nothing to say
        manifest = Manifest.from_bytes(registry.artifacts.read_bytes(kept.digest))
        assert {name for name, _, _ in manifest.files} == {"adapter.json", "adapter.safetensors"}
        with pytest.raises(FileNotFoundError):
            registry.artifacts.read_bytes(removed[0])
        registry.fetch(kept.ref, tmp_path / "kept")

    def test_delete_refuses_a_member_a_fusion_was_trained_over(self, registry, make_adapter):
        """A fusion loads its exact members at every use: deleting one (then gc) broke it."""
        register(registry, make_adapter(1), name="member")
        register(registry, make_adapter(2), name="member")
        register(registry, make_adapter(4), name="other")
        register(
            registry, make_adapter(3, method="fusion"), name="fused",
            lineage={"fusion_members": ["member@1", "other@1"]},
        )  # fmt: skip
        with pytest.raises(rg.InUseError) as raised:
            registry.delete("member@1")
        assert str(raised.value) == (
            "cannot delete member@1: still referred to by fusion fused@1 (trained over it); "
            "first delete what runs over it (`adapterops rm fused@1`)"
        )
        assert registry.used_by("member@1") == rg.UsedBy(fusions=("fused@1",))
        assert not registry.used_by("member@2")
        assert [v.ref for v in registry.find(name="member")] == ["member@1", "member@2"]
        assert registry.delete("member@2").ref == "member@2"  # a version no fusion lists
        registry.delete("fused@1")  # the fusion gone, its member may go too
        assert registry.delete("member@1").ref == "member@1"

    def test_a_fusion_is_registered_only_with_the_exact_members_it_fuses(
        self, registry, make_adapter
    ):
        """Without them it could never load (a pushed fusion folder lost them): refused before
        its bytes are stored."""
        register(registry, make_adapter(1), name="member")
        folder = make_adapter(2, method="fusion")
        (folder / "adapter.json").write_text(
            json.dumps({**json.loads((folder / "adapter.json").read_text()),
                        "method": {"type": "fusion", "members": ["member"]}})
        )  # fmt: skip
        blobs = {b.digest for b in registry.artifacts.blobs()}
        refusals = {
            None: (rg.InvalidCompositionError, "its lineage must list the exact member versions "
                   "it was trained over, fusion_members: ['name@VERSION', ...] (got None)"),
            ("member@champion",): (rg.InvalidCompositionError, "(got ['member@champion'])"),
            ("other@1",): (rg.InvalidCompositionError,
                           "fuses ['member'], but its lineage lists ['other@1']"),
            ("member@7",): (rg.NotFoundError, "fusion member member@7: "),
            ("member@1", "other-base"): (rg.InvalidCompositionError,
                f"fusion member member@1 is an adapter of base model {BASE}, not other-base: a "
                "fusion runs over adapters of its own base model"),
        }  # fmt: skip
        for members, (error, words) in refusals.items():
            lineage = {} if members is None else {"fusion_members": list(members[:1])}
            base = members[1] if members and len(members) > 1 else BASE
            with pytest.raises(error) as raised:
                register(registry, folder, name="fused", lineage=lineage, base_model=base)
            assert words in str(raised.value)
            assert registry.find(name="fused") == []
            assert {b.digest for b in registry.artifacts.blobs()} == blobs  # told before upload
        fused = register(registry, folder, name="fused", lineage={"fusion_members": ["member@1"]})
        assert fused.lineage == {"fusion_members": ["member@1"]}

    def test_a_gc_between_the_bytes_and_the_record_cannot_strand_a_registration(
        self, registry, make_adapter, locations, monkeypatch, tmp_path
    ):
        import registry.client as client_module

        folder = make_adapter(1)
        register(registry, folder)
        register(registry, make_adapter(2))
        registry.delete("tiny-sst2-en-lora@1")  # its blobs are orphans a gc may take
        other = Registry(*locations)
        real_upload = client_module.upload
        collected: list[list[str]] = []

        def upload_then_gc(store, bundle, on_bytes=None, **how):  # forced: gc right after it
            uri = real_upload(store, bundle, on_bytes, **how)
            if not collected:
                collected.append(other.gc(older_than=timedelta(0)))
            return uri

        monkeypatch.setattr(client_module, "upload", upload_then_gc)
        again = register(registry, folder)  # the same bytes: put_file found the orphans present
        assert len(collected[0]) == 2  # the gc did take the reused blobs (manifest and tensors)
        assert again.version == 3
        registry.fetch(again.ref, tmp_path / "pulled")  # every file present and verified
        other.close()

    def test_gc_removes_bytes_left_by_a_crash_but_spares_recent_uploads(
        self, registry, make_adapter, tmp_path
    ):
        from registry.bundles import inspect_folder, upload

        register(registry, make_adapter(1))
        upload(registry.artifacts, inspect_folder(make_adapter(2)))  # a crash before the record
        assert registry.gc() == []  # within the grace period: maybe an upload in flight
        orphans = registry.gc(older_than=timedelta(0))
        assert len(orphans) == 2  # the orphan's tensors and manifest (adapter.json is shared)
        assert registry.gc(older_than=timedelta(0)) == []
        registry.fetch("tiny-sst2-en-lora@1", tmp_path / "still-whole")

    def test_transfers_tell_their_bytes_as_they_go(self, registry, make_adapter, tmp_path):
        """For the push and pull progress bars: every file's bytes, once (a file already stored
        counts as moved), up to the version's size."""
        folder = make_adapter(1)
        uploaded: list[int] = []
        version = register(registry, folder, on_bytes=uploaded.append)
        assert uploaded and sum(uploaded) == version.size == sum(
            p.stat().st_size for p in folder.iterdir()
        )
        again: list[int] = []
        assert register(registry, folder, on_bytes=again.append).ref == version.ref
        assert sum(again) == version.size
        downloaded: list[int] = []
        registry.fetch(version.ref, tmp_path / "pulled", on_bytes=downloaded.append)
        assert sum(downloaded) == version.size

    def test_gc_refuses_a_store_another_registry_writes_to(
        self, registry, locations, make_adapter, tmp_path, request
    ):
        """A staging and a production registry given one bucket: gc in one deleted the other's
        versions' files (they are referred to by no version of its own)."""
        staging, _ = another_registry(locations, tmp_path, request)
        register(registry, make_adapter(1))
        register(staging, make_adapter(2), name="staging-only")
        assert registry.identity != staging.identity
        marker = registry.artifacts.marker_uri(staging.identity)
        with pytest.raises(rg.SharedStoreError) as refused:
            registry.gc(older_than=timedelta(0))
        assert str(refused.value) == (
            f"gc refused: the artifact store {registry.artifacts.url} is shared with another "
            "registry, whose versions' files look unreferenced from here: registry "
            f"{staging.identity} at {staging.database.safe_url} (marker {marker}). Collect it "
            "with every registry that writes to it (`adapterops gc --shared-with "
            "DATABASE_URL`, once per other registry; from Python gc(shared_with=[Registry(url, "
            "artifacts_url)])), or give each registry its own ADAPTEROPS_ARTIFACTS_URL (a "
            "folder or S3 prefix of its own); if that registry is gone for good, delete its "
            "marker and run gc again (nothing was deleted)"
        )
        with pytest.raises(rg.SharedStoreError):
            staging.gc(older_than=timedelta(0), dry_run=True)  # and the other way round
        staging.fetch("staging-only@1", tmp_path / "staging-still-whole")
        # the staging registry is retired: its marker goes, and gc takes its files
        retired = staging.identity
        staging.close()
        store = registry.artifacts
        if isinstance(store, LocalStore):
            (store.root / "registries" / retired).unlink()
        else:
            key = f"{store.prefix}/registries/{retired}"
            store.client.delete_object(Bucket=store.bucket, Key=key)
        assert len(registry.gc(older_than=timedelta(0))) == 2  # its tensors and manifest
        registry.fetch("tiny-sst2-en-lora@1", tmp_path / "still-whole")

    def test_gc_says_when_the_other_writer_is_this_database_created_again(
        self, make_adapter, tmp_path
    ):
        """A registry.db deleted and created again over the same folder has a new id: gc's
        refusal named "another registry" at the user's own path. It says what happened."""
        database, artifacts = f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts"
        first = Registry(database, artifacts)
        register(first, make_adapter(1))
        old_id = first.identity
        first.close()
        (tmp_path / "registry.db").unlink()
        again = Registry(database, artifacts)
        register(again, make_adapter(2))
        with pytest.raises(rg.SharedStoreError) as refused:
            again.gc(older_than=timedelta(0))
        marker = again.artifacts.marker_uri(old_id)
        assert str(refused.value) == (
            f"gc refused: a registry at this same database ({again.database.safe_url}) wrote to "
            f"{again.artifacts.url} under another id ({old_id}; this one is {again.identity}): "
            "the database was created again since, so the files of the versions it held look "
            "unreferenced from here. If those versions are gone for good, delete the marker "
            f"({marker}) and run gc again (nothing was deleted)"
        )
        assert len(list(again.artifacts.blobs())) == 5  # two manifests, two tensors, a config

    def test_gc_collects_a_shared_store_with_every_registry_that_writes_to_it(
        self, registry, locations, make_adapter, tmp_path, request
    ):
        """With the other registry given, gc keeps what either refers to and takes what
        neither does (an orphan of each)."""
        staging, other_url = another_registry(locations, tmp_path, request)
        register(registry, make_adapter(1))
        register(registry, make_adapter(2), name="gone")
        register(staging, make_adapter(3), name="staging-only")
        register(staging, make_adapter(4), name="staging-gone")
        orphans = {registry.delete("gone@1").digest, staging.delete("staging-gone@1").digest}
        elsewhere = Registry(f"sqlite:///{tmp_path / 'elsewhere.db'}", tmp_path / "elsewhere")
        refusals = {
            (elsewhere,): (rg.RegistryError, f"stores its files in {elsewhere.artifacts.url}, "
                           f"not in this registry's store {registry.artifacts.url}"),
            staging: (TypeError, "shared_with is a list of Registry objects, not Registry"),
            (other_url,): (TypeError, f"shared_with holds Registry objects, not {other_url!r:.60}"),
        }  # fmt: skip
        for given, (error, words) in refusals.items():
            with pytest.raises(error) as raised:
                registry.gc(older_than=timedelta(0), shared_with=given)
            assert words in str(raised.value)
        with pytest.raises(rg.SharedStoreError, match=r"adapterops gc --shared-with"):
            registry.gc(older_than=timedelta(0), shared_with=[registry])  # itself: no one else
        for each in (registry, staging):  # so gc downloads both registries' manifests
            as_if_registered_before_0008(each)
        told: list[tuple[int, int]] = []  # a bar: the manifests downloaded
        planned = registry.gc(
            older_than=timedelta(0), dry_run=True, shared_with=[staging],
            on_progress=lambda done, total: told.append((done, total)),
        )  # fmt: skip
        assert told == [(1, 2), (2, 2)]
        assert set(orphans) <= set(planned) and len(planned) == 4  # manifests and tensors
        assert staging.gc(older_than=timedelta(0), shared_with=[registry]) == planned
        assert registry.gc(older_than=timedelta(0), shared_with=[staging]) == []
        registry.fetch("tiny-sst2-en-lora@1", tmp_path / "kept")
        staging.fetch("staging-only@1", tmp_path / "kept-too")


class TestLeftovers:
    def test_gc_takes_what_a_killed_upload_left_after_the_grace_period(
        self, registry, make_adapter
    ):
        from registry.artifacts.local import LocalStore
        from registry.artifacts.s3 import S3Store

        register(registry, make_adapter(1))
        store = registry.artifacts
        if isinstance(store, LocalStore):  # a blob copy killed before its rename
            leftover = store.root / "blobs" / "sha256" / "ab" / ".incoming-killed"
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_bytes(b"half a blob")
            name = "blobs/sha256/ab/.incoming-killed"
        else:  # an S3 multipart upload killed before it completed
            assert isinstance(store, S3Store)
            key = f"{store.prefix}/blobs/sha256/ab/{'ab' * 32}"
            store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
            name = f"multipart:{key}"
        assert registry.gc() == []  # within the grace period: maybe an upload in flight
        assert registry.gc(older_than=timedelta(0), dry_run=True) == [name]
        assert registry.gc(older_than=timedelta(0)) == [name]
        assert registry.gc(older_than=timedelta(0)) == []
        if isinstance(store, LocalStore):
            assert not leftover.exists()
        else:
            uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
            assert uploads.get("Uploads", []) == []


class TestCompositions:
    def test_versioned_compositions_over_exact_members(self, registry, make_adapter):
        register(registry, make_adapter(1), name="sst2-en")
        register(
            registry,
            make_adapter(2, method="pfeiffer", head="masked-lm"),
            name="lang-pt",
            task="mlm",
            language="pt",
        )
        first = registry.register_composition("pt-sst2", {"type": "stack"}, ["lang-pt", "sst2-en"])
        register(registry, make_adapter(3), name="sst2-en")
        second = registry.register_composition("pt-sst2", {"type": "stack"}, ["lang-pt", "sst2-en"])
        assert (first.version, first.members) == (1, ("lang-pt@1", "sst2-en@1"))
        assert (second.version, second.members) == (2, ("lang-pt@1", "sst2-en@2"))
        assert registry.composition("pt-sst2", 1).members == ("lang-pt@1", "sst2-en@1")
        # one JSON shape, peft_core's, with the exact versions as leaves
        assert second.definition == {"type": "stack", "children": ["lang-pt@1", "sst2-en@2"]}
        with pytest.raises(rg.InUseError, match=r"composition pt-sst2@1"):
            registry.delete("sst2-en@1")

    def test_listing_versions_costs_the_same_queries_for_few_and_many(self, registry, make_adapter):
        """A composition retrained nightly has hundreds of versions: `composition show` and
        `trend` list them all, in a fixed number of queries, each with its own members and
        aliases."""
        from sqlalchemy import event

        register(registry, make_adapter(1), name="lang")
        register(registry, make_adapter(2), name="task")

        def statements(read) -> tuple[int, object]:
            seen: list[str] = []

            def count(conn, cursor, statement, *args) -> None:
                seen.append(statement)

            event.listen(registry.database.engine, "before_cursor_execute", count)
            try:
                result = read()
            finally:
                event.remove(registry.database.engine, "before_cursor_execute", count)
            return len(seen), result

        def save_versions(count: int) -> None:
            for _ in range(count):
                register(registry, make_adapter(3 + len(registry.history("task"))), name="task")
                registry.register_composition("c", {"type": "stack"}, ["lang", "task"])

        save_versions(2)
        few, _ = statements(lambda: registry.composition_versions("c"))
        few_listed, _ = statements(registry.compositions)
        save_versions(10)
        registry.set_composition_alias("c@3", "champion")
        registry.set_composition_alias("c@12", "challenger")
        for name in ("d", "e"):
            registry.register_composition(name, {"type": "stack"}, ["task", "lang"])
        many, versions = statements(lambda: registry.composition_versions("c"))
        many_listed, listed = statements(registry.compositions)
        assert (many, many_listed) == (few, few_listed)
        assert [v.version for v in versions] == list(range(1, 13))
        task_versions = [v.version for v in registry.find(name="task")]
        assert [v.members for v in versions] == [
            ("lang@1", f"task@{n}") for n in sorted(task_versions)[1:]
        ]
        assert {v.version: v.aliases for v in versions if v.aliases} == {
            3: ("champion",),
            12: ("challenger",),
        }
        assert [(c.name, c.version, c.aliases) for c in listed] == [
            ("c", 12, ("challenger",)),
            ("d", 1, ()),
            ("e", 1, ()),
        ]
        assert listed[1].members == ("task@13", "lang@1")

    def test_definitions_come_out_in_the_one_shape(self, registry, make_adapter):
        import peft_core as pc

        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        register(registry, make_adapter(3), name="c")
        nested = {
            "type": "stack",
            "children": ["a", {"type": "average", "children": ["b", "c"], "weights": [0.5, 0.5]}],
        }
        made = registry.register_composition("nested", nested, ["a", "b", "c"])
        expected = {
            "type": "stack",
            "children": [
                "a@1",
                {"type": "average", "children": ["b@1", "c@1"], "weights": [0.5, 0.5]},
            ],
        }
        assert made.definition == expected == registry.composition("nested").definition
        assert pc.block_to_dict(pc.block_from_dict(made.definition)) == expected
        old_shape = registry.register_composition(
            "old", {"type": "stack", "members": ["a", "b"]}, ["a", "b"]
        )
        assert old_shape.definition == {"type": "stack", "children": ["a@1", "b@1"]}
        # leaves are placeholders the members fill in order: any name that is no other member's
        placeheld = registry.register_composition(
            "held", {"type": "stack", "children": ["x", "b@7"]}, ["a", "b"]
        )
        assert placeheld.definition == {"type": "stack", "children": ["a@1", "b@1"]}

    @pytest.mark.parametrize(
        ("definition", "words"),
        [
            ({"type": "stack", "children": ["a"]}, "1 adapter(s) but 2 member(s)"),
            (
                {"type": "parallel", "children": ["a", {"type": "stack", "children": ["b"]}]},
                "invalid composition",
            ),
            (["a", "b"], "a composition definition is"),
            ({"type": "stak"}, "unknown composition type 'stak'; one of average, fuse, parallel"),
            # a leaf written as a block was counted as none ("the definition has 0 adapter(s)")
            (
                {"type": "stack", "children": [{"type": "adapter", "name": "a"}, "b"]},
                "unknown composition type 'adapter'; one of average, fuse, parallel, stack (in "
                '{"type": "adapter", "name": "a"}; a leaf is a member\'s name, a string, in its '
                "block's 'children')",
            ),
            # children as one text counted its characters as leaves
            ({"type": "stack", "children": "ab"}, "'children' of a stack block is a list of"),
            # a Fuse needs its trained fusion adapter, which no member is (it failed at load)
            ({"type": "fuse"}, "a composition cannot hold a Fuse block: AdapterFusion's"),
            (
                {"type": "stack", "children": ["a", {"type": "fuse", "children": ["b"]}]},
                "a composition cannot hold a Fuse block",
            ),
            # the members fill the leaves in order: ["b", "a"] over members a b was a b, swapped
            (
                {"type": "stack", "children": ["b", "a@1"]},
                "the definition's leaf 1 is 'b', but the member in that place is a@1: the members "
                "fill the leaves in the order they are given; give them as the definition orders "
                "them: b@1 a@1",
            ),
            (
                {"type": "stack", "children": ["x", "a"]},
                "the definition's leaf 2 is 'a', but the member in that place is b@1: the members "
                "fill the leaves in the order they are given",
            ),
        ],
    )
    def test_bad_definitions_are_refused_and_nothing_is_stored(
        self, registry, make_adapter, definition, words
    ):
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        with pytest.raises(rg.InvalidCompositionError, match=re.escape(words)):
            registry.register_composition("bad", definition, ["a", "b"])
        with pytest.raises(rg.NotFoundError):
            registry.composition("bad")

    def test_an_adapter_asked_for_as_a_composition_and_back_is_named(self, registry, make_adapter):
        register(registry, make_adapter(1), name="a")
        registry.register_composition("c", {"type": "stack"}, ["a"])
        with pytest.raises(rg.NotFoundError, match=r"no adapter named 'c'; 'c' is a composition"):
            registry.get("c@1")
        with pytest.raises(rg.NotFoundError, match=r"no composition 'a'; 'a' is an adapter"):
            registry.composition("a")
        # the hint fits whichever command it was: `rm c` is `composition rm c`, and back
        with pytest.raises(rg.NotFoundError, match=r"the same command after `composition`"):
            registry.delete("c@1")
        with pytest.raises(rg.NotFoundError, match=r"the same command without `composition`"):
            registry.delete_composition("a@1")

    def test_a_fusion_is_no_member(self, registry, make_adapter):
        """It was saved, then refused at every load: its own members are not loaded with it."""
        register(registry, make_adapter(1), name="a")
        register(
            registry, make_adapter(2, method="fusion"), name="fused",
            lineage={"fusion_members": ["a@1"]},
        )  # fmt: skip
        with pytest.raises(rg.InvalidCompositionError) as raised:
            registry.register_composition("c", {"type": "stack"}, ["a", "fused"])
        assert str(raised.value) == (
            "fused@1: an AdapterFusion runs over the adapters it fuses, which a composition "
            "does not load with it; predict with it alone (`adapterops predict fused@1`), or "
            "compose the adapters it fuses"
        )
        assert registry.compositions() == []

    def test_a_deleted_version_frees_its_members_and_its_number_stays_taken(
        self, registry, make_adapter
    ):
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        for members in (["a", "b"], ["a"], ["b"]):
            registry.register_composition("c", {"type": "stack"}, members)
        registry.set_composition_alias("c@1", "champion")
        with pytest.raises(rg.InUseError) as raised:
            registry.delete_composition("c@1")
        assert str(raised.value) == (
            "cannot delete composition c@1: it holds the alias 'champion'; move it to another "
            "version or remove it first (adapterops composition unalias c champion)"
        )
        assert registry.delete_composition("c@3").members == ("b@1",)
        assert registry.delete_composition("c@2").ref == "c@2"
        with pytest.raises(rg.NotFoundError, match=r"no composition 'c' version 2; versions: 1$"):
            registry.composition("c@2")
        # numbers are never given again: c@2 and c@3 keep meaning what they meant
        assert registry.register_composition("c", {"type": "stack"}, ["b"]).version == 4
        assert [c.version for c in registry.composition_versions("c")] == [1, 4]
        assert registry.composition("c").version == 4  # the newest that exists
        with pytest.raises(rg.InUseError, match=r"composition c@1"):
            registry.delete("a@1")  # c@1 still holds it
        assert registry.used_by("a@1").to_dict() == {"compositions": ["c@1"], "fusions": []}
        registry.remove_composition_alias("c", "champion")
        registry.delete_composition("c@1")
        assert registry.delete("a@1").ref == "a@1"  # no composition holds it now
        registry.delete_composition("c@4")
        kinds = [(e.kind, e.version) for e in registry.composition_history("c")]
        assert kinds == [
            ("composition", 1), ("composition", 2), ("composition", 3),
            ("composition_alias_set", 1), ("composition_deleted", 3),
            ("composition_deleted", 2), ("composition", 4), ("composition_alias_removed", 1),
            ("composition_deleted", 1), ("composition_deleted", 4),
        ]  # fmt: skip
        with pytest.raises(rg.NotFoundError, match=r"no composition 'c'"):
            registry.composition("c")  # every version gone; its history above stays
        assert registry.compositions() == []
        assert registry.register_composition("c", {"type": "stack"}, ["b"]).version == 5

    def test_a_version_keeps_the_metrics_it_scored_and_diff_weighs_them(
        self, registry, make_adapter
    ):
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        first = registry.register_composition("c", {"type": "stack"}, ["a", "b"])
        second = registry.register_composition(
            "c", {"type": "stack"}, ["a", "b"], metrics={"accuracy": 0.81, "perplexity": 3}
        )
        assert (first.metrics, second.metrics) == ({}, {"accuracy": 0.81, "perplexity": 3.0})
        assert registry.composition("c@2").metrics == {"accuracy": 0.81, "perplexity": 3.0}
        assert registry.composition("c@2").to_dict()["metrics"] == {
            "accuracy": 0.81,
            "perplexity": 3.0,
        }
        third = registry.register_composition(
            "c", {"type": "stack"}, ["a", "b"], metrics={"accuracy": 0.85, "perplexity": 4}
        )
        rows = {
            c.field: (c.before, c.after, c.to_dict().get("better"))
            for c in registry.composition_diff(second.ref, third.ref).changes
            if c.section == "metrics"
        }
        assert rows == {"accuracy": (0.81, 0.85, True), "perplexity": (3.0, 4.0, False)}
        with pytest.raises(rg.RegistryError, match=r"metric accuracy=nan is not a finite number"):
            registry.register_composition("c", {"type": "stack"}, ["a"], metrics={"accuracy": float("nan")})  # fmt: skip
        assert registry.composition("c").version == 3  # nothing saved

    def test_members_share_one_base_model(self, registry, make_adapter):
        """They load into one model: a member of another base was saved, then refused at every
        load."""
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2, fingerprint="e" * 64), name="b", base_model="other")
        with pytest.raises(rg.InvalidCompositionError) as raised:
            registry.register_composition("c", {"type": "average"}, ["a", "b"])
        assert str(raised.value) == (
            f"c: its members are adapters of different base models (a@1: {BASE}; b@1: other), "
            "and a composition's members load into one model: compose adapters of one base model"
        )
        assert registry.compositions() == []

    @pytest.mark.parametrize("members", [["a@1", "a@2"], ["a", "a"]])
    def test_one_version_of_each_adapter(self, registry, make_adapter, members):
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="a")
        with pytest.raises(rg.InvalidCompositionError, match=r"the members name a twice"):
            registry.register_composition("dup", {"type": "stack"}, members)
        with pytest.raises(rg.NotFoundError):
            registry.composition("dup")


class TestCompositionAliases:
    def test_an_alias_names_a_version_moves_and_goes(self, registry, make_adapter):
        register(registry, make_adapter(1), name="a")
        register(registry, make_adapter(2), name="b")
        registry.register_composition("ab", {"type": "stack"}, ["a", "b"])
        register(registry, make_adapter(3), name="b")
        registry.register_composition("ab", {"type": "stack"}, ["a", "b"])
        assert registry.set_composition_alias("ab@1", "champion").aliases == ("champion",)
        assert registry.composition("ab@champion").members == ("a@1", "b@1")
        assert registry.composition("ab").aliases == ()  # the newest, version 2
        moved = registry.set_composition_alias("ab@2", "champion", origin="cli")
        assert (moved.version, moved.aliases) == (2, ("champion",))
        assert registry.composition("ab", 1).aliases == ()
        assert registry.composition("ab@champion").members == ("a@1", "b@2")
        registry.set_composition_alias("ab@1", "previous")
        assert [(c.ref, c.aliases) for c in registry.compositions()] == [("ab@2", ("champion",))]
        assert registry.composition("ab@previous").to_dict()["aliases"] == ["previous"]
        registry.remove_composition_alias("ab", "champion")
        with pytest.raises(rg.NotFoundError, match=r"has no alias 'champion'; aliases: previous"):
            registry.composition("ab@champion")
        events = [
            (e.kind, e.version, e.alias, e.origin) for e in registry.composition_history("ab")
        ]
        assert events == [
            ("composition", 1, None, "registry"),
            ("composition", 2, None, "registry"),
            ("composition_alias_set", 1, "champion", "registry"),
            ("composition_alias_set", 2, "champion", "cli"),
            ("composition_alias_set", 1, "previous", "registry"),
            ("composition_alias_removed", 2, "champion", "registry"),
        ]
        assert "composition_alias_set" not in {e.kind for e in registry.history("a")}

    @pytest.mark.parametrize(
        ("call", "error", "words"),
        [
            (lambda r: r.composition("ab@7"), rg.NotFoundError, "versions: 1"),
            (lambda r: r.composition("nope@1"), rg.NotFoundError, "no composition 'nope'"),
            (lambda r: r.set_composition_alias("ab@1", "3"), rg.InvalidNameError, "a number"),
            (lambda r: r.set_composition_alias("nope", "x"), rg.NotFoundError, "'nope'"),
            (lambda r: r.remove_composition_alias("ab", "x"), rg.NotFoundError, "aliases: none"),
        ],
    )
    def test_bad_references_and_names_are_refused(self, registry, make_adapter, call, error, words):
        register(registry, make_adapter(1), name="a")
        registry.register_composition("ab", {"type": "stack"}, ["a"])
        with pytest.raises(error, match=re.escape(words)):
            call(registry)
        assert registry.composition("ab").aliases == ()


def _blob_bytes(reg: Registry, digest: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "blob"
        reg.artifacts.get_file(digest, path)
        return path.read_bytes()
