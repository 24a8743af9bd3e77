"""Several processes registering versions of one adapter at once get distinct, consecutive numbers
and lose nothing — on SQLite and on PostgreSQL. Real processes, real servers."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from registry import Registry
from tests.registry.conftest import EVERY_SERVER
from tests.registry.workers import gate_once, register_many, write_fake_adapter

PROCESSES, EACH = 4, 5


@EVERY_SERVER
def test_concurrent_registrations(locations, tmp_path):
    database_url, artifacts_url = locations
    Registry(database_url, artifacts_url).close()  # create and migrate before the race
    batches = [
        [str(write_fake_adapter(tmp_path / f"p{p}-{i}", seed=100 * p + i)) for i in range(EACH)]
        for p in range(PROCESSES)
    ]
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like separate jobs
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(
            register_many, [(database_url, artifacts_url, batch, "race") for batch in batches]
        )
    obtained = sorted(v for batch in results for v in batch)
    assert obtained == list(range(1, PROCESSES * EACH + 1))  # distinct and consecutive
    registry = Registry(database_url, artifacts_url)
    versions = registry.find(name="race")
    assert len(versions) == PROCESSES * EACH
    assert len({v.digest for v in versions}) == PROCESSES * EACH  # nothing lost or merged
    events = registry.history("race")
    assert sorted(e.version for e in events if e.kind == "registered") == obtained
    registry.close()


@EVERY_SERVER
def test_gates_of_one_adapter_weigh_one_after_the_other(locations, tmp_path):
    """Four gates at once, each reading the champion, pausing (a build re-evaluates it) and
    moving it if its candidate scores higher: under the alias lock every move beats the one
    before and the best candidate ends as champion. Without the lock all four read "no
    champion" and moved it, the last move winning whatever it scored."""
    database_url, artifacts_url = locations
    registry = Registry(database_url, artifacts_url)
    scores = [0.7, 0.9, 0.6, 0.8]  # registered in this order: versions 1 to 4
    for number, accuracy in enumerate(scores, start=1):
        registry.register(
            write_fake_adapter(tmp_path / f"v{number}", seed=number), name="gated",
            base_model="tiny-bert", task="sst2", language="en", metrics={"accuracy": accuracy},
        )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(scores)) as pool:
        moved = pool.starmap(
            gate_once,
            [(database_url, artifacts_url, f"gated@{n}", 0.5) for n in range(1, len(scores) + 1)],
        )
    assert registry.get("gated@champion").version == 2  # 0.9, the best
    moves = [e.version for e in registry.history("gated") if e.kind == "alias_set"]
    assert [scores[v - 1] for v in moves] == sorted(scores[v - 1] for v in moves)  # each better
    assert moved.count(True) == len(moves) and moved[1] is True
    registry.close()


def test_a_lock_file_where_nothing_can_be_written_leaves_the_work_to_say_so(tmp_path):
    """The MLflow store's and a SQLite registry's locks lie beside their files; where that
    folder cannot be written (a file in the way here; read-only elsewhere) the work runs
    without the lock, so the error a person reads is the work's own, not the lock's."""
    from registry.locks import file_lock_if_writable

    blocking = tmp_path / "a-file"
    blocking.write_text("")
    ran = []
    with file_lock_if_writable(blocking / "store.db.lock"):
        ran.append("without")
    with file_lock_if_writable(tmp_path / "locks" / "store.db.lock"):  # its folder made
        ran.append("with")
    assert ran == ["without", "with"] and (tmp_path / "locks" / "store.db.lock").exists()


def test_a_lock_held_elsewhere_is_said_once_before_waiting_for_it(locations):
    """A move by hand can wait minutes behind a gate re-evaluating an LLM champion: ``on_wait``
    is called once before waiting (the CLI's ``note:`` line), and not at all for a free lock."""
    import threading

    registry = Registry(*locations)
    holding, release = threading.Event(), threading.Event()
    said: list[str] = []

    def a_gate() -> None:
        with Registry(*locations).alias_lock("held"):
            holding.set()
            release.wait(60)

    with registry.alias_lock("free", on_wait=lambda: said.append("free")):
        pass
    with registry.composition_alias_lock("held", on_wait=lambda: said.append("composition")):
        pass  # a composition's lock is another lock than its namesake adapter's
    other = threading.Thread(target=a_gate)
    other.start()
    assert holding.wait(30)
    threading.Timer(1.0, release.set).start()
    with registry.alias_lock("held", on_wait=lambda: said.append("held")):
        assert release.is_set()  # taken only once the other let go
    other.join(60)
    assert said == ["held"]
    registry.close()


