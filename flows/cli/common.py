"""What every command shares: consoles, ``--json``, exit codes, and bad input as one clear line."""

from __future__ import annotations

import errno
import io
import json
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

import registry as rg
from registry.folders import check_folder_to_write
from registry.redaction import redact

from ..data_files import check_spec_data_files
from ..errors import (
    BaseModelNotFound,
    DataError,
    MlflowNameError,
    OrchestrationError,
    PromotionRefusedError,
    StackError,
    TrackingAccessError,
    TrackingUnavailableError,
)
from ..spec_document import SpecError, read_spec_document
from ..text_sequences import SpooledTexts

__all__ = [
    "EXIT_BAD_INPUT",
    "LOADING_FLOW_LIBRARIES",
    "BatchSizeOption",
    "JsonOption",
    "LabelColumnOption",
    "MaxNewTokensOption",
    "PredictDataOption",
    "PredictionsOutOption",
    "ReplaceOption",
    "SkipProbeOption",
    "TextColumnOption",
    "TextOption",
    "checkable_before_mlflow",
    "console",
    "counting",
    "counting_with_steps",
    "drop_mirror",
    "emit_json",
    "errors",
    "from_stack_env",
    "human_bytes",
    "input_texts",
    "labelled",
    "mlflow_after_sync",
    "prefect_answers",
    "prefect_settings_valid",
    "print_columns",
    "require_known",
    "require_spec_file",
    "spec_files",
    "start_temporary_prefect",
    "user_errors",
    "waiting",
    "warn",
]

# What predict commands take: the texts, and whether to skip the golden probes.
TextOption = Annotated[
    list[str] | None,
    typer.Option(
        "--text", help="Input text (repeatable; - reads one text per line from standard input)."
    ),
]
PredictDataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        metavar="FILE",
        help="A TSV/CSV/JSON/Parquet file: the texts in the column(s) the spec reads "
        "(data.text, and data.text_pair for pairs).",
    ),
]
PredictionsOutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        metavar="FILE",
        help="Write the answers to a .jsonl, .csv or .tsv file, a line per text (and REF), as "
        "they come, instead of printing them: for a --data file of any length.",
    ),
]
ReplaceOption = Annotated[
    bool, typer.Option("--force", help="Replace the --out file if it exists.")
]
TextColumnOption = Annotated[
    str | None,
    typer.Option(
        "--text-column",
        metavar="NAME",
        help="The --data file's column holding the texts, when it is not the one the spec reads "
        "(a version pushed without a spec reads `sentence`).",
    ),
]
LabelColumnOption = Annotated[
    str | None,
    typer.Option(
        "--label-column",
        metavar="NAME",
        help="The --data file's column holding a classifier's labels, when it is not the one "
        "the spec reads (a version pushed without a spec reads `label`).",
    ),
]
SkipProbeOption = Annotated[
    bool,
    typer.Option(
        "--skip-probe", help="Do not re-run the golden probes that catch wrong base weights."
    ),
]
BatchSizeOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Rows per forward pass (each text takes a row per REF); lower it if memory runs out.",
    ),
]
MaxNewTokensOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Tokens a causal-LM adapter's continuation may take (default 20); it stops "
        "earlier at its end token.",
    ),
]

# markup=False: names, texts and messages print as written; "[sic]" in a text or "[q, v]" in a
# message is not a style to drop. Styles are given as Text(..., style=...) instead.
console = Console(markup=False)
errors = Console(stderr=True, markup=False)

EXIT_BAD_INPUT = 2


def _user_error_types() -> tuple[type[Exception], ...]:
    """Exception types that mean bad input. peft_core and the spec module are heavy (torch), so
    registry commands never import them; an error of theirs can only exist once they are loaded."""
    types: list[type[Exception]] = [
        DataError,
        BaseModelNotFound,
        TrackingUnavailableError,
        TrackingAccessError,
        MlflowNameError,
        OrchestrationError,
        PromotionRefusedError,
        StackError,
        SpecError,
        rg.RegistryError,
    ]
    if "peft_core" in sys.modules:
        types.append(sys.modules["peft_core"].PeftCoreError)
    return tuple(types)


