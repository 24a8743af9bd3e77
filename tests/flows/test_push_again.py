"""Pushing files that are a version already returns that version, whose record does not
change: what was asked and not recorded is told, not dropped silently."""

from __future__ import annotations

from pathlib import Path

from flows.push_job import push_folder
from registry import Registry
from tests.registry.workers import write_fake_adapter

IDENTITY = {"name": "again", "base_model": "some/base", "task": "sst2", "language": "en"}


def test_other_metrics_for_the_same_files_are_told_not_recorded(embedded_home, tmp_path: Path):
    folder = write_fake_adapter(tmp_path / "adapter", 1)
    first = push_folder(
        Registry(), folder, identity=IDENTITY, metrics={"accuracy": 0.5}, mirror=False
    )
    assert (first.version.ref, first.warnings) == ("again@1", [])
    same = push_folder(Registry(), folder, identity=IDENTITY, metrics={"accuracy": 0.5}, mirror=False)  # fmt: skip
    assert (same.version.ref, same.warnings) == ("again@1", [])
    other = push_folder(
        Registry(), folder, identity=IDENTITY, metrics={"accuracy": 0.9, "f1": 1}, mirror=False
    )
    assert other.version.ref == "again@1"
    assert other.warnings == [
        "these files are again@1 already, whose metrics stay as recorded (accuracy=0.5); a "
        "version's record does not change: to record these, adapterops rm again@1 and push again"
    ]
    assert Registry().get("again@1").metrics == {"accuracy": 0.5}