def test_a_lock_held_for_a_moment_is_taken_without_saying_it_waits(locations):
    """``Registry.building`` probes a build's lock by taking it and letting go at once: a build
    starting in that moment said "waiting for another build" and waited for nothing."""
    import threading

    registry = Registry(*locations)
    holding = threading.Event()
    said: list[str] = []

    def a_probe() -> None:
        with Registry(*locations).alias_lock("probed"):
            holding.set()
            time.sleep(0.1)  # far longer than a probe holds it

    other = threading.Thread(target=a_probe)
    other.start()
    assert holding.wait(30)
    with registry.alias_lock("probed", on_wait=lambda: said.append("probed")):
        pass
    other.join(30)
    assert said == []
    registry.close()


def test_a_lock_this_thread_holds_is_taken_again_at_once_and_still_kept_from_others(locations):
    """An alias move by hand holds the adapter's lock and then syncs the adapter from MLflow,
    which takes the lock too: the second take is this thread's own (no wait on itself: it hung
    for ever); another thread still waits until the outer block ends."""
    import threading

    registry = Registry(*locations)
    other_took = threading.Event()

    def another_gate() -> None:
        with Registry(*locations).alias_lock("held"):
            other_took.set()

    with registry.alias_lock("held"):
        other = threading.Thread(target=another_gate)
        other.start()
        with registry.alias_lock("held", on_wait=lambda: pytest.fail("waited on itself")):
            pass  # taken again at once
        with registry.alias_lock("held"):  # and again, after the inner block let go of nothing
            assert not other_took.wait(1.5)
    assert other_took.wait(30)
    other.join(30)
    registry.close()


def test_a_build_under_way_is_seen_by_another_process_without_waiting(locations):
    """A build's MLflow run still RUNNING while no process holds its build key's lock is a
    killed process's (flows.run_attempts): the probe sees a lock another holds (another
    thread here, with its own connection or file), waits for nothing and takes nothing."""
    import threading

    registry = Registry(*locations)
    holding, release = threading.Event(), threading.Event()

    def a_build() -> None:
        with Registry(*locations).build_lock("k"):
            holding.set()
            release.wait(60)

    assert registry.building("k") is False
    other = threading.Thread(target=a_build)
    other.start()
    assert holding.wait(30)
    assert (registry.building("k"), registry.building("another key")) == (True, False)
    release.set()
    other.join(60)
    assert registry.building("k") is False  # the probe left nothing held
    with registry.build_lock("k"):
        assert registry.building("k") is True  # this thread's own build
    registry.close()


# What managed PostgreSQL servers often set, short: 3 s idle in a transaction, 2 s a statement;
# and on PostgreSQL 17 and later, 3 s a whole transaction.
SERVER_TIMEOUTS = "options=-c%20idle_in_transaction_session_timeout%3D3000%20-c%20statement_timeout%3D2000"  # fmt: skip
TRANSACTION_TIMEOUT = "%20-c%20transaction_timeout%3D3000"


@pytest.fixture(params=["postgres", "newer_postgres"])
def timed_out_url(request: pytest.FixtureRequest) -> str:
    """A new registry database on each PostgreSQL server (15, and 18 with its
    ``transaction_timeout``), every connection under the server timeouts above."""
    from tests.registry.conftest import fresh_postgres_url

    url = f"{fresh_postgres_url(request.getfixturevalue(request.param))}?{SERVER_TIMEOUTS}"
    return url + (TRANSACTION_TIMEOUT if request.param == "newer_postgres" else "")


