"""Fuzzed spec files (hypothesis): whatever a spec holds, the answer is a valid spec or one line
that names what is wrong (exit 2, before anything runs, nothing stored). Never a traceback.

The budget is bounded (1,000 specs through the validator, 25 through ``adapterops build``) and
the examples differ on every run; a failure prints the spec that caused it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.cli import app
from flows.spec import SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"
VALID: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return [prefix]
    found = [prefix] if prefix else []
    for key, value in node.items():
        found += _paths(value, (*prefix, key))
    return found


# every field of the example, and a few a spec might misspell or invent
PATHS = [
    *_paths(VALID),
    ("langauge",),
    ("method", "rnak"),
    ("head", "label_names"),
    ("train", "gradient_accumulation_steps"),
    ("data", "max_eval_samples"),
    ("evaluate", "metric"),
    ("promote", "alias"),
]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | TEXT
    | st.sampled_from(["lora", "ia3", "peft", "classification", "causal-lm", "q", "1e999", ""])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=8,
)


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """The example spec with one to four fields set to anything, added or removed; now and then
    not a mapping at all."""
    if draw(st.integers(0, 49)) == 0:
        return draw(VALUES)
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        *parents, leaf = draw(st.sampled_from(PATHS))
        node = document
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if draw(st.booleans()) and leaf in node:
            del node[leaf]
        else:
            node[leaf] = draw(VALUES)
    return document


def _assert_one_clear_line(error: SpecError) -> None:
    assert error.problems, "a spec error names at least one problem"
    assert "\n" not in str(error)
    for path, message in error.problems:
        assert path and message.strip(), error.problems


# Hypothesis flags a change of the global `random` state while it draws as `random` used in a
# strategy. This strategy draws only through `draw`; a background thread left by an earlier test
# in the same process (a server client's retry jitter) once changed it mid-draw in the full suite.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
@settings(max_examples=1000, deadline=None, database=None)
@given(mutated_specs())
def test_the_validator_answers_every_spec(document: Any) -> None:
    try:
        spec = parse_spec(document)
    except SpecError as error:
        _assert_one_clear_line(error)
    else:  # a valid spec means what it says: it survives its own round trip
        assert parse_spec(spec.model_dump(mode="json")) == spec


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=mutated_specs())
def test_build_refuses_every_broken_spec_in_one_line_storing_nothing(
    document: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "fuzz-home"
    for leftover in sorted(home.rglob("*"), reverse=True) if home.exists() else []:
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    monkeypatch.setenv("ADAPTEROPS_HOME", str(home))
    for variable in ("ADAPTEROPS_REGISTRY_URL", "ADAPTEROPS_ARTIFACTS_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    if isinstance(document, dict) and isinstance(document.get("data"), dict):
        # a spec that is valid anyway stops at its data (no rows), so no example trains; the
        # file exists, so the spec itself is checked first (a missing file would be refused
        # before the spec is read as one)
        no_rows = tmp_path / "no-rows.tsv"
        no_rows.write_text("sentence\tlabel\n")
        document["data"] = {**document["data"], "train": str(no_rows)}
    spec_file = tmp_path / "fuzzed.yaml"
    spec_file.write_text(yaml.safe_dump(document, allow_unicode=True))

    result = CliRunner().invoke(app, ["build", str(spec_file)])

    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    stored = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert stored == []


def test_the_example_itself_is_valid() -> None:
    """The fuzzing starts from a valid spec (else every example would fail for one reason)."""
    assert load_spec(EXAMPLE).name == "minilm-sst2-en-lora"
