"""The Prefect flows on a real Prefect server: build (idempotent, resumable), prepare (cached),
retrain (one failure does not stop the others)."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import TerminationSignal

from flows import pipelines, tracking
from flows.prepare_job import prepare_cached
from flows.retrain import due_reason, last_fire
from flows.spec import load_spec
from flows.stopping import StopRequested, stop_reason
from flows.train_job import load_tokenizer
from registry import InvalidNameError, Registry

pytestmark = pytest.mark.usefixtures("prefect_server", "embedded_home")


def write_spec(folder: Path, sst2: Path, *, name: str = "flow-sst2", **changes: object) -> Path:
    """A MiniLM SST-2 LoRA spec small enough to build in seconds."""
    document: dict = {
        "name": name,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "task": "sst2",
        "language": "en",
        "head": {"type": "classification", "num_labels": 2},
        "method": {"type": "lora", "rank": 4},
        "data": {
            "train": str(sst2 / "en" / "train.tsv"),
            "validation": str(sst2 / "en" / "validation.tsv"),
            "max_train_samples": 48,
            "max_eval_samples": 48,
        },
        "train": {"max_steps": 6, "batch_size": 8, "max_length": 32, "checkpoint_every": 2},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        document[section] = {**document[section], field: value} if field else value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@flow(name="build")
def _killed_build() -> None:
    """Stands for the flow of a build killed outright (never run here)."""


def flow_runs_named(flow_run_id: str) -> list:
    """The flow run of this id, if the Prefect server has one."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def flow_runs(flow_name: str) -> list:
    with get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs() if r.name and flow_name in r.name]


