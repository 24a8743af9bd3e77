"""The one build chain for one spec: find an earlier build, or prepare the data, train (tracked
in MLflow), evaluate, register, mirror in MLflow, gate and promote.

A :class:`Build` is made once per build (spec, lineage with the data fingerprinted once, output
folder, registry, progress callback) and handed to every step. :func:`run_chain` is the only copy
of the chain: called plainly it runs each step in turn (``build_from_spec``), and the Prefect flow
``flows.pipelines.build`` hands it a step runner that makes each step a task.

Re-running after a failure completes the work: registration is idempotent by content digest, the
MLflow version is created only if missing, and alias moves are idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Run

from peft_core.training import CHECKPOINT_FILE
from registry import AdapterVersion, CorruptArtifactError, Registry, diff_versions
from registry.settings import adapterops_home

from . import tracking
from .answer_records import answer_records, write_answers
from .changes_markdown import changes_since
from .data import load_raw
from .errors import GateError
from .evaluation import EvaluationProgress, RowOutcome
from .launch import launched_here
from .lineage import dataset_fingerprint, spec_lineage
from .members import LINEAGE_KEY, members_of_spec
from .mlflow_models import (
    check_name_is_ours,
    ensure_model_version,
    log_trend,
    mirror_earlier_versions,
    sync_aliases,
    tag_run,
    version_description,
)
from .mlflow_names import REGISTRY_TAG
from .prepare_job import PreparedInfo, check_against_registry, prepare_info
from .promotion import CHALLENGER, Decision, Policy, decide, promote, version_holding
from .run_attempts import BUILD_KEY_TAG, FLOW_RUN_TAG, end_abandoned_runs
from .spec import AdapterSpec
from .train_job import (
    TrainReport,
    evaluate_folder,
    evaluate_registered,
    load_tokenizer,
    train_from_spec,
    write_report,
)
from .validation_during_training import evaluation_line, outcome_lines

__all__ = [
    "Build",
    "BuildResult",
    "StepCallback",
    "StepRunner",
    "build_from_spec",
    "build_lineage",
    "checkpoint_folder",
    "evaluate_tracked",
    "evaluated_in_training",
    "find_built",
    "find_earlier_build",
    "prepare_data",
    "register_and_gate",
    "register_and_promote",
    "reused_result",
    "run_chain",
    "start_build",
    "train_tracked",
]

StepCallback = Callable[[int, int, float, float], None]  # (step, total, loss, learning rate)
T = TypeVar("T")
# Runs one named step of the chain: plainly, or as a Prefect task (``flows.pipelines``).
StepRunner = Callable[..., Any]


@dataclass
class BuildResult:
    """What ``adapterops build`` reports (``--json``)."""

    name: str
    version: int
    ref: str
    digest: str
    run_id: str
    mlflow_version: int
    promoted: bool
    alias: str
    decision: str
    metrics: dict[str, Any]
    champion_metric: float | None
    reused: bool = False  # True: this spec, data and code were built before; nothing trained
    cascade: list[dict[str, Any]] = field(default_factory=list)  # what a new champion re-evaluated

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Build:
    """One build, made once by :func:`start_build` and handed to every step."""

    spec: AdapterSpec
    lineage: dict[str, str]  # dataset_fingerprint, code_version, build_key
    output: Path  # where the trained adapter folder is written
    registry: Registry
    on_step: StepCallback | None = None  # progress: called after every optimiser step
    on_phase: Callable[[str], None] | None = None  # told each step's name as it starts
    on_scoring: EvaluationProgress | None = None  # told the evaluation's rows as they are done
    flow_run_id: str | None = None  # the Prefect flow run building it, once it holds the lock

    @property
    def key(self) -> str:
        """The build key: the same spec, data and code give the same key."""
        return self.lineage["build_key"]

    @property
    def fingerprint(self) -> str:
        """The dataset fingerprint, computed once when the build started."""
        return self.lineage["dataset_fingerprint"]

    @property
    def checkpoints(self) -> Path:
        """Where this build's training checkpoints live until it is registered."""
        return checkpoint_folder(self.spec, self.key)


