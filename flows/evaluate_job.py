"""Score a registered version or composition: ``adapterops [composition] evaluate REF
[--data FILE]``.

The metrics its spec's head has (accuracy and macro-F1, perplexity, exact match), on a data file
with its spec's columns (a new test set, this week's traffic), or on the validation split it was
built with: the numbers a reviewer compares before moving an alias by hand. Each evaluation is
an MLflow run (tagged ``adapterops.evaluated``), beside the version's training run in the UI.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import peft_core as pc
from registry import AdapterVersion, BaseModelMismatchError, CorruptArtifactError, Registry
from registry.compositions import answers_per_member

from .answer_records import answer_records, write_answers
from .data import load_raw, read_file, tokenize
from .data_files import check_scoring_sources
from .errors import BaseModelNotFound, DataError
from .evaluation import RowOutcome
from .files_spec import SCORE_ON_A_FILE, serving_spec
from .predict_job import check_each_once, spec_of_composition
from .prepare_job import prepare_cached
from .shared_base import sharing_groups
from .spec import AdapterSpec, spec_of_version
from .tracking import check_reachable, log_evaluation_run, tracking_uri
from .train_job import (
    PhaseCallback,
    evaluate_model,
    generates,
    load_inference_model,
    load_registered,
    load_tokenizer,
    no_phases,
)

__all__ = ["Evaluation", "evaluate_composition", "evaluate_version", "evaluate_versions"]


@dataclass
class Evaluation:
    """One version's metrics on one data set."""

    ref: str
    data: str  # the file scored, or "validation split" of the version's own spec
    metrics: dict[str, Any]
    mlflow_run_id: str = ""
    # a classifier's label names, in label order (the confusion matrix's rows and columns);
    # empty where the spec names none (a version pushed without one: labels by number)
    label_names: list[str] = field(default_factory=list)
    out: str = ""  # the file of each row with its answer (``--out``), if one was asked for
    missed: int | None = None  # ... and how many of them it got wrong (or not exactly)
    # why it was not scored, when it was one of several (``evaluate A B C``): its stored files
    # damaged, its golden probes out of their band, its base model not loading; no MLflow run
    failed: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def evaluate_version(
    registry: Registry,
    ref: str,
    *,
    data: str | Path | None = None,
    max_samples: int | None = None,
    skip_probe: bool = False,
    text_column: str | None = None,
    label_column: str | None = None,
    out: Path | None = None,
    on_phase: PhaseCallback = no_phases,
) -> Evaluation:
    """The metrics of the version ``ref`` resolves to on the file ``data`` (read with its spec's
    columns, or ``text_column`` and ``label_column``), else on its spec's validation split;
    ``max_samples`` rows at most (a seeded subset). A version pushed without a spec is scored
    on a file only, with the head its files carry (texts in ``sentence`` and labels in
    ``label`` unless named). ``out`` (a .jsonl, .csv or .tsv file, replaced if there)
    receives each row scored with the version's answer to it, and goes to the MLflow run too.
    The data is read and checked before the base model loads; ``on_phase`` hears each step
    after that."""
    check_scoring_sources(data, text_column, label_column, out=out)
    check_reachable(tracking_uri())  # where the run goes must answer before any work
    version = registry.get(ref)
    if data is None:
        spec = spec_of_version(version, "evaluate", instead=SCORE_ON_A_FILE)
    else:
        spec = _reading(serving_spec(registry, version, "evaluate"), text_column, label_column)
    rows, source = _rows(
        spec, version.ref, data, max_samples, pushed=not version.spec, keep_rows=out is not None
    )
    on_phase("load the base model and the adapter")
    model, tokenizer = load_registered(spec, version, registry, skip_probe=skip_probe)
    tags = {"adapterops.evaluated": version.ref, "adapterops.adapter": version.name}
    return _scored(
        model, tokenizer, spec, rows, ref=version.ref, source=source, tags=tags, out=out,
        on_phase=on_phase,
    )  # fmt: skip