class TestBuild:
    def test_builds_registers_promotes_and_then_reuses(self, tmp_path: Path, sst2_dir: Path):
        spec_path = write_spec(tmp_path, sst2_dir)
        first = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert (first["version"], first["alias"], first["promoted"]) == (1, "champion", True)
        assert first["reused"] is False
        accuracy = first["metrics"]["accuracy"]  # right answers out of the 48 validation rows
        assert accuracy == Registry().get("flow-sst2@1").metrics["accuracy"]
        assert abs(accuracy * 48 - round(accuracy * 48)) < 1e-9

        again = pipelines.build(str(spec_path), output=str(tmp_path / "out-again"))
        assert again["reused"] is True and again["version"] == 1
        assert not (tmp_path / "out-again").exists()  # nothing was trained
        assert [v.version for v in Registry().find(name="flow-sst2")] == [1]

        runs = flow_runs(f"build {spec_path}")
        assert len(runs) == 2 and all(r.state.is_completed() for r in runs)

        # the base folder written as a shell completes it ("name/") is the same base and build
        slash = ["base_model=sentence-transformers/all-MiniLM-L6-v2/"]
        assert pipelines.build(str(spec_path), slash, output=str(tmp_path / "o-slash"))["reused"]
        # a run that would register under another task (a deployment's: no CLI checked it)
        # is refused before it trains, not after, at the registration
        with pytest.raises(InvalidNameError, match=r"; this spec is for .*'topic', 'en', 'lora'"):
            pipelines.build(str(spec_path), ["task=topic"], output=str(tmp_path / "o-topic"))
        assert not (tmp_path / "o-topic").exists()

        changed = pipelines.build(str(spec_path), ["train.seed=1"], output=str(tmp_path / "o2"))
        assert changed["version"] == 2 and changed["reused"] is False

        # the newest version came from an override, so the plain spec is due again, and its
        # build finds version 1: reported as reused (not "built"), with the gate's verdict
        reason = due_reason(load_spec(spec_path), Registry())
        assert reason is not None
        outcome = pipelines.retrain([str(spec_path)], output=str(tmp_path))[0]
        assert (outcome["status"], outcome["reason"], outcome["ref"]) == (
            "reused", reason, "flow-sst2@1",
        )  # fmt: skip
        first_aliases = Registry().get("flow-sst2@1").aliases
        expected_alias = "champion" if "champion" in first_aliases else ",".join(first_aliases)
        assert outcome["reused"] is True and outcome["alias"] == expected_alias
        assert outcome["decision"] == "already built from this spec, data and code: nothing trained"

    def test_the_chain_names_each_phase_as_it_starts(self, tmp_path: Path, sst2_dir: Path):
        from flows.build_job import run_chain, start_build

        phases: list[object] = []
        spec = load_spec(write_spec(tmp_path, sst2_dir, name="phases"))

        def scoring(what: str, done: int, total: int) -> None:
            phases.append((what, done, total))

        build = start_build(spec, tmp_path / "out", on_phase=phases.append, on_scoring=scoring)
        result = run_chain(build)
        assert result.version == 1
        # the evaluation's rows as they are done (one batch of 48)
        assert phases == [
            "find earlier build", "prepare data", "train", "evaluate", ("rows scored", 48, 48),
            "register and promote",
        ]  # fmt: skip
        phases.clear()
        assert run_chain(start_build(spec, tmp_path / "again", on_phase=phases.append)).reused
        assert phases == ["find earlier build"]

    def test_the_data_is_fingerprinted_once_per_build(
        self, tmp_path: Path, sst2_dir: Path, monkeypatch: pytest.MonkeyPatch
    ):
        from flows import lineage, prepare_job

        calls: list[str] = []
        fingerprint = lineage.dataset_fingerprint

        def counting(spec):
            calls.append(spec.name)
            return fingerprint(spec)

        for module in (lineage, prepare_job):  # the build's lineage, and the prepare task
            monkeypatch.setattr(module, "dataset_fingerprint", counting)
        spec_path = write_spec(tmp_path, sst2_dir, name="once")
        pipelines.build(str(spec_path), output=str(tmp_path / "a"))  # prepare, train, evaluate
        assert calls == ["once"]
        pipelines.build(str(spec_path), output=str(tmp_path / "a"), overrides=["train.seed=7"])
        assert calls == ["once", "once"]  # the second build also gates against the first

    def test_a_crashed_build_leaves_no_version_and_resumes_on_rerun(
        self, tmp_path: Path, sst2_dir: Path
    ):
        spec_path = write_spec(tmp_path, sst2_dir, name="crashy")

        def crash(step: int, total: int, loss: float, learning_rate: float) -> None:
            if step == 4:
                raise RuntimeError("power cut")

        with pipelines.reporting_progress(crash), pytest.raises(RuntimeError, match="power cut"):
            pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert Registry().find(name="crashy") == []
        client = tracking.client()
        experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        [failed] = client.search_runs([experiment], "tags.`adapterops.name` = 'crashy'")
        # why, where a reviewer looks (it said FAILED and nothing more)
        assert failed.info.status == "FAILED"
        assert failed.data.tags["adapterops.error"] == "RuntimeError: power cut"
        assert failed.data.tags["mlflow.note.content"] == "Failed: RuntimeError: power cut"

        result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert result["version"] == 1
        report = yaml.safe_load((tmp_path / "out" / "report.json").read_text())
        assert report["resumed_from_step"] == 4  # the checkpoint at step 4, not a fresh start
        assert report["steps"] == 6
        finished = client.get_run(result["run_id"])
        assert finished.data.tags["adapterops.previous_attempt"] == failed.info.run_id
        assert "adapterops.error" not in finished.data.tags
        assert client.get_run(failed.info.run_id).info.status == "FAILED"  # not ended again

    def test_the_flow_run_of_a_killed_build_of_another_spec_is_crashed_by_any_build(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """A build killed and then rebuilt with another spec never sees its own next attempt,
        which crashed its flow run. Its MLflow run, found RUNNING with no process holding its
        build key's lock, names its flow run: any build in the registry crashes that too."""
        from prefect.states import Running

        from flows.mlflow_names import REGISTRY_TAG
        from flows.run_attempts import BUILD_KEY_TAG, FLOW_RUN_TAG

        with get_client(sync_client=True) as client:  # the killed build's flow run
            dead = client.create_flow_run(
                _killed_build, name="build batch-64.yaml", state=Running()
            )
        tracking.configure()
        experiment = tracking.client().get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        killed = tracking.client().create_run(
            experiment,
            tags={
                BUILD_KEY_TAG: "f" * 64, REGISTRY_TAG: Registry().identity,
                FLOW_RUN_TAG: str(dead.id), "adapterops.name": "batch-64",
            },
        )  # fmt: skip

        result = pipelines.build(str(write_spec(tmp_path, sst2_dir, name="batch-16")))
        with get_client(sync_client=True) as client:
            crashed = client.read_flow_run(dead.id)
        assert crashed.state is not None and crashed.state.name == "Crashed"
        assert "a build in the same registry, found no process building it" in (
            crashed.state.message or ""
        )
        assert tracking.client().get_run(killed.info.run_id).info.status == "KILLED"
        # the new build's run names its own flow run, for the build that may find it killed
        own = tracking.client().get_run(result["run_id"]).data.tags[FLOW_RUN_TAG]
        assert own != str(dead.id) and flow_runs_named(own)

    def test_an_interrupted_build_ends_its_run_killed_not_failed(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """Stopped (Ctrl-C here; SIGTERM in a cancelled job) is not failed: MLflow's UI says
        KILLED, with a note on what the next attempt does."""
        spec_path = write_spec(tmp_path, sst2_dir, name="interrupted")

        def interrupt(step: int, total: int, loss: float, learning_rate: float) -> None:
            if step == 4:
                raise KeyboardInterrupt

        with pipelines.reporting_progress(interrupt), pytest.raises(KeyboardInterrupt):
            pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        client = tracking.client()
        experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        [run] = client.search_runs([experiment], "tags.`adapterops.name` = 'interrupted'")
        assert run.info.status == "KILLED"
        assert run.data.tags["adapterops.error"] == "interrupted (Ctrl-C)"
        assert run.data.tags["mlflow.note.content"] == (
            "Killed: interrupted (Ctrl-C) before it finished. The next attempt of this build "
            "(the same command) carries on from its last checkpoint, if it saved one."
        )

    def test_a_killed_builds_flow_run_is_crashed_by_its_next_attempt(self, tmp_path, sst2_dir):
        """A build killed outright (a preempted GPU node, the out-of-memory killer, kill -9 on
        a CI job) left its flow run, and the task it was in, Running in Prefect for ever. The
        next attempt of the same build, holding its lock, now sets them Crashed, saying why."""
        spec_path = write_spec(tmp_path, sst2_dir, name="killed")
        script = (
            "import os, signal, sys\n"
            "from flows import pipelines\n"
            "def die(step, total, loss, learning_rate):\n"
            "    if step == 4:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "with pipelines.reporting_progress(die):\n"
            "    pipelines.build(sys.argv[1], output=sys.argv[2])\n"
        )
        killed = subprocess.run(
            [sys.executable, "-c", script, str(spec_path), str(tmp_path / "out")],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        assert killed.returncode == -9, killed.stderr[-2000:]
        [dead] = flow_runs(f"build {spec_path}")
        assert dead.state.is_running()  # what Prefect showed for ever
        key_tag = next(tag for tag in dead.tags if tag.startswith("adapterops-build:"))
        assert f"adapterops-registry:{Registry().identity}" in dead.tags

        phases: list[str] = []

        class Heard:  # the CLI's progress: steps, and the phases it names
            def __call__(self, *step: object) -> None: ...

            phase = staticmethod(phases.append)

        with pipelines.reporting_progress(Heard()):
            result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert result["version"] == 1
        runs = {run.id: run for run in flow_runs(f"build {spec_path}")}
        ended, finished = runs[dead.id], next(r for i, r in runs.items() if i != dead.id)
        assert ended.state.is_crashed() and finished.state.is_completed()
        assert ended.state.message == (
            "its process ended without reporting (killed: out of memory, a lost machine or "
            f"worker, kill -9); flow run {finished.name!r} ({finished.id}), a later attempt of "
            "the same build (spec, data and code), found it"
        )
        assert key_tag in finished.tags
        assert (
            f"Prefect flow run {dead.name} ({dead.id}) of a killed attempt of this build: Crashed"
            in phases
        )
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[dead.id]))
            )
        assert {task.name.split("-")[0]: task.state.type.value for task in tasks}[
            "train"
        ] == "CRASHED"
        assert not any(task.state.is_running() for task in tasks)