def prefect_settings_valid() -> None:
    """Prefect reads its settings from ``PREFECT_*`` variables when first asked for one: a value
    it refuses (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=abc``, or under its least of 30) was
    pydantic's error about ``FlowsSettings`` deep inside the command. Said here, naming the
    variables, as bad input. Called outside a spinner: what Prefect's import prints on standard
    error is held until the settings are known good."""
    from pydantic import ValidationError  # noqa: PLC0415

    said = io.StringIO()
    with redirect_stderr(said):  # Prefect's import says "Failed to initialize plugins: ..." too
        from prefect.settings import get_current_settings  # noqa: PLC0415 - flows only
    try:
        get_current_settings()
        sys.stderr.write(said.getvalue())  # whatever else its import said, as it said it
    except ValidationError as exc:
        refused = [
            f"{_prefect_variable(exc.title, problem['loc'])}={problem.get('input')!r} "
            f"({problem['msg'].lower()})"
            for problem in exc.errors()
        ]
        raise OrchestrationError(
            f"Prefect refuses its settings in this environment: {'; '.join(refused)}: "
            f"fix or unset {'it' if len(refused) == 1 else 'them'}"
        ) from None


def _prefect_variable(model: str, location: tuple[Any, ...]) -> str:
    """The environment variable of Prefect's setting ``location`` in its settings class named
    ``model`` (``FlowsSettings``, ``heartbeat_frequency``: PREFECT_FLOWS_HEARTBEAT_FREQUENCY)."""
    from prefect.settings.models.root import Settings  # noqa: PLC0415
    from pydantic_settings import BaseSettings  # noqa: PLC0415

    field = "_".join(str(part) for part in location).upper()
    pending: list[type[BaseSettings]] = [Settings]
    while pending:
        settings = pending.pop()
        if settings.__name__ == model:
            return f"{settings.model_config.get('env_prefix') or 'PREFECT_'}{field}"
        pending += [
            f.annotation
            for f in settings.model_fields.values()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseSettings)
        ]
    return f"the Prefect setting {field.lower()} of {model}"


def prefect_answers() -> None:
    """With a Prefect server configured (``PREFECT_API_URL``, from the environment or a Prefect
    profile), it must answer before a flow starts: one line now, not Prefect's own error from
    inside the flow's start. Without one, flows run on a temporary local server, whose database
    lives under ``PREFECT_HOME``: that folder is made here, parents too (Prefect makes none);
    :func:`start_temporary_prefect` starts the server."""
    prefect_settings_valid()  # (it imports Prefect first)
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME  # noqa: PLC0415 - flows only

    from registry.settings import adapterops_home  # noqa: PLC0415

    from ..reachable import check_answers, check_prefect_login  # noqa: PLC0415

    adapterops_home()  # a file there: one line now (flows keep caches and checkpoints in it)
    url = PREFECT_API_URL.value()
    if not url:
        PREFECT_HOME.value().mkdir(parents=True, exist_ok=True)
    else:
        check_answers(
            str(url), service="Prefect", variable="PREFECT_API_URL", error=OrchestrationError,
            then="or unset it to run flows on a temporary local server",
        )  # fmt: skip
        check_prefect_login(str(url), OrchestrationError)
        _warn_of_rare_heartbeats()


def _warn_of_rare_heartbeats() -> None:
    """A flow run on a server ``adapterops deploy`` set up is Crashed once silent for
    SILENT_SECONDS: heartbeats rarer than deploy allows would end this command's flow runs
    while they work."""
    from ..unresponsive_runs import heartbeat_problem  # noqa: PLC0415

    problem = heartbeat_problem()
    if problem is not None:
        warn(f"{problem}; this command's flow runs could be set Crashed while they work")


