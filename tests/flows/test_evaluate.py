"""``adapterops evaluate REF... [--data FILE]``: registered versions scored on a new file with
their specs' columns, or again on the validation split each was built with."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re

import pytest

from flows import evaluate_job, tracking
from flows.build_job import build_from_spec
from flows.data import load_split
from flows.errors import DataError
from flows.evaluate_job import evaluate_version
from flows.predict_job import predict
from flows.quickstart import minilm_sst2_spec
from registry import Registry
from tests.helpers import run_cli, run_cli_in_a_terminal, store_from_outside


@pytest.fixture
def version(embedded_home, sst2_dir, tmp_path) -> str:
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=4, name="scored-sst2")
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_eval_samples": 16})})
    return build_from_spec(spec, Registry(), tmp_path / "out").ref


def test_a_file_is_scored_as_predict_answers_its_rows(version, sst2_dir, tmp_path):
    file = sst2_dir / "en" / "validation.tsv"
    out = tmp_path / "answers.csv"
    steps: list[str] = []
    result = evaluate_version(
        Registry(), version, data=file, max_samples=40, out=out, on_phase=steps.append
    )
    assert (result.ref, result.data, result.metrics["examples"]) == (version, str(file), 40)
    assert steps == [
        "load the base model and the adapter",
        "score 40 rows",
        "score 40 rows: 40 done",  # after each batch of 64: minutes for an LLM that generates
        f"write each row's answer to {out}",
        "record the MLflow run",
    ]
    rows = load_split(str(file), max_samples=40, seed=0)  # the same seeded subset
    _, answers = predict(Registry(), version, list(rows["sentence"]))
    right = sum(a.label == label for a, label in zip(answers, rows["label"], strict=True))
    assert result.metrics["accuracy"] == pytest.approx(right / 40)
    assert sum(map(sum, result.metrics["confusion_matrix"])) == 40
    run = tracking.client().get_run(result.mlflow_run_id)  # reviewers see it in the MLflow UI
    assert run.data.tags["adapterops.evaluated"] == version
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert run.data.params["data"] == str(file)

    # --out: each scored row of the file, in the file's order, beside predict's answer to it
    with out.open(newline="") as opened:
        lines = list(csv.DictReader(opened))
    whole = load_split(str(file))
    answer_of = {a.text: a for a in answers}
    assert list(lines[0]) == [
        "row", "text", "label", "label_name", "predicted", "predicted_name", "probability",
        "correct",
    ]  # fmt: skip
    assert [int(line["row"]) for line in lines] == sorted(int(line["row"]) for line in lines)
    assert len({line["row"] for line in lines}) == 40
    for line in lines:
        row, answer = int(line["row"]), answer_of[line["text"]]
        assert line["text"] == whole[row]["sentence"]
        assert int(line["label"]) == whole[row]["label"]
        assert line["label_name"] == ["negative", "positive"][whole[row]["label"]]
        assert (int(line["predicted"]), line["predicted_name"]) == (answer.label, answer.label_name)
        assert float(line["probability"]) == pytest.approx(max(answer.probabilities), abs=1e-4)
        assert line["correct"] == ("true" if answer.label == whole[row]["label"] else "false")
    assert result.missed == 40 - right and result.out == str(out)
    assert [a.path for a in tracking.client().list_artifacts(result.mlflow_run_id)] == [
        "answers.csv",
        "confusion_matrix.png",  # as a build's run shows its own
    ]


def test_its_own_validation_split_gives_the_metrics_recorded_at_the_build(
    version, tmp_path, sst2_dir
):
    recorded = Registry().get(version).metrics
    out = tmp_path / "validation.jsonl"
    again = evaluate_version(Registry(), version, out=out)
    assert again.data == "validation split" and again.metrics["examples"] == 16
    assert again.metrics["accuracy"] == pytest.approx(recorded["accuracy"])
    # --out: the split's rows (its file's row numbers: a seeded subset of 16), each answered
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    whole = load_split(str(sst2_dir / "en" / "validation.tsv"))
    subset = load_split(str(sst2_dir / "en" / "validation.tsv"), max_samples=16, seed=0)
    assert [line["text"] for line in lines] == [whole[line["row"]]["sentence"] for line in lines]
    assert sorted(line["text"] for line in lines) == sorted(subset["sentence"])
    assert [line["row"] for line in lines] == sorted(line["row"] for line in lines)
    assert sum(line["correct"] for line in lines) == round(16 * recorded["accuracy"])
    assert again.missed == 16 - round(16 * recorded["accuracy"])

    # built on another machine: its data files are not here
    elsewhere = json.loads(json.dumps(Registry().get(version).spec))
    elsewhere["data"]["validation"] = str(tmp_path / "gone" / "validation.tsv")
    moved = Registry().register(
        tmp_path / "out", name="moved-sst2", base_model=elsewhere["base_model"], task="sst2",
        language="en", spec=elsewhere,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"moved-sst2@1 was built on .*gone/validation.tsv, which is not on this machine: score it on a file you have with --data FILE"):  # fmt: skip
        evaluate_version(Registry(), moved.ref)


def test_the_cli_scores_as_json_and_refuses_bad_files_in_one_line(version, sst2_dir, tmp_path):
    env = {**os.environ}
    file = sst2_dir / "en" / "validation.tsv"
    done = run_cli("evaluate", version, "--data", str(file), "--max-samples", "40", "--json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    expected = evaluate_version(Registry(), version, data=file, max_samples=40).metrics
    assert document["ok"] and document["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert document["label_names"] == ["negative", "positive"]  # the spec's, in label order
    table = run_cli("evaluate", version, "--data", str(file), "--max-samples", "40", env=env)
    assert table.returncode == 0 and "accuracy" in table.stdout and "confusion" in table.stdout
    # the matrix under the metrics, each row and column named (bare counts said neither)
    lines = table.stdout.splitlines()
    assert any(re.fullmatch(r"┃ true \\ predicted ┃ negative ┃ positive ┃", line) for line in lines)
    rows = [
        line.split("│")[1:-1] for line in lines if line.startswith(("│ negative", "│ positive"))
    ]
    assert [[int(count) for count in row[1:]] for row in rows] == (
        document["metrics"]["confusion_matrix"]
    )
    # at a terminal, what it is doing while it loads and scores (a person waited 20-40 s for
    # the table in silence); in a log, nothing of it
    terminal = {**env, "TERM": "xterm", "COLUMNS": "200"}
    args = ("evaluate", version, "--data", str(file), "--max-samples", "40")
    code, shown = run_cli_in_a_terminal(terminal, *args)
    steps = [
        "loading torch and transformers", "read the data", "load the base model and the adapter",
        "score 40 rows", "record the MLflow run",
    ]  # fmt: skip
    said = [shown.find(f"evaluate {version}: {step}") for step in steps]
    assert code == 0 and -1 not in said and said == sorted(said), shown[-3000:]
    assert "score 40 rows" not in table.stderr
    code, shown = run_cli_in_a_terminal(terminal, "predict", version, "--text", "a fine film")
    steps = [
        "predict: loading torch and transformers",
        f"predict: load the base model and {version}",  # the bar sat at 0/? saying nothing
        "predict: answer 1 text",
        "│ a fine film",
    ]
    said = [shown.find(step) for step in steps]
    assert code == 0 and -1 not in said and said == sorted(said), shown[-3000:]

    # --out: each row with its answer, as JSON Lines; a file there is kept without --force
    out = tmp_path / "answers.jsonl"
    args = ("evaluate", version, "--data", str(file), "--max-samples", "12", "--out", str(out))
    written = run_cli(*args, "--json", env=env)
    assert written.returncode == 0, written.stderr[-2000:]
    document = json.loads(written.stdout)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    wrong = [line["row"] for line in lines if not line["correct"]]
    assert (document["out"], document["missed"], len(lines)) == (str(out), len(wrong), 12)
    assert document["metrics"]["accuracy"] == pytest.approx(1 - len(wrong) / 12)
    assert {type(line["correct"]) for line in lines} == {bool}
    before = out.read_text()
    again = run_cli(*args, env=env)
    assert (again.returncode, again.stderr) == (
        2,
        f"error: --out {out} exists: give --force to replace it, or another file name\n",
    )
    shown = run_cli(*args, "--force", env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"each row's answer in {out}: {len(wrong)} answered wrong" in shown.stdout
    assert out.read_text() == before  # the same rows and answers

    unlabelled = tmp_path / "texts.tsv"
    unlabelled.write_text("sentence\na fine film\n")
    for data, says in (
        (tmp_path / "nowhere.tsv", "does not exist"),
        (unlabelled, "has no column(s) ['label']"),
    ):
        refused = run_cli("evaluate", version, "--data", str(data), env=env)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert says in refused.stderr and "Traceback" not in refused.stderr
    down = run_cli("evaluate", version, env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert down.returncode == 2 and "MLflow" in down.stderr and "Traceback" not in down.stderr


def test_a_folder_pushed_with_its_spec_predicts_and_evaluates(version, tmp_path, sst2_dir):
    """An adapter trained elsewhere (or by `adapterops train`) and pushed with the spec it was
    trained with answers as the built version of the same files does; pushed without one it
    answers the same from its files (labels by number) and is scored the same on a file (its
    columns `sentence` and `label`, or named), but not on a validation split it cannot name,
    and a spec of another method is refused at the push."""
    env = {**os.environ}
    built = Registry().get(version)
    document = {**built.spec, "name": "pushed-sst2"}
    spec_file = tmp_path / "pushed.yaml"
    spec_file.write_text(json.dumps(document))  # JSON is YAML
    folder = tmp_path / "out"  # what the fixture's build trained and registered

    bare = run_cli(
        "push", str(folder), "--name", "pushed-sst2", "--base-model", built.base_model,
        "--task", "sst2", "--language", "en", "--json", env=env,
    )  # fmt: skip
    assert bare.returncode == 0, bare.stderr[-2000:]
    texts = ["a fine film", "dull and far too long"]
    _, expected = predict(Registry(), version, texts)
    _, from_files = predict(Registry(), "pushed-sst2@1", texts)
    assert [a.probabilities for a in from_files] == [e.probabilities for e in expected]
    assert [(a.label, a.label_name) for a in from_files] == [(e.label, "") for e in expected]
    file = sst2_dir / "en" / "validation.tsv"
    refused = run_cli("evaluate", "pushed-sst2@1", env=env)  # its validation split: unknown
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "the settings it was trained with (data columns, metric, load settings) are "
        "unknown; evaluate works on versions built by adapterops build or pushed with --spec "
        "SPEC (the spec it was trained with: adapterops rm " in refused.stderr
    )
    assert refused.stderr.strip().endswith(
        "or score it on a file: --data FILE (texts in `sentence` and labels in `label`, or the "
        "columns --text-column and --label-column name)"
    )
    # on a file it is scored with the head its files carry, as the built version scores
    original = evaluate_version(Registry(), version, data=file, max_samples=24)
    from_files = evaluate_version(Registry(), "pushed-sst2@1", data=file, max_samples=24)
    for scored in (original, from_files):
        assert scored.metrics["examples"] == 24
    assert from_files.metrics["accuracy"] == pytest.approx(original.metrics["accuracy"])
    assert from_files.metrics["confusion_matrix"] == original.metrics["confusion_matrix"]
    renamed = tmp_path / "renamed.tsv"  # the same rows under other column names
    lines = file.read_text().splitlines(keepends=True)
    renamed.write_text("review\tgold\n" + "".join(lines[1:]))
    missing = run_cli("evaluate", "pushed-sst2@1", "--data", str(renamed), env=env)
    assert missing.returncode == 2 and (
        "(`sentence` and `label` for a version pushed without a spec; --text-column and "
        "--label-column name others)" in missing.stderr
    )
    named = run_cli(
        "evaluate", "pushed-sst2@1", "--data", str(renamed), "--max-samples", "24",
        "--text-column", "review", "--label-column", "gold", "--json", env=env,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr[-2000:]
    assert (
        json.loads(named.stdout)["metrics"]["confusion_matrix"]
        == (from_files.metrics["confusion_matrix"])
    )
    assert json.loads(named.stdout)["label_names"] == []  # no spec: labels by number
    alone = run_cli("evaluate", "pushed-sst2@1", "--label-column", "gold", env=env)
    assert (alone.returncode, alone.stderr.strip()) == (
        2,
        "error: --text-column and --label-column name columns of the --data file: give --data FILE",
    )
    same_bytes = run_cli("push", str(folder), "--spec", str(spec_file), env=env)
    assert same_bytes.returncode == 0, same_bytes.stderr[-2000:]
    assert same_bytes.stderr.startswith(
        "warning: these files are pushed-sst2@1 already, registered without a spec"
    )
    assert run_cli("rm", "pushed-sst2@1", env=env).returncode == 0

    pushed = run_cli("push", str(folder), "--spec", str(spec_file), "--json", env=env)
    assert pushed.returncode == 0 and pushed.stderr == "", pushed.stderr[-2000:]
    record = json.loads(pushed.stdout)
    assert (record["ref"], record["base_model"], record["task"]) == (
        "pushed-sst2@2", built.base_model, "sst2",
    )  # fmt: skip
    assert Registry().get("pushed-sst2@2").spec == json.loads(json.dumps(document))
    # no --metric: the evaluation the folder's report.json holds (the build's, here)
    assert record["metrics"] == pytest.approx(built.metrics) and "accuracy" in built.metrics
    _, answers = predict(Registry(), "pushed-sst2@2", texts)
    assert [a.probabilities for a in answers] == [e.probabilities for e in expected]
    assert [a.label_name for a in answers] == [e.label_name for e in expected] != ["", ""]
    scored = evaluate_version(Registry(), "pushed-sst2@2", data=file, max_samples=24)
    original = evaluate_version(Registry(), version, data=file, max_samples=24)
    assert scored.metrics["accuracy"] == pytest.approx(original.metrics["accuracy"])

    other = tmp_path / "bitfit.yaml"
    other.write_text(json.dumps({**document, "name": "other", "method": {"type": "bitfit"}}))
    wrong = run_cli("push", str(folder), "--spec", str(other), "--json", env=env)
    assert wrong.returncode == 2 and json.loads(wrong.stdout)["error"] == (
        f"the spec's method.type is 'bitfit', but {folder} holds a 'lora' adapter: give the "
        "spec it was trained with (a field set when training, --set method.type=lora, is set "
        "again when pushing)"
    )
    # as the message says: what `train SPEC --set ...` trained is pushed with the same --set
    overridden = run_cli("push", str(folder), "--spec", str(other), "--set", "method.type=lora", "--json", env=env)  # fmt: skip
    assert overridden.returncode == 0, overridden.stderr[-2000:]
    assert json.loads(overridden.stdout)["ref"] == "other@1"
    assert Registry().get("other@1").spec["method"]["type"] == "lora"
    lone = run_cli("push", str(folder), "--name", "x", "--task", "t", "--language", "en", "--set", "method.type=lora", env=env)  # fmt: skip
    assert (lone.returncode, lone.stderr) == (2, (
        "error: --set overrides fields of the spec the adapter was trained with: give that "
        "spec with --spec SPEC\n"
    ))  # fmt: skip
    for flag, value in (("--language", "pt"), ("--name", "renamed")):
        clash = run_cli("push", str(folder), "--spec", str(spec_file), flag, value, env=env)
        assert clash.returncode == 2 and f"{flag} {value!r} differs from {spec_file}'s" in (
            clash.stderr
        )


def test_a_build_keeps_no_validation_answers_when_its_data_changed_while_it_trained(
    embedded_home, sst2_dir, tmp_path, caplog
):
    """The answers file reads the split again, beside the answers scored on the cached tokens:
    a file appended to while the build trained would put answers beside the wrong rows."""
    from flows.build_job import start_build, validation_answers
    from flows.evaluation import RowOutcome

    for split, rows in (("train", 40), ("validation", 6)):
        lines = (sst2_dir / "en" / f"{split}.tsv").read_text().splitlines()[: rows + 1]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    spec = minilm_sst2_spec("lora", tmp_path, steps=2, name="changing-sst2")
    build = start_build(spec, tmp_path / "out", registry=Registry())
    outcomes = [RowOutcome(predicted=1, probability=0.75) for _ in range(6)]
    (kept,) = validation_answers(build, outcomes, tmp_path)
    with kept.open(newline="") as opened:
        lines = list(csv.DictReader(opened))
    assert [(line["row"], line["predicted_name"]) for line in lines] == [
        (str(row), "positive") for row in range(6)
    ]

    with (tmp_path / "validation.tsv").open("a") as appended:
        appended.write("a late row .\t1\n")
    kept.unlink()
    with caplog.at_level("WARNING"):
        assert validation_answers(build, outcomes, tmp_path) == []
    assert not kept.exists()
    assert "changing-sst2: the data files changed while it was built" in caplog.text


def test_several_versions_load_their_base_once_and_score_as_each_does_alone(
    version, sst2_dir, tmp_path, monkeypatch
):
    """A reviewer comparing versions on one file: ``evaluate A B``. Versions on one base load
    it once (a 7B base loaded per version took minutes each), each loaded beside it, scored
    and taken out again: the same metrics as each scored alone."""
    other = minilm_sst2_spec("bitfit", sst2_dir / "en", steps=3, name="scored-bitfit")
    other = other.model_copy(
        update={"data": other.data.model_copy(update={"max_eval_samples": 16})}
    )
    second = build_from_spec(other, Registry(), tmp_path / "out").ref
    file = sst2_dir / "en" / "validation.tsv"
    alone = [
        evaluate_version(Registry(), ref, data=file, max_samples=40) for ref in (second, version)
    ]

    loads = []
    real_load = evaluate_job.load_inference_model
    monkeypatch.setattr(
        evaluate_job,
        "load_inference_model",
        lambda spec: loads.append(spec.name) or real_load(spec),
    )
    steps: list[str] = []
    together = evaluate_job.evaluate_versions(
        Registry(), [second, version], data=file, max_samples=40, on_phase=steps.append
    )
    assert len(loads) == 1 and steps[0] == (
        "load the base model sentence-transformers/all-MiniLM-L6-v2 for 2 versions"
    )
    assert [r.ref for r in together] == [second, version]
    for shared, single in zip(together, alone, strict=True):
        assert shared.metrics["confusion_matrix"] == single.metrics["confusion_matrix"]
        assert shared.metrics["accuracy"] == pytest.approx(single.metrics["accuracy"])
        assert shared.mlflow_run_id and shared.mlflow_run_id != single.mlflow_run_id

    env = {**os.environ, "COLUMNS": "200"}
    cli = run_cli("evaluate", second, version, "--data", str(file), "--max-samples", "40",
                  "--json", env=env)  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    evaluations = json.loads(cli.stdout)["evaluations"]
    assert [(e["ref"], e["metrics"]["accuracy"]) for e in evaluations] == [
        (r.ref, pytest.approx(r.metrics["accuracy"])) for r in alone
    ]
    table = run_cli("evaluate", second, version, "--max-samples", "8", env=env)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert lines[0] == "2 versions on validation split"
    assert [line.split("│")[1].strip() for line in lines if "@" in line] == [second, version]
    lines_only = tmp_path / "texts.tsv"  # no label column: the classifiers cannot score it
    lines_only.write_text("sentence\na fine film\n")
    unreadable = run_cli("evaluate", second, version, "--data", str(lines_only), env=env)
    assert unreadable.returncode == 2 and unreadable.stderr.startswith(
        f"error: {second}: {lines_only} has no column(s) ['label']"
    )  # which of the versions cannot read it
    refused = run_cli("evaluate", second, version, "--out", str(tmp_path / "a.csv"), env=env)
    assert refused.returncode == 2 and refused.stderr == (
        "error: --out writes one version's answers, and 2 are given: evaluate each with its "
        "own --out FILE\n"
    )


def test_a_version_that_cannot_be_scored_is_said_and_the_others_still_are(
    version, sst2_dir, tmp_path, monkeypatch
):
    """``evaluate A B C`` ended at the first version whose stored files were damaged: those
    scored before it had MLflow runs and no table showed them, those after it were never
    scored. Each version's failure is now its row and an ``error:`` line (exit 1). Versions
    reading the file alike share one tokenised copy of it."""
    other = minilm_sst2_spec("bitfit", sst2_dir / "en", steps=3, name="scored-bitfit")
    other = other.model_copy(
        update={"data": other.data.model_copy(update={"max_eval_samples": 16})}
    )
    second = build_from_spec(other, Registry(), tmp_path / "out").ref
    registry = Registry()
    files = registry.fetch(version, tmp_path / "files")
    tensors = (files / "adapter.safetensors").read_bytes()
    damaged = bytearray(tensors)
    damaged[-1] ^= 0xFF
    digest = hashlib.sha256(tensors).hexdigest()
    store_from_outside(registry, digest, bytes(damaged), tmp_path)

    file = sst2_dir / "en" / "validation.tsv"
    reads = []
    real_read = evaluate_job.read_file
    monkeypatch.setattr(
        evaluate_job, "read_file", lambda *a, **k: reads.append(a[1]) or real_read(*a, **k)
    )
    outcomes = evaluate_job.evaluate_versions(
        registry, [version, second], data=file, max_samples=40
    )
    assert reads == [file]  # one tokenised copy for both: same tokenizer, columns and head
    assert [(o.ref, bool(o.metrics), bool(o.mlflow_run_id)) for o in outcomes] == [
        (version, False, False),
        (second, True, True),
    ]
    assert outcomes[0].failed.startswith(f"{version}: adapter.safetensors is corrupted"), outcomes[
        0
    ].failed
    alone = evaluate_version(registry, second, data=file, max_samples=40)
    assert outcomes[1].failed == ""  # scored as it is alone, after the damaged one failed
    assert outcomes[1].metrics["confusion_matrix"] == alone.metrics["confusion_matrix"]

    # a version loading a base model of its own fails the same way
    monkeypatch.setattr(
        evaluate_job, "sharing_groups", lambda versions, specs: [[p] for p in range(len(versions))]
    )
    alone = evaluate_job.evaluate_versions(registry, [second, version], data=file, max_samples=8)
    assert [bool(o.failed) for o in alone] == [False, True]

    env = {**os.environ, "COLUMNS": "200"}
    cli = run_cli("evaluate", version, second, "--data", str(file), "--max-samples", "8", env=env)
    assert cli.returncode == 1, cli.stderr[-2000:]
    lines = cli.stdout.splitlines()
    assert lines[0] == f"2 versions on {file}: 1 could not be scored"
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "@" in line]
    assert rows[0] == [version, "-", "-", "-", "not scored"]
    assert rows[1][0] == second and re.fullmatch(r"[0-9a-f]{32}", rows[1][-1]), rows[1]
    narrow = run_cli("evaluate", version, second, "--data", str(file), "--max-samples", "8",
                     env={**env, "COLUMNS": "80"})  # fmt: skip
    # a CI log's width: the run ids make way, the versions stay whole (they were cut to
    # "scored-sst…" and "scored-bitf…", which could not be told apart with longer names)
    assert [line.split("│")[1].strip() for line in narrow.stdout.splitlines() if "@" in line] == [
        version,
        second,
    ]
    assert "not shown at this width: MLflow run" in narrow.stdout
    assert cli.stderr.startswith(f"error: {version}: adapter.safetensors is corrupted")
    as_json = run_cli("evaluate", version, second, "--data", str(file), "--max-samples", "8",
                      "--json", env=env)  # fmt: skip
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False
    assert [bool(e["failed"]) for e in document["evaluations"]] == [True, False]
