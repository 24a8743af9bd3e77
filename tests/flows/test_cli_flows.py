"""The flow commands as users run them: quickstart (offline, Prefect's temporary server), build,
retrain, deploy (a real Prefect server and a worker), predict, and training under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from infra.stack import PrefectServer, PrefectWorker
from tests.flows.test_pipelines import flow_runs, write_spec
from tests.helpers import run_cli, wait_until

# A worker asks for runs every 10 s by default: a test's runs waited for those polls, not for
# their work (these workers ran two tests in 90 s)
QUICK_POLLS = {"PREFECT_WORKER_QUERY_SECONDS": "1"}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: embedded defaults under ``home``, no Prefect server, no Prefect
    settings (the CLI picks its own Prefect home and turns telemetry off), a home folder of
    their own."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "ADAPTEROPS_"))
    }
    user_home = home.parent / f"{home.name}-user"
    user_home.mkdir(parents=True, exist_ok=True)
    return {
        **environment,
        "HF_HUB_OFFLINE": "1",
        "ADAPTEROPS_HOME": str(home),
        "HOME": str(user_home),
        **extra,
    }


def test_a_retraining_dry_run_creates_no_registry_and_starts_no_flow(
    tmp_path: Path, sst2_dir: Path
):
    """Before anything was built every spec is due, and asking creates nothing: no registry,
    no Prefect home (no flow ran)."""
    env = clean_env(tmp_path / "home")
    spec = write_spec(tmp_path, sst2_dir, name="first")
    result = run_cli("retrain", str(spec), "--dry-run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Retraining (dry run)" in result.stdout and result.stderr == ""
    assert "│ first.yaml │ due    │ never built │" in result.stdout
    assert not (tmp_path / "home").exists()


def test_a_base_model_written_as_a_relative_folder_is_warned_of_where_versions_register(
    tmp_path: Path, sst2_dir: Path
):
    """The registry keeps ``base_model`` as written: a relative folder is found again only
    from the folder the build ran in, so build and retrain say so (dry runs too) while the
    absolute path is at hand; an absolute folder, a Hub name, or train (no registry) say
    nothing."""
    from tests.helpers import minilm_path

    env = clean_env(tmp_path / "home")
    (tmp_path / "minilm").symlink_to(minilm_path())
    relative = write_spec(tmp_path, sst2_dir, name="near", base_model="minilm")
    warning = (
        f"warning: near: base_model 'minilm' is a folder relative to {tmp_path}; the registry "
        "keeps that name, so predict, evaluate, export and later builds find the base only "
        f"when run from there: write its absolute path, {minilm_path().resolve()}, to use "
        "the versions from anywhere\n"
    )
    for command in (["build", "--dry-run"], ["retrain", "--dry-run"]):
        result = run_cli(command[0], str(relative), *command[1:], env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, warning), command
    absolute = write_spec(tmp_path, sst2_dir, name="far", base_model=str(tmp_path / "minilm"))
    for spec in (absolute, write_spec(tmp_path, sst2_dir, name="hub")):
        result = run_cli("build", str(spec), "--dry-run", env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, ""), spec


def test_a_prefect_setting_prefect_refuses_is_one_line_naming_its_variable(
    tmp_path: Path, sst2_dir: Path
):
    """Prefect reads PREFECT_* variables when first asked for a setting: a value it refuses
    was pydantic's error about ``FlowsSettings`` (exit 1, after Prefect's own "Failed to
    initialize plugins" lines). Bad input, exit 2, before anything is made."""
    spec = write_spec(tmp_path, sst2_dir, name="set")
    refused = {
        "abc": "'abc' (input should be a valid integer, unable to parse string as an integer)",
        "10": "'10' (input should be greater than or equal to 30)",
    }
    for value, said in refused.items():
        env = {**clean_env(tmp_path / "home"), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": value}
        for command in ("build", "retrain", "deploy"):
            result = run_cli(command, str(spec), env=env, cwd=tmp_path)
            assert (result.returncode, result.stderr) == (2, (
                "error: Prefect refuses its settings in this environment: "
                f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={said}: fix or unset it\n"
            )), (command, result.stderr[-2000:])  # fmt: skip
    assert not (tmp_path / "home").exists()


def test_a_temporary_prefect_server_is_said_and_one_that_does_not_start_is_one_line(
    tmp_path: Path, sst2_dir: Path
):
    """Without PREFECT_API_URL a build first says it starts Prefect's temporary server (20 s in
    a new home: people took the silence for a hang); one that does not answer in time is one
    line naming the two ways out, and the server is not left running."""
    env = clean_env(tmp_path / "home", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    spec = write_spec(tmp_path, sst2_dir, name="first")
    result = run_cli("build", str(spec), env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines()) == (2, [
        "first: start a temporary Prefect server (PREFECT_API_URL is not set)",
        "error: Prefect's temporary server did not answer within 1 s (Timed out while "
        "attempting to connect to ephemeral Prefect API server.): allow it longer with "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a Prefect server "
        "(`adapterops stack up` starts one) and set PREFECT_API_URL",
    ])  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert processes_with(f"PREFECT_HOME={tmp_path / 'home' / 'prefect'}") == []


_ON_ITS_OWN_TERMINAL = """
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # standard input's terminal becomes this session's
# as a login shell starts it, even where the tests run under nohup (whose SIG_IGN is inherited)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])
"""


def processes_with(variable: str) -> list[str]:
    """The ids of this machine's processes whose environment holds ``variable`` (NAME=VALUE)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if variable.encode() in environ.read_bytes().split(b"\0"):
                found.append(environ.parent.name)
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


class TestQuickstart:
    def test_builds_three_methods_on_its_own_data_then_predicts(self, tmp_path: Path):
        env = clean_env(tmp_path / "home")
        result = run_cli("quickstart", "--steps", "3", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        adapters = json.loads(result.stdout)["adapters"]
        assert [a["method"] for a in adapters] == ["lora", "bitfit", "pfeiffer"]
        assert all(a["alias"] == "champion" and a["version"] == 1 for a in adapters)
        assert all(Path(a["data"]) == tmp_path / "home" / "quickstart" / "data" for a in adapters)
        assert all(a["steps"] == 3 for a in adapters)
        assert "Traceback" not in result.stderr and "LOAD REPORT" not in result.stderr
        assert "telemetry" not in result.stderr.lower()
        # Prefect, imported before the home existed, could not make its folder there and
        # warned; the CLI makes it before the first flow
        assert "Failed to create the Prefect home" not in result.stderr
        # Prefect's temporary server kept its state under ADAPTEROPS_HOME, not in ~/.prefect
        assert (tmp_path / "home" / "prefect").is_dir()
        assert not (tmp_path / "home-user" / ".prefect").exists()

        listed = run_cli("ls", "--json", env=env, cwd=tmp_path)
        registered = {v["name"]: v for v in json.loads(listed.stdout)}
        assert set(registered) == {a["name"] for a in adapters}
        for adapter in adapters:  # the reported metric is the one the registry recorded
            assert (
                adapter["metrics"]["accuracy"] == registered[adapter["name"]]["metrics"]["accuracy"]
            )

        champion = f"{adapters[0]['name']}@champion"
        predicted = run_cli(
            "predict", champion, "--text", "the plot is superb", "--text", "the cast is dull",
            "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        answers = json.loads(predicted.stdout)
        assert answers["ref"] == f"{adapters[0]['name']}@1"
        for answer in answers["predictions"]:
            probabilities = answer["probabilities"]
            assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)
            assert answer["label"] == probabilities.index(max(probabilities))
            assert answer["label_name"] == ["negative", "positive"][answer["label"]]
        table = run_cli("predict", champion, "--text", "the plot is superb", env=env, cwd=tmp_path)
        answer = answers["predictions"][0]
        said = f"{answer['label_name']} ({max(answer['probabilities']):.1%})"
        assert said in table.stdout and "label " not in table.stdout  # the spec named its labels

    def test_a_data_folder_without_the_files_is_one_line_before_any_flow(self, tmp_path: Path):
        env = clean_env(tmp_path / "home")
        (tmp_path / "reviews").mkdir()
        result = run_cli("quickstart", "--data", "reviews", env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (
            2, f"error: data file {tmp_path / 'reviews' / 'train.tsv'} does not exist\n"
        )  # fmt: skip
        # was found by the first build's flow, after Prefect's temporary server had started
        assert not (tmp_path / "home" / "prefect").exists()


@pytest.mark.usefixtures("prefect_server")
class TestBuildCommand:
    def test_a_prefect_server_that_is_not_there_is_one_line_before_any_work(
        self, tmp_path: Path, sst2_dir: Path
    ):
        from infra.stack import free_port

        url = f"http://127.0.0.1:{free_port()}/api"
        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": url}
        spec = write_spec(tmp_path, sst2_dir, name="no-prefect")
        for command in (["build", str(spec)], ["retrain", str(spec)]):
            result = run_cli(*command, env=env, cwd=tmp_path)
            assert (result.returncode, result.stderr.strip()) == (
                2,
                f"error: Prefect at {url} is not reachable (connection refused): check "
                "PREFECT_API_URL and that the server runs; or unset it to run flows on a "
                "temporary local server",
            ), command  # was "error: RuntimeError: Failed to reach API at ...", exit 1
        assert not (tmp_path / "out").exists()

    @pytest.mark.usefixtures("seaweed")
    def test_an_artifact_store_that_cannot_take_the_files_is_one_line_before_any_work(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """A bucket that does not exist (or S3 unreachable, or its keys refused) was found out
        at the registration, after the training."""
        from tests.helpers import empty_registry

        bucket = f"no-such-bucket-{os.getpid()}"
        env = clean_env(
            tmp_path / "h",
            PREFECT_API_URL=os.environ["PREFECT_API_URL"],
            ADAPTEROPS_ARTIFACTS_URL=f"s3://{bucket}/adapters",
        )
        spec = write_spec(tmp_path, sst2_dir, name="no-bucket")
        missing = (
            f"error: bucket '{bucket}' does not exist at {os.environ['AWS_ENDPOINT_URL_S3']}: "
            "create it (`adapterops stack up` does) or fix ADAPTEROPS_ARTIFACTS_URL"
        )
        # a new registry: asked before one is made (and before Prefect's flow run)
        first = run_cli("build", str(spec), env=env, cwd=tmp_path)
        assert (first.returncode, first.stderr.splitlines()[-1]) == (2, missing)
        assert not (tmp_path / "h" / "registry.db").exists()
        # an existing one: by the CLI, and by the flow of a retraining (a deployment's too)
        empty_registry(tmp_path / "h")
        second = run_cli("build", str(spec), env=env, cwd=tmp_path)
        assert (second.returncode, second.stderr.splitlines()[-1]) == (2, missing)
        assert flow_runs(str(spec)) == []
        retrained = run_cli("retrain", str(spec), "--json", env=env, cwd=tmp_path)
        assert retrained.returncode == 1
        (outcome,) = json.loads(retrained.stdout)["outcomes"]
        reason = missing.replace("error: ", "StorageUnavailableError: ")
        assert (outcome["status"], outcome["reason"]) == ("failed", reason)
        assert not (tmp_path / "out").exists()  # nothing trained

    def test_bad_data_fails_before_any_flow_run(self, tmp_path: Path, sst2_dir: Path):
        bad = tmp_path / "bad.tsv"
        bad.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
        spec = write_spec(tmp_path, sst2_dir, data__train=str(bad))
        result = run_cli("build", str(spec), "--json", env=clean_env(tmp_path / "h", PREFECT_API_URL="http://127.0.0.1:9/api"))  # fmt: skip
        assert result.returncode == 2  # the unreachable Prefect server was never needed
        assert "label values ['7'] are outside 0..1" in json.loads(result.stdout)["error"]
        assert "Traceback" not in result.stderr

    def test_a_failure_inside_the_flow_is_one_line_and_its_traceback_is_in_the_run_log(
        self, tmp_path: Path, sst2_dir: Path
    ):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        from infra.stack import free_port

        env = {
            **clean_env(tmp_path / "h"),
            "PREFECT_API_URL": os.environ["PREFECT_API_URL"],
            # only the flow finds out: MLflow is not checked before the flow starts
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
        spec = write_spec(tmp_path, sst2_dir, name="cli-mlflow-down")
        result = run_cli("build", str(spec), env=env, cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        # MLflow is first asked whether the adapter's model is this registry's, before the
        # data is prepared (not after hours of training)
        assert lines[0] == "cli-mlflow-down: find earlier build"
        assert len(lines) == 2 and lines[1].startswith("error: MLflow at http://127.0.0.1:")
        # Prefect's own account of the failure went to the run's log, not the terminal
        (run,) = [r for r in flow_runs(str(spec)) if r.state_name == "Failed"]
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        assert any(
            "Traceback" in log.message and "TrackingUnavailableError" in log.message for log in logs
        )

    def test_a_failed_build_on_a_temporary_prefect_server_says_only_its_error(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """Prefect's log worker sent the failed flow's logs after the temporary server had
        stopped, and printed "--- Error logging to API ---" and "All connection attempts
        failed" under the command's one error line."""
        from infra.stack import free_port

        env = clean_env(tmp_path / "h") | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
        spec = write_spec(tmp_path, sst2_dir, name="temporary-prefect")
        result = run_cli("build", str(spec), env=env, cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines[:2] == [
            "temporary-prefect: start a temporary Prefect server (PREFECT_API_URL is not set)",
            "temporary-prefect: find earlier build",
        ]
        assert len(lines) == 3 and lines[2].startswith("error: MLflow at http://127.0.0.1:")

    def test_a_build_stopped_by_sigterm_cleans_up_says_so_and_exits_143(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """SIGTERM (a cancelled CI job, ``timeout``, Kubernetes, systemd) ended the CLI at once:
        Prefect's temporary server and the torchrun group training the adapter lived on, the
        MLflow run said "Failed: TerminationSignal: ", and the log just stopped. Now the
        command unwinds: nothing it started is left running, the run is KILLED with a note
        saying why, and one line says what to do."""
        home = tmp_path / "home"
        env = clean_env(home, OMP_NUM_THREADS="1")
        spec = write_spec(
            tmp_path, sst2_dir, name="stopped", train__processes=2, train__max_steps=300
        )
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "adapterops"), "build", str(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert process.stderr is not None
        said = []
        for line in process.stderr:  # the first step's line: training under way in torchrun
            said.append(line)
            if line.startswith("stopped: step 1/300"):
                break
        assert said[-1].startswith("stopped: step 1/300"), "".join(said)[-3000:]
        started = processes_with(f"PREFECT_HOME={home / 'prefect'}")
        assert len(started) >= 4  # the temporary server, torchrun and its two processes
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 143, err[-3000:]
        assert err.splitlines()[-1] == (
            "stopped: SIGTERM received before the command finished; run it again to finish "
            "(a build carries on from its last checkpoint)"
        )
        assert "Traceback" not in err and out == ""
        assert processes_with(f"PREFECT_HOME={home / 'prefect'}") == []

        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        [run] = client.search_runs([client.get_experiment_by_name("adapterops").experiment_id])
        assert run.info.status == "KILLED"
        assert run.data.tags["adapterops.error"] == "stopped by SIGTERM"
        assert run.data.tags["mlflow.note.content"].startswith(
            "Killed: stopped by SIGTERM before it finished."
        )

    def test_a_build_whose_terminal_hangs_up_cleans_up_and_exits_129(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """A build run at an SSH prompt whose connection dropped got SIGHUP and died at once,
        leaving its MLflow run RUNNING and Prefect's temporary server behind; once SIGHUP
        unwound it, its progress bar's next write to the closed terminal failed (EIO) and it
        exited 1. Now it cleans up as under SIGTERM and exits 129."""
        import pty
        import select

        home = tmp_path / "home"
        env = clean_env(home, OMP_NUM_THREADS="1", TERM="xterm")
        spec = write_spec(tmp_path, sst2_dir, name="hungup", train__max_steps=300)
        terminal, its_end = pty.openpty()
        # as a login shell's child: a session of its own, whose controlling terminal this is
        command = [str(Path(sys.executable).parent / "adapterops"), "build", str(spec)]
        process = subprocess.Popen(
            [sys.executable, "-c", _ON_ITS_OWN_TERMINAL, *command],
            stdin=its_end, stdout=its_end, stderr=its_end, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
        os.close(its_end)
        shown, deadline = b"", time.monotonic() + 300
        while b"/300" not in shown and time.monotonic() < deadline:  # training under way
            if select.select([terminal], [], [], 1)[0]:
                try:
                    shown += os.read(terminal, 65536)
                except OSError:  # EIO: the build ended (failed) and closed its side
                    break
        assert b"/300" in shown, shown[-3000:]
        assert processes_with(f"PREFECT_HOME={home / 'prefect'}") != []
        os.close(terminal)  # the connection drops: the kernel sends the session SIGHUP
        assert process.wait(timeout=120) == 129
        assert processes_with(f"PREFECT_HOME={home / 'prefect'}") == []
        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        [run] = client.search_runs([client.get_experiment_by_name("adapterops").experiment_id])
        assert (run.info.status, run.data.tags["adapterops.error"]) == (
            "KILLED",
            "stopped by SIGHUP",
        )

    def test_a_temporary_server_a_killed_build_left_is_stopped_by_the_next_command(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """``kill -9`` (the out-of-memory killer: when memory is short) leaves no time to stop
        Prefect's temporary server: it ran on, orphaned, one more after every kill. The next
        flow command stops it, says so, and ends the killed build's MLflow run (another spec:
        its own build key never comes back)."""
        home = tmp_path / "home"
        env = clean_env(home)
        killed = write_spec(tmp_path, sst2_dir, name="killed", train__max_steps=300)
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "adapterops"), "build", str(killed)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("killed: step 1/300"):
                break
        process.kill()
        process.wait(timeout=60)
        [orphan] = processes_with(f"PREFECT_HOME={home / 'prefect'}")  # the server, running on
        assert psutil.Process(int(orphan)).ppid() != process.pid

        result = run_cli("build", str(write_spec(tmp_path, sst2_dir, name="next")), env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stderr.splitlines()
        assert lines[:2] == [
            f"next: stopped a temporary Prefect server (pid {orphan}) that a killed command "
            "had left running",
            "next: start a temporary Prefect server (PREFECT_API_URL is not set)",
        ]
        assert any(
            line.startswith("next: MLflow run ") and "of a killed build of killed" in line
            for line in lines
        )
        assert processes_with(f"PREFECT_HOME={home / 'prefect'}") == []

    def test_second_build_reuses_the_version(self, tmp_path: Path, sst2_dir: Path):
        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
        spec = write_spec(tmp_path, sst2_dir, name="cli-build")
        first = run_cli("build", str(spec), "--json", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        second = run_cli("build", str(spec), "--json", env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        one, two = json.loads(first.stdout), json.loads(second.stdout)
        assert (one["reused"], two["reused"]) == (False, True)
        assert one["ref"] == two["ref"] == "cli-build@1"
        assert (two["alias"], two["promoted"], two["metrics"]) == ("champion", True, one["metrics"])
        # the CLI found the earlier build itself: no second flow run (nor a Prefect start-up)
        assert len(flow_runs(f"build {spec.resolve()}")) == 1
        # a dry run says so too, and that a changed spec would train; neither starts a flow
        planned = run_cli("build", str(spec), "--dry-run", env=env, cwd=tmp_path)
        assert (planned.returncode, planned.stdout) == (0, (
            "cli-build: inputs checked; built before from this spec, data and code: cli-build@1\n"
        ))  # fmt: skip
        changed = run_cli(
            "build", str(spec), "--dry-run", "--set", "train.max_steps=3", "--json",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert changed.returncode == 0, changed.stderr[-3000:]
        assert json.loads(changed.stdout) == {
            "ok": True, "dry_run": True, "name": "cli-build", "would": "train", "ref": "",
        }  # fmt: skip
        assert len(flow_runs(f"build {spec.resolve()}")) == 1
        # an alias the gate would move, differing only by case from one held: refused before
        # a flow runs (it was refused at the promotion, after the training)
        cased = run_cli(
            "build", str(spec), "--set", "train.max_steps=3", "--set", "promote.alias=Champion",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert (cased.returncode, cased.stderr.splitlines()[-1]) == (2, (
            "error: the spec's promote.alias: alias 'Champion': adapter 'cli-build' already has "
            "the alias 'champion', which differs only by case, and MLflow's UI lowercases "
            "aliases; use 'champion' (or remove it first)"
        ))  # fmt: skip
        assert len(flow_runs(f"build {spec.resolve()}")) == 1
        # a spec whose adapter name is bound to another task: refused before a flow runs too
        # (it trained, then the registration refused it)
        topic = run_cli("build", str(spec), "--set", "task=topic", env=env, cwd=tmp_path)
        assert (topic.returncode, topic.stderr.splitlines()[-1]) == (2, (
            "error: adapter 'cli-build' is registered for base model "
            "'sentence-transformers/all-MiniLM-L6-v2', task 'sst2', language 'en', method "
            "'lora'; this spec is for 'sentence-transformers/all-MiniLM-L6-v2', 'topic', 'en', "
            "'lora'. Use another adapter name (or, if its versions were pushed under the wrong "
            "ones, remove them all with adapterops rm cli-build@VERSION, and the name takes "
            "the new ones)."
        ))  # fmt: skip
        assert len(flow_runs(f"build {spec.resolve()}")) == 1

    def test_retrain_reports_each_spec_and_exits_1_if_one_failed(
        self, tmp_path: Path, sst2_dir: Path
    ):
        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
        good = write_spec(tmp_path, sst2_dir, name="good")
        write_spec(tmp_path, sst2_dir, name="broken", base_model="no/such-model")
        typo = run_cli("retrain", str(good), "specs/good.yml", env=env, cwd=tmp_path)
        assert (typo.returncode, typo.stderr.strip()) == (
            2, "error: specs/good.yml: no such spec file or folder (nothing was built)"
        )  # fmt: skip
        # a folder stands for the specs in it (broken.yaml, good.yaml), as CI passes specs/
        result = run_cli("retrain", str(tmp_path), "--json", env=env, cwd=tmp_path)
        assert result.returncode == 1, result.stderr[-3000:]
        outcomes = {Path(o["spec"]).stem: o for o in json.loads(result.stdout)["outcomes"]}
        assert outcomes["broken"]["status"] == "failed"
        assert "unknown base model 'no/such-model'" in outcomes["broken"]["reason"]
        assert (outcomes["good"]["status"], outcomes["good"]["ref"]) == ("built", "good@1")
        assert list(outcomes) == ["broken", "good"]

        # in a log (no terminal): each spec's progress as plain lines, then the table
        again = run_cli("retrain", str(good), env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.splitlines() == ["good: check what changed", "good: up to date"]
        assert "up to date" in again.stdout
        document = yaml.safe_load(good.read_text())
        document["train"]["max_steps"] = 4
        good.write_text(yaml.safe_dump(document))
        # a dry run says what is due and why, and builds nothing (no flow run, no version)
        runs_before = len(flow_runs(f"build {good.resolve()}"))
        planned = run_cli("retrain", str(tmp_path), "--dry-run", "--json", env=env, cwd=tmp_path)
        assert planned.returncode == 1, planned.stderr[-3000:]  # broken.yaml still fails
        answers = {Path(o["spec"]).stem: o for o in json.loads(planned.stdout)["outcomes"]}
        assert (answers["good"]["status"], answers["good"]["reason"]) == ("due", "spec changed")
        assert answers["good"]["ref"] == "good@1"  # the newest version, which a build replaces
        assert (answers["broken"]["status"], answers["broken"]["name"]) == ("failed", "broken")
        assert "unknown base model 'no/such-model'" in answers["broken"]["reason"]
        assert len(flow_runs(f"build {good.resolve()}")) == runs_before
        listed = run_cli("ls", "good", "--json", env=env, cwd=tmp_path)
        assert [v["version"] for v in json.loads(listed.stdout)] == [1]
        changed = run_cli("retrain", str(good), env=env, cwd=tmp_path)
        assert changed.returncode == 0, changed.stderr[-3000:]
        lines = changed.stderr.splitlines()
        assert lines[:3] == [
            "good: check what changed",
            "good: find earlier build",
            "good: prepare data",
        ]
        assert "good: step 4/4 (100%) loss " in changed.stderr and lines[-1] == "good: built"
        assert "good@2" in changed.stdout and "spec changed" in changed.stdout


def finished_flow_run(flow_run_id: UUID, timeout: float = 300) -> Any:
    """The flow run, read from the Prefect server once its state is final."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.state_name}"
            time.sleep(1)


def run_logs(flow_run_id: UUID) -> list[str]:
    """The log lines flow run ``flow_run_id`` sent to the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in found]


_FLOW_THAT_SENDS_HEARTBEATS = """
import sys, time
from prefect import flow

@flow(name=sys.argv[1])
def waits() -> None:
    time.sleep(600)

waits()
"""


class TestDeploy:
    def test_a_run_whose_process_died_unseen_is_crashed_once_its_heartbeats_stop(
        self, tmp_path: Path, sst2_dir: Path
    ):
        """A deployed build whose machine is lost (an evicted pod, a worker that died with
        it) reports nothing: Prefect showed it Running for ever. ``deploy`` creates, once per
        server, an automation that sets Crashed a run of these flows whose heartbeats stopped;
        another team's flow on the same server is left alone. Its own server: the automation
        is server-wide, and shortened here."""
        from datetime import timedelta

        from prefect.client.orchestration import get_client
        from prefect.events.filters import EventFilter, EventNameFilter
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.unresponsive_runs import AUTOMATION_NAME, ensure_heartbeat_automation
        from infra.stack import free_port

        server = PrefectServer(
            port=free_port(), home=tmp_path / "server", log=tmp_path / "server.log", ui=False
        )
        server.start()
        flows: list[subprocess.Popen[bytes]] = []
        try:
            env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": server.api_url}
            spec = write_spec(tmp_path, sst2_dir, name="lost")
            created = []
            # deployed again: the automation is there already, the same in another process
            # (whose sets, such as the trigger's events, list in another order)
            for seed in ("1", "2"):
                result = run_cli("deploy", str(spec), "--pool", "p", "--json", env={**env, "PYTHONHASHSEED": seed})  # fmt: skip
                assert result.returncode == 0, result.stderr[-3000:]
                created.append(json.loads(result.stdout)["heartbeat_automation"])
            assert created == [
                {"name": AUTOMATION_NAME, "created": True, "updated": False},
                {"name": AUTOMATION_NAME, "created": False, "updated": False},
            ]
            with temporary_settings({PREFECT_API_URL: server.api_url}):

                def watching() -> tuple[timedelta, bool]:
                    with get_client(sync_client=True) as client:
                        [automation] = client.read_automations_by_name(AUTOMATION_NAME)
                    return automation.trigger.within, automation.enabled

                assert watching() == (timedelta(seconds=600), True)
                # one defined otherwise (by an older version) is brought up to date, still one;
                # one a person turned off stays off
                with get_client(sync_client=True) as client:
                    [automation] = client.read_automations_by_name(AUTOMATION_NAME)
                    client.pause_automation(automation.id)
                assert ensure_heartbeat_automation(silent_seconds=36) == "updated"
                assert watching() == (timedelta(seconds=36), False)
                with get_client(sync_client=True) as client:
                    client.resume_automation(automation.id)
                assert ensure_heartbeat_automation(silent_seconds=35) == "updated"
                assert watching() == (timedelta(seconds=35), True)
                assert ensure_heartbeat_automation(silent_seconds=35) == "unchanged"

                running = {**env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
                for name in ("build", "nightly-etl"):  # ours, and another team's
                    command = [sys.executable, "-c", _FLOW_THAT_SENDS_HEARTBEATS, name]
                    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                    flows.append(subprocess.Popen(command, env=running, **quiet))

                def states() -> dict[str, Any]:  # of the two runs (not the deployments')
                    with get_client(sync_client=True) as client:
                        return {
                            client.read_flow(run.flow_id).name: run.state
                            for run in client.read_flow_runs()
                            if run.deployment_id is None
                        }

                def beating() -> int:  # how many runs sent a heartbeat (events go in batches)
                    named = EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]))
                    with get_client(sync_client=True) as client:
                        page = client.read_events(named, limit=50)
                    return len({event.resource.id for event in page.events})

                wait_until(lambda: beating() == 2, timeout=120, what="both runs' heartbeats")
                assert [state.name for state in states().values()] == ["Running"] * 2
                for process in flows:  # the machine lost: nothing is reported
                    process.kill()
                    process.wait(timeout=30)
                wait_until(
                    lambda: states()["build"].name == "Crashed", timeout=240,
                    what="the build's run set Crashed",
                )  # fmt: skip
                assert states()["build"].message.startswith("no heartbeat for 35 s: its process")
                time.sleep(15)  # as long again as the automation took after its window
                assert states()["nightly-etl"].name == "Running"
        finally:
            for process in flows:
                process.kill()
            server.stop()

    def test_a_base_folder_the_runs_would_not_find_is_refused_before_anything_is_deployed(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """A deployment's runs start in the project's folder: a relative base_model found from
        the folder deploy ran in would fail every run, on the worker, at its first cron."""
        from prefect.client.orchestration import get_client

        from tests.helpers import minilm_path

        (tmp_path / "minilm").symlink_to(minilm_path())
        spec = write_spec(tmp_path, sst2_dir, name="near-base", base_model="minilm")
        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": prefect_server.api_url}
        result = run_cli("deploy", str(spec), "--pool", "near-pool", env=env, cwd=tmp_path)
        root = Path(__file__).resolve().parents[2]
        assert (result.returncode, result.stderr) == (2, (
            f"error: {spec}: base_model: 'minilm' is a folder relative to {tmp_path}, but a "
            f"deployment's runs start in {root}, which has none: write its absolute path, "
            f"{minilm_path().resolve()}\n"
        )), result.stderr  # fmt: skip
        with get_client(sync_client=True) as client:
            names = {d.name for d in client.read_deployments()}
        assert "near-base" not in names

    def test_a_spec_whose_adapter_name_is_bound_elsewhere_is_refused_before_anything_is_deployed(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """Every run of its deployment would be refused at the registry (before training, on the
        worker, at each cron): said by deploy instead."""
        from prefect.client.orchestration import get_client

        from registry import Registry
        from tests.registry.workers import write_fake_adapter

        home = tmp_path / "h"
        registry = Registry(f"sqlite:///{home / 'registry.db'}", (home / "artifacts").as_uri())
        where = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "language": "en"}
        adapter = write_fake_adapter(tmp_path / "adapter", 1)
        registry.register(adapter, name="bound", task="topic", **where)
        registry.close()
        spec = write_spec(tmp_path, sst2_dir, name="bound")
        env = {**clean_env(home), "PREFECT_API_URL": prefect_server.api_url}
        result = run_cli("deploy", str(spec), "--pool", "bound-pool", env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (2, (
            "error: adapter 'bound' is registered for base model "
            "'sentence-transformers/all-MiniLM-L6-v2', task 'topic', language 'en', method "
            f"'lora'; {spec} is for 'sentence-transformers/all-MiniLM-L6-v2', 'sst2', 'en', "
            "'lora'. Use another adapter name (or, if its versions were pushed under the wrong "
            "ones, remove them all with adapterops rm bound@VERSION, and the name takes the "
            "new ones).\n"
        )), result.stderr  # fmt: skip
        with get_client(sync_client=True) as client:
            names = {d.name for d in client.read_deployments()}
        assert "bound" not in names
        # two specs of one adapter name: the second deployment replaced the first
        twice = tmp_path / "twice"
        twice.mkdir()
        copy = twice / spec.name
        copy.write_text(spec.read_text().replace("task: sst2", "task: topic"))
        result = run_cli("deploy", str(spec), str(copy), "--pool", "bound-pool", env=env)
        assert (result.returncode, result.stderr) == (2, (
            f"error: {spec}: name: adapter 'bound' is built by {copy} too: each run would build "
            "it from each spec in turn (a version apiece, its champion moving back and forth); "
            "give each spec a name of its own\n"
        )), result.stderr  # fmt: skip

    def test_heartbeats_rarer_than_the_automation_allows_are_refused_and_warned_of(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """Runs that send a heartbeat every 900 s would be set Crashed, alive, after 600 s of
        silence: deploy refuses to give its runs that, and a command whose flows run on the
        server says so."""
        spec = write_spec(tmp_path, sst2_dir, name="rare")
        env = {
            **clean_env(tmp_path / "h"), "PREFECT_API_URL": prefect_server.api_url,
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "900",
        }  # fmt: skip
        problem = (
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY='900': flow runs send a heartbeat that often, and "
            "the automation `adapterops deploy` creates sets Crashed a run silent for 600 s: set "
            "it to 30 to 150 seconds, or unset it (60)"
        )
        result = run_cli("deploy", str(spec), "--pool", "rare-pool", env=env)
        assert (result.returncode, result.stderr) == (2, f"error: {problem}; nothing was deployed\n")  # fmt: skip
        # retrain of a spec that cannot build (its data gone): the flow runs, and fails fast
        spec.write_text(spec.read_text().replace("train.tsv", "gone.tsv"))
        result = run_cli("retrain", str(spec), env=env)
        assert result.returncode == 1, result.stderr[-2000:]
        assert result.stderr.startswith(
            f"warning: {problem}; this command's flow runs could be set Crashed while they work\n"
        ), result.stderr[-2000:]

    def test_without_a_prefect_server_is_a_clear_error(self, tmp_path: Path, sst2_dir: Path):
        spec = write_spec(tmp_path, sst2_dir)
        result = run_cli("deploy", str(spec), env=clean_env(tmp_path / "h"))
        assert result.returncode == 2
        assert "set PREFECT_API_URL" in result.stderr and "Traceback" not in result.stderr

    def test_a_pool_name_prefect_refuses_is_one_line(self, tmp_path: Path, sst2_dir: Path):
        """`--pool bad/name` ended in pydantic's ValidationError, `--pool ""` in a 405 (exit
        1); said before the specs load, or any server is asked."""
        spec = write_spec(tmp_path, sst2_dir)
        for pool, why in (("bad/name", "has /"), ("", "is empty"), ("a&b>c", "has & >")):
            refused = run_cli("deploy", str(spec), "--pool", pool, env=clean_env(tmp_path / "h"))
            assert (refused.returncode, refused.stderr) == (
                2,
                f"error: work pool name {pool!r} {why}: Prefect takes a name without / % & > < "
                "(for example --pool staging); nothing was deployed\n",
            )

    def test_deploys_creating_one_new_pool_at_once_all_succeed(self, prefect_server: PrefectServer):
        """Two CI jobs deploying to a new pool at once: each found no pool and created it, and
        the later failed with Prefect's bare ObjectAlreadyExists (10 of 20 calls in 5 rounds
        of 4 at once). Now the pool another created meanwhile is the one used."""
        import contextvars
        import threading

        from prefect.client.orchestration import get_client

        from flows.deploy_job import ensure_pool

        failures: list[str] = []
        for round_ in range(5):
            start = threading.Barrier(4)

            def deploy(context: contextvars.Context, pool: str, start: threading.Barrier) -> None:
                try:
                    start.wait()
                    context.run(ensure_pool, pool)  # Prefect's settings live in the context
                except Exception as exc:  # said below, in the test's thread
                    failures.append(f"{type(exc).__name__}: {exc}")

            racing = [
                threading.Thread(
                    target=deploy,
                    args=(contextvars.copy_context(), f"new-pool-{round_}", start),
                )
                for _ in range(4)
            ]
            for thread in racing:
                thread.start()
            for thread in racing:
                thread.join(60)
        assert failures == []
        with get_client(sync_client=True) as client:
            pools = {p.name: p.type for p in client.read_work_pools()}
        assert {name: pools.get(name) for name in (f"new-pool-{n}" for n in range(5))} == {
            f"new-pool-{n}": "process" for n in range(5)
        }

    def test_a_server_that_refuses_the_credentials_is_one_line(
        self, tmp_path: Path, sst2_dir: Path, service_dir: Path
    ):
        """A Prefect server started with PREFECT_SERVER_API_AUTH_STRING: deploy and build failed
        with Prefect's bare PrefectHTTPStatusError (exit 1), saying nothing of what to set."""
        from infra.stack import free_port

        server = PrefectServer(
            port=free_port(), home=tmp_path / "prefect", log=service_dir / "prefect-auth.log",
            ui=False, auth_string="admin:a-long-password-7",
        )  # fmt: skip
        server.start()
        try:
            env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": server.api_url}
            spec = write_spec(tmp_path, sst2_dir, name="guarded")
            expected = (
                f"error: Prefect at {server.api_url} refused this client (401 Unauthorized): set "
                "PREFECT_API_AUTH_STRING to the user:password its server was started with "
                "(PREFECT_SERVER_API_AUTH_STRING), or PREFECT_API_KEY for Prefect Cloud\n"
            )
            for command in (("deploy", str(spec)), ("build", str(spec))):
                refused = run_cli(*command, env=env)
                assert (refused.returncode, refused.stderr) == (2, expected), command
            assert not (tmp_path / "h" / "registry.db").exists()  # the build started nothing
            logged_in = {**env, "PREFECT_API_AUTH_STRING": "admin:a-long-password-7"}
            deployed = run_cli("deploy", str(spec), "--sync-every", "0", env=logged_in)
            assert deployed.returncode == 0, deployed.stderr[-3000:]
        finally:
            server.stop()

    def test_a_server_whose_database_is_down_is_one_line(
        self, tmp_path: Path, sst2_dir: Path, service_dir: Path
    ):
        """The Prefect server's PostgreSQL stopped: it still answers /health and `hello`, then
        500 to the flow run's start: Prefect's bare PrefectHTTPStatusError (exit 1) for a build,
        naming /api/flows/ and nothing to check."""
        from infra.stack import free_port
        from infra.stack.postgres import PostgresServer

        database = PostgresServer(service_dir / "prefect-down-postgres", free_port())
        database.start()
        server = PrefectServer(
            port=free_port(), home=tmp_path / "prefect", log=service_dir / "prefect-down.log",
            ui=False, database_url=database.url("postgres").replace("+psycopg", "+asyncpg"),
        )  # fmt: skip
        try:
            server.start()
            database.stop()
            env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": server.api_url}
            spec = write_spec(tmp_path, sst2_dir, name="prefect-down")
            for command in ("build", "deploy"):
                refused = run_cli(command, str(spec), env=env)
                assert (refused.returncode, refused.stderr) == (
                    2,
                    f"error: Prefect at {server.api_url} runs but cannot answer now (500 "
                    "Internal Server Error on /api/flows/filter): the database it keeps flow "
                    "runs in (the server's PREFECT_API_DATABASE_CONNECTION_URL) is likely down "
                    "or unreachable from it; check that database and the Prefect server's log\n",
                ), command
            assert not (tmp_path / "h" / "registry.db").exists()  # nothing started
        finally:
            server.stop()
            if database.running:
                database.stop()

    def test_the_servers_address_without_its_api_is_one_line(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """PREFECT_API_URL without /api (the UI's address): Prefect's bare 404 error, exit 1."""
        root = prefect_server.api_url.removesuffix("/api")
        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": root}
        refused = run_cli("deploy", str(write_spec(tmp_path, sst2_dir)), env=env)
        assert (refused.returncode, refused.stderr) == (
            2,
            f"error: no Prefect API answers at {root} (404 Not Found): PREFECT_API_URL is the "
            f"server's address followed by /api ({root}/api?)\n",
        )

    def test_another_checkouts_deployment_of_the_same_name_is_not_taken_over(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """Staging deploying beside production on one Prefect server: Prefect updated
        production's build/NAME in place, onto staging's pool and spec, without a word."""
        from prefect.client.orchestration import get_client

        env = {**clean_env(tmp_path / "h"), "PREFECT_API_URL": prefect_server.api_url}
        for checkout in ("production", "staging"):
            (tmp_path / checkout).mkdir()
        production = write_spec(tmp_path / "production", sst2_dir, name="shared-en")
        staging = write_spec(tmp_path / "staging", sst2_dir, name="shared-en")
        deploy = ("deploy", "--sync-every", "0", "--json")
        from prefect.client.schemas.actions import WorkPoolUpdate

        first = run_cli(*deploy, "--pool", "prod-pool", str(production), env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        moving = run_cli("deploy", "--pool", "gpu-pool", str(production), env=env)
        assert (moving.returncode, moving.stderr) == (
            2,
            "error: deployment build/shared-en already runs on work pool 'prod-pool' for this "
            "registry from this spec file: pass --replace to move it to pool 'gpu-pool'; "
            "nothing was deployed\n",
        )
        with get_client(sync_client=True) as client:  # an operator paused it, and forgot
            client.update_work_pool("prod-pool", WorkPoolUpdate(is_paused=True))
        again = run_cli(*deploy, "--pool", "prod-pool", str(production), env=env)  # an update
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["pool"] == {"name": "prod-pool", "status": "PAUSED"}
        assert "warning: work pool 'prod-pool' is paused: nothing runs until `prefect work-pool resume prod-pool`" in again.stderr  # fmt: skip
        refused = run_cli(*deploy, "--pool", "staging-pool", str(staging), env=env)
        assert refused.returncode == 2
        answer = json.loads(refused.stdout)
        assert (answer["ok"], answer["kind"]) == (False, "OrchestrationError")
        assert answer["error"].startswith(
            f"deployment build/shared-en on the Prefect server at {prefect_server.api_url} runs "
            f"on work pool 'prod-pool' with spec {production.resolve()}; deploying to pool "
            f"'staging-pool' from {staging.resolve()} would take it from there (another "
            "registry's, or another checkout's?): give this spec another name, use a Prefect "
            "server of its own, or pass --replace"
        )
        same_pool = run_cli(*deploy, "--pool", "prod-pool", str(staging), env=env)
        assert same_pool.returncode == 2 and "--replace to move it here" in same_pool.stderr
        with get_client(sync_client=True) as client:
            stored = client.read_deployment_by_name("build/shared-en")
            assert (stored.work_pool_name, stored.parameters["spec_path"]) == (
                "prod-pool", str(production.resolve()),
            )  # fmt: skip
            assert "staging-pool" not in {p.name for p in client.read_work_pools()}
        moved = run_cli(*deploy, "--pool", "staging-pool", "--replace", str(staging), env=env)
        assert moved.returncode == 0, moved.stderr[-3000:]
        with get_client(sync_client=True) as client:
            assert client.read_deployment_by_name("build/shared-en").work_pool_name == (
                "staging-pool"
            )

    def test_a_pool_running_another_registrys_deployments_is_refused(
        self, tmp_path: Path, sst2_dir: Path, service_dir: Path
    ):
        """Staging deployed into production's work pool (`--pool` forgotten): the pool's worker,
        with production's settings, built staging's spec into production's registry and made it
        champion there, without a word. Now refused at deploy; a pool of its own works, with a
        sync deployment of its own (the second registry on a server had to go without one).
        `--prune` removes the deployment of a spec no longer deployed (its runs failed, `no
        such file`), and only this registry's."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from infra.stack import free_port

        server = PrefectServer(
            port=free_port(), home=tmp_path / "prefect", log=service_dir / "prefect-pools.log",
            ui=False,
        )  # fmt: skip
        server.start()
        try:
            env, spec, identity = {}, {}, {}
            for registry in ("production", "staging"):
                (tmp_path / registry).mkdir()
                home = tmp_path / registry / "home"
                env[registry] = {**clean_env(home), "PREFECT_API_URL": server.api_url}
                spec[registry] = write_spec(tmp_path / registry, sst2_dir, name=f"{registry}-en")
            assert run_cli("db", "upgrade", env=env["production"]).returncode == 0
            retired = write_spec(tmp_path / "production", sst2_dir, name="retired-en")
            deployed = run_cli(
                "deploy", str(spec["production"]), str(retired), env=env["production"]
            )
            assert deployed.returncode == 0, deployed.stderr[-3000:]
            status = run_cli("db", "status", "--json", env=env["production"])
            identity["production"] = json.loads(status.stdout)["identity"]
            refused = run_cli("deploy", str(spec["staging"]), env=env["staging"])
            staging_db = tmp_path / "staging" / "home" / "registry.db"
            assert (refused.returncode, refused.stderr) == (
                2,
                f"error: work pool 'adapterops' on the Prefect server at {server.api_url} runs "
                f"deployments made for registry {identity['production']} (build/production-en, "
                "build/retired-en, sync/aliases), not the one this environment names (not created yet at "
                f"sqlite:///{staging_db}): its worker would build one registry's specs into the "
                "other's. Deploy to a work pool of its own (--pool NAME, then `prefect worker "
                "start --pool NAME` where this registry's settings are); nothing was deployed\n",
            )
            assert not staging_db.exists()
            own_pool = ("deploy", str(spec["staging"]), "--pool", "staging", "--json")
            for _ in range(2):  # deployed again: updated, not a second sync
                separate = run_cli(*own_pool, env=env["staging"])
                assert separate.returncode == 0, separate.stderr[-3000:]
                names = [d["name"] for d in json.loads(separate.stdout)["deployments"]]
                assert names == ["build/staging-en", "sync/aliases-staging"]
            status = run_cli("db", "status", "--json", env=env["staging"])
            identity["staging"] = json.loads(status.stdout)["identity"]
            pruned = run_cli(
                "deploy", str(spec["production"]), "--prune", "--json", env=env["production"]
            )
            answer = json.loads(pruned.stdout)
            names = [d["name"] for d in answer["deployments"]]
            assert (names, answer["removed"]) == (
                ["build/production-en", "sync/aliases"], ["build/retired-en"],
            )  # fmt: skip
            with (
                temporary_settings({PREFECT_API_URL: server.api_url}),
                get_client(sync_client=True) as client,
            ):
                found = client.read_deployments()
            stored = {
                f"{d.entrypoint.rpartition(':')[2]}/{d.name}": (
                    d.work_pool_name,
                    d.parameters["for_registry"],
                )
                for d in found
            }
            assert stored == {
                "build/production-en": ("adapterops", identity["production"]),
                "sync/aliases": ("adapterops", identity["production"]),
                "build/staging-en": ("staging", identity["staging"]),
                "sync/aliases-staging": ("staging", identity["staging"]),
            }
        finally:
            server.stop()

    def test_deployments_made_before_a_registry_moved_in_are_replaced(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """`db move` into a registry that had deployments gives it the moved registry's id: the
        deployments name the old one, so a deploy is refused as another registry's pool, and
        `--replace` (as the README says) makes them this registry's."""
        from tests.registry.workers import write_fake_adapter

        server_home, laptop = tmp_path / "server-home", tmp_path / "laptop-home"
        spec = write_spec(tmp_path, sst2_dir, name="moved-in-en")
        env = {**clean_env(server_home), "PREFECT_API_URL": prefect_server.api_url}
        assert run_cli("db", "upgrade", env=env).returncode == 0
        # no sync deployment: the server is shared, and its sync/aliases name is the first's
        deploy = ("deploy", str(spec), "--pool", "moved-pool", "--sync-every", "0", "--json")
        assert run_cli(*deploy, env=env).returncode == 0
        assert run_cli("push", str(write_fake_adapter(tmp_path / "a", 1)), "--name", "a",
                       "--base-model", "b", "--task", "t", "--language", "en",
                       env=clean_env(laptop)).returncode == 0  # fmt: skip
        moved = run_cli("db", "move", "--to", f"sqlite:///{server_home / 'registry.db'}",
                        "--artifacts", str(server_home / "artifacts"), "--json",
                        env=clean_env(laptop))  # fmt: skip
        identity = json.loads(moved.stdout)["identity"]

        refused = run_cli(*deploy, env=env)
        assert refused.returncode == 2 and "runs deployments made for registry" in refused.stderr
        replaced = run_cli(*deploy, "--replace", env=env)

        assert replaced.returncode == 0, replaced.stderr[-3000:]
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: prefect_server.api_url}),
            get_client(sync_client=True) as client,
        ):
            ours = [d for d in client.read_deployments() if d.work_pool_name == "moved-pool"]
        assert [d.name for d in ours] == ["moved-in-en"]
        assert {d.parameters["for_registry"] for d in ours} == {identity}

    def test_a_worker_of_another_registry_runs_nothing(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        """A worker whose settings name another registry than the deployment was made for (a
        wrong ADAPTEROPS_HOME, or another registry's worker on the pool): the run built into
        the worker's registry. Now it fails before anything is built, saying which is which."""
        from prefect.deployments import run_deployment

        deployer, other = tmp_path / "deployer-home", tmp_path / "worker-home"
        spec = write_spec(tmp_path, sst2_dir, name="wrong-worker-en")
        env = {**clean_env(deployer), "PREFECT_API_URL": prefect_server.api_url}
        assert run_cli("db", "upgrade", env=env).returncode == 0
        deployed = run_cli("deploy", str(spec), "--pool", "mixed-pool", "--sync-every", "0", env=env)  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        expected = json.loads(run_cli("db", "status", "--json", env=env).stdout)["identity"]
        assert run_cli("db", "upgrade", env=clean_env(other)).returncode == 0
        theirs = json.loads(run_cli("db", "status", "--json", env=clean_env(other)).stdout)
        worker = PrefectWorker(
            pool="mixed-pool", api_url=prefect_server.api_url, home=other / "prefect",
            log=tmp_path / "worker.log", env={"ADAPTEROPS_HOME": str(other), "HF_HUB_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{other / 'mlflow.db'}", **QUICK_POLLS},
        )  # fmt: skip
        worker.start()
        try:
            run = finished_flow_run(run_deployment("build/wrong-worker-en", timeout=0).id)
        finally:
            worker.stop()
        assert run.state.is_failed(), (tmp_path / "worker.log").read_text()[-3000:]
        assert (
            f"build/wrong-worker-en was deployed for registry {expected}, but this worker's "
            f"settings name registry {theirs['identity']} at sqlite:///{other / 'registry.db'}: "
            "nothing was run. A worker runs every deployment of its work pool against its own "
            "registry: give each registry a work pool of its own"
        ) in run.state.message
        for home in (deployer, other):
            listed = run_cli("ls", "--json", env=clean_env(home))
            assert (listed.returncode, json.loads(listed.stdout)) == (0, [])

    def test_a_worker_runs_the_scheduled_deployment(
        self, tmp_path: Path, sst2_dir: Path, prefect_server: PrefectServer
    ):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import ConcurrencyLimitStrategy
        from prefect.deployments import run_deployment

        home = tmp_path / "worker-home"
        env = {**clean_env(home), "PREFECT_API_URL": prefect_server.api_url}
        mlflow_uri = f"sqlite:///{home / 'mlflow.db'}"  # the embedded default under home
        spec = write_spec(tmp_path, sst2_dir, name="nightly-en", schedule={"cron": "0 3 * * *"})
        result = run_cli("deploy", str(spec), "--pool", "test-pool", "--json", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        # no worker yet: the runs would wait, shown as Late, with no word anywhere
        assert json.loads(result.stdout)["pool"] == {"name": "test-pool", "status": "NOT_READY"}
        # the one line on stderr: Prefect's own table per deployment no longer goes there
        assert result.stderr.startswith(
            "warning: no worker polls work pool 'test-pool' now: its runs wait until one does "
            "(`prefect worker start --pool test-pool` where the registry's settings are;"
        ), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        deployment, syncing = json.loads(result.stdout)["deployments"]
        assert deployment["name"] == "build/nightly-en"
        assert (syncing["name"], syncing["interval"]) == ("sync/aliases", 300)

        with get_client(sync_client=True) as client:
            stored = client.read_deployment_by_name("build/nightly-en")
            assert stored.work_pool_name == "test-pool"
            assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * *"]
            # one build of a spec at a time (the next waits); a sync that collides is dropped
            assert (stored.global_concurrency_limit.limit, stored.concurrency_options.collision_strategy) == (1, ConcurrencyLimitStrategy.ENQUEUE)  # fmt: skip
            # its runs send heartbeats however the worker was started (a plain `prefect worker
            # start` sends none): the lost-machine automation watches them
            heartbeats = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}}
            assert stored.job_variables == heartbeats
            stored = client.read_deployment_by_name("sync/aliases")
            assert [s.schedule.interval.total_seconds() for s in stored.schedules] == [300]
            assert stored.job_variables == heartbeats
            assert (stored.global_concurrency_limit.limit, stored.concurrency_options.collision_strategy) == (1, ConcurrencyLimitStrategy.CANCEL_NEW)  # fmt: skip

        # the schedule edited in the spec after deploying: the deployment keeps its cron, and
        # the runs said nothing of it
        edited = yaml.safe_load(spec.read_text()) | {"schedule": {"cron": "0 4 * * *"}}
        spec.write_text(yaml.safe_dump(edited))
        worker = PrefectWorker(
            pool="test-pool", api_url=prefect_server.api_url, home=home / "prefect",
            log=tmp_path / "worker.log", env={"ADAPTEROPS_HOME": str(home), "HF_HUB_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": mlflow_uri, **QUICK_POLLS},  # not one an earlier test exported
        )  # fmt: skip
        worker.start()
        try:
            # two runs at once (a build outlasting its cron): the second waits for the first,
            # then finds its build instead of training the spec again beside it
            started = [run_deployment("build/nightly-en", timeout=0) for _ in range(2)]
            runs = [finished_flow_run(r.id) for r in started]
            assert all(r.state.is_completed() for r in runs), (tmp_path / "worker.log").read_text()[-3000:]  # fmt: skip
            earlier, later = sorted(runs, key=lambda r: r.start_time)
            assert later.start_time >= earlier.end_time
            drift = (
                "build/nightly-en runs on 0 3 * * *, but its spec now says 0 4 * * *: run "
                f"`adapterops deploy {spec.resolve()}` to apply it"
            )
            wait_until(lambda: drift in run_logs(earlier.id), "the run's warning to reach Prefect")
            # a reviewer moves an alias in the MLflow UI; the scheduled sync brings it over
            reviewers = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
            reviewers.set_registered_model_alias("nightly-en", "staging", "1")
            synced = run_deployment("sync/aliases", timeout=300)
            assert synced.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
            again = run_cli("deploy", str(spec), "--pool", "test-pool", "--json", env=env)
            assert json.loads(again.stdout)["pool"]["status"] == "READY"
            assert "warning" not in again.stderr, again.stderr
        finally:
            worker.stop()
        listed = run_cli("ls", "--json", env=clean_env(home))
        assert [(v["ref"], v["aliases"]) for v in json.loads(listed.stdout)] == [
            ("nightly-en@1", ["champion", "staging"])
        ]


class TestTorchrun:
    def test_two_processes_train_one_adapter_with_ddp(self, tmp_path: Path, sst2_dir: Path):
        spec = write_spec(tmp_path, sst2_dir, name="ddp")
        command = [
            str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
            str(Path(sys.executable).parent / "adapterops"),
            "train", str(spec), "--out", str(tmp_path / "out"), "--json",
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False,
            env={**clean_env(tmp_path / "h"), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == 1  # rank 0 reports, rank 1 stays quiet
        report = json.loads(lines[0])
        assert (report["world_size"], report["device"], report["steps"]) == (2, "cpu", 6)
        saved = yaml.safe_load((tmp_path / "out" / "report.json").read_text())
        assert saved["world_size"] == 2 and time.monotonic() - started < 300