def start_temporary_prefect(announce: Callable[[str], None] | None = None) -> None:
    """Without ``PREFECT_API_URL``, start the temporary server Prefect would start at the first
    flow's first call, after ``announce`` says so (a build's phase), and wait until it answers:
    6 s, 20 s in a new home (it migrates a new database), which people took for a hang before
    the build's first line. Prefect keeps one per process: the flows take this one, and Prefect
    stops it at exit; one a killed command left running is stopped first
    (:mod:`.orphans`). Call :func:`prefect_answers` first."""
    from prefect.server.api.server import SubprocessASGIServer  # noqa: PLC0415 - flows only
    from prefect.settings import (  # noqa: PLC0415
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    from .orphans import owned_by_this_process, stop_orphaned_servers  # noqa: PLC0415

    if PREFECT_API_URL.value():
        return
    for pid in stop_orphaned_servers():
        if announce is not None:
            announce(
                f"stopped a temporary Prefect server (pid {pid}) that a killed command had "
                "left running"
            )
    if announce is not None:
        announce("start a temporary Prefect server (PREFECT_API_URL is not set)")
    try:
        with owned_by_this_process():  # the next command stops it if this one is killed
            SubprocessASGIServer().start()
    except RuntimeError as exc:  # "Timed out while attempting to connect to ephemeral ..."
        waited = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        raise OrchestrationError(
            f"Prefect's temporary server did not answer within {waited} s "
            f"({str(exc).splitlines()[0]}): allow it longer with "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a Prefect server "
            "(`adapterops stack up` starts one) and set PREFECT_API_URL"
        ) from None


def input_texts(texts: list[str] | None) -> Sequence[str]:
    """``--text`` values, with ``-`` standing for the lines of standard input (blank lines
    skipped): ``cut -f1 reviews.tsv | adapterops predict NAME --text -``. None given: none.
    Lines from standard input go to a temporary file as they are read (:class:`SpooledTexts`),
    not into a list: a pipe of millions of lines costs 8 bytes a line until predict reads
    them a window at a time."""
    if not texts:
        return []
    for text in texts:
        if text != "-" and not text.strip():  # `--text "$REVIEW"` with the variable unset
            raise DataError(
                f"--text {text!r} is empty (an unset shell variable?): give the text to answer, "
                "or --text - to read one per line from standard input"
            )
    if "-" not in texts:
        return texts
    found = SpooledTexts(_with_standard_input(texts))
    if not found:
        raise DataError("no text to predict: --text - read no line from standard input")
    return found


def _with_standard_input(texts: list[str]) -> Iterator[str]:
    """The ``--text`` values in order, the lines of standard input where ``-`` stands."""
    for text in texts:
        if text == "-":
            if sys.stdin.isatty():  # a person typing, not a pipe: say what ends the input
                errors.print(
                    "reading texts from standard input, one per line: Ctrl-D ends them",
                    style="dim", highlight=False,
                )  # fmt: skip
            yield from (line.rstrip("\r\n") for line in sys.stdin if line.strip())
        else:
            yield text


@contextmanager
def counting(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on a terminal's standard error that a ``(done, total)`` callback moves; ``None``
    (nothing shown) with ``--json`` or when standard error is a log, not a terminal."""
    with counting_with_steps(label, enabled=enabled) as (_, advance):
        yield advance


@contextmanager
def counting_with_steps(
    label: str, *, enabled: bool
) -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None] | None]]:
    """:func:`counting`'s bar, and a callback that names the step under way in its text
    (``LABEL: load the base model and sst2@3``), so the seconds before the first count say
    what they wait on. Both do nothing where :func:`counting` shows nothing."""
    if not enabled or not errors.is_terminal:
        yield (lambda _: None), None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=errors, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def say(step: str) -> None:
            bar.update(task, description=f"{label}: {step}")

        yield say, advance


# What a command waits on before its first line of its own (``waiting``'s text).
LOADING_FLOW_LIBRARIES = "loading torch, transformers and Prefect"
LOADING_LIBRARIES = "loading torch and transformers"
# Commands that move or read aliases go through MLflow first (reviewers move them in its UI).
READING_MLFLOW = "loading MLflow and reading its aliases"


@contextmanager
def waiting(what: str, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner saying ``what`` on a terminal's standard error, for the seconds a command has
    nothing else to show (loading torch, checking a spec's base model and data); the callback
    it yields changes the text as the work moves on. It leaves no line behind: an error that
    follows is still the only line. Nothing with ``--json`` or when standard error is a log."""
    if not enabled or not errors.is_terminal:
        yield lambda _: None
        return
    with errors.status(what) as spinner:
        yield spinner.update


def labelled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, then ``text`` as written: ``error: ...``, ``warning: ...``."""
    return Text.assemble((label, style), " ", text)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, whole at any width (logs grep it)."""
    errors.print(labelled("warning:", "yellow", message), highlight=False, soft_wrap=True)


@contextmanager
def byte_progress(
    label: str, total: int, *, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A bar of bytes moved (push, pull) on stderr while a person watches: a terminal, no
    ``--json``; ``None`` otherwise. Yields what to tell the bytes to (thread-safe: S3's multipart
    transfers report from several threads)."""
    with bytes_to_come(label, enabled=enabled and total > 0) as bar:
        if bar is None:
            yield None
            return
        set_total, advance = bar
        set_total(total)
        yield advance


@contextmanager
def bytes_to_come(
    label: str, *, enabled: bool
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]] | None]:
    """:func:`byte_progress` for work that learns its total once started (``db move`` reads
    every manifest first): yields ``(set_total, advance)``, or ``None`` where no bar is shown."""
    if not enabled or not errors.is_terminal:
        yield None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (
            lambda total: bar.update(task, total=total),
            lambda moved: bar.advance(task, moved),
        )


def note(message: str) -> None:
    """One ``note: ...`` line on stderr, whole at any width."""
    errors.print(labelled("note:", "cyan", message), highlight=False, soft_wrap=True)


def waiting_for_a_gate(name: str, *, composition: bool = False) -> Callable[[], None]:
    """What an alias move by hand says (a ``note:`` line) when it must wait for a promotion
    gate of ``name`` deciding elsewhere: a build re-evaluating an LLM champion takes minutes."""
    deciding = (
        f"a cascade is scoring composition {name}"
        if composition
        else f"a promotion gate of {name} is deciding (a build, retrain or promote)"
    )
    return lambda: note(f"{deciding}; waiting for it to finish")


@contextmanager
def telling_a_new_registry() -> Iterator[None]:
    """Around a command that registers versions: when it starts the environment's SQLite
    registry (none was there before), one ``note:`` line says where, and which variable chose
    that place. A mistyped ADAPTEROPS_HOME, or a build run from another folder, is seen at
    once, not when ``adapterops ls`` later shows the versions missing."""
    path = rg.Settings.from_env().sqlite_file()
    new = path is not None and not path.exists()
    yield
    if new and path is not None and path.exists():
        note(f"started a new registry at {path} ({rg.Settings.database_origin()})")


def open_registry(*, create: bool = False) -> rg.Registry:
    """The registry the environment names (SQLAlchemy, Alembic and boto3 load only now).

    Only the commands that add versions create it (push and import here; build's flow opens
    its own): every other command, on one that does not exist, says where it looked (a
    mistyped ADAPTEROPS_HOME, or a command run from another folder than the build's) instead of
    showing an empty registry, and writes no ``.adapterops`` folder there."""
    return rg.Registry(create=create)


def registry_now_or_once_done() -> rg.Registry | Callable[[], rg.Registry]:
    """For a command that adds a version after long work (``import`` loads a base model): an
    existing registry opened now, so a wrong URL, a stopped server, a moved registry or an
    artifact store that cannot take the files is told before the work, else what creates it
    once the work is done, so a refused command leaves no new registry."""
    try:
        registry = open_registry()
    except rg.NoRegistryError:
        from registry.artifacts import open_store  # noqa: PLC0415 - boto3: when used

        open_store(rg.Settings.from_env().artifacts_url).check()
        return lambda: open_registry(create=True)
    registry.check_writable()
    return registry


def require_known(registry: rg.Registry, refs: list[str], *, compositions: bool = False) -> None:
    """Resolve each reference before torch, transformers or MLflow load: a name or alias that
    does not exist is one line in a second, not in two to five (the job resolves them again)."""
    for ref in refs:
        if compositions:
            registry.composition(ref)
        else:
            registry.get(ref)


def refuse_a_version(
    ref: str, command: str, instead: Callable[[str], str], *, takes: str = "an adapter"
) -> None:
    """One line where ``command`` takes ``takes``'s name and was given ``NAME@VERSION``: what
    to write ``instead`` (of the bare name), not "no such name" or an invalid-name error
    later."""
    if "@" in ref:
        hint = instead(ref.partition("@")[0])
        raise DataError(f"{command} takes {takes} name, not a version ({ref!r}): {hint}")


def registry_with_adapter(
    name: str, command: str, *, instead: Callable[[str], str] | None = None
) -> rg.Registry:
    """``ls NAME``, ``trend NAME``, ``unalias NAME ALIAS``: the registry, where ``name`` has
    versions, or one line: ``a@3`` (that is ``show``'s; said before the registry opens) names
    ``command`` and what to write instead (``instead`` of the adapter's name; by default,
    ``show`` and ``command`` alone)."""
    across = "lists them all" if command == "ls" else "draws its metric across them all"
    refuse_a_version(
        name,
        command,
        instead
        or (
            lambda adapter: (
                f"`adapterops show {name}` shows one version, "
                f"`adapterops {command} {adapter}` {across}"
            )
        ),
    )
    registry = open_registry()
    registry.get(name)  # no such adapter: one line, with similar names
    return registry


@contextmanager
def mlflow_client(*, announce: bool) -> Iterator[Any]:
    """MLflow's client (MLflow loads here: seconds), for a block that reads or moves aliases
    through it; ``announce``: a spinner says so at a terminal meanwhile (not with ``--json``)."""
    with waiting(READING_MLFLOW, enabled=announce):
        from .. import tracking  # noqa: PLC0415 - MLflow only for the commands that need it

        yield tracking.client()


def mlflow_after_sync(
    registry: rg.Registry, name: str, *, composition: bool, announce: bool
) -> tuple[Any, Exception | None]:
    """``(client, None)``: MLflow's client, once the alias moves made in its UI to adapter
    (or ``composition``) ``name`` are copied into the registry, so a delete that checks aliases
    sees the one a reviewer just moved (MLflow wins). ``(None, error)`` when MLflow cannot be
    reached: the delete goes by the registry's aliases, and the caller says what is left in
    MLflow. ``announce``: say so at a terminal meanwhile (not with ``--json``)."""
    from ..errors import TrackingUnavailableError  # noqa: PLC0415

    def waited(held: str) -> None:
        waiting_for_a_gate(held, composition=composition)()

    try:
        with mlflow_client(announce=announce) as client:  # MLflow loads here, then these
            if composition:
                from ..mlflow_compositions import sync_composition_aliases  # noqa: PLC0415

                sync_composition_aliases(registry, client, [name], on_wait=waited)
            else:
                from ..mlflow_models import sync_aliases  # noqa: PLC0415

                sync_aliases(registry, client, [name], on_wait=waited)
    except TrackingUnavailableError as exc:
        return None, exc
    return client, None


def drop_mirror(
    registry: rg.Registry,
    client: Any,
    unreachable: Exception | None,
    model: str,
    version: int,
    deleted: str,
) -> None:
    """After ``registry`` deleted ``deleted`` (registry version ``version`` of MLflow model
    ``model``), delete its MLflow mirror so no reviewer points an alias at it; when MLflow
    cannot be reached, one warning says what is left and what takes it away (re-running ``rm``
    cannot: the registry's version is gone; ``sync`` can)."""
    from .. import tracking  # noqa: PLC0415
    from ..errors import TrackingUnavailableError  # noqa: PLC0415
    from ..mlflow_models import delete_model_version  # noqa: PLC0415

    try:
        if client is not None:
            delete_model_version(client, registry, model, version)
            return
    except TrackingUnavailableError as exc:
        unreachable = exc
    reason = str(unreachable).removesuffix(tracking.RERUN_COMPLETES).rstrip(" ;")
    warn(
        f"{deleted} is deleted, but its MLflow version (of {model}) is still there ({reason}): "
        "`adapterops sync` removes it once MLflow answers"
    )


def checkable_before_mlflow(ref: str) -> str:
    """What of ``ref`` the registry can check before MLflow loads: all of ``name@3`` (the
    registry numbers every version; MLflow mirrors them), only the name of ``name@staging`` (an
    alias may be set in the MLflow UI alone, until the command syncs it)."""
    name, _, tail = ref.partition("@")
    return ref if tail.isdigit() else name


def require_spec_file(
    path: Path,
    *,
    overrides: list[str] | None = None,
    out: Path | None = None,
    data: bool = False,
) -> None:
    """A spec file that is not there, or is not YAML, or an override (``--set``) written wrong,
    is one line before torch loads (the spec module needs it: methods are checked as they are
    read), and so is an ``--out`` folder for its adapter that cannot be written (a file, a path
    through one, a read-only place) and, with ``data`` (commands that train), a data file it
    names that is missing, empty or of a type the loader does not read."""
    if path.is_dir():
        raise DataError(f"{path} is a folder: give one spec file (retrain and deploy take folders)")
    if not path.exists():
        raise DataError(f"{path}: no such spec file")
    if not path.is_file():  # /dev/null, a pipe: read_spec_document said "no such file"
        raise DataError(f"{path} is not a regular file: give a spec file (YAML)")
    document = read_spec_document(path, overrides)  # read again by the spec module: a page
    if data:
        check_spec_data_files(document, path)
    if out is not None:
        check_folder_to_write(out, f"save the adapter of {path.name}")


def spec_files(paths: list[Path], *, nothing: str = "nothing was built") -> list[Path]:
    """The spec files ``paths`` name: a file as given, a folder as the ``*.yaml``/``*.yml`` files
    directly in it (sorted), as CI and cron jobs pass ``specs/``. A path that does not exist, or
    a folder without specs, is bad input: nothing is done for any of them, which the error says
    in the command's words (``nothing``)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not inside:
                raise DataError(f"{path} is a folder with no spec files (*.yaml, *.yml) in it")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such spec file or folder ({nothing})")
    return found


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document, for scripts.")]


EXIT_FAILURE = 1

# The variables the local stack's stack.env gave this process (those the user set win over it),
# and the file: a service that cannot be reached at such an address then says where it came from.
_from_stack_env: dict[str, Path] = {}


def remember_stack_env(path: Path, keys: list[str]) -> None:
    """Record that ``keys`` (service addresses) come from the local stack's ``path``."""
    _from_stack_env.update(dict.fromkeys(keys, path))


def from_stack_env(setting: str) -> bool:
    """Whether ``setting`` (``PREFECT_API_URL``, ...) came from the local stack's stack.env."""
    return setting in _from_stack_env


def _unreachable_hint(exc: Exception) -> str:
    """For a service that cannot be reached at an address the local stack gave: the way on."""
    setting = {
        rg.DatabaseUnavailableError: "ADAPTEROPS_REGISTRY_URL",
        rg.StorageUnavailableError: "ADAPTEROPS_ARTIFACTS_URL",
        TrackingUnavailableError: "MLFLOW_TRACKING_URI",
        OrchestrationError: "PREFECT_API_URL",
    }.get(type(exc))
    if setting not in _from_stack_env:
        return ""
    return (
        f" (the address is the local stack's, from {_from_stack_env[setting]}: `adapterops stack "
        "status` shows what runs, `adapterops stack up` starts it)"
    )


# What the machine, not the command, got wrong while writing: the way on for each.
_FULL_OR_READ_ONLY = {
    errno.ENOSPC: "free space there, or write somewhere else",
    errno.EDQUOT: "this user's disk quota is used up: free some, or write somewhere else",
    errno.EROFS: "that filesystem is mounted read-only: write somewhere else",
}


def full_or_read_only_disk(exc: BaseException) -> str | None:
    """One line for a write the machine refused (disk full, quota, read-only filesystem),
    naming the file where the error does (not stdout, not every library's) and the way on; None
    for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in _FULL_OR_READ_ONLY:
        return None
    where = f"writing {exc.filename}" if exc.filename else "writing what the command writes"
    return f"{exc.strerror} {where}: {_FULL_OR_READ_ONLY[exc.errno]}"


@contextmanager
def user_errors(as_json: bool, *, one_line_failures: bool = False) -> Iterator[None]:
    """Turn bad input into one clear message and exit code 2, never a traceback; a version's
    stored files missing or damaged (:class:`registry.CorruptArtifactError`) into one line and
    exit code 1.

    With ``--json``, whatever libraries print while the command works (MLflow prints run links)
    goes to stderr, so stdout carries exactly one JSON document. With ``one_line_failures``
    (commands CI runs), any other failure is one line and exit code 1 instead of a traceback.
    """
    try:
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            yield
    except Exception as exc:
        # what the store holds for a version is missing or damaged: nothing typed is wrong, the
        # line says how to repair it, and scripts tell it from bad input by its exit code 1
        damaged = isinstance(exc, rg.CorruptArtifactError)
        bad_input = not damaged and isinstance(exc, _user_error_types())
        if not (bad_input or damaged or one_line_failures):
            raise  # a full disk too: main() says it in one line
        message = (
            str(exc)
            if bad_input or damaged
            else full_or_read_only_disk(exc)
            or f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        )
        message += _unreachable_hint(exc)
        message = redact(message)  # other libraries' errors may quote a URL with its password
        if as_json:
            emit_json({"ok": False, "error": message, "kind": type(exc).__name__})
        # soft_wrap: a one-line error stays one line at any terminal width (logs grep it whole)
        errors.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT if bad_input else EXIT_FAILURE) from None


def emit_json(document: Any) -> None:
    """One JSON document on stdout (plain print: no wrapping, no colour)."""
    print(json.dumps(document, default=str))


def human_bytes(size: int) -> str:
    """``297992`` -> ``291.0 KB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def print_columns(
    rows: dict[str, list[str]], *, keep: int = 3, numbers: Collection[str] = ()
) -> None:
    """A table of ``rows`` (column name -> cells), most wanted column first: columns that do
    not fit the terminal (CI logs are 80 wide) are dropped from the end, at least ``keep``
    stay, and a note names the dropped ones. The columns named in ``numbers`` are right-aligned."""
    shown = list(rows)
    while len(shown) > keep and _table_width(rows, shown, numbers) > console.width:
        shown.pop()
    console.print(_table(rows, shown, numbers))
    if len(shown) < len(rows):
        hidden = ", ".join(c for c in rows if c not in shown)
        note = f"not shown at this width: {hidden} (--json has every field)"
        console.print(note, style="dim", soft_wrap=True)


def _table(rows: dict[str, list[str]], columns: list[str], numbers: Collection[str]) -> Table:
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in numbers else "left")
    for row in zip(*(rows[c] for c in columns), strict=True):
        table.add_row(*row)
    return table


def _table_width(rows: dict[str, list[str]], columns: list[str], numbers: Collection[str]) -> int:
    """Columns of the terminal the table takes without wrapping any cell."""
    unbounded = console.options.update(max_width=100_000)
    return Measurement.get(console, unbounded, _table(rows, columns, numbers)).maximum


MetricOption = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="Metric, e.g. accuracy=0.91 (repeatable)."),
]


def metric_values(pairs: list[str]) -> dict[str, float]:
    """``--metric accuracy=0.91`` options as ``{"accuracy": 0.91}``."""
    metrics = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise DataError(f"--metric {pair!r}: write key=number, e.g. accuracy=0.91")
    return metrics


def metrics_text(metrics: dict[str, Any], between: str = "\n") -> str:
    """Metrics as ``accuracy=0.91``, by name (a table cell: one per line)."""
    return between.join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def print_card(ref: str, aliases: tuple[str, ...], lines: dict[str, str]) -> None:
    """``show`` for a person: the ref and its aliases, then labelled lines (empty ones left
    out), folded to the terminal's width."""
    held = f" ({', '.join(aliases)})" if aliases else ""
    console.print(Text(f"{ref}{held}", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column(overflow="fold")
    for label, value in lines.items():
        if value:
            grid.add_row(label, Text(value))
    console.print(grid)