def evaluate_versions(
    registry: Registry,
    refs: Sequence[str],
    *,
    data: str | Path | None = None,
    max_samples: int | None = None,
    skip_probe: bool = False,
    text_column: str | None = None,
    label_column: str | None = None,
    on_phase: PhaseCallback = no_phases,
) -> list[Evaluation]:
    """Several versions scored as :func:`evaluate_version` scores one, in ``refs``' order, on
    the file ``data`` (each read with its own spec's columns), else each on its own spec's
    validation split; an MLflow run each. Every version's rows are read and checked before a
    base model loads. Versions on one base model, head and load settings share one load of it:
    each is loaded beside it, scored and taken out again (a reviewer comparing a candidate
    with its champion on a new file loads a 7B base once); the others load their own
    (:func:`flows.shared_base.sharing_groups`). A version that cannot be scored (its stored
    files damaged, its golden probes out of their band, its base model not loading) is an
    :class:`Evaluation` saying why (``failed``), and the others are still scored."""
    check_scoring_sources(data, text_column, label_column)
    check_reachable(tracking_uri())
    versions = [registry.get(ref) for ref in refs]
    check_each_once(list(refs), versions)
    specs = []
    for version in versions:
        if data is None:
            spec = spec_of_version(version, "evaluate", instead=SCORE_ON_A_FILE)
        else:
            spec = _reading(serving_spec(registry, version, "evaluate"), text_column, label_column)
        specs.append(spec)
    once: dict[tuple[Any, ...], tuple[Rows, str]] = {}  # versions reading alike share rows
    read = [
        _rows_of(version, spec, data, max_samples, once)
        for version, spec in zip(versions, specs, strict=True)
    ]
    done: dict[int, Evaluation] = {}
    for group in sharing_groups(versions, specs):
        if len(group) == 1:
            position = group[0]
            done[position] = _scored_alone(
                registry, specs[position], versions[position], read[position],
                skip_probe=skip_probe, on_phase=_naming(on_phase, versions[position].ref),
            )  # fmt: skip
            continue
        done.update(
            _scored_together(
                registry, group, specs, versions, read, skip_probe=skip_probe, on_phase=on_phase
            )
        )
    return [done[position] for position in range(len(versions))]


# What one version can fail at while the others are still scored: its files damaged or missing,
# its golden probes out of their band, a base of another shape, files peft_core cannot read
_VERSIONS_OWN_FAILURES = (BaseModelMismatchError, CorruptArtifactError, pc.PeftCoreError)


def _scored_alone(
    registry: Registry,
    spec: AdapterSpec,
    version: AdapterVersion,
    read: tuple[Rows, str],
    *,
    skip_probe: bool,
    on_phase: PhaseCallback,
) -> Evaluation:
    """``version`` loaded on a base model of its own and scored; what stops it (its own
    failure, or its base model not loading) is its outcome, not the command's end."""
    on_phase("load the base model and the adapter")
    try:
        model, tokenizer = load_registered(spec, version, registry, skip_probe=skip_probe)
    except (*_VERSIONS_OWN_FAILURES, BaseModelNotFound, DataError) as exc:
        return _not_scored(version, read, exc)
    return _scored_version(model, tokenizer, spec, version, read, on_phase=on_phase)


def _scored_together(
    registry: Registry,
    group: list[int],
    specs: Sequence[AdapterSpec],
    versions: Sequence[AdapterVersion],
    read: Sequence[tuple[Rows, str]],
    *,
    skip_probe: bool,
    on_phase: PhaseCallback,
) -> dict[int, Evaluation]:
    """The versions at positions ``group`` scored on one load of their base model: each loaded
    beside it, scored and taken out again; a version that fails to load is its outcome."""
    spec = specs[group[0]]
    on_phase(f"load the base model {spec.base_model} for {len(group)} versions")
    try:
        model, tokenizer = load_inference_model(spec)
    except (BaseModelNotFound, DataError) as exc:  # none of them can be scored
        return {
            position: _not_scored(versions[position], read[position], exc) for position in group
        }
    scored: dict[int, Evaluation] = {}
    for position in group:
        version, say = versions[position], _naming(on_phase, versions[position].ref)
        name = f"{version.name}-v{version.version}"  # two versions of one adapter may share
        say("load the adapter")
        try:  # a failed load leaves the model as it was (probes out of band take it out again)
            registry.load_into(model, version.ref, name=name, skip_probe=skip_probe)
        except _VERSIONS_OWN_FAILURES as exc:
            scored[position] = _not_scored(version, read[position], exc)
            continue
        pc.set_active(model, name)
        try:
            scored[position] = _scored_version(
                model, tokenizer, specs[position], version, read[position], on_phase=say
            )
        finally:
            pc.delete_adapter(model, name)  # the base as it loaded, for the next version
    return scored


def _not_scored(version: AdapterVersion, read: tuple[Rows, str], error: Exception) -> Evaluation:
    """The outcome of ``version`` that ``error`` stopped before it was scored (no MLflow run)."""
    said = " ".join(str(error).split())
    return Evaluation(
        ref=version.ref, data=read[1], metrics={},
        failed=said if said.startswith(version.ref) else f"{version.ref}: {said}",
    )  # fmt: skip


# the data section's fields that say where a spec's own splits come from (not how rows read)
_SPLIT_SOURCES = {
    "train", "validation", "dataset", "subset", "train_split", "validation_split",
    "max_train_samples", "max_eval_samples",
}  # fmt: skip


