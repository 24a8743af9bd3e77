"""Registry commands as users and CI run them: real subprocesses, ``--json`` output, exit codes.

Once on the embedded defaults (SQLite and a folder under ADAPTEROPS_HOME), once against the real
PostgreSQL and SeaweedFS servers through the environment variables production uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import registry as rg
from flows.cli.output import human_bytes
from registry.artifacts import open_store
from tests.helpers import empty_registry, home_with_fake_adapters, run_cli, run_cli_in_a_terminal
from tests.registry.conftest import fresh_bucket_url, fresh_postgres_url
from tests.registry.workers import write_fake_adapter

REQUIRED = {"name", "version", "base_model", "task", "language", "method", "digest", "aliases"}


@pytest.fixture(params=["embedded", "postgres+s3"])
def environment(request, tmp_path) -> dict[str, str]:
    # MLflow too: the embedded one under this home (an earlier test may export its own URI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    if request.param == "postgres+s3":
        postgres = request.getfixturevalue("postgres")
        request.getfixturevalue("seaweed")  # sets the AWS_* variables
        env |= {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        env |= {
            "ADAPTEROPS_REGISTRY_URL": fresh_postgres_url(postgres),
            "ADAPTEROPS_ARTIFACTS_URL": fresh_bucket_url(),
        }
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def ok_json(result: subprocess.CompletedProcess[str]):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_registry_commands_end_to_end(environment, tmp_path):
    env = environment
    common = ["--base-model", "tiny-bert", "--task", "sst2", "--language", "en"]
    first = write_fake_adapter(tmp_path / "v1", seed=1)
    second = write_fake_adapter(tmp_path / "v2", seed=2)
    if "ADAPTEROPS_REGISTRY_URL" in env:  # a new (migrated) server database
        empty = run(env, "ls")  # a line that says what to do, not an empty table
        assert empty.stdout.strip() == (
            "no versions yet: `adapterops build SPEC` or `adapterops push FOLDER` adds one"
        )
    else:  # reading creates no SQLite registry: it says where it looked (the push makes one)
        assert run(env, "ls").stderr.startswith(f"error: no registry at {env['ADAPTEROPS_HOME']}")

    pushed = ok_json(
        run(
            env,
            "push",
            str(first),
            "--name",
            "sst2-en",
            *common,
            "--metric",
            "accuracy=0.8",
            "--json",
        )
    )
    assert set(pushed) >= REQUIRED and pushed["version"] == 1 and len(pushed["digest"]) == 64
    pushed = ok_json(
        run(
            env,
            "push",
            str(second),
            "--name",
            "sst2-en",
            *common,
            "--metric",
            "accuracy=0.9",
            "--json",
        )
    )
    assert pushed["version"] == 2

    assert ok_json(run(env, "alias", "sst2-en@1", "champion", "--json"))["aliases"] == ["champion"]
    # set in MLflow too (reviewers see it there): a sync, where MLflow wins, keeps it
    assert ok_json(run(env, "sync", "--json"))["changes"] == []
    assert ok_json(run(env, "show", "sst2-en@champion", "--json"))["version"] == 1
    bad = run(env, "alias", "sst2-en@1", "bad/alias", "--json")
    assert bad.returncode == 2 and "invalid alias 'bad/alias'" in json.loads(bad.stdout)["error"]
    reserved = run(env, "alias", "sst2-en@1", "latest")  # MLflow's refusal blamed the server
    assert reserved.returncode == 2
    assert reserved.stderr.startswith("error: invalid alias 'latest': MLflow, where reviewers")
    cased = run(env, "alias", "sst2-en@2", "Champion")  # a second alias here, one in MLflow's UI
    assert (cased.returncode, cased.stderr) == (2, (
        "error: alias 'Champion': adapter 'sst2-en' already has the alias 'champion', which "
        "differs only by case, and MLflow's UI lowercases aliases; use 'champion' (or remove it "
        "first)\n"
    ))  # fmt: skip
    assert ok_json(run(env, "sync", "--json"))["changes"] == []  # MLflow was not touched
    listed = ok_json(run(env, "ls", "--task", "sst2", "--order-by", "accuracy", "--json"))
    assert [(v["version"], v["aliases"]) for v in listed] == [(2, []), (1, ["champion"])]
    assert all(set(v) >= REQUIRED for v in listed)
    typo = run(env, "ls", "--order-by", "acuracy")  # was: listed in no order, silently
    assert (typo.returncode, typo.stderr) == (
        2, "error: no version here recorded 'acuracy' to order by; did you mean 'accuracy'? they "
        "recorded: accuracy\n"
    )  # fmt: skip
    assert ok_json(run(env, "ls", "--alias", "champion", "--json"))[0]["version"] == 1

    shown = ok_json(run(env, "show", "sst2-en@champion", "--json"))
    assert shown["version"] == 1 and shown["metrics"] == {"accuracy": 0.8}
    # what a reviewer asks before promoting: what changed from the champion to the newer one
    changed = ok_json(run(env, "diff", "sst2-en@champion", "sst2-en@2", "--json"))
    assert (changed["before"], changed["after"], changed["same_files"]) == (
        "sst2-en@1",
        "sst2-en@2",
        False,
    )
    assert changed["spec_compared"] is False  # pushed without --spec: unknown, not equal
    assert changed["changes"] == [
        {
            "section": "metrics", "field": "accuracy", "before": 0.8, "after": 0.9,
            "delta": pytest.approx(0.1), "better": True,
        }
    ]  # fmt: skip
    human = run_cli("diff", "sst2-en@1", "sst2-en@2", env={**env, "COLUMNS": "100"}).stdout
    assert human.splitlines()[0] == "before sst2-en@1 -> after sst2-en@2: different files"
    assert re.search(r"│ metrics +│ accuracy +│ 0\.8 +│ 0\.9 +│ \+0\.1 better +│", human)
    assert human.splitlines()[-1] == (
        "spec: not compared, one of them was registered without it (push without --spec)"
    )
    # the metric across versions, for a person (a plot and a table) and for scripts
    trend = ok_json(run(env, "trend", "sst2-en", "--out", str(tmp_path / "t.png"), "--json"))
    assert (trend["metric"], trend["best"], trend["plot"]) == (
        "accuracy",
        2,
        str(tmp_path / "t.png"),
    )
    assert [(p["version"], p["value"], p["aliases"]) for p in trend["points"]] == [
        (1, 0.8, ["champion"]),
        (2, 0.9, []),
    ]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    numbers = run_cli("trend", "sst2-en", "--json", env=env, cwd=tmp_path)  # no --out: no file
    assert json.loads(numbers.stdout)["plot"] is None
    assert [p.name for p in tmp_path.glob("*.png")] == ["t.png"]
    table = run_cli("trend", "sst2-en", env={**env, "COLUMNS": "80"}, cwd=tmp_path).stdout
    assert re.search(r"│ 1 +│ 0\.8 +│ champion +│ +│", table)
    assert re.search(r"│ 2 +│ 0\.9 +│ +│ best +│", table)
    assert (
        table.endswith("plot: sst2-en-accuracy.png\n")
        and (tmp_path / "sst2-en-accuracy.png").is_file()
    )
    pulled = ok_json(run(env, "pull", "sst2-en@2", str(tmp_path / "pulled"), "--json"))
    assert (Path(pulled["path"]) / "adapter.safetensors").read_bytes() == (
        second / "adapter.safetensors"
    ).read_bytes()

    resolved = ok_json(run(env, "resolve", *common, "--json"))
    assert resolved["kind"] == "promoted" and resolved["versions"][0]["version"] == 1

    events = ok_json(run(env, "history", "sst2-en", "--json"))
    assert [(e["kind"], e["origin"]) for e in events] == [
        ("registered", "cli"),
        ("registered", "cli"),
        ("alias_set", "cli"),
    ]

    assert ok_json(run(env, "rm", "sst2-en@2", "--json"))["deleted"] == "sst2-en@2"
    assert ok_json(run(env, "history", "sst2-en", "--json"))[-1]["origin"] == "cli"
    # right after rm, its blobs are younger than the grace period: gc says why it kept them
    kept = run(env, "gc")
    assert kept.stdout == (
        "removed 0 unreferenced blob(s); 2 more written in the last 60 minutes are kept (a "
        "registration may be uploading them): --older-than-minutes 0 takes them too when "
        "nothing is registering\n"
    )
    gone = ok_json(run(env, "gc", "--older-than-minutes", "0", "--json"))
    assert (len(gone["removed"]), gone["spared"]) == (2, [])

    # nothing found says which filter no version holds, and what they hold (was: "no version
    # matches these filters"), on one line however narrow the terminal
    for args, said in [
        (("--task", "sentiment"), "no version has task 'sentiment'; tasks here: sst2"),
        (("sst2-en", "--alias", "prod"), "no version of sst2-en has alias 'prod'; aliases of "
                                         "sst2-en: champion"),
        (("--task", "sst2", "--language", "pt"), "no version has language 'pt'; languages "
                                                 "here: en"),
        (("--task", "sst2", "--language", "en", "--method", "bitfit"),
         "no version has method 'bitfit'; methods here: lora"),
    ]:  # fmt: skip
        found = run_cli("ls", *args, env={**env, "COLUMNS": "40"})
        assert (found.returncode, found.stdout) == (0, f"{said} (`adapterops ls` lists all)\n")
    human = run(env, "ls")
    assert human.returncode == 0 and "sst2-en@1" in human.stdout and "champion" in human.stdout
    assert "tiny-bert" in human.stdout and "not shown" not in human.stdout  # 200 columns: all

    # a CI log at 80 columns: whole cells, one metric a line, the columns left out named
    narrow = run_cli("ls", env={**env, "COLUMNS": "80"}).stdout.splitlines()
    assert max(len(line) for line in narrow) <= 80
    assert "│ sst2-en@1 │ champion │ accuracy=0.8 │ sst2 │ en   │ lora   │ tiny-bert  │" in narrow
    assert narrow[-1] == "not shown at this width: size, digest (--json has every field)"


def test_gc_of_a_store_two_registries_write_to(environment, tmp_path, request):
    """Staging and production given one store: gc in one is refused (exit 2, nothing deleted)
    until it is given the other's database, then keeps both registries' files."""
    env = environment
    if "ADAPTEROPS_REGISTRY_URL" in env:
        other_url = fresh_postgres_url(request.getfixturevalue("postgres"))
        artifacts = env["ADAPTEROPS_ARTIFACTS_URL"]
    else:
        other_url = f"sqlite:///{tmp_path / 'staging.db'}"
        artifacts = (Path(env["ADAPTEROPS_HOME"]) / "artifacts").as_uri()
    staging = {**env, "ADAPTEROPS_REGISTRY_URL": other_url, "ADAPTEROPS_ARTIFACTS_URL": artifacts}
    common = ["--base-model", "tiny-bert", "--task", "sst2", "--language", "en", "--json"]
    for where, name, seed in ((env, "prod", 1), (staging, "staging", 2), (staging, "gone", 3)):
        folder = write_fake_adapter(tmp_path / f"{name}-{seed}", seed=seed)
        ok_json(run(where, "push", str(folder), "--name", name, *common))
    ok_json(run(staging, "rm", "gone@1", "--json"))
    refused = run(env, "gc", "--older-than-minutes", "0")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "adapterops gc --shared-with DATABASE_URL" in refused.stderr
    status = run(env, "db", "status").stdout.splitlines()
    assert status[-1].endswith(": gc needs its database (--shared-with DATABASE_URL)")
    assert status[-1].lstrip().startswith("also written by registry ")
    for given, words in (
        (f"sqlite:///{tmp_path / 'nope.db'}", f"--shared-with sqlite:///{tmp_path / 'nope.db'}: "),
        (
            "",
            "Invalid value for '--shared-with': '' is empty (an unset shell variable?): give "
            "DATABASE_URL",
        ),
    ):
        wrong = run(env, "gc", "--shared-with", given, "--json")
        assert wrong.returncode == 2 and json.loads(wrong.stdout)["error"].startswith(words)
    collected = ok_json(
        run(env, "gc", "--older-than-minutes", "0", "--shared-with", other_url, "--json")
    )
    assert len(collected["removed"]) == 2  # the deleted version's manifest and tensors
    for where, ref in ((env, "prod@1"), (staging, "staging@1")):
        ok_json(run(where, "pull", ref, str(tmp_path / "pulled" / ref), "--json"))


def test_db_verify_finds_a_damaged_file_and_pushing_its_folder_repairs_it(environment, tmp_path):
    env = environment
    artifacts = env.get(
        "ADAPTEROPS_ARTIFACTS_URL", (Path(env["ADAPTEROPS_HOME"]) / "artifacts").as_uri()
    )
    common = ["--base-model", "tiny-bert", "--task", "sst2", "--language", "en", "--json"]
    folder = write_fake_adapter(tmp_path / "a", seed=1)
    ok_json(run(env, "push", str(folder), "--name", "a", *common))
    whole = run(env, "db", "verify")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.strip() == (
        f"1 version(s), 2 file(s) ({human_bytes(2340)}) read back from {artifacts}: every file "
        "whole"
    )

    tensors = folder / "adapter.safetensors"
    digest = hashlib.sha256(tensors.read_bytes()).hexdigest()
    outside = open_store(artifacts)  # a tool, or a disk, damaged the stored copy
    damaged = tmp_path / "damaged"
    damaged.write_bytes(tensors.read_bytes()[:100])
    outside.delete(digest)
    outside.put_file(digest, damaged)
    found = run(env, "db", "verify", "--json")
    assert found.returncode == 1, found.stderr
    assert json.loads(found.stdout) == {
        "ok": False, "versions": 1, "files": 2, "bytes": 2340, "checked": ["a@1"],
        "damaged": [{
            "versions": ["a@1"], "file": "adapter.safetensors", "digest": digest,
            "uri": outside.uri(digest), "problem": "corrupted",
        }],
    }  # fmt: skip
    said = run(env, "db", "verify", "a").stdout.splitlines()
    assert said[1] == (
        f"  adapter.safetensors of a@1: corrupted (sha256 {digest[:12]}..., {outside.uri(digest)})"
    )
    assert said[2].startswith("to repair: register the folder each came from again")
    quick = run(env, "db", "verify", "--quick")  # from the listing: the size tells
    assert quick.returncode == 1 and quick.stdout.splitlines()[:2] == [
        f"1 version(s), 2 file(s) ({human_bytes(2340)}) listed (sizes only) from {artifacts}:",
        f"  adapter.safetensors of a@1: 100 bytes, not 2128 (sha256 {digest[:12]}..., "
        f"{outside.uri(digest)})",
    ]
    pulled = run(env, "pull", "a@1", str(tmp_path / "pulled"))
    assert pulled.returncode == 1 and "register the folder it came from again" in pulled.stderr
    assert pulled.stderr.count("\n") == 1 and "Traceback" not in pulled.stderr  # not bad input
    damaged_json = run(env, "predict", "a@1", "--text", "hi", "--json")
    assert damaged_json.returncode == 1
    assert json.loads(damaged_json.stdout)["kind"] == "CorruptArtifactError"
    unknown = run(env, "db", "verify", "b")
    assert (unknown.returncode, unknown.stderr) == (2, "error: no adapter named 'b'\n")

    ok_json(run(env, "push", str(folder), "--name", "a", *common))  # its folder, pushed again
    assert run(env, "db", "verify", "a@1").returncode == 0
    ok_json(run(env, "pull", "a@1", str(tmp_path / "pulled"), "--json"))


def test_bad_input_exits_2_with_one_clear_line(environment, tmp_path):
    env = environment
    empty_registry(Path(env["ADAPTEROPS_HOME"]))  # (the embedded one: a registry without it)
    missing = run(env, "show", "nothing@3", "--json")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no adapter named 'nothing'" in json.loads(missing.stdout)["error"]

    bad_name = run(
        env,
        "push",
        str(write_fake_adapter(tmp_path / "a", 1)),
        "--name",
        "../etc",
        "--base-model",
        "b",
        "--task",
        "t",
        "--language",
        "en",
    )
    assert bad_name.returncode == 2 and "invalid adapter name '../etc'" in bad_name.stderr

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "adapter.json").write_text("{}")
    result = run(
        env,
        "push",
        str(incomplete),
        "--name",
        "x",
        "--base-model",
        "b",
        "--task",
        "t",
        "--language",
        "en",
        "--json",
    )
    assert (
        result.returncode == 2
        and "missing ['adapter.safetensors']" in json.loads(result.stdout)["error"]
    )
    assert ok_json(run(env, "ls", "--json")) == []

    # crashing refs and options found by the adversarial trial (#16.5): one line, exit 2
    for args, words in [
        (("show", "x@²"), "invalid alias"),
        (("show", "x@99999999999999999999999"), "versions are numbered 1 to 2147483647"),
        (("show", "x@-1"), "invalid reference 'x@-1': versions are numbered 1 to 2147483647"),
        (("gc", "--older-than-minutes", "inf"), "--older-than-minutes must be a number"),
        (("gc", "--older-than-minutes", "nan"), "--older-than-minutes must be a number"),
        (("show", "x:3"), "write x@3 (name@VERSION or name@ALIAS)"),
        (("show", "x@"), "invalid reference 'x@': give a version or an alias after '@'"),
        (("ls", "--limit", "0"), "Invalid value for '--limit'"),  # was "limit must be at least"
        (("rollback", "nothing"), "no adapter named 'nothing'"),  # not "no previous version"
        (("promote", "nothing@1"), "no adapter named 'nothing'"),
        # a mistyped folder is told first (was "push needs --base-model, --task, ...")
        (("push", str(tmp_path / "no-such-folder")), "no-such-folder is not a folder: give"),
    ]:
        result = run(env, *args, "--json")
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert "INFO" not in result.stderr, (args, result.stderr)  # MLflow creating its store
        assert words in json.loads(result.stdout)["error"], (args, result.stdout)


def test_push_checks_the_base_model_it_names(tmp_path, monkeypatch):
    """A BERT adapter pushed as a GPT-2 (a base on this machine) is refused before anything is
    stored; one pushed under a new name for an already registered base is told so, with the
    way back (remove it, push again), which then works."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    folder = write_fake_adapter(tmp_path / "adapter", seed=1)
    metadata = json.loads((folder / "adapter.json").read_text())
    metadata["fingerprint"] |= {
        "model_type": "bert",
        "config": {"hidden_size": 384, "num_hidden_layers": 6, "vocab_size": 30522},
        "name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
    }
    (folder / "adapter.json").write_text(json.dumps(metadata))
    bases = {
        "gpt2": {"model_type": "gpt2", "n_embd": 768},
        "bert-base": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 6},
        "minilm-copy": {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6},
    }
    for name, config in bases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))

    def push(base_model: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            env, "push", str(folder), "--name", "sst2-en", "--base-model", base_model,
            "--task", "sst2", "--language", "en", *extra,
        )  # fmt: skip

    for base, differences in [
        ("gpt2", "(model_type: 'bert' vs 'gpt2', the adapter's base first)"),
        ("bert-base", "(hidden_size: 384 vs 768, the adapter's base first)"),
    ]:
        refused = push(str(tmp_path / base), "--json")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        error = json.loads(refused.stdout)["error"]
        assert error == (
            f"{folder} was trained on 'sentence-transformers/all-MiniLM-L6-v2', not on "
            f"'{tmp_path / base}' {differences}: give the base model it was trained on"
        )
    unnamed = run(env, "push", str(folder), "--name", "sst2-en", "--json")
    assert unnamed.returncode == 2 and json.loads(unnamed.stdout)["error"] == (
        "push needs --task, --language (or --spec SPEC, the spec it was trained with, whose "
        "fields they default to)"
    )  # (the base model: the one its files name)
    assert not (tmp_path / "home" / "registry.db").exists()  # nothing stored: none started

    first = ok_json(push(str(tmp_path / "minilm-copy"), "--json"))  # same config: accepted
    assert first["ref"] == "sst2-en@1"
    run(env, "rm", "sst2-en@1")
    typo = push("minilm", "--json")  # not on this machine: the registry is the only witness
    assert ok_json(typo)["ref"] == "sst2-en@2"
    assert typo.stderr.strip() == (
        f"warning: base model 'minilm' is new to the registry, and the base this adapter was "
        f"trained on is registered as '{tmp_path / 'minilm-copy'}' (same fingerprint). If that "
        f"is its base: adapterops rm sst2-en@2, then push again with --base-model "
        f"{tmp_path / 'minilm-copy'}"
    )
    assert push("minilm").stderr == ""  # now registered: said once, not on every push
    assert ok_json(run(env, "rm", "sst2-en@2", "--json"))["deleted"] == "sst2-en@2"
    again = ok_json(push(str(tmp_path / "minilm-copy"), "--json"))
    assert (again["ref"], again["base_model"]) == ("sst2-en@3", str(tmp_path / "minilm-copy"))
    # a base written as a folder relative to here: the name the registry keeps, said so
    near = run_cli(
        "push", str(folder), "--name", "sst2-near", "--base-model", "minilm-copy", "--task",
        "sst2", "--language", "en", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert near.returncode == 0, near.stderr
    assert (
        f"warning: sst2-near: base_model 'minilm-copy' is a folder relative to {tmp_path}; the "
        "registry keeps that name, so predict, evaluate, export and later pushes find the base "
        f"only when run from there: write its absolute path, {tmp_path / 'minilm-copy'}, to "
        "use the versions from anywhere"
    ) in near.stderr.splitlines(), near.stderr
    ok_json(run(env, "rm", "sst2-near@1", "--json"))

    # reviewers see pushed versions in MLflow; removed ones left it, the model says its base
    from flows import tracking

    monkeypatch.setenv("ADAPTEROPS_HOME", env["ADAPTEROPS_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = tracking.client()
    mirrored = client.search_model_versions("name='sst2-en'")
    assert [(v.tags["adapterops.version"], v.source) for v in mirrored] == [
        ("3", ok_json(run(env, "show", "sst2-en@3", "--json"))["artifact_uri"])
    ]
    model = client.get_registered_model("sst2-en")
    assert model.tags["adapterops.base_model"] == str(tmp_path / "minilm-copy")


def test_db_upgrade_prepares_a_server_database(postgres, tmp_path):
    postgres.create_database("cli_upgrade")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTEROPS_")}
    env |= {
        "ADAPTEROPS_REGISTRY_URL": postgres.url("cli_upgrade"),
        "ADAPTEROPS_ARTIFACTS_URL": (tmp_path / "a").as_uri(),
    }
    before = run(env, "ls", "--json")
    assert before.returncode == 2 and "adapterops db upgrade" in json.loads(before.stdout)["error"]
    status = ok_json(run(env, "db", "status", "--json"))
    assert (status["revision"], status["up_to_date"], status["versions"]) == (None, False, None)
    shown = run(env, "db", "status")
    assert (
        shown.returncode == 0
        and "schema     none, this code needs 0009: run `adapterops db upgrade`" in shown.stdout
    )
    assert ok_json(run(env, "db", "upgrade", "--json")) == {"ok": True, "from": None, "to": "0009"}
    again = run(env, "db", "upgrade")
    assert again.returncode == 0 and again.stdout.endswith(
        ": schema already at 0009 (the newest)\n"
    )
    assert ok_json(run(env, "ls", "--json")) == []
    status = ok_json(run(env, "db", "status", "--json"))
    assert status["database"] == postgres.url("cli_upgrade").replace(postgres.password, "***")
    assert (status["revision"], status["up_to_date"]) == ("0009", True)
    assert (status["adapters"], status["versions"], status["compositions"]) == (0, 0, 0)
    assert status["other_writers"] == {} and len(status["identity"]) == 36


@pytest.mark.parametrize("server", ["sqlite", "postgres", "newer_postgres"])
def test_db_upgrade_run_by_several_processes_at_once_migrates_once(server, request, tmp_path):
    """Replicas' init containers (or CI jobs) each run `db upgrade` on a new database at once:
    on PostgreSQL all but one failed ("duplicate key value violates unique constraint
    pg_type_typname_nsp_index", exit 2). Now they take turns under a schema lock: one migrates,
    the others find the schema current and say so."""
    import sys

    if server == "sqlite":
        url = f"sqlite:///{tmp_path}/registry.db"
    else:
        postgres = request.getfixturevalue(server)
        postgres.create_database(name := f"at_once_{os.getpid()}_{server}")
        url = postgres.url(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTEROPS_")}
    env |= {"ADAPTEROPS_REGISTRY_URL": url, "ADAPTEROPS_ARTIFACTS_URL": (tmp_path / "a").as_uri()}
    adapterops = str(Path(sys.executable).parent / "adapterops")
    upgrading = [
        subprocess.Popen(
            [adapterops, "db", "upgrade", "--json"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    said = [process.communicate(timeout=120)[0] for process in upgrading]
    assert [process.returncode for process in upgrading] == [0, 0, 0], said
    assert sorted((answer["from"] or "", answer["to"]) for answer in map(json.loads, said)) == [
        ("", "0009"),
        ("0009", "0009"),
        ("0009", "0009"),
    ]


def test_db_status_reports_a_schema_behind_without_migrating_it(tmp_path):
    """SQLite registries migrate when opened; `db status` only reads, so it can tell an operator
    that a copy of an old registry is behind, and what it holds once it is not."""
    from registry import Registry
    from registry.db import Database

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    url = f"sqlite:///{tmp_path}/home/registry.db"
    registry = Registry(url, (tmp_path / "home" / "artifacts").as_uri())
    registry.register(
        write_fake_adapter(tmp_path / "a", 1), name="a", base_model="b", task="t", language="en"
    )
    registry.close()
    Database(url).downgrade("0005")
    behind = ok_json(run(env, "db", "status", "--json"))
    assert (behind["revision"], behind["head"], behind["up_to_date"]) == ("0005", "0009", False)
    assert Database(url, auto_migrate=False, verify=False).revision() == "0005"  # untouched
    assert ok_json(run(env, "db", "upgrade", "--json")) == {
        "ok": True,
        "from": "0005",
        "to": "0009",
    }
    shown = run(env, "db", "status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1:4] == [
        "schema     0009 (the newest)",
        f"id         {Registry(url, (tmp_path / 'home' / 'artifacts').as_uri()).identity}",
        "holds      1 adapter(s), 1 version(s), 0 composition(s)",
    ]
    from registry import registry_status  # the same from Python

    found = registry_status(url, (tmp_path / "home" / "artifacts").as_uri())
    assert (found.up_to_date, found.adapters, found.versions) == (True, 1, 1)
    missing = run({**env, "ADAPTEROPS_HOME": str(tmp_path / "typo")}, "db", "status")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no registry at")
    assert not (tmp_path / "typo").exists()


def test_composition_commands_list_show_and_move_aliases(tmp_path, monkeypatch):
    from registry import Registry

    env = home_with_fake_adapters(tmp_path, monkeypatch, ("lang-pt", "sst2-en"))
    registry = Registry()  # the embedded registry the commands below open
    registry.register_composition("madx", {"type": "stack"}, ["lang-pt", "sst2-en"])
    registry.close()

    listed = ok_json(run(env, "composition", "ls", "--json"))
    assert [(c["name"], c["version"], c["aliases"]) for c in listed] == [("madx", 1, [])]
    moved = ok_json(run(env, "composition", "alias", "madx@1", "champion", "--json"))
    assert (moved["version"], moved["aliases"]) == (1, ["champion"])
    from flows import tracking
    from flows.mlflow_models import mlflow_aliases

    reviewers = tracking.client()  # the embedded MLflow under ADAPTEROPS_HOME
    assert mlflow_aliases(reviewers, "composition.madx") == {"champion": 1}
    shown = ok_json(run(env, "composition", "show", "madx@champion", "--json"))
    assert shown["members"] == ["lang-pt@1", "sst2-en@1"]
    assert shown["definition"] == {"type": "stack", "children": ["lang-pt@1", "sst2-en@1"]}
    table = run(env, "composition", "ls")
    assert table.returncode == 0 and "madx@1" in table.stdout and "champion" in table.stdout
    ok_json(run(env, "composition", "unalias", "madx", "champion", "--json"))
    assert mlflow_aliases(reviewers, "composition.madx") == {}
    events = ok_json(run(env, "composition", "history", "madx", "--json"))
    assert [(e["kind"], e["origin"]) for e in events] == [
        ("composition", "registry"),
        ("composition_alias_set", "cli"),
        ("composition_alias_removed", "cli"),
    ]
    gone = run(env, "composition", "show", "madx@champion", "--json")
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert "composition 'madx' has no alias 'champion'" in json.loads(gone.stdout)["error"]

    # saved from the command line: members resolved to exact versions, a block, a scoring spec
    spec = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-pt-pfeiffer.yaml"
    saved = run(
        env, "composition", "save", "mean", "lang-pt", "sst2-en@1", "--definition",
        '{"type": "average", "weights": [0.25, 0.75]}', "--evaluation", str(spec),
        "--metric", "accuracy=0.7", "--json",
    )  # fmt: skip
    averaged = ok_json(saved)
    assert saved.stderr == (  # the fake members' base is not the spec's: the cascade would fail
        "warning: the evaluation spec's base_model 'sentence-transformers/all-MiniLM-L6-v2' is "
        "not the members' ('tiny-bert'): the cascade loads it to score mean@1, and every member "
        "is refused on another model's weights\n"
    )
    assert (averaged["version"], averaged["members"]) == (1, ["lang-pt@1", "sst2-en@1"])
    assert averaged["definition"]["weights"] == [0.25, 0.75]
    assert averaged["evaluation"]["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert averaged["metrics"] == {"accuracy": 0.7}
    card = run(env, "composition", "show", "mean").stdout.splitlines()  # all of it, not a table
    assert [line.rstrip() for line in card if not line.startswith("created")] == [
        "mean@1",
        "blocks   average(lang-pt, sst2-en; weights=[0.25, 0.75])",
        "members  lang-pt@1, sst2-en@1",
        "metrics  accuracy=0.7",
        "scored   by the retraining cascade: accuracy on the validation data of spec "
        "minilm-sst2-pt-pfeiffer",
    ]
    tags = reviewers.get_model_version("composition.mean", "1").tags  # reviewers see it too
    assert tags["adapterops.metric.accuracy"] == "0.7000"
    unscored = run(env, "composition", "save", "mean", "lang-pt", "--metric", "accuracy=high")
    assert (unscored.returncode, unscored.stderr) == (  # one line, not typer's usage box
        2,
        "error: --metric 'accuracy=high': write key=number, e.g. accuracy=0.91\n",
    )
    assert Registry().composition("mean").version == 1  # nothing saved
    Registry().register(
        write_fake_adapter(tmp_path / "lang-pt-2", 3), name="lang-pt", base_model="tiny-bert",
        task="lang-pt", language="pt",
    )  # fmt: skip
    assert (
        ok_json(run(env, "composition", "save", "madx", "lang-pt", "sst2-en", "--json"))["version"]
        == 2
    )
    of_one = ok_json(run(env, "ls", "lang-pt", "--json"))  # one adapter's versions
    assert [(v["name"], v["version"]) for v in of_one] == [("lang-pt", 1), ("lang-pt", 2)]
    for args, error in [
        (
            ("ls", "lang-pt@1"),
            "ls takes an adapter name, not a version ('lang-pt@1'): `adapterops show lang-pt@1` "
            "shows one version, `adapterops ls lang-pt` lists them all",
        ),
        (("ls", "lang-p"), "no adapter named 'lang-p'; similar names: lang-pt"),
        (  # it said "ls takes ..." for trend too
            ("trend", "lang-pt@1"),
            "trend takes an adapter name, not a version ('lang-pt@1'): `adapterops show "
            "lang-pt@1` shows one version, `adapterops trend lang-pt` draws its metric across "
            "them all",
        ),
    ]:
        refused = run(env, *args)
        assert (refused.returncode, refused.stderr) == (2, f"error: {error}\n"), args
    # what the new version changed, and the command for what changed in the member
    changed = ok_json(run(env, "composition", "diff", "madx@1", "madx@2", "--json"))
    assert changed == {
        "before": "madx@1", "after": "madx@2", "same_load": False,
        "changes": [{"section": "members", "field": "lang-pt", "before": 1, "after": 2}],
    }  # fmt: skip
    page = reviewers.get_model_version("composition.madx", "2").description  # the same, in MLflow
    assert page == (
        "stack of lang-pt@2, sst2-en@1\n\n## Changes since madx@1\n\n"
        "| | field | madx@1 | madx@2 | change |\n|---|---|---|---|---|\n"
        "| members | lang-pt | `1` | `2` |  |\n"
        "\nWhat changed in each member:\n\n- `adapterops diff lang-pt@1 lang-pt@2`\n"
    )
    told = run(env, "composition", "diff", "madx@1", "madx@2").stdout.splitlines()
    assert told[0] == "before madx@1 -> after madx@2: loads differently"
    assert told[-1] == "what changed in a member: adapterops diff lang-pt@1 lang-pt@2"
    wrong_command = run(env, "diff", "madx@1", "madx@2")
    assert (wrong_command.returncode, wrong_command.stderr) == (
        2,
        "error: madx@1 and madx@2 are compositions: `adapterops composition diff madx@1 madx@2` "
        "compares them\n",
    )
    unknown = run(env, "composition", "diff", "madx@1", "madx@9")
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: no composition 'madx' version 9; versions: 1, 2\n",
    )
    for args, words in [
        (("--definition", "{stack"), "--definition is not JSON (Expecting property name "),
        (("--definition", "stak"), 'give a block such as {"type": "stack"}, or one of stack, '),
        (("--definition", '["stack"]'), "--definition is a JSON object"),
        (("--definition", '{"type": "stack", "children": ["a"]}'), "1 adapter(s) but 2"),
        (("--evaluation", str(tmp_path / "none.yaml")), "none.yaml: no such spec file"),
    ]:
        bad = run(env, "composition", "save", "bad", "lang-pt", "sst2-en", *args, "--json")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert words in json.loads(bad.stdout)["error"], (args, bad.stdout)
    assert [c["name"] for c in ok_json(run(env, "composition", "ls", "--json"))] == ["madx", "mean"]
    assert mlflow_aliases(reviewers, "composition.mean") == {}  # saved: mirrored, no alias yet
    assert len(reviewers.search_model_versions("name='composition.madx'")) == 2
    # a kind alone is its block: equal weights for an average
    even = ok_json(run(env, "composition", "save", "even", "lang-pt@1", "sst2-en@1",
                       "--definition", "average", "--json"))  # fmt: skip
    assert even["definition"] == {
        "type": "average", "children": ["lang-pt@1", "sst2-en@1"], "weights": [0.5, 0.5]
    }  # fmt: skip

    # MLflow down while saving: saved all the same, one line says so; `sync` mirrors it later
    down = {
        **env,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    offline = run(down, "composition", "save", "late", "lang-pt", "sst2-en")
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "late@1 is saved in the registry but not yet in MLflow: MLflow at" in offline.stderr
    assert offline.stderr.endswith("`adapterops sync` mirrors it once MLflow answers.\n")
    reviewers.set_registered_model_alias("composition.madx", "champion", "2")  # in the UI
    synced = ok_json(run(env, "sync", "--json"))
    assert synced["mirrored"] == ["late"]
    assert synced["changes"] == [{"composition": "madx", "alias": "champion", "version": 2}]
    assert ok_json(run(env, "composition", "show", "madx@champion", "--json"))["version"] == 2
    typo = run(env, "sync", "madx", "sst2-en", "madz", "--json")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert json.loads(typo.stdout)["error"].startswith("no adapter or composition named 'madz';")


def test_composition_rm_sees_reviewers_aliases_then_frees_its_members(tmp_path, monkeypatch):
    """Without `composition rm` a composition saved by mistake held its members forever."""

    env = home_with_fake_adapters(tmp_path, monkeypatch, ("lang-pt", "sst2-en"))
    for members in (["lang-pt", "sst2-en"], ["sst2-en"]):
        ok_json(run(env, "composition", "save", "madx", *members, "--json"))  # mirrored too
    from flows import tracking
    from flows.mlflow_models import mlflow_version_of

    reviewers = tracking.client()
    mirrored = mlflow_version_of(reviewers, "composition.madx", 2)
    reviewers.set_registered_model_alias("composition.madx", "champion", str(mirrored))
    held = run(env, "composition", "rm", "madx@2")  # the registry learns of it first
    assert (held.returncode, held.stderr) == (
        2,
        "error: cannot delete composition madx@2: it holds the alias 'champion'; move it to "
        "another version or remove it first (adapterops composition unalias madx champion)\n",
    )
    ok_json(run(env, "composition", "unalias", "madx", "champion", "--json"))
    deleted = ok_json(run(env, "composition", "rm", "madx@2", "--json"))
    assert deleted == {"ok": True, "deleted": "madx@2", "members": ["sst2-en@1"]}
    left = reviewers.search_model_versions("name='composition.madx'")
    assert [v.tags["adapterops.version"] for v in left] == ["1"]  # none to point an alias at
    again = run(env, "composition", "rm", "madx@2")
    assert (again.returncode, again.stderr) == (
        2,
        "error: no composition 'madx' version 2; versions: 1\n",
    )
    still = run(env, "rm", "sst2-en@1")
    assert still.returncode == 2 and "still referred to by composition madx@1" in still.stderr
    shown = ok_json(run(env, "show", "sst2-en@1", "--json"))["used_by"]
    assert shown == {"compositions": ["madx@1"], "fusions": []}
    card = run(env, "show", "sst2-en@1").stdout.splitlines()
    assert [line.split() for line in card if line.startswith("used by")] == [
        ["used", "by", "composition", "madx@1"]
    ]
    removed = run(env, "composition", "rm", "madx")  # the newest, as `rm NAME` for adapters
    assert removed.stdout == (
        "deleted composition madx@1; its members (lang-pt@1, sst2-en@1) are still registered\n"
    )
    assert ok_json(run(env, "rm", "sst2-en@1", "--json"))["deleted"] == "sst2-en@1"
    events = ok_json(run(env, "composition", "history", "madx", "--json"))
    assert [(e["kind"], e["version"], e["origin"]) for e in events][-3:] == [
        ("composition_alias_removed", 2, "cli"),
        ("composition_deleted", 2, "cli"),
        ("composition_deleted", 1, "cli"),
    ]
    assert ok_json(run(env, "composition", "ls", "--json")) == []
    saved = ok_json(run(env, "composition", "save", "madx", "lang-pt", "--json"))
    assert saved["version"] == 3  # madx@1 and madx@2 keep meaning what they meant

    # MLflow down: the registry's delete stands, one line says what is left in MLflow and how
    down = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fmt: skip
    offline = run(down, "composition", "rm", "madx@3")
    assert offline.returncode == 0 and offline.stdout.startswith("deleted composition madx@3")
    assert offline.stderr.startswith(
        "warning: composition madx@3 is deleted, but its MLflow version (of composition.madx) "
        "is still there (MLflow at http://127.0.0.1:9 is not reachable"
    )
    assert offline.stderr.endswith("`adapterops sync` removes it once MLflow answers\n")
    assert mlflow_version_of(reviewers, "composition.madx", 3) is not None
    synced = ok_json(run(env, "sync", "--json"))  # MLflow answers again
    assert synced["dropped"] == ["composition madx@3"]
    assert mlflow_version_of(reviewers, "composition.madx", 3) is None
    assert ok_json(run(env, "sync", "--json"))["dropped"] == []  # once


def test_show_is_a_record_to_read_and_its_spec_is_one_build_reads_back(tmp_path, monkeypatch):
    from flows.spec import load_spec
    from registry import Registry

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "100"}
    monkeypatch.setenv("ADAPTEROPS_HOME", env["ADAPTEROPS_HOME"])
    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml")
    common = {"base_model": spec.base_model, "task": "sst2", "language": "en"}
    Registry().register(
        write_fake_adapter(tmp_path / "v1", seed=1), name="shown", **common,
        metrics={"accuracy": 0.8125, "examples": 872},
        lineage={"dataset_fingerprint": "d" * 64, "code_version": "abc1234"},
        spec=spec.model_dump(mode="json"),
    )  # fmt: skip
    card = run(env, "show", "shown@1")
    assert card.returncode == 0, card.stderr
    lines = [line.rstrip() for line in card.stdout.splitlines()]
    assert lines[0] == "shown@1"
    assert "metrics              accuracy=0.8125  examples=872" in lines
    assert "dataset_fingerprint  dddddddddddd..." in lines
    assert "code_version         abc1234" in lines
    assert lines[lines.index("spec") + 1 :][:2] == [
        "name: minilm-sst2-en-lora",
        f"base_model: {spec.base_model}",
    ]
    assert "  targets: [q, v]" in lines and "data:" in lines  # block style, short lists inline

    printed = run(env, "show", "shown", "--spec")
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "again.yaml").write_text(printed.stdout)
    assert load_spec(tmp_path / "again.yaml") == spec  # what build would read: the same spec

    # a pull request's spec against the version it would replace: read before anything trains
    document = yaml.safe_load(printed.stdout)
    document["method"]["rank"] = 16
    (tmp_path / "pr.yaml").write_text(yaml.safe_dump(document))
    planned = ok_json(run(env, "diff", "shown@1", str(tmp_path / "pr.yaml"), "--json"))
    assert (planned["after"], planned["same_files"], planned["spec_compared"]) == (
        str(tmp_path / "pr.yaml"),
        None,
        True,
    )
    changes = {(c["section"], c["field"]): (c["before"], c["after"]) for c in planned["changes"]}
    assert sorted(changes) == [
        ("lineage", "base_dtype"),  # what a build here records: unrecorded on shown@1
        ("lineage", "code_version"),
        ("lineage", "dataset_fingerprint"),  # the real files' fingerprint, not d...d
        ("spec", "method.rank"),
    ]
    assert changes["spec", "method.rank"] == (8, 16)
    assert changes["lineage", "base_dtype"] == (None, "float32")
    assert changes["lineage", "dataset_fingerprint"][0] == "d" * 64
    missing = run(env, "diff", "shown@1", str(tmp_path / "nope.yaml"))
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"error: {tmp_path / 'nope.yaml'}: no such spec file",
    )

    Registry().register(write_fake_adapter(tmp_path / "v2", seed=2), name="bare", **common)
    refused = run(env, "show", "bare", "--spec")
    assert (refused.returncode, refused.stdout, refused.stderr.splitlines()) == (
        2,
        "",
        [
            "error: bare@1 was registered without a spec (push without --spec): there is none "
            "to print; `adapterops show bare@1` prints its record"
        ],
    )


def test_the_command_that_starts_a_registry_says_where(tmp_path):
    """A mistyped ADAPTEROPS_HOME (or a push from another folder than the builds') started a
    registry silently; `adapterops ls` showed the versions missing only later."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "hmoe"), "COLUMNS": "200"}
    folder = write_fake_adapter(tmp_path / "adapter", seed=1)
    identity = ("--name", "a", "--base-model", "b", "--task", "t", "--language", "en")
    for mistake in (
        ("push", str(tmp_path / "no-such-folder"), *identity),
        ("push", str(folder), *identity[:-1], "english"),
        ("push", str(tmp_path), *identity),
    ):  # not an adapter's folder
        refused = run(env, *mistake)
        assert refused.returncode == 2 and "note:" not in refused.stderr, refused.stderr
    assert not (tmp_path / "hmoe").exists()  # a refused push starts no registry (it did)
    first = run(env, "push", str(folder), *identity, "--json")
    assert first.returncode == 0, first.stderr
    assert (
        f"note: started a new registry at {tmp_path}/hmoe/registry.db "
        f"(ADAPTEROPS_HOME={tmp_path}/hmoe)"
    ) in first.stderr.splitlines()
    again = run(env, "push", str(write_fake_adapter(tmp_path / "b", seed=2)), *identity)
    assert again.returncode == 0 and "note:" not in again.stderr


def test_push_and_pull_show_a_bar_of_bytes_in_a_terminal_only(tmp_path):
    """A large adapter (a full fine-tune, a 70B base's LoRA) took minutes to push or pull to S3
    with nothing on screen. In a terminal a bar counts the bytes; scripts and --json get none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    env |= {"TERM": "xterm"}
    identity = ("--name", "a", "--base-model", "b", "--task", "t", "--language", "en")
    folder = write_fake_adapter(tmp_path / "adapter", seed=1)
    size = sum(p.stat().st_size for p in folder.iterdir())
    code, shown = run_cli_in_a_terminal(env, "push", str(folder), *identity)
    assert code == 0, shown
    assert "push adapter" in shown and f"{size / 1000:.1f}/{size / 1000:.1f} kB" in shown, shown
    code, shown = run_cli_in_a_terminal(env, "pull", "a@1", str(tmp_path / "pulled"))
    assert code == 0 and "pull a@1" in shown and f"/{size / 1000:.1f} kB" in shown, shown
    code, shown = run_cli_in_a_terminal(env, "pull", "a@1", str(tmp_path / "again"), "--json")
    assert code == 0 and "pull a@1" not in shown and json.loads(shown)["ref"] == "a@1"
    piped = run(env, "pull", "a@1", str(tmp_path / "piped"))  # not a terminal: no bar
    assert piped.returncode == 0 and piped.stderr == "" and "pull a@1 " not in piped.stdout
    # db move's bar learns its total once it has read every manifest
    code, shown = run_cli_in_a_terminal(env, "db", "move", "--to", f"sqlite:///{tmp_path / 'n.db'}",
                                        "--artifacts", str(tmp_path / "new-artifacts"))  # fmt: skip
    assert code == 0 and "moving the registry" in shown
    assert re.search(r"(\d+\.\d)/\1 kB", shown), shown  # the whole total, files and manifest
    assert "moved registry " in shown, shown


def test_commands_that_read_mlflow_first_say_so_in_a_terminal_only(tmp_path):
    """promote, rollback, sync, alias, unalias and rm (of versions and compositions) load
    MLflow and read the aliases moved in its UI before anything else, and composition save
    mirrors the new version there: 4 to 7 s with nothing on screen. In a terminal a spinner
    says so; piped, only the result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    env |= {"TERM": "xterm"}
    identity = ("--name", "a", "--base-model", "b", "--task", "t", "--language", "en")
    pushed = run(env, "push", str(write_fake_adapter(tmp_path / "adapter", seed=1)), *identity)
    assert pushed.returncode == 0, pushed.stderr
    code, shown = run_cli_in_a_terminal(env, "promote", "a@1", "staging")
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", shown)  # colours and cursor moves
    said = shown.find("loading MLflow and reading its aliases")
    assert code == 0 and -1 < said < shown.find("a@1 is now staging"), shown
    code, shown = run_cli_in_a_terminal(env, "rm", "a@1")  # refused: staging is on it
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", shown)
    said = shown.find("loading MLflow and reading its aliases")
    assert code == 2 and -1 < said < shown.find(
        "error: cannot delete a@1: still referred to by alias 'staging'"
    ), shown
    code, shown = run_cli_in_a_terminal(env, "composition", "save", "c", "a@1")
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", shown)
    steps = ("c: check and save its members", "c@1: mirror it to MLflow", "│ c@1 ")
    said = [shown.find(step) for step in steps]
    assert code == 0 and -1 not in said and said == sorted(said), shown
    piped = run(env, "sync")
    assert (piped.returncode, piped.stderr) == (0, ""), piped.stderr
    assert piped.stdout == "0 alias change(s) taken from MLflow\n"


def test_ls_finding_nothing_says_which_filter_no_version_holds():
    from types import SimpleNamespace

    from flows.cli.registry import _why_none_match

    versions = [
        SimpleNamespace(task=f"task-{i}", language=language, aliases=aliases)
        for i, (language, aliases) in enumerate([("en", ("champion",)), ("pt", ())])
    ]
    assert _why_none_match(versions, {"task": "task-0", "language": "pt"}, None) == (  # type: ignore[arg-type]
        "no version matches all of these filters together (`adapterops ls` lists all)"
    )
    assert _why_none_match(versions, {"alias": "prod"}, "x") == (  # type: ignore[arg-type]
        "no version of x has alias 'prod'; aliases of x: champion (`adapterops ls` lists all)"
    )
    many = [SimpleNamespace(task=f"t{i:02}") for i in range(12)]
    assert _why_none_match(many, {"task": "zz"}, None) == (  # type: ignore[arg-type]
        "no version has task 'zz'; tasks here: t00, t01, t02, t03, t04, t05, t06, t07, t08, "
        "t09 and 2 more (`adapterops ls` lists all)"
    )


@pytest.mark.usefixtures("seaweed")
def test_db_move_takes_an_embedded_registry_to_postgres_and_s3(postgres, tmp_path, monkeypatch):
    """The path from trying AdapterOps on the embedded defaults to production: `db move`, then
    the environment pointed at the new place; the old one reads and refuses writes."""
    env = home_with_fake_adapters(tmp_path, monkeypatch, ("sst2", "lang"))
    assert run(env, "alias", "sst2@1", "champion").returncode == 0
    before = ok_json(run(env, "ls", "--json"))
    database, artifacts = fresh_postgres_url(postgres), fresh_bucket_url()
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}

    unreachable = run(env, "db", "move", "--to", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    assert unreachable.returncode == 2 and unreachable.stdout == ""
    assert unreachable.stderr.count("\n") == 1 and "secret" not in unreachable.stderr
    assert "the new database's URL (--to) is right" in unreachable.stderr
    assert run(env, "push", str(tmp_path / "sst2"), "--name", "x", "--task", "t",
               "--language", "en", "--base-model", "tiny-bert").returncode == 0  # fmt: skip

    planned = run(env | aws, "db", "move", "--to", database, "--artifacts", artifacts, "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("would move registry ")
    moved = ok_json(
        run(env | aws, "db", "move", "--to", database, "--artifacts", artifacts, "--json")
    )
    assert (moved["adapters"], moved["versions"], moved["artifacts"]) == (3, 3, artifacts)
    assert moved["from"] == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    assert (
        planned.stdout.endswith(  # what the dry run said would happen, before the move
            f"3 adapter(s), 3 version(s), 0 composition version(s), 4 event(s); {moved['files']} "
            f"file(s), {moved['copied']} to copy ({human_bytes(moved['copied_bytes'])}). Nothing was "
            "changed\n"
        )
        and moved["copied"] == moved["files"] == 5
    )  # 2 versions' bytes (x@1 is sst2@1's again)
    new = env | aws | {"ADAPTEROPS_REGISTRY_URL": database, "ADAPTEROPS_ARTIFACTS_URL": artifacts}
    after = ok_json(run(new, "ls", "--json"))
    assert [(v["ref"], v["aliases"], v["digest"]) for v in after] == [
        (v["ref"], v["aliases"], v["digest"]) for v in [*before, after[-1]]
    ] and after[-1]["ref"] == "x@1"
    pulled = run(new, "pull", "sst2@champion", str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stderr

    refused = run(env, "push", str(tmp_path / "lang"), "--name", "lang", "--task", "lang",
                  "--language", "pt", "--base-model", "tiny-bert")  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.startswith(
        f"error: this registry was moved to {moved['database']} (artifacts {artifacts}) by "
        "`adapterops db move` on "
    )
    assert refused.stderr.count("\n") == 1
    status = ok_json(run(env, "db", "status", "--json"))
    assert status["moved"]["database"] == moved["database"] and status["moved"]["finished"]
    shown = run(env, "db", "status").stdout
    assert f"moved      this registry was moved to {moved['database']} " in shown
    assert len(ok_json(run(env, "ls", "--json"))) == 3  # reading still works
    again = run(env, "db", "move", "--to", f"sqlite:///{tmp_path / 'third.db'}")
    assert again.returncode == 2 and again.stderr.startswith("error: nothing to move: ")
    assert not (tmp_path / "third.db").exists()


@pytest.mark.usefixtures("seaweed")
def test_db_move_to_stack_takes_the_embedded_registry_the_stack_hides(
    postgres, tmp_path, monkeypatch
):
    """After `stack up`, its stack.env names the stack's registry for every command in that
    home, hiding the embedded one tried before: `db move --to-stack` moves that one into it."""
    from registry import Registry

    env = home_with_fake_adapters(tmp_path, monkeypatch, ("sst2", "lang"))
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}  # the stack's file has them
    stack = {
        "ADAPTEROPS_REGISTRY_URL": fresh_postgres_url(postgres),
        "ADAPTEROPS_ARTIFACTS_URL": fresh_bucket_url(),
        **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
    }
    (tmp_path / "home" / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in stack.items()))
    hidden = run(env, "ls")
    assert hidden.stdout.startswith("no versions yet")  # the stack's registry, still empty

    exported = {**env, **stack}  # after `eval "$(adapterops stack env)"`: the same
    moved = ok_json(run(exported, "db", "move", "--to-stack", "--json"))

    assert (moved["versions"], moved["artifacts"]) == (2, stack["ADAPTEROPS_ARTIFACTS_URL"])
    assert moved["from"] == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    assert [v["ref"] for v in ok_json(run(env, "ls", "--json"))] == ["lang@1", "sst2@1"]
    embedded = Registry(moved["from"], (tmp_path / "home" / "artifacts").as_uri())
    with pytest.raises(rg.RegistryMovedError):
        embedded.check_writable()
    both = run(env, "db", "move", "--to-stack", "--to", "sqlite:///x.db")
    assert both.returncode == 2 and both.stderr.startswith("error: --to-stack names the new")
    neither = run(env, "db", "move")
    assert neither.returncode == 2 and "give --to DATABASE_URL" in neither.stderr


def test_an_artifact_folder_the_filesystem_refuses_is_one_line_and_leaves_nothing(tmp_path):
    """/proc lets root through its permission bits, then refuses the folder: push's traceback
    came after a new registry was made; db move's after the new database was."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTEROPS_", "MLFLOW_"))}
    env |= {"ADAPTEROPS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    folder = write_fake_adapter(tmp_path / "a", 1)
    push = (
        "push",
        str(folder),
        "--name",
        "a",
        "--base-model",
        "b",
        "--task",
        "t",
        "--language",
        "en",
    )
    refused = run({**env, "ADAPTEROPS_ARTIFACTS_URL": "/proc/adapters"}, *push)
    assert (refused.returncode, refused.stderr) == (2, (
        "error: cannot use artifact folder /proc/adapters: /proc refuses new folders (No such "
        "file or directory); point ADAPTEROPS_ARTIFACTS_URL at a folder you can write to\n"
    ))  # fmt: skip
    assert not (tmp_path / "home").exists()
    assert run(env, *push).returncode == 0
    for artifacts, said in (
        ("/proc/adapters", "/proc refuses new folders (No such file or directory); point "
         "--artifacts at a folder you can write to"),
        ("ftp://host/x", "use file:///path or s3://bucket/prefix (--artifacts)"),
    ):  # fmt: skip
        moved = run(
            env, "db", "move", "--to", f"sqlite:///{tmp_path / 'new.db'}", "--artifacts", artifacts
        )
        assert moved.returncode == 2 and moved.stderr.endswith(f"{said}\n"), moved.stderr
        assert not (tmp_path / "new.db").exists()
    assert run(env, *push[:3], "b", *push[4:]).returncode == 0  # the registry takes writes
