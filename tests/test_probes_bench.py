"""``bench/probes_bench.py`` at tiny shapes: both ways pass every version's probes (the bench
checks it), and the report shows the times and the ratio the rows hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.common import machine
from bench.probes_bench import probe_timings


def test_both_ways_pass_every_probe_and_the_report_shows_the_ratio(tmp_path: Path):
    row = probe_timings(tmp_path, versions=3, layers=1, width=64, rounds=2, load={})
    assert (row["versions"], row["rounds"], row["load"]) == (3, 2, {})
    assert row["speedup"] == pytest.approx(row["per_version_s"] / row["shared_s"])
    assert row["base_params"] > 2_000_000  # MiniLM's vocabulary: the embeddings and the output
    section = report.probes_section({"machine": machine(), "rows": [row]}, tmp_path)
    assert f"{row['versions']} LoRA versions on one Llama-shaped base" in section
    assert (
        f"| as saved | {row['shared_s']:.2f} s | {row['per_version_s']:.2f} s | "
        f"{row['speedup']:.1f}x |"
    ) in section
