"""Every training run is an MLflow run: spec as params, loss and learning rate per step, metrics,
tags, and artifacts (adapter files, model card, evaluation report, plots).

The tracking location is ``MLFLOW_TRACKING_URI`` (a server: ``http://host:5000``) or, by default,
an embedded store under ``ADAPTEROPS_HOME`` (``mlflow.db`` + ``mlartifacts/``) that
``mlflow ui --backend-store-uri sqlite:///.adapterops/mlflow.db`` opens.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from boto3.exceptions import Boto3Error
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.locks import file_lock_if_writable
from registry.redaction import redact
from registry.settings import adapterops_home

from .errors import TrackingAccessError, TrackingUnavailableError, one_line
from .mlflow_names import NOTE_TAG, model_prefix
from .reachable import check_answers, check_mlflow_store, store_down_message
from .stopping import stop_reason

if TYPE_CHECKING:
    from .spec import AdapterSpec

__all__ = [
    "EXPERIMENT",
    "RunTracker",
    "check_not_the_registry",
    "check_reachable",
    "check_tracking_uri",
    "client",
    "configure",
    "experiment_name",
    "flatten",
    "mlflow_errors",
    "tracking_uri",
]

EXPERIMENT = "adapterops"
# MLflow 3 opens an experiment without this tag on its GenAI overview; ours are training runs.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
RERUN_COMPLETES = "re-running the command completes the work."  # ends every MLflow error
_FLUSH_EVERY = 25  # steps per batch of metrics sent to the server


def home() -> Path:
    """``ADAPTEROPS_HOME`` (the embedded defaults' folder)."""
    return adapterops_home()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the embedded SQLite store under ``ADAPTEROPS_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def experiment_name() -> str:
    """The experiment this registry's runs go to: ``adapterops``, after
    ``ADAPTEROPS_MLFLOW_PREFIX`` (registries sharing a server keep their runs apart too)."""
    return f"{model_prefix()}{EXPERIMENT}"


def configure() -> str:
    """Point MLflow at the tracking location and return the experiment id (a prefix written
    wrong is refused first)."""
    experiment_named = experiment_name()
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        home().mkdir(parents=True, exist_ok=True)
    check_tracking_uri(uri)
    check_reachable(uri)
    check_not_the_registry(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _first_use_serialised(uri), mlflow_errors("find the experiment"):
        experiment = mlflow.get_experiment_by_name(experiment_named)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                _restore(MlflowClient(uri), experiment.experiment_id, experiment_named)
            if experiment.tags.get(KIND_TAG) != KIND:  # made by an earlier version of ours
                mlflow.MlflowClient(uri).set_experiment_tag(
                    experiment.experiment_id, KIND_TAG, KIND
                )
            return str(experiment.experiment_id)
        # Embedded: artifacts next to the database; a server decides its own artifact location.
        location = (home() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        try:
            return str(
                mlflow.create_experiment(
                    experiment_named, artifact_location=location, tags={KIND_TAG: KIND}
                )
            )
        except MlflowException as exc:
            # Concurrent flow runs on a fresh server: another one created it since our lookup.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = mlflow.get_experiment_by_name(experiment_named)
            if created is None:
                raise
            return str(created.experiment_id)


def _restore(client: MlflowClient, experiment_id: str, name: str) -> None:
    """Bring back our experiment from MLflow's trash: deleted in the UI, it failed every run
    created in it ("must be in the 'active' state") with an error that re-running never fixed.
    Its runs are the sources of the registry's MLflow versions, so it is restored, not
    replaced (MLflow keeps the name of a deleted experiment taken anyway)."""
    try:
        client.restore_experiment(experiment_id)
    except MlflowException:
        if client.get_experiment(experiment_id).lifecycle_stage == "deleted":
            raise
        return  # another process restored it first
    warnings.warn(
        f"MLflow experiment {name!r} was deleted (in MLflow's trash): restored, since the runs "
        "of the registry's versions live there; to track elsewhere, set MLFLOW_TRACKING_URI",
        RuntimeWarning,
        stacklevel=2,  # configure's line: ours, so the CLI prints it as one "warning:" line
    )


@contextmanager
def _first_use_serialised(uri: str) -> Iterator[None]:
    """One process at a time through the first touch of a SQLite store: MLflow creates and
    migrates a new database file without a lock, and processes that open a new store at once
    (builds started together on a fresh home: CI jobs, a worker's scheduled runs) failed in
    MLflow's migrations ("Online migration expected to match one row"). The lock file lies
    beside the database. A server's store (``http://``) migrates under its own server."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if path is None or path in _SERIALISED or path == ":memory:":
        yield
        return
    with file_lock_if_writable(f"{path}.lock"):
        yield
    _SERIALISED.add(path)  # this process's store is open now: later calls need no lock


_SERIALISED: set[str] = set()  # SQLite stores this process has opened under the lock


def client() -> MlflowClient:
    """A client for the configured location."""
    configure()
    return MlflowClient(tracking_uri(), registry_uri=tracking_uri())


def check_reachable(uri: str) -> None:
    """A tracking server that does not answer fails now, in one request: MLflow's client retries
    a refused connection with backoff for about four minutes, so a wrong MLFLOW_TRACKING_URI
    looked like a hung command; nor does one whose own database is down (one API call, no
    retries). The embedded store (``sqlite:``) needs no check."""
    if uri.startswith(("http://", "https://")):
        check_answers(
            uri, service="MLflow", variable="MLFLOW_TRACKING_URI", then=RERUN_COMPLETES,
            error=TrackingUnavailableError,
        )  # fmt: skip
        check_mlflow_store(
            uri, experiment_name(), error=TrackingUnavailableError, then=RERUN_COMPLETES
        )


_URI_FORMS = (
    "write sqlite:////absolute/path/mlflow.db (or sqlite:///relative/path.db) for a local store, "
    "or a tracking server's http://HOST:5000, or unset it for the embedded store under "
    "ADAPTEROPS_HOME"
)


def check_tracking_uri(uri: str) -> None:
    """Tracking URIs MLflow would fail on late or with a traceback, refused in one line: a plain
    folder path or ``file:`` (MLflow's file store, which MLflow 3 no longer serves here), a
    SQLite URI with a host (``sqlite://mlflow.db``) and a page of the UI copied from a browser
    (``http://host:5000/#/experiments/1``: its HTML was "not in a valid JSON format")."""
    if uri.startswith(("http://", "https://")) and "#" in uri:
        root = uri.split("#", 1)[0].rstrip("/")
        raise TrackingUnavailableError(
            f"MLFLOW_TRACKING_URI {uri} is a page of MLflow's UI (from '#' on; the server's root "
            f"is {root}): {_URI_FORMS}"
        )
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        raise TrackingUnavailableError(
            f"MLFLOW_TRACKING_URI {uri} is a folder (MLflow's file store, which MLflow 3 keeps "
            f"in maintenance mode and adapterops does not use): {_URI_FORMS}"
        )
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only for SQLite URIs
        from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

        try:
            host = make_url(uri).host
        except ArgumentError:
            host = "?"
        if host:
            raise TrackingUnavailableError(
                f"MLFLOW_TRACKING_URI {uri} is not a SQLite URI MLflow reads (three slashes, "
                f"then the path): {_URI_FORMS}"
            )


@cache
def check_not_the_registry(uri: str) -> None:
    """A tracking URI naming the registry's database (``sqlite:///.adapterops/registry.db``, or
    the same PostgreSQL database) is refused before MLflow opens it: MLflow creates its tables
    in any database it is given, then fails on the registry's schema revision, with a
    traceback. Checked once per process and URI."""
    if "://" not in uri or uri.startswith(("http://", "https://", "file:", "databricks")):
        return
    from registry.db import holds_registry_schema  # noqa: PLC0415 - SQLAlchemy: database URIs only

    if holds_registry_schema(uri):
        raise TrackingUnavailableError(
            f"MLFLOW_TRACKING_URI {redact(uri)} is the registry's database: MLflow would write "
            "its own tables into it. Give MLflow a database of its own (unset "
            "MLFLOW_TRACKING_URI for the embedded one under ADAPTEROPS_HOME)"
        )


@contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """MLflow and connection failures become :class:`TrackingUnavailableError` with the location;
    a refusal of the credentials or of a permission, :class:`TrackingAccessError`."""
    try:
        yield
    # a run whose artifacts this client writes to S3 (boto3 wraps a refused upload, a wrong
    # secret say, in its S3UploadFailedError)
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise TrackingUnavailableError(_direct_s3_message(action, exc)) from None
    except (MlflowException, OSError) as exc:
        reason = " ".join(str(exc).split())[:400]
        code = exc.error_code if isinstance(exc, MlflowException) else None
        if code in _ACCESS_ERRORS:
            raise TrackingAccessError(_access_message(str(code), action, reason)) from None
        if code == "ENDPOINT_NOT_FOUND":  # a server answers there, but not MLflow's API
            raise TrackingUnavailableError(
                f"MLflow at {tracking_uri()} could not {action}: no MLflow API answers there "
                f"({reason[:200]}): MLFLOW_TRACKING_URI must be an MLflow tracking server's "
                "root address (http://host:5000)"
            ) from None
        if code is not None and code not in _OUTAGES:  # its answer: a re-run gets it again
            raise TrackingUnavailableError(
                f"MLflow at {tracking_uri()} refused to {action}: {reason}"
            ) from None
        # 503 is MLflow's answer while its database is unreachable (TEMPORARILY_UNAVAILABLE);
        # a 500 may be its artifact store's, which the line below names by `action`
        if "too many 503 error" in reason:  # (urllib3's words, once its retries are spent)
            every_try = f"it answered every try to {action} with 503 Service Unavailable"
            raise TrackingUnavailableError(
                store_down_message(tracking_uri(), every_try, RERUN_COMPLETES)
            ) from None
        raise TrackingUnavailableError(
            f"MLflow at {tracking_uri()} could not {action}: {reason}. Check MLFLOW_TRACKING_URI "
            f"and that the server runs; {RERUN_COMPLETES}"
        ) from None


_ACCESS_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's codes for 401 and 403
# MLflow's codes for a server that could not answer now (5xx, 429, a lost connection: its
# client's retries ran out); any other code is its answer to this request
_OUTAGES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "IO_ERROR")


def _direct_s3_message(action: str, exc: BotoCoreError | ClientError | Boto3Error) -> str:
    """What to do when this client could not write a run's artifacts to S3 itself: a server
    whose ``--default-artifact-root`` is an ``s3://`` location (or that runs with
    ``--no-serve-artifacts``) hands its clients that location, and boto3's bare
    ``NoCredentialsError`` reached the terminal (exit 1) with no word of MLflow."""
    reason = " ".join(str(exc).split())[:300]
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        way_on = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) here"
    elif isinstance(exc, EndpointConnectionError):
        way_on = (
            "set MLFLOW_S3_ENDPOINT_URL to the S3 server's address (SeaweedFS, MinIO: "
            "http://host:8333) if it is not AWS, and check that it answers"
        )
    else:  # S3 refused (a wrong secret, a bucket they may not write)
        way_on = (
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY here, and that they may write "
            "to that bucket"
        )
    return (
        f"MLflow at {tracking_uri()} could not {action}: this machine writes the run's artifacts "
        f"to S3 itself (the server's artifact root is an s3:// location it does not proxy) and "
        f"failed ({reason}): {way_on}, or have the server store artifacts for its clients "
        "(mlflow server --artifacts-destination s3://... without --default-artifact-root)"
    )


def _access_message(code: str, action: str, reason: str) -> str:
    """What to do when MLflow refused the credentials (``UNAUTHENTICATED``) or the user's
    permission (``PERMISSION_DENIED``) to ``action``."""
    if code == "UNAUTHENTICATED":
        return (
            f"MLflow at {tracking_uri()} refused to {action} without valid credentials "
            f"({reason}): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
            "MLFLOW_TRACKING_TOKEN) to a user of that server"
        )
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(MLFLOW_TRACKING_USERNAME unset)"
    return (
        f"MLflow at {tracking_uri()} refused to {action}: user {user} lacks the permission "
        f"({reason}). An MLflow admin grants it (EDIT on the {experiment_name()} experiment and "
        "MANAGE on the registered models this registry mirrors), or run as a user who has it"
    )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"batch_size": 32}}`` -> ``{"train.batch_size": "32"}`` (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def log_evaluation_run(
    run_name: str,
    *,
    params: dict[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: Sequence[Path] = (),
) -> str:
    """One finished MLflow run that records an evaluation without training (the cascade's
    scoring of a composition), with ``artifacts`` (files) beside it; returns its id."""
    experiment_id = configure()
    tracker = client()
    with mlflow_errors("record an evaluation run"):
        run = tracker.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        for key, value in params.items():
            tracker.log_param(run_id, key, value)
        for key, number in metrics.items():
            tracker.log_metric(run_id, key, number)
        for file in artifacts:  # a reviewer opens the answers beside the numbers in the UI
            tracker.log_artifact(run_id, str(file))
        tracker.set_terminated(run_id, "FINISHED")
    return run_id


class RunTracker:
    """One MLflow run around one training: open it, feed it steps, close it with the results."""

    def __init__(self, spec: AdapterSpec, *, tags: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.extra_tags = tags or {}
        self.run_id = ""
        self.experiment_id = ""
        self._pending: list[Metric] = []

    @contextmanager
    def run(self, *, resume: str | None = None) -> Iterator[RunTracker]:
        """Start the run (params and tags now), or reopen run ``resume`` (a later step of the same
        build); end it FINISHED, FAILED, or KILLED when the process was asked to stop (SIGTERM,
        Ctrl-C)."""
        experiment_id = configure()
        # renamed name@VERSION once registered; until then, the time it started
        started = f"{self.spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        with mlflow_errors("start a run"):
            active = mlflow.start_run(
                run_id=resume,
                experiment_id=experiment_id,
                run_name=None if resume else started,
            )
        self.run_id, self.experiment_id = active.info.run_id, experiment_id
        status = "FAILED"
        try:
            with mlflow_errors("log parameters"):
                mlflow.log_params(flatten(self.spec.model_dump(mode="json")))
                mlflow.set_tags(
                    {
                        "adapterops.name": self.spec.name,
                        "adapterops.base_model": self.spec.base_model,
                        "adapterops.task": self.spec.task,
                        "adapterops.language": self.spec.language,
                        "adapterops.method": self.spec.method.type,
                        **self.extra_tags,
                    }
                )
            if resume is None:
                # Written now, not with the results: an artifact store the server cannot
                # write to (its S3 credentials or bucket) failed a build only after training.
                with mlflow_errors("write to its artifact store (the run's spec.yaml)"):
                    mlflow.log_dict(self.spec.model_dump(mode="json"), "spec.yaml")
            yield self
            status = "FINISHED"
        except BaseException as exc:
            if stop_reason(exc) is not None:  # asked to stop, not failed: as MLflow's UI says it
                status = "KILLED"
            self._note_failure(exc)
            raise
        finally:
            self._end(status, failing=sys.exc_info()[1] is not None)

    def _note_failure(self, exc: BaseException) -> None:
        """Say on the run why it failed or stopped (``adapterops.error`` and its note in the
        UI): a reviewer saw FAILED and nothing more, the reason only in a terminal or Prefect's
        log. Not when MLflow itself failed (nothing more can be written there), and never over
        the failure being raised: a note MLflow refuses is dropped."""
        if isinstance(exc, TrackingUnavailableError | TrackingAccessError):
            return
        stopped = stop_reason(exc)
        if stopped is not None:
            said = stopped
            note = (
                f"Killed: {stopped} before it finished. The next attempt of this build (the "
                "same command) carries on from its last checkpoint, if it saved one."
            )
        else:
            said = redact(one_line(exc))
            note = f"Failed: {said}"
        client = MlflowClient(tracking_uri())
        try:
            client.set_tag(self.run_id, "adapterops.error", said)
            if not client.get_run(self.run_id).data.tags.get(NOTE_TAG):
                client.set_tag(self.run_id, NOTE_TAG, note)
        except (MlflowException, OSError):  # failing already: the first error is the one to see
            pass

    def _end(self, status: str, *, failing: bool) -> None:
        """Send the last steps and end the run. When the run's work failed already (MLflow
        gone mid-run, often), a failure here is not raised over it: MLflow's bare error from
        ending the run hid the one line that said what happened (exit 1 instead of 2)."""
        try:
            self._flush()
            with mlflow_errors("end the run"):
                mlflow.end_run(status=status)
        except TrackingUnavailableError:
            if not failing:
                raise

    def on_step(self, step: int, total: int, loss: float, learning_rate: float) -> None:
        """Record one optimiser step (sent in batches)."""
        del total
        timestamp = _now_ms()
        self._pending += [
            Metric("train_loss", loss, timestamp, step),
            Metric("learning_rate", learning_rate, timestamp, step),
        ]
        if len(self._pending) >= 2 * _FLUSH_EVERY:
            self._flush()

    def on_evaluation(self, step: int, loss: float) -> None:
        """Record the validation loss measured during training (``train.eval_every``)."""
        self._pending.append(Metric("val_loss", loss, _now_ms(), step))

    def on_resumed(
        self,
        step: int,
        losses: Sequence[float],
        learning_rates: Sequence[float],
        evaluations: Sequence[Sequence[float]],
    ) -> None:
        """Record the steps a checkpoint brought back (training resumed at ``step``), so the
        run that finishes a build holds its whole curve, not the part after the restart."""
        timestamp = _now_ms()
        for done, (loss, learning_rate) in enumerate(
            zip(losses[:step], learning_rates[:step], strict=True)
        ):
            self._pending += [
                Metric("train_loss", loss, timestamp, done),
                Metric("learning_rate", learning_rate, timestamp, done),
            ]
        for evaluated, loss in evaluations:
            if evaluated <= step:  # (measured before the checkpoint of that step was written)
                self._pending.append(Metric("val_loss", loss, timestamp, int(evaluated)))
        self._flush()

    def finish(
        self,
        report: dict[str, Any],
        adapter_folder: Path,
        *,
        losses: list[float],
        learning_rates: list[float],
        lineage: dict[str, Any],
        files: Sequence[Path] = (),
        evaluations: Sequence[Sequence[float]] = (),
        best_step: int | None = None,
    ) -> str:
        """Log metrics, lineage tags and artifacts (``files`` too, by their names); returns the
        model card's text."""
        # peft_core (torch) and matplotlib load here, not at import: promote needs only the client
        from .model_card import model_card  # noqa: PLC0415
        from .plots import confusion_matrix_plot, loss_curve_plot  # noqa: PLC0415

        card = model_card(self.spec, report, lineage=lineage)
        numeric = {
            f"eval_{k}": float(v)
            for k, v in report["metrics"].items()
            if isinstance(v, int | float)
        }
        with mlflow_errors("log results"), tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            mlflow.log_metrics(
                numeric
                | {
                    "trainable_params": report["trainable_params"],
                    "adapter_bytes": report["adapter_bytes"],
                }
            )
            mlflow.set_tags(
                {f"adapterops.{k}": str(v) for k, v in lineage.items() if v is not None}
            )
            mlflow.log_artifacts(str(adapter_folder), artifact_path="adapter")
            (folder / "README.md").write_text(card)
            (folder / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
            loss_curve_plot(
                losses,
                learning_rates,
                folder / "loss_curve.png",
                title=f"{self.spec.name}: training loss",
                evaluations=evaluations,
                best_step=best_step,
            )
            if "confusion_matrix" in report["metrics"]:
                confusion_matrix_plot(
                    report["metrics"]["confusion_matrix"],
                    folder / "confusion_matrix.png",
                    labels=self.spec.head.label_names,
                    title=f"{self.spec.name}: validation",
                )
            mlflow.log_artifacts(str(folder))
            for file in files:
                mlflow.log_artifact(str(file))
        return card

    def _flush(self) -> None:
        if not self._pending or not self.run_id:
            return
        batch, self._pending = self._pending, []
        with mlflow_errors("log training metrics"):
            MlflowClient(tracking_uri()).log_batch(self.run_id, metrics=batch)


def _now_ms() -> int:
    return int(time.time() * 1000)
