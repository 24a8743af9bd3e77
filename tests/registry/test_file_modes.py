"""A registry folder's stored files are readable by whoever the umask admits: they were
written through mkstemp, always 0600, so a folder shared by a team (or read by the stack's
worker under another user) could not be read by the others."""

from __future__ import annotations

import stat

from registry import Registry
from tests.helpers import umask
from tests.registry.workers import write_fake_adapter


def test_a_registry_folders_stored_files_take_the_umasks_mode(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", (tmp_path / "store").as_uri())
    try:
        with umask(0o022):
            registry.register(
                write_fake_adapter(tmp_path / "a", 1), name="a", base_model="b", task="t",
                language="en",
            )  # fmt: skip
    finally:
        registry.close()
    blobs = [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]
    assert blobs and {stat.S_IMODE(p.stat().st_mode) for p in blobs} == {0o644}  # was 0600