def _rows_of(
    version: AdapterVersion,
    spec: AdapterSpec,
    data: str | Path | None,
    max_samples: int | None,
    once: dict[tuple[Any, ...], tuple[Rows, str]],
) -> tuple[Rows, str]:
    """:func:`_rows` for one of several versions: a file it cannot read names the version (the
    others may read it). Versions that read the rows alike (one tokenizer, columns, length
    and head: a candidate and its champion) share the copy kept in ``once``, so memory holds
    one tokenised copy of a large file, not one per version."""
    pushed = not version.spec
    # on a file, where the spec's own splits come from does not change how it reads the file
    reading = spec.data.model_dump_json(exclude=_SPLIT_SOURCES if data is not None else None)
    key = (spec.base_model, spec.head.model_dump_json(), reading, spec.train.max_length,
           spec.train.seed, str(data), max_samples, pushed)  # fmt: skip
    if key in once:
        return once[key]
    try:
        once[key] = _rows(spec, version.ref, data, max_samples, pushed=pushed)
        return once[key]
    except DataError as exc:
        said = str(exc)
        raise DataError(
            said if said.startswith(version.ref) else f"{version.ref}: {said}"
        ) from None


def _naming(on_phase: PhaseCallback, ref: str) -> PhaseCallback:
    """``on_phase`` with each step prefixed by ``ref`` (none when empty)."""
    return (lambda step: on_phase(f"{ref}: {step}")) if ref else on_phase


def _scored_version(
    model: Any,
    tokenizer: Any,
    spec: AdapterSpec,
    version: AdapterVersion,
    read: tuple[Rows, str],
    *,
    on_phase: PhaseCallback,
) -> Evaluation:
    """``version``, active in ``model``, scored on the rows ``read`` and recorded (no --out)."""
    rows, source = read
    tags = {"adapterops.evaluated": version.ref, "adapterops.adapter": version.name}
    return _scored(
        model, tokenizer, spec, rows, ref=version.ref, source=source, tags=tags, out=None,
        on_phase=on_phase,
    )  # fmt: skip


def evaluate_composition(
    registry: Registry,
    ref: str,
    *,
    data: str | Path | None = None,
    max_samples: int | None = None,
    skip_probe: bool = False,
    text_column: str | None = None,
    label_column: str | None = None,
    out: Path | None = None,
    on_phase: PhaseCallback = no_phases,
) -> Evaluation:
    """The metrics of the composition version ``ref`` resolves to (every member loaded and
    checked, the composition active), as :func:`evaluate_version` scores a version (``out``
    too); the spec is its evaluation spec, else its last member's (a MAD-X stack's task
    adapter)."""
    composition = registry.composition(ref)
    if answers_per_member(composition.definition):
        members = composition.members
        raise DataError(
            f"{composition.ref} is a Parallel composition: it answers once per member "
            f"({', '.join(members)}), so there is no one answer to score; evaluate each member "
            f"(`adapterops evaluate {members[0]}`)"
        )
    check_scoring_sources(data, text_column, label_column, out=out)
    check_reachable(tracking_uri())
    spec = spec_of_composition(registry, composition, "evaluate", scoring=data is None)
    spec = _reading(spec, text_column, label_column)
    pushed = not composition.evaluation and not registry.get(composition.members[-1]).spec
    rows, source = _rows(
        spec, composition.ref, data, max_samples, pushed=pushed, keep_rows=out is not None
    )
    on_phase("load the base model and the members")
    model, tokenizer = load_inference_model(spec)
    registry.load_definition(
        model, composition.definition, composition.members, skip_probe=skip_probe
    )
    tags = {"adapterops.evaluated": composition.ref, "adapterops.composition": composition.name}
    return _scored(
        model, tokenizer, spec, rows, ref=composition.ref, source=source, tags=tags, out=out,
        on_phase=on_phase,
    )  # fmt: skip


def _reading(spec: AdapterSpec, text_column: str | None, label_column: str | None) -> AdapterSpec:
    """``spec`` reading its texts from ``text_column`` and its labels from ``label_column``
    (those given) instead of the columns it names."""
    if text_column is None and label_column is None:
        return spec
    if spec.data.instructions:
        raise DataError(
            f"{spec.name} reads instructions (data.prompt and data.response, or data.messages): "
            "--text-column and --label-column name a text adapter's columns; give a file with "
            "its spec's columns"
        )
    if label_column is not None and spec.head.type != "classification":
        raise DataError(
            f"--label-column names a classifier's labels; {spec.name} is a {spec.head.type} "
            "adapter, scored on the texts alone"
        )
    named = {"text": text_column, "label": label_column}
    update = {field: column for field, column in named.items() if column is not None}
    return spec.model_copy(update={"data": spec.data.model_copy(update=update)})


