"""The README's Python examples run as written, in order, in one session: what a newcomer
pastes works (they had placeholders such as ``path_to_minilm`` and ``batches``, and a version
number that did not exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_examples() -> list[tuple[int, str]]:
    """Each ```python block of the README with the line it starts on."""
    text = README.read_text()
    return [
        (text.count("\n", 0, found.start()) + 2, found.group(1))
        for found in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]


def test_the_readmes_python_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # they write out/, here/ and the embedded registry
    monkeypatch.setenv("ADAPTEROPS_HOME", str(tmp_path / "home"))
    for variable in ("ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL"):
        monkeypatch.delenv(variable, raising=False)
    examples = python_examples()
    assert len(examples) == 3  # peft_core, composition, the registry
    session: dict[str, object] = {}
    for line, code in examples:
        try:
            exec(compile(code, f"README.md:{line}", "exec"), session)
        except Exception as failed:  # name the example, not this loop
            pytest.fail(f"the README's example at line {line} failed: {failed!r}")
    # what they did, as the comments say
    out, registry = session["out"], session["reg"]
    assert tuple(out.logits.shape) == (4, 2)
    assert [v.ref for v in registry.find()] == ["lang-pt@1", "minilm-sst2-en-lora@1"]
    assert registry.get("minilm-sst2-en-lora@champion").version == 1
    assert registry.composition("pt-sst2@champion").members == (
        "lang-pt@1", "minilm-sst2-en-lora@1",
    )  # fmt: skip
    assert registry.used_by("lang-pt@1").compositions == ("pt-sst2@1",)
    assert registry.deleted_versions() == {"minilm-sst2-en-lora": {2}}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lang-pt", "sst2", "sst2-converted", "sst2-peft", "sst2-retrained",
    ]  # fmt: skip
    assert (tmp_path / "here" / "adapter.safetensors").is_file()