def test_a_postgres_lock_outlasts_the_servers_timeouts(timed_out_url, tmp_path):
    """Managed PostgreSQL often sets ``idle_in_transaction_session_timeout`` and
    ``statement_timeout``. A lock held through a gate longer than the first was ended by the
    server mid-gate, and the build then failed at its release, after promoting; a wait longer
    than the second was cancelled. Now the holder's transaction runs a statement every second
    and a waiter polls; a holder whose connection is dropped anyway keeps its work, with a
    warning. PostgreSQL 17's ``transaction_timeout`` ended both the holder's transaction (a
    build holds its build key's lock for hours) and the waiter's; the lock's transaction now
    sets it off for itself."""
    import threading
    import time
    import warnings

    url = timed_out_url
    registry = Registry(url, (tmp_path / "artifacts").as_uri())
    holding, order, failures = threading.Event(), [], []

    def a_slow_gate() -> None:
        try:
            with Registry(url, (tmp_path / "artifacts").as_uri()).alias_lock("slow"):
                holding.set()
                time.sleep(5)  # past both timeouts
                order.append("first gate done")
        except Exception as exc:  # reported below, in the test's thread
            failures.append(exc)

    other = threading.Thread(target=a_slow_gate)
    other.start()
    assert holding.wait(30)
    said: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with registry.alias_lock("slow", on_wait=lambda: said.append("waiting")):
            order.append("second gate in")
    other.join(60)
    assert failures == [] and said == ["waiting"]
    assert order == ["first gate done", "second gate in"]

    engine = registry.database.engine
    dropped = "the database connection holding a registry lock was lost before the work"
    with pytest.warns(RuntimeWarning, match=dropped), registry.alias_lock("dropped"):
        with engine.connect() as admin:  # the server (or an administrator) ends its session
            admin.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            )
        time.sleep(2)  # a keepalive statement finds it gone
    with registry.alias_lock("dropped"):  # free again
        pass
    registry.close()


def test_gc_and_a_registration_waiting_for_it_outlast_the_servers_timeouts(
    timed_out_url, tmp_path, monkeypatch
):
    """gc holds the blob lock while the store deletes (S3 batches: minutes for a big store),
    and a registration meanwhile waits for it. With ``statement_timeout`` the registration's
    wait was cancelled; with ``idle_in_transaction_session_timeout`` gc's transaction, and its
    lock, ended mid-delete (a registration could then reuse a blob being deleted)."""
    import threading
    import time
    from datetime import timedelta

    url = timed_out_url
    artifacts = (tmp_path / "artifacts").as_uri()
    registry = Registry(url, artifacts)

    def register(registry: Registry, name: str, seed: int):
        folder = write_fake_adapter(tmp_path / f"{name}{seed}", seed=seed)
        return registry.register(folder, name=name, base_model="b", task="t", language="en")

    register(registry, "kept", 1)
    gone = register(registry, "gone", 2)
    registry.delete(gone.ref)  # its manifest and tensors are orphans now
    real_delete_many = registry.artifacts.delete_many
    writers: list[threading.Thread] = []
    outcomes: list[str] = []

    def a_registration() -> None:
        outcomes.append(_outcome(lambda: register(Registry(url, artifacts), "new", 3)))

    def slow_delete_many(digests):  # a big store's deletion, and a registration arriving
        writers.append(threading.Thread(target=a_registration))
        writers[0].start()
        time.sleep(4)  # past both timeouts
        real_delete_many(digests)

    monkeypatch.setattr(registry.artifacts, "delete_many", slow_delete_many)
    removed = registry.gc(older_than=timedelta(0))
    writers[0].join(60)
    assert len(removed) == 2 and gone.digest in removed
    assert outcomes == ["new@1"]  # it waited for gc, then registered
    assert {v.ref for v in registry.find()} == {"kept@1", "new@1"}
    registry.close()


def _outcome(work) -> str:
    """``work()``'s ref, or its error as text (a thread's exception would go unseen)."""
    try:
        return work().ref
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_postgres_connections_prepare_no_statements_a_pooler_would_lose(postgres, tmp_path):
    """Behind PgBouncer in transaction mode (before 1.21, or without max_prepared_statements)
    each transaction may get another server connection, and psycopg's automatic prepared
    statements (after 5 runs of one statement) failed: "prepared statement _pg3_0 does not
    exist", "... already exists" (tried with PgBouncer 1.18: 4 threads registering, all 4 failed;
    none with this). No PgBouncer in CI: what is pinned is that none is ever prepared."""
    from tests.registry.conftest import fresh_postgres_url

    registry = Registry(fresh_postgres_url(postgres), (tmp_path / "artifacts").as_uri())
    for seed in range(1, 8):  # the same statements, past psycopg's threshold of 5
        registry.register(
            write_fake_adapter(tmp_path / f"v{seed}", seed=seed), name="pooled",
            base_model="b", task="t", language="en",
        )  # fmt: skip
        registry.get(f"pooled@{seed}")
    with registry.database.engine.connect() as connection:
        prepared = connection.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements")
        assert prepared.scalar_one() == 0
        assert connection.connection.driver_connection.prepare_threshold is None
    registry.close()