def _rows(
    spec: AdapterSpec,
    ref: str,
    data: str | Path | None,
    max_samples: int | None,
    *,
    pushed: bool = False,
    keep_rows: bool = False,
) -> tuple[Rows, str]:
    """The rows to score and what they are: the file ``data``, else the spec's validation
    split (``max_samples`` of them at most). ``pushed``: the spec is the defaults a version
    pushed without one reads (the error for a missing column says so). ``keep_rows``: the
    split's rows as read, beside the cached tokenised ones, too (a file's are always kept)."""
    tokenizer = load_tokenizer(spec)
    if data is not None:
        named = (
            "`sentence` and `label` for a version pushed without a spec; --text-column and "
            "--label-column name others"
            if pushed
            # an instruction adapter's columns cannot be renamed (those options refuse it)
            else "its spec's data section"
            if spec.data.instructions
            else "its spec's data section; --text-column and --label-column name others"
        )
        read = read_file(spec, data, max_samples=max_samples, named=named)
        return Rows(tokenize(read, spec, tokenizer), read), str(data)
    _check_built_on_files_here(spec, ref)
    if max_samples is not None:
        limited = spec.data.model_copy(update={"max_eval_samples": max_samples})
        spec = spec.model_copy(update={"data": limited})
    prepared, _ = prepare_cached(spec, tokenizer)
    # the cache holds tokens only; the split read again comes in the same (seeded) order
    as_read = load_raw(spec, numbered=True)[1] if keep_rows else None
    return Rows(prepared.validation, as_read), "validation split"


@dataclass(frozen=True)
class Rows:
    """What an evaluation scores: the tokenised rows, and the rows they were made from, in the
    same order (None where they were not asked for: the cached validation split's)."""

    tokens: Any
    read: Any = None


def _scored(
    model: Any,
    tokenizer: Any,
    spec: AdapterSpec,
    rows: Rows,
    *,
    ref: str,
    source: str,
    tags: dict[str, str],
    out: Path | None,
    on_phase: PhaseCallback,
) -> Evaluation:
    """``spec``'s metrics of the model as set up on ``rows``, recorded as an MLflow run (with
    a classifier's confusion matrix as a plot, and each row's answer, written to ``out``, as
    artifacts)."""
    total = len(rows.tokens)
    on_phase(f"score {total} rows")

    def counted(step: str, done: int) -> None:  # minutes for an LLM that generates answers
        on_phase(f"score {total} rows: {done} done" if step == "score" else
                 f"generate {total} answers: {done} done")  # fmt: skip

    outcomes: list[RowOutcome] | None = [] if out is not None else None
    metrics = evaluate_model(
        model, rows.tokens, tokenizer, head=spec.head.type, generate=generates(spec),
        on_rows=counted, outcomes=outcomes,
    )  # fmt: skip
    missed = None
    if out is not None and outcomes is not None:
        on_phase(f"write each row's answer to {out}")
        missed = write_answers(out, answer_records(spec, tokenizer, rows.read, outcomes))
    on_phase("record the MLflow run")
    names = list(spec.head.label_names or []) if spec.head.type == "classification" else []
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = [out] if out is not None else []
        if matrix := metrics.get("confusion_matrix"):  # as a build's run shows its own
            from .plots import confusion_matrix_plot  # noqa: PLC0415 - matplotlib, here only

            artifacts.append(
                confusion_matrix_plot(
                    matrix, Path(scratch) / "confusion_matrix.png", labels=names or None,
                    title=f"{ref} on {Path(source).name}",
                )
            )  # fmt: skip
        run_id = log_evaluation_run(
            f"evaluate {ref} on {Path(source).name}",
            params={"ref": ref, "data": source},
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            tags=tags,
            artifacts=artifacts,
        )
    return Evaluation(
        ref=ref, data=source, metrics=metrics, mlflow_run_id=run_id, label_names=names,
        out=str(out or ""), missed=missed,
    )  # fmt: skip


def _check_built_on_files_here(spec: AdapterSpec, ref: str) -> None:
    """A version built elsewhere names data files this machine may not have: say so, and
    what to pass instead, rather than only that a file is missing."""
    files = [f for f in (spec.data.train, spec.data.validation) if f is not None]
    absent = [f for f in files if not Path(f).is_file()]
    if absent:
        raise DataError(
            f"{ref} was built on {absent[0]}, which is not on this machine: score it on a file "
            "you have with --data FILE (its spec's columns)"
        )