def start_build(
    spec: AdapterSpec,
    output: str | Path,
    *,
    registry: Registry | None = None,
    on_step: StepCallback | None = None,
    on_phase: Callable[[str], None] | None = None,
    lineage: dict[str, str] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> Build:
    """Fingerprint the data, fix the lineage and open the registry: once per build
    (``lineage``: already computed for this spec by the caller, e.g. the CLI's reuse check)."""
    registry = registry if registry is not None else Registry()
    lineage = lineage if lineage is not None else build_lineage(spec, registry)
    return Build(spec, lineage, Path(output), registry, on_step, on_phase, on_scoring)


def run_plainly(name: str, step: Callable[..., T], *args: Any) -> T:
    """The default step runner: call the step."""
    return step(*args)


def run_chain(
    build: Build,
    run_step: StepRunner = run_plainly,
    *,
    on_locked: Callable[[Build], None] | None = None,
) -> BuildResult:
    """The chain: reuse an earlier build, or prepare, train, evaluate, register and promote.
    ``on_locked`` runs first once the build key's lock is held (a flow run claims the build:
    :func:`flows.flow_run_attempts.claim_build`)."""
    if build.on_phase is not None:
        announce, inner = build.on_phase, run_step

        def run_step(name: str, step: Callable[..., Any], *args: Any) -> Any:
            announce(name)
            return inner(name, step, *args)

    # one build of a build key at a time: the same spec, data and code started twice (a CI
    # build beside a scheduled one) would train twice into one checkpoint folder
    with build.registry.build_lock(build.key, on_wait=_said(build, _BUILDING_ELSEWHERE)):
        if on_locked is not None:
            on_locked(build)
        existing = run_step("find earlier build", find_built, build)
        if existing is not None:
            return reused_result(existing, build.spec)
        # a registry moved elsewhere, another registry's MLflow model of this name: refused
        # now, not after hours of training
        build.registry.check_writable()
        check_against_registry(build.spec, build.registry)  # a deployment's run: no CLI asked
        check_name_is_ours(tracking.client(), build.registry, build.spec.name)
        warn_of_a_damaged_champion(build.registry, build.spec)
        run_step("prepare data", prepare_data, build)
        report, run_id = run_step("train", train_tracked, build)
        report, card = run_step("evaluate", evaluate_tracked, build, report, run_id)
        result: BuildResult = run_step(
            "register and promote", register_and_promote, build, report, run_id, card
        )
        shutil.rmtree(build.checkpoints, ignore_errors=True)
        return result


def warn_of_a_damaged_champion(registry: Registry, spec: AdapterSpec) -> None:
    """A warning, before training, if the files of the version holding ``spec``'s promotion
    alias are missing or cut short in the artifact store (a request per file, downloading
    nothing): the gate found it only after training (:class:`GateError`), while a person who
    reads this can push its folder again meanwhile. The build still runs: its candidate is
    registered either way."""
    alias = spec.promote.alias
    champion = version_holding(registry, spec.name, alias)
    if champion is None:
        return
    damaged = registry.verify([champion.ref], quick=True).damaged
    if damaged:
        what = "; ".join(f"{d.file} is {d.problem}" for d in damaged)
        logging.getLogger(__name__).warning(
            "%s %s's files are damaged in the artifact store (%s): this build's gate cannot "
            "score it, and will register its candidate without promoting it, unless the folder "
            "%s came from is pushed again before training ends (`adapterops db verify %s`)",
            alias, champion.ref, what, champion.ref, spec.name,
        )  # fmt: skip


def build_from_spec(
    spec: AdapterSpec,
    registry: Registry,
    output: Path,
    *,
    on_step: StepCallback | None = None,
) -> BuildResult:
    """The whole chain without Prefect (the flow runs the same :func:`run_chain`)."""
    return run_chain(start_build(spec, output, registry=registry, on_step=on_step))


def build_lineage(spec: AdapterSpec, registry: Registry | None = None) -> dict[str, str]:
    """Dataset fingerprint, code version and the build key they make with the spec."""
    lineage = spec_lineage(spec)
    members = members_of_spec(spec)
    if members:  # a fusion over name@champion means different things as the champion moves
        registry = registry if registry is not None else Registry()
        members = [registry.get(ref).ref for ref in members]
    material = json.dumps([spec.model_dump(mode="json"), lineage, members], sort_keys=True)
    return {**lineage, "build_key": hashlib.sha256(material.encode()).hexdigest()}


def find_built(build: Build) -> AdapterVersion | None:
    """The version an earlier build of the same spec, data and code registered, if any."""
    for version in build.registry.find(name=build.spec.name):
        if version.lineage.get("build_key") == build.key:
            return version
    return None


def find_earlier_build(
    spec: AdapterSpec, lineage: dict[str, str], registry: Registry | None = None
) -> BuildResult | None:
    """The result of the build that registered this spec, data and code before, if any."""
    registry = registry if registry is not None else Registry()
    existing = find_built(Build(spec, lineage, Path(), registry))
    return reused_result(existing, spec) if existing is not None else None


def reused_result(version: AdapterVersion, spec: AdapterSpec) -> BuildResult:
    """The report of a build that found its version already registered."""
    promoted = spec.promote.alias in version.aliases
    return BuildResult(
        name=version.name,
        version=version.version,
        ref=version.ref,
        digest=version.digest,
        run_id=str(version.lineage.get("run_id", "")),
        mlflow_version=version.version,
        promoted=promoted,
        alias=spec.promote.alias if promoted else ",".join(version.aliases),
        decision="already built from this spec, data and code: nothing trained",
        metrics=dict(version.metrics),
        champion_metric=None,
        reused=True,
    )


def checkpoint_folder(spec: AdapterSpec, build_key: str) -> Path:
    """Where a build's training checkpoints live until it is registered."""
    return adapterops_home() / "checkpoints" / f"{spec.name}-{build_key[:16]}"


def prepare_data(build: Build) -> PreparedInfo:
    """Tokenise the spec's data into the cache (or find it there)."""
    return prepare_info(build.spec, fingerprint=build.fingerprint)


def train_tracked(build: Build) -> tuple[TrainReport, str]:
    """Train under a new MLflow run (params, tags, per-step curves); returns the report and run id.

    Checkpoints go to ``build.checkpoints``, so re-running a crashed build resumes it.
    """
    spec = build.spec
    registry_id = build.registry.identity
    tags = {f"adapterops.{k}": v for k, v in build.lineage.items()} | {REGISTRY_TAG: registry_id}
    if build.flow_run_id is not None:
        tags[FLOW_RUN_TAG] = build.flow_run_id
    tracker = tracking.RunTracker(spec, tags=tags)

    def observe(step: int, total: int, loss: float, learning_rate: float) -> None:
        tracker.on_step(step, total, loss, learning_rate)
        if build.on_step is not None:
            build.on_step(step, total, loss, learning_rate)

    def heard(step: int, loss: float) -> None:  # train.eval_every's validation losses
        tracker.on_evaluation(step, loss)
        if build.on_phase is not None:
            build.on_phase(evaluation_line(step, loss))

    in_processes = evaluated_in_training(spec)
    with tracker.run():
        _end_killed_builds(build, tracker)
        if build.on_phase is not None and (build.checkpoints / CHECKPOINT_FILE).is_file():
            build.on_phase(
                f"resuming from the checkpoint an earlier attempt left in {build.checkpoints}"
            )
        report = train_from_spec(
            spec,
            build.output,
            on_step=observe,
            evaluate_after=in_processes,
            checkpoint_dir=build.checkpoints,
            fingerprint=build.fingerprint,
            registry=build.registry,
            on_evaluation=heard,
            keep_outcomes=in_processes,
            on_scoring=build.on_scoring,
        )
        if report.resumed_from_step:
            tracker.on_resumed(
                report.resumed_from_step, report.losses, report.learning_rates, report.evaluations
            )
    if build.on_phase is not None:
        for line in outcome_lines(report, report.steps, spec.train.patience):
            build.on_phase(line)
    return report, tracker.run_id


def _end_killed_builds(build: Build, tracker: tracking.RunTracker) -> None:
    """End the MLflow runs of killed builds (and crash their Prefect flow runs), saying so.
    run_chain holds the build key's lock: a run of it still RUNNING is a dead process's, and
    so is one of another key whose lock no process holds."""
    with tracking.mlflow_errors("end the runs of killed attempts of this build"):
        ended = end_abandoned_runs(
            tracking.client(),
            tracker.experiment_id,
            build_key=build.key,
            registry_id=build.registry.identity,
            run_id=tracker.run_id,
            building=build.registry.building,
        )
    crashed = _crash_their_flow_runs(build, ended)
    if build.on_phase is not None:
        for run in ended:
            build.on_phase(_ended_line(run, build.key))
        for name in crashed:
            build.on_phase(f"Prefect flow run {name} of a killed build: Crashed")


def _crash_their_flow_runs(build: Build, ended: list[Run]) -> list[str]:
    """Crash the Prefect flow runs of killed builds whose MLflow runs were just ended (those of
    this build key were crashed when this flow run claimed it): only inside a flow run, whose
    server theirs were on."""
    if build.flow_run_id is None:
        return []
    from .flow_run_attempts import crash_flow_runs_of_killed_builds  # noqa: PLC0415 - Prefect

    theirs = [
        run.data.tags[FLOW_RUN_TAG]
        for run in ended
        if FLOW_RUN_TAG in run.data.tags and run.data.tags.get(BUILD_KEY_TAG) != build.key
    ]
    return crash_flow_runs_of_killed_builds(theirs)


def _ended_line(run: Run, build_key: str) -> str:
    """The phase line saying a killed build's MLflow run was ended."""
    if run.data.tags.get(BUILD_KEY_TAG) == build_key:
        return f"MLflow run {run.info.run_id} of a killed attempt of this build: ended KILLED"
    name = run.data.tags.get("adapterops.name", "?")
    return (
        f"MLflow run {run.info.run_id} of a killed build of {name} (another spec or data, "
        "no process building it): ended KILLED"
    )


def evaluate_tracked(build: Build, report: TrainReport, run_id: str) -> tuple[TrainReport, str]:
    """Evaluate the saved adapter, log metrics and artifacts to its run; returns the completed
    report and the model card (also written to the adapter folder as README.md). The run keeps
    each validation row beside the adapter's answer (``validation_answers.csv``). A build in
    several processes was evaluated by them (:func:`evaluated_in_training`)."""
    outcomes: list[RowOutcome] = report.outcomes
    if not evaluated_in_training(build.spec):
        outcomes = []
        report.metrics = evaluate_folder(
            build.spec,
            report.output,
            members=report.members,
            fingerprint=build.fingerprint,
            registry=build.registry,
            outcomes=outcomes,
            on_scoring=build.on_scoring,
        )
    write_report(report)
    tracker = tracking.RunTracker(build.spec)
    with tempfile.TemporaryDirectory() as scratch, tracker.run(resume=run_id):
        card = tracker.finish(
            report.to_dict(),
            Path(report.output),
            losses=report.losses,
            learning_rates=report.learning_rates,
            evaluations=report.evaluations,
            best_step=report.best_step,
            lineage=build.lineage,
            files=validation_answers(build, outcomes, Path(scratch)),
        )
    (Path(report.output) / "README.md").write_text(card)
    return report, card


def evaluated_in_training(spec: AdapterSpec) -> bool:
    """Whether a build of ``spec`` is evaluated by its training processes (``train.processes``
    N > 1: each scores a share of the rows, and under FSDP no process gathers the whole base)
    rather than by loading the saved adapter afresh in this process (one process: the adapter
    evaluated is the adapter as it loads)."""
    return launched_here(spec)


def validation_answers(build: Build, outcomes: list[RowOutcome], folder: Path) -> list[Path]:
    """``validation_answers.csv`` in ``folder``: each validation row the build scored beside
    its answer (``outcomes``, in the split's order). The split is read again, so nothing when
    its files changed since the build fingerprinted them (a file appended to while it trained):
    the rows read would not be the rows scored."""
    if dataset_fingerprint(build.spec) != build.fingerprint:
        logging.getLogger(__name__).warning(
            "%s: the data files changed while it was built; its run keeps no "
            "validation_answers.csv (the rows now there are not the rows it scored)",
            build.spec.name,
        )
        return []
    answers = folder / "validation_answers.csv"
    read = load_raw(build.spec, numbered=True)[1]  # the rows the cache holds as tokens
    tokenizer = load_tokenizer(build.spec)  # decodes generated answers
    write_answers(answers, answer_records(build.spec, tokenizer, read, outcomes))
    return [answers]


def register_and_promote(build: Build, report: TrainReport, run_id: str, card: str) -> BuildResult:
    """Bring alias moves made in the MLflow UI in first, then :func:`register_and_gate`.

    Safe to retry: registration is idempotent by digest, MLflow versions and alias moves are
    created only if missing.
    """
    said = _said(build, _GATE_ELSEWHERE)
    sync_aliases(
        build.registry,
        tracking.client(),
        [build.spec.name],
        on_wait=None if said is None else lambda _name: said(),
    )
    return register_and_gate(build, report, run_id=run_id, card=card)


_BUILDING_ELSEWHERE = "wait for another build of {name} from the same spec, data and code"
_GATE_ELSEWHERE = "wait for another gate of {name} to decide"


def _said(build: Build, line: str) -> Callable[[], None] | None:
    """A phase line (``line`` with the adapter's name) when a build waits for a lock another
    process holds: a build takes hours, a gate re-evaluating an LLM champion minutes."""
    if build.on_phase is None:
        return None
    announce, text = build.on_phase, line.format(name=build.spec.name)
    return lambda: announce(text)


def register_and_gate(
    build: Build,
    report: TrainReport,
    *,
    run_id: str,
    card: str,
) -> BuildResult:
    """Register the trained folder, mirror it in MLflow, and promote it if it beats the champion."""
    spec, registry = build.spec, build.registry
    measured = {k: float(v) for k, v in report.metrics.items() if isinstance(v, int | float)}
    numeric = {k: v for k, v in measured.items() if math.isfinite(v)}  # what the registry keeps
    version = registry.register(
        report.output,
        name=spec.name,
        base_model=spec.base_model,
        task=spec.task,
        language=spec.language,
        metrics=numeric,
        lineage={
            **build.lineage,
            "run_id": run_id,
            **({LINEAGE_KEY: report.members} if report.members else {}),
        },
        spec=spec.model_dump(mode="json"),
        description=spec.description,
        origin="build",
    )
    client = tracking.client()
    if run_id:
        tag_run(client, run_id, version)
    # from reading the champion to moving an alias, no other gate of this adapter (another
    # process's build) moves it: each weighs its candidate against what the one before left
    with registry.alias_lock(spec.name, on_wait=_said(build, _GATE_ELSEWHERE)):
        champion = version_holding(registry, spec.name, spec.promote.alias)  # once: card + gate
        if champion is not None and champion.version != version.version:  # what the gate weighs
            card += changes_since(spec.promote.alias, diff_versions(champion, version))
        description = version_description(version, spec.evaluate.metric, card)
        mirror_earlier_versions(client, registry, version)  # MLflow's numbers: the registry's
        mlflow_version = ensure_model_version(
            client, registry, version, run_id=run_id, description=description
        )
        policy = Policy.for_metric(spec.evaluate.metric, spec.promote.min_delta)
        decision, champion_metric = _gate(
            build, version, measured, policy, report, champion=champion
        )
        alias = spec.promote.alias if decision.promote else CHALLENGER
        if alias not in version.aliases:
            promote(registry, client, version.ref, alias, origin="gate")
    if run_id:  # after the gate: the aliases where they now stand
        log_trend(client, run_id, registry.find(name=spec.name), spec.evaluate.metric)
    return BuildResult(
        name=version.name,
        version=version.version,
        ref=version.ref,
        digest=version.digest,
        run_id=run_id,
        mlflow_version=mlflow_version,
        promoted=decision.promote,
        alias=alias,
        decision=decision.reason,
        metrics=numeric,
        champion_metric=champion_metric,
    )


def _check_whole(
    registry: Registry,
    champion: AdapterVersion,
    candidate: AdapterVersion,
    alias: str,
    metric: str,
    *,
    quick: bool = False,
) -> None:
    """:class:`GateError` if the champion's stored files are damaged: a damaged one failed the
    build with the champion's download error, as bad input (exit 2), and said nothing of the
    candidate it had registered. ``quick``: each file's presence and size (missing or cut-short
    files), before the base model loads to score it (minutes for an LLM), downloading nothing:
    reading every file back there downloaded the champion twice (gigabytes for a full
    fine-tune); the load's own download checks each file's digest."""
    damaged = registry.verify([champion.ref], quick=quick).damaged
    if damaged:
        what = "; ".join(f"{d.file} is {d.problem} ({d.uri})" for d in damaged)
        raise GateError(
            f"{candidate.ref} is registered, not promoted: the gate cannot score {alias} "
            f"{champion.ref}, whose files are damaged in the artifact store: {what}. "
            f"`adapterops promote {candidate.ref}` makes it {alias} if its recorded {metric} is "
            f"no worse (a build of this spec now returns it without a gate); pushing the folder "
            f"{champion.ref} came from again repairs that one (`adapterops db verify` lists every "
            "damaged file)"
        )


def _gate(
    build: Build,
    candidate: AdapterVersion,
    metrics: dict[str, float],
    policy: Policy,
    report: TrainReport,
    *,
    champion: AdapterVersion | None,
) -> tuple[Decision, float | None]:
    """The decision, with the champion re-evaluated on this spec's validation data.

    An adapter whose training diverged (a loss that is not a finite number) is never promoted,
    whatever its metric says: a NaN model predicts one class and can still score 50%.
    """
    spec = build.spec
    value = metrics.get(policy.metric, math.nan)
    diverged = [loss for loss in [*report.losses, report.final_loss] if not math.isfinite(loss)]
    if diverged:
        reason = f"training diverged (loss {diverged[0]}): not promoted"
        return Decision(False, reason, value, None, "not-better"), None
    if champion is None:
        return decide(value, None, policy), None
    if champion.version == candidate.version:  # a re-run of the build that promoted it
        return Decision(True, "already the champion", value, value, "better"), value
    damage = (build.registry, champion, candidate, spec.promote.alias, policy.metric)
    _check_whole(*damage, quick=True)
    try:
        measured = evaluate_registered(
            spec, champion.ref, build.registry, fingerprint=build.fingerprint
        )
    except CorruptArtifactError:  # same-size damage, which only the download's digest sees
        _check_whole(*damage)  # said as the listing's damage is: the candidate, how to go on
        raise
    champion_value = float(measured[policy.metric])
    return decide(value, champion_value, policy), champion_value