def test_a_stop_is_told_apart_from_a_failure():
    """Prefect's TerminationSignal (raised in a flow a worker cancels or SIGTERMs) carries the
    signal and no message: the run's note said "Failed: TerminationSignal: "."""
    assert stop_reason(TerminationSignal(signal.SIGTERM)) == "stopped by SIGTERM"
    assert stop_reason(StopRequested(signal.SIGTERM)) == "stopped by SIGTERM"
    assert StopRequested(signal.SIGTERM).exit_status == 143
    assert stop_reason(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert stop_reason(RuntimeError("power cut")) is None
    assert StopRequested(signal.SIGHUP).exit_status == 129


_HANDLERS_AFTER_RAISE_ON_SIGTERM = """
import signal
import sys
# as a shell starts it (this test may itself run under nohup, whose SIG_IGN is inherited)
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == "nohup" else signal.SIG_DFL)
from flows.stopping import raise_on_sigterm
raise_on_sigterm()
print([getattr(signal.getsignal(s), "name", "stop") for s in (signal.SIGTERM, signal.SIGHUP)])
"""


@pytest.mark.parametrize(("started", "handlers"), [("plain", "['stop', 'stop']"), ("nohup", "['stop', 'SIG_IGN']")])  # fmt: skip
def test_sighup_stops_a_command_unless_it_was_started_to_ignore_it(started, handlers):
    """A build run at an SSH prompt that dropped died at once, as under SIGTERM; ``nohup
    adapterops build`` must still outlive its terminal."""
    command = [sys.executable, "-c", _HANDLERS_AFTER_RAISE_ON_SIGTERM, started]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == handlers


class TestPrepare:
    def test_an_unchanged_dataset_is_prepared_once(self, tmp_path: Path, sst2_dir: Path):
        spec = load_spec(write_spec(tmp_path, sst2_dir))
        tokenizer = load_tokenizer(spec)
        _, first = prepare_cached(spec, tokenizer)
        _, second = prepare_cached(spec, tokenizer)
        assert (first.cached, second.cached) == (False, True)
        assert first.key == second.key and first.train_rows == 48

        other = load_spec(write_spec(tmp_path, sst2_dir, data__max_train_samples=40))
        _, third = prepare_cached(other, tokenizer)
        assert third.cached is False and third.key != first.key and third.train_rows == 40

    def test_the_prepare_flow_reports_the_cache_entry(self, tmp_path: Path, sst2_dir: Path):
        info = pipelines.prepare(str(write_spec(tmp_path, sst2_dir)))
        assert Path(info["path"]).is_dir() and len(info["dataset_fingerprint"]) == 64

    def test_a_datasets_folder_with_splits_is_read(self, tmp_path: Path, sst2_dir: Path):
        folder = tmp_path / "my-dataset"
        folder.mkdir()
        lines = (sst2_dir / "en" / "validation.tsv").read_text().splitlines()
        header, rows = lines[0], lines[1:]
        (folder / "train.csv").write_text(
            "\n".join(
                [
                    header.replace("\t", ","),
                    *[r.replace(",", " ").replace("\t", ",") for r in rows[:60]],
                ]
            )
        )
        (folder / "test.csv").write_text(
            "\n".join([header.replace("\t", ","), *[r.replace(",", " ").replace("\t", ",") for r in rows[60:90]]])
        )  # fmt: skip
        spec = load_spec(
            write_spec(
                tmp_path, sst2_dir, data={"dataset": str(folder), "validation_split": "test"}
            )
        )
        data, info = prepare_cached(spec, load_tokenizer(spec))
        assert (info.train_rows, info.validation_rows) == (60, 30)
        assert "labels" in data.train.column_names


class TestRetrain:
    def test_builds_what_is_due_and_reports_every_outcome(self, tmp_path: Path, sst2_dir: Path):
        current = write_spec(tmp_path, sst2_dir, name="current")
        pipelines.build(str(current), output=str(tmp_path / "o-current"))
        fresh = write_spec(tmp_path, sst2_dir, name="fresh")
        broken = write_spec(tmp_path, sst2_dir, name="broken", data__train="/nowhere/x.tsv")

        outcomes = pipelines.retrain([str(broken), str(current), str(fresh)], output=str(tmp_path))
        by_spec = {Path(o["spec"]).stem: o for o in outcomes}
        assert by_spec["broken"]["status"] == "failed"
        assert "does not exist" in by_spec["broken"]["reason"]
        assert by_spec["current"]["status"] == "up to date"
        assert by_spec["fresh"] == {**by_spec["fresh"], "status": "built", "reason": "never built"}
        assert by_spec["fresh"]["ref"] == "fresh@1"

    def test_two_specs_of_one_adapter_name_are_both_refused(self, tmp_path: Path, sst2_dir: Path):
        """They built the adapter from each in turn at every run, a version apiece, its
        champion moving back and forth: neither is built, and the dry run says so too."""
        from flows.retrain import what_is_due

        first = write_spec(tmp_path, sst2_dir, name="twice")
        second = tmp_path / "copy" / "twice.yaml"
        second.parent.mkdir()
        second.write_text(first.read_text().replace("max_steps: 6", "max_steps: 5"))
        paths = [str(first), str(second)]
        expected = [
            (path, "failed", f"name: adapter 'twice' is built by {other} too: each run would "
             "build it from each spec in turn (a version apiece, its champion moving back and "
             "forth); give each spec a name of its own")
            for path, other in zip(paths, reversed(paths), strict=True)
        ]  # fmt: skip
        planned = what_is_due(paths, Registry())
        assert [(o.spec, o.status, o.reason) for o in planned] == expected
        outcomes = pipelines.retrain(paths, output=str(tmp_path / "out"))
        assert [(o["spec"], o["status"], o["reason"]) for o in outcomes] == expected
        assert not (tmp_path / "out").exists() and Registry().find(name="twice") == []

    def test_changed_data_makes_a_spec_due(self, tmp_path: Path, sst2_dir: Path):
        data = tmp_path / "data"
        data.mkdir()
        source = (sst2_dir / "en" / "validation.tsv").read_text().splitlines()
        (data / "train.tsv").write_text("\n".join(source[:80]) + "\n")
        spec_path = write_spec(
            tmp_path, sst2_dir, name="drift",
            data={"train": str(data / "train.tsv"), "max_eval_samples": 20},
        )  # fmt: skip
        pipelines.build(str(spec_path), output=str(tmp_path / "o1"))
        registry = Registry()
        assert due_reason(load_spec(spec_path), registry) is None
        (data / "train.tsv").write_text("\n".join(source[:100]) + "\n")
        assert due_reason(load_spec(spec_path), registry) == "data changed"
        outcome = pipelines.retrain([str(spec_path)], output=str(tmp_path))[0]
        assert (outcome["status"], outcome["ref"]) == ("built", "drift@2")


def test_a_spec_field_added_since_the_build_is_not_a_change(tmp_path: Path, sst2_dir: Path):
    from flows.lineage import dataset_fingerprint
    from tests.registry.workers import write_fake_adapter

    spec = load_spec(write_spec(tmp_path, sst2_dir, name="older", schedule={"cron": None}))
    stored = spec.model_dump(mode="json")
    del stored["head"]["label_names"]  # as a build before label_names existed stored it
    Registry().register(
        write_fake_adapter(tmp_path / "v1", 1), name="older", base_model=spec.base_model,
        task="sst2", language="en", spec=stored,
        lineage={"dataset_fingerprint": dataset_fingerprint(spec)},
    )  # fmt: skip
    assert due_reason(spec, Registry()) is None
    changed = spec.model_copy(update={"head": spec.head.model_copy(update={"num_labels": 3})})
    assert due_reason(changed, Registry()) == "spec changed"


class TestSchedule:
    def test_last_fire_walks_the_cron_backwards(self):
        now = datetime(2026, 11, 29, 17, 30, tzinfo=UTC)
        assert last_fire("0 3 * * *", now) == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
        assert last_fire("0 3 * * 1", now) == datetime(2026, 11, 23, 3, 0, tzinfo=UTC)

    def test_a_schedule_that_fired_since_the_last_build_is_due(
        self, tmp_path: Path, sst2_dir: Path
    ):
        spec_path = write_spec(tmp_path, sst2_dir, name="nightly", schedule={"cron": "0 3 * * *"})
        pipelines.build(str(spec_path), output=str(tmp_path / "o"))
        spec, registry = load_spec(spec_path), Registry()
        assert due_reason(spec, registry) is None
        tomorrow = datetime.now(UTC) + timedelta(days=1, hours=1)
        assert "fired at" in (due_reason(spec, registry, now=tomorrow) or "")


class TestNewMethodsThroughTheFlow:
    @pytest.mark.parametrize(
        "method",
        [{"type": "ia3"}, {"type": "dora", "rank": 4, "targets": ["q", "v"]}],
        ids=["ia3", "dora"],
    )
    def test_builds_registers_and_loads_back(self, tmp_path: Path, sst2_dir: Path, method):
        import copy

        import torch
        import transformers as T

        import peft_core as pc
        from tests.helpers import minilm_path

        name = f"flow-{method['type']}"
        spec_path = write_spec(tmp_path, sst2_dir, name=name, method=method)
        result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert (result["version"], result["alias"]) == (1, "champion")
        version = Registry().get(f"{name}@champion")
        assert version.method == method["type"]

        base = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        model = copy.deepcopy(base).eval()
        Registry().load_into(model, f"{name}@1")
        record = pc.adapter_state_dict(model, name)
        trained = [k for k in record if not k.startswith("classifier")]
        assert trained and all(torch.isfinite(record[k]).all() for k in trained)
        # the flow trained the method's own parameters away from their no-op start
        start = copy.deepcopy(base)
        pc.add_adapter(start, name, pc.config_from_dict(method))
        fresh = pc.adapter_state_dict(start, name)
        assert any(not torch.equal(record[k], fresh[k]) for k in trained)


class TestLanguageModelTasks:
    def test_a_masked_lm_language_adapter_builds_with_perplexity(
        self, tmp_path: Path, sst2_dir: Path
    ):
        spec_path = write_spec(
            tmp_path, sst2_dir, name="pt-language",
            language="pt", task="mlm", head={"type": "masked-lm"},
            method={"type": "pfeiffer", "reduction_factor": 8},
            data__train=str(sst2_dir / "pt" / "train.tsv"), data__validation=None,
            data__label=None, evaluate={"metric": "perplexity"},
        )  # fmt: skip
        result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert result["alias"] == "champion" and result["metrics"]["perplexity"] > 1.0
        assert Registry().get("pt-language@1").head == "masked-lm"

        # MiniLM's checkpoint has no masked-LM transform: transformers draws it at random, and
        # the adapter trained against it. Every load draws the same one, so the perplexity
        # recorded at the build is what evaluating the registered version gives again.
        import torch

        from flows.errors import DataError
        from flows.predict_job import predict
        from flows.train_job import evaluate_registered, load_inference_model

        spec = load_spec(spec_path)
        again = evaluate_registered(spec, "pt-language@1", Registry())
        assert again["perplexity"] == pytest.approx(result["metrics"]["perplexity"], rel=1e-5)

        # predicted in padded batches, each row's first mask: as one text at a time, and as
        # the model with the adapter computes it by hand
        texts = ["o filme é [MASK].", "uma história [MASK] e muito longa, chata", "[MASK] [MASK]"]
        _, batched = predict(Registry(), "pt-language@1", texts)
        _, alone = predict(Registry(), "pt-language@1", texts, batch_size=1)
        assert [a.tokens for a in batched] == [a.tokens for a in alone]
        model, tokenizer = load_inference_model(spec)
        Registry().load_into(model, "pt-language@1")
        model.eval()
        encoded = tokenizer(texts[1], return_tensors="pt")
        position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
        with torch.no_grad():
            top = model(**encoded).logits[0, position].topk(5).indices
        assert batched[1].tokens == [tokenizer.decode([i]).strip() for i in top]

        late = "muito " * 40 + "[MASK]"  # past train.max_length 32
        with pytest.raises(DataError, match="lies past the first 32 tokens"):
            predict(Registry(), "pt-language@1", ["o [MASK]", late])

    def test_a_causal_lm_adapter_builds_on_a_local_gpt2(self, tmp_path: Path, sst2_dir: Path):
        import transformers as T

        from tests.helpers import minilm_path

        tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
        config = T.GPT2Config(
            vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2
        )
        folder = tmp_path / "tiny-gpt2"
        T.GPT2LMHeadModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        spec_path = write_spec(
            tmp_path, sst2_dir, name="tiny-clm", task="clm", base_model=str(folder),
            head={"type": "causal-lm"}, method={"type": "lora", "rank": 2},
            data__label=None, evaluate={"metric": "perplexity"},
        )  # fmt: skip
        result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert 1.0 < result["metrics"]["perplexity"] < 2 * len(tokenizer)

        # predict fits each prompt and its continuation in GPT-2's 64 learned positions: one
        # token past them was an IndexError from inside generate
        from flows.errors import DataError
        from flows.predict_job import predict

        text = "a fine film"
        prompt = len(tokenizer(text)["input_ids"])  # 5: [CLS] a fine film [SEP]
        most = 64 - prompt + 1  # the last new token is never read back: it takes no position
        _, [fits] = predict(Registry(), "tiny-clm@1", [text], max_new_tokens=most)
        assert len(fits.continuation.split()) >= 10  # (never its end token: every one taken)
        with pytest.raises(DataError) as past:
            predict(Registry(), "tiny-clm@1", ["ok", text], max_new_tokens=most + 1)
        assert str(past.value) == (
            f"text 2 ('a fine film') is {prompt} tokens: with {most + 1} new tokens it passes "
            f"the 64 positions the base model holds; shorten it to at most {prompt - 1} tokens, "
            "or lower max_new_tokens (--max-new-tokens)"
        )
        with pytest.raises(DataError, match=r"^max_new_tokens \(--max-new-tokens\) 64 leaves no "):
            predict(Registry(), "tiny-clm@1", [text], max_new_tokens=64)


class TestAnyPeftMethodThroughTheFlow:
    """``method: {type: peft, config: ...}``: peft's own methods build, register in the PEFT
    layout, load back from the registry and predict, like native ones."""

    @pytest.mark.parametrize(
        "peft_config",
        [
            {"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
            {"peft_type": "OFT", "oft_block_size": 8, "target_modules": ["query", "value"]},
            {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 6},
            {
                "peft_type": "ADALORA",
                "init_r": 4,
                "target_r": 2,
                "total_step": 6,
                "tfinal": 2,
                "target_modules": ["query", "value"],
            },
        ],
        ids=["loha", "oft", "prompt-tuning", "adalora"],
    )
    def test_builds_registers_loads_and_predicts(self, tmp_path: Path, sst2_dir: Path, peft_config):
        import copy

        import torch
        import transformers as T
        from peft import PeftModel

        import peft_core as pc
        from flows.predict_job import predict
        from tests.helpers import minilm_path

        name = f"flow-{peft_config['peft_type'].lower().replace('_', '-')}"
        method = {"type": "peft", "config": peft_config}
        spec_path = write_spec(tmp_path, sst2_dir, name=name, method=method)
        result = pipelines.build(str(spec_path), output=str(tmp_path / "out"))
        assert (result["version"], result["alias"], result["reused"]) == (1, "champion", False)
        registry = Registry()
        version = registry.get(f"{name}@champion")
        assert version.method == "peft"
        files = registry.fetch(f"{name}@1", tmp_path / "fetched")
        assert {p.name for p in files.iterdir()} >= {
            "adapter_config.json",
            "adapter_model.safetensors",
        }

        base = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        ours = copy.deepcopy(base).eval()
        registry.load_into(ours, f"{name}@1")
        with warnings.catch_warnings():  # peft's own load raises its AdaLoRA false alarm
            warnings.filterwarnings("ignore", "The following rank_pattern keys", RuntimeWarning)
            theirs = PeftModel.from_pretrained(copy.deepcopy(base), files).eval()
        texts = ["a moving film", "dull and far too long"]
        inputs = T.AutoTokenizer.from_pretrained(minilm_path())(
            texts, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            expected = theirs(**inputs).logits.softmax(-1)
            torch.testing.assert_close(ours(**inputs).logits.softmax(-1), expected)
        trained = pc.adapter_state_dict(ours, name)
        fresh = copy.deepcopy(base)
        pc.add_adapter(fresh, name, pc.AnyPeft(peft_config))
        untrained = pc.adapter_state_dict(fresh, name)
        assert any(not torch.equal(trained[k], untrained[k]) for k in untrained)

        resolved, answers = predict(registry, f"{name}@champion", texts)
        assert resolved == f"{name}@1"
        assert [a.label for a in answers] == expected.argmax(-1).tolist()
        got = torch.tensor([a.probabilities for a in answers])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

        # merged for engines that serve plain checkpoints: peft merges its layers, we write them
        from flows.errors import DataError
        from flows.export_job import export

        if peft_config["peft_type"] == "PROMPT_TUNING":
            with pytest.raises(DataError, match="virtual tokens are inputs, not weights"):
                export(registry, f"{name}@1", "merged", tmp_path / "merged")
            assert not (tmp_path / "merged").exists()
            return
        export(registry, f"{name}@1", "merged", tmp_path / "merged")
        plain = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        assert not any("base_layer" in key for key in plain.state_dict())
        with torch.no_grad():
            got = plain(**inputs).logits.softmax(-1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
