"""``bench/registry_bench.py``'s query timings on a small SQLite registry: every lookup it times
finds what it asks for (the registry refused its made-up language codes, so `make bench`
stopped here)."""

from __future__ import annotations

from pathlib import Path

from bench import registry_bench
from bench.registry_bench import fill, query_latencies
from registry import Registry


def test_the_timed_queries_run_and_find_their_adapters(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(registry_bench, "QUERIES", 20)
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    fill(url, 2, 40)
    registry = Registry(url, tmp_path / "artifacts")
    assert registry.find(language="xaa", base_model="base-0", task="task-0")[0].name == "adapter-0"
    latencies = query_latencies(url, 40, (tmp_path / "artifacts").as_uri())
    assert {name: row["n"] for name, row in latencies.items()} == {
        "find": 20, "get_by_alias": 20, "resolve": 20,
    }  # fmt: skip
