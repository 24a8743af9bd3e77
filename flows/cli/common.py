"""What every command shares: exit codes and bad input as one clear line (:func:`user_errors`),
opening the registry and MLflow, and the spec files commands read."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path
from typing import Any

import typer

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
from .output import emit_json, errors, labelled, note, warn
from .progress import READING_MLFLOW, waiting, waiting_for_a_gate

# Exit codes: 0 done, 1 a failure (nothing typed is wrong), 2 bad input (nothing was done).
EXIT_FAILURE = 1
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
    variables: dict[type[Exception], str] = {
        rg.DatabaseUnavailableError: "ADAPTEROPS_REGISTRY_URL",
        rg.StorageUnavailableError: "ADAPTEROPS_ARTIFACTS_URL",
        TrackingUnavailableError: "MLFLOW_TRACKING_URI",
        OrchestrationError: "PREFECT_API_URL",
    }
    setting = variables.get(type(exc))
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
