"""``train.processes: N``: train, build and retrain start torchrun themselves (two gloo processes
here), relay every step back, and go on in the first process as for one."""

from __future__ import annotations

import csv
import json
import signal
import sys
from pathlib import Path

import pytest

from flows import build_job, tracking
from flows.build_job import build_from_spec
from flows.data import FILE_ROW, load_raw
from flows.errors import DataError
from flows.evaluation import RowOutcome
from flows.launch import PHASE_MARK, _last_error, _Listeners, _relay
from flows.prepare_job import check_inputs
from flows.quickstart import minilm_sst2_spec
from flows.stopping import StopRequested
from flows.train_job import evaluate_folder, train_from_spec
from registry import Registry

STEPS = 4


def two_process_spec(sst2_dir: Path, **train: object):
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=STEPS, batch_size=8, name="two-sst2")
    data = spec.data.model_copy(update={"max_eval_samples": 64})
    settings = spec.train.model_copy(update={"processes": 2, **train})
    return spec.model_copy(update={"data": data, "train": settings})


def test_a_build_trains_in_two_processes_and_tracks_every_step(
    embedded_home, sst2_dir, tmp_path, monkeypatch
):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # what torchrun would leave behind
    registry = Registry()
    spec = two_process_spec(sst2_dir, eval_every=2, keep_best=True)

    def loaded_here(*_: object, **__: object) -> None:
        raise AssertionError("the launching process evaluated the saved adapter itself")

    with monkeypatch.context() as patched:  # the two processes score it, a share each
        patched.setattr(build_job, "evaluate_folder", loaded_here)
        result = build_from_spec(spec, registry, tmp_path / "out")
    assert (result.version, result.promoted, result.alias) == (1, True, "champion")
    history = tracking.client().get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in history] == list(range(STEPS))  # every step, relayed from rank 0
    measured = tracking.client().get_metric_history(result.run_id, "val_loss")
    assert [m.step for m in measured] == [2, 4]  # each process measured; rank 0 relayed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["evaluations"] == [[m.step, m.value] for m in measured]
    assert report["best_step"] == min(measured, key=lambda m: m.value).step
    assert (report["world_size"], report["sharding"], report["steps"]) == (2, "ddp", STEPS)
    assert report["final_loss"] == pytest.approx(history[-1].value)
    # evaluated by the two processes (a share each), as the saved adapter scores in this one
    outcomes: list[RowOutcome] = []
    alone = evaluate_folder(spec, tmp_path / "out", outcomes=outcomes)
    assert report["metrics"]["examples"] == alone["examples"] == 64
    assert report["metrics"]["confusion_matrix"] == alone["confusion_matrix"]
    kept = tracking.client().download_artifacts(result.run_id, "validation_answers.csv")
    with open(kept, newline="") as opened:
        answers = list(csv.DictReader(opened))
    rows = [int(a["row"]) for a in answers]  # in the file's order; the outcomes in the split's
    read = load_raw(spec, numbered=True)[1]
    assert rows == sorted(read[FILE_ROW]) and len(rows) == 64
    in_file_order = [outcomes[i] for i in sorted(range(64), key=read[FILE_ROW].__getitem__)]
    assert [int(a["predicted"]) for a in answers] == [o.predicted for o in in_file_order]
    probabilities = [float(a["probability"]) for a in answers]
    assert probabilities == pytest.approx([o.probability for o in in_file_order], abs=1e-5)
    assert list((tmp_path / "tmp").glob("torchelastic_*")) == []  # torchrun's logs: not left


def test_rank_0s_phases_reach_the_launching_process_once_each(sst2_dir, tmp_path):
    """``adapterops train`` names each phase in its bar; with two processes it heard only the
    steps (the bar sat on the spec's name while the processes loaded, evaluated, saved)."""
    spec = two_process_spec(sst2_dir, max_steps=1)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_eval_samples": 8})})
    heard: list[object] = []

    def scoring(what: str, done: int, total: int) -> None:
        heard.append((what, done, total))

    report = train_from_spec(
        spec, tmp_path / "out", on_phase=heard.append, keep_outcomes=True, on_scoring=scoring
    )
    assert heard == [
        "start 2 processes",
        f"load {spec.base_model}",
        "prepare data",
        "train",
        "evaluate on 8 rows",
        ("rows scored in share 1 of 2", 4, 4),  # rank 0's share, as it is scored
        f"save into {tmp_path / 'out'}",
    ]
    # each row's outcome, from the processes' shares, as this process scores the saved adapter
    outcomes: list[RowOutcome] = []
    evaluate_folder(spec, tmp_path / "out", outcomes=outcomes)
    assert [o.predicted for o in report.outcomes] == [o.predicted for o in outcomes]
    assert [o.probability for o in report.outcomes] == pytest.approx(
        [o.probability for o in outcomes], abs=1e-6
    )
    assert len(outcomes) == 8 and len({o.probability for o in outcomes}) == 8


def test_processes_that_differ_from_a_users_torchrun_are_refused(sst2_dir, monkeypatch):
    spec = two_process_spec(sst2_dir)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DataError, match=r"train\.processes is 2 but torchrun started 3"):
        check_inputs(spec)


def test_a_failing_process_is_one_line():
    stderr = (
        "[rank1]: Traceback (most recent call last):\n"
        '[rank1]:   File "x.py", line 3, in <module>\n'
        "[rank1]: ValueError: the batch is empty\n"
        "E1201 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    )
    assert _last_error(stderr) == "ValueError: the batch is empty"
    assert _last_error("") == "no output"
    # the peer that waited in a collective fails after it and says only that the other left
    gone = "[rank0]: RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer\n"
    assert _last_error(stderr + gone) == "ValueError: the batch is empty"
    assert (
        _last_error(gone)
        == "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    )


_TRAINING_THAT_HEARS_SIGTERM = """
import signal, sys, time
from pathlib import Path
def stopped(signum, frame):
    Path(sys.argv[1]).write_text("stopped by SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
print(sys.argv[2] + "train", flush=True)
time.sleep(30)  # a long step: nothing printed, so a closed pipe would not end it
"""


def test_a_stopped_launcher_stops_torchrun_at_once(tmp_path):
    """Ctrl-C or SIGTERM in the launching process (:class:`StopRequested`): leaving the relay
    waited for torchrun to finish, or, once the CLI was gone, left the group training (its
    GPUs held) until rank 0 next printed. The launched process is SIGTERMed now."""
    heard = tmp_path / "heard"

    def stop(phase: str) -> None:
        raise StopRequested(signal.SIGTERM)

    command = [sys.executable, "-c", _TRAINING_THAT_HEARS_SIGTERM, str(heard), PHASE_MARK]
    with pytest.raises(StopRequested):
        _relay(command, None, _Listeners(on_phase=stop))
    assert heard.read_text() == "stopped by SIGTERM"


def test_bad_input_found_inside_the_processes_is_the_launchers_one_line(sst2_dir, tmp_path):
    """One training row for two processes: found once the data is prepared, inside them, and
    raised here as the DataError one process would raise (the CLI's one line, exit 2)."""
    spec = two_process_spec(sst2_dir, max_steps=1)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_train_samples": 1})})
    with pytest.raises(
        DataError,
        match=r"^data\.train has 1 row\(s\) after preparation, fewer than the 2 processes",
    ):
        train_from_spec(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
