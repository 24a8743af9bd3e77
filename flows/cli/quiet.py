"""What libraries print, kept off the terminal: the CLI's output is our progress, results and
one line per problem. Each function says what it quiets and why; failures always still show."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

__all__ = [
    "plain_warnings",
    "quiet_foreign_deprecations",
    "quiet_libraries",
    "quiet_mlflow",
    "quiet_optional_kernels",
]


def quiet_optional_kernels() -> None:
    """torchao (the QLoRA extra), imported by peft and transformers when installed, logs every
    optional CUDA kernel it cannot load on this machine and the torch deprecations it trips:
    noise on every command. Cheap (no import): the CLI's entry point calls it."""
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def plain_warnings() -> None:
    """Our own warnings print as ``warning: ...``, one line, as errors print ``error: ...``;
    Python's form (file, line number, the ``warnings.warn(`` source line) tells a user nothing.
    Other libraries' warnings keep it: there the location is what one reports upstream."""
    ours = tuple(
        str(Path(folder).resolve()) + os.sep
        for package in ("flows", "peft_core", "registry", "infra")
        if (found := importlib.util.find_spec(package)) is not None  # finds, imports nothing
        for folder in found.submodule_search_locations or ()
    )
    default_format = warnings.formatwarning

    def format_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if str(Path(filename).resolve()).startswith(ours):
            return f"warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


def quiet_foreign_deprecations() -> None:
    """Deprecations one library trips in another, which nobody running a command can act on:
    peft calls transformers' ``is_gradient_checkpointing`` (a FutureWarning on every load of an
    OFT and the other tuners peft runs). The test settings ignore the same one."""
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


def quiet_mlflow() -> None:
    """MLflow logs creating and migrating its embedded database (two INFO lines on the first
    command run with a new ``ADAPTEROPS_HOME``, before any answer), and on a server each model
    version's registration and each run's links; its failures still show."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # and, on a tracking server, waiting for each new model version to be READY (it is at once)
    logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)
    # and its two links at every run's end (a build ends two runs: four lines, on stdout, under
    # the run's first name); `build` prints one link, to the version a reviewer promotes
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def quiet_libraries() -> None:
    """Keep the terminal for our progress and results: no load reports, no per-map bars.

    transformers reports that a new classification head was initialised (expected here) and
    datasets draws a bar for every small map; both drown the output people read.
    """
    quiet_optional_kernels()
    import datasets  # noqa: PLC0415 - heavy: only commands that train call this
    import transformers  # noqa: PLC0415

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if "prefect" in sys.modules:  # commands that run flows import it first
        _run_failures_to_the_run_log()


def _run_failures_to_the_run_log() -> None:
    """A failure inside a flow run makes Prefect print the task's traceback, then the flow's
    (~100 lines) before our one line. Those records stay in the run's log (Prefect's API
    handler: the UI and ``prefect flow-run logs``); the terminal keeps warnings and our line."""
    from prefect.logging.handlers import PrefectConsoleHandler  # noqa: PLC0415

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _RUN_ERRORS not in handler.filters:
            handler.addFilter(_RUN_ERRORS)


def _is_not_a_run_error(record: logging.LogRecord) -> bool:
    from_a_run = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
    return not (from_a_run and record.levelno >= logging.ERROR)


_RUN_ERRORS = logging.Filter()
_RUN_ERRORS.filter = _is_not_a_run_error  # type: ignore[method-assign]
