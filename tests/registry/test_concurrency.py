"""Several processes registering versions of one adapter at once get distinct, consecutive numbers
and lose nothing — on SQLite and on PostgreSQL. Real processes, real servers."""

from __future__ import annotations

import multiprocessing

from registry import Registry
from tests.registry.workers import register_many, write_fake_adapter

PROCESSES, EACH = 4, 5


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
