"""Prefect deployments of the build flow, one per spec, on a cron from the spec's ``schedule``,
and of the sync flow on an interval (``sync/aliases``: a reviewer's alias move in the MLflow UI
reaches the registry within minutes, also for commands that read only the registry).

A worker polling the work pool runs them (``prefect worker start --pool POOL``; the local stack
starts one). The worker's environment decides where runs write: registry, artifacts and MLflow.
So each deployment records the id of the registry it was made for (``for_registry``), a run on a
worker whose environment names another registry fails before it builds anything, and a pool
holding another registry's deployments is refused at deploy: a staging checkout deploying into
production's pool had its builds registered, and promoted, in production's registry.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import OrchestrationError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

    from .spec import AdapterSpec
from .models import relative_folder
from .spec import SpecError, load_spec, shared_names
from .unresponsive_runs import HEARTBEAT_VARIABLE, heartbeat_seconds_to_deploy

__all__ = [
    "DEFAULT_POOL",
    "DeploymentInfo",
    "check_not_taken",
    "check_pool_name",
    "check_pool_registry",
    "check_worker_registry",
    "deploy_specs",
    "ensure_pool",
    "pool_status",
    "pool_warning",
    "prune_deployments",
    "schedule_drift",
]

DEFAULT_POOL = "adapterops"
ENTRYPOINT = "flows/entrypoints.py:build"  # loaded by path on the worker
SYNC_ENTRYPOINT = "flows/entrypoints.py:sync"
SYNC_DEPLOYMENT = "aliases"  # run as "sync/aliases"
SYNC_EVERY = 300  # seconds between syncs by default
REGISTRY_PARAMETER = "for_registry"  # the build and sync flows' parameter: the registry's id
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment ``adapterops deploy`` created or updated."""

    spec: str  # "" for the sync deployment
    name: str  # "build/<spec name>", as `prefect deployment run` takes it
    id: str
    pool: str
    cron: str | None
    interval: int | None = None  # seconds, for the sync deployment

    @property
    def schedule(self) -> str:
        """How often it runs, in words."""
        if self.cron:
            return self.cron
        return f"every {self.interval} s" if self.interval else "(on demand)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _api_url() -> str:
    """``PREFECT_API_URL``, whose server takes this client's credentials; refused in one line
    when unset (deployments need a server) or when the server refuses them."""
    from prefect.settings import PREFECT_API_URL  # noqa: PLC0415 - prefect loads when used

    from .reachable import check_answers, check_prefect_login  # noqa: PLC0415

    url = PREFECT_API_URL.value()
    if not url:
        raise OrchestrationError(
            "deployments live on a Prefect server: set PREFECT_API_URL (for example "
            "http://127.0.0.1:4200/api; `adapterops stack up` starts one and writes it)"
        )
    check_answers(str(url), service="Prefect", variable="PREFECT_API_URL", error=OrchestrationError)
    check_prefect_login(str(url), OrchestrationError)
    return str(url)


@contextmanager
def _prefect() -> Iterator[tuple[SyncPrefectClient, str]]:
    """A client of the Prefect server ``PREFECT_API_URL`` names, and that address (checked
    first: ``get_client`` without one would start a server of its own); a connection that fails
    in the block is one line."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - prefect: when used

    url = _api_url()
    try:
        with get_client(sync_client=True) as client:
            yield client, url
    except OSError as exc:
        raise OrchestrationError(f"Prefect server at {url} cannot be reached: {exc}") from None


def _deployment(client: SyncPrefectClient, name: str) -> DeploymentResponse | None:
    """Deployment ``name`` (``build/NAME``), or None where there is none."""
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def ensure_pool(pool: str) -> None:
    """Create the ``process`` work pool ``pool`` unless it exists (or another ``deploy``
    creates it meanwhile: two CI jobs deploying to a new pool at once failed, one of them with
    Prefect's bare ``ObjectAlreadyExists``)."""
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound  # noqa: PLC0415

    with _prefect() as (client, _):
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def prune_deployments(pool: str, keep: Collection[str]) -> list[str]:
    """Delete the deployments of work pool ``pool`` made for the registry this environment
    names, other than ``keep`` (``build/NAME``, ``sync/aliases``); returns their names, sorted.
    A spec removed from the repository left its deployment failing on every scheduled run
    (``no such file``). Another registry's deployments, and those made before deployments
    recorded their registry, are never touched."""
    identity = this_registry(create=False)
    if identity is None:
        return []
    with _prefect() as (client, _):
        gone = {
            name: deployment
            for name, deployment in _in_pool(client, pool).items()
            if _registry_of(deployment) == identity and name not in keep
        }
        for deployment in gone.values():
            client.delete_deployment(deployment.id)
    return sorted(gone)


def pool_status(pool: str) -> str | None:
    """Prefect's status of work pool ``pool``: ``READY`` (a worker polls it), ``NOT_READY`` (none
    does: its deployments' runs wait, then show as Late, with no word anywhere) or ``PAUSED``;
    None where Prefect keeps none (pools that push to a cloud)."""
    with _prefect() as (client, _):
        status = client.read_work_pool(pool).status
    return status.value if status is not None else None


def pool_warning(pool: str, status: str | None) -> str | None:
    """What a person who just deployed to ``pool`` needs to hear when nothing will run there."""
    if status == "PAUSED":
        return f"work pool {pool!r} is paused: nothing runs until `prefect work-pool resume {pool}`"
    if status == "NOT_READY":
        return (
            f"no worker polls work pool {pool!r} now: its runs wait until one does (`prefect "
            f"worker start --pool {pool}` where the registry's settings are; `adapterops stack "
            f"up` starts one on {DEFAULT_POOL!r})"
        )
    return None


def check_not_taken(
    planned: dict[str, str | None],
    pool: str,
    *,
    replace: bool = False,
    identity: str | None = None,
) -> None:
    """Refuse to update a deployment (``{"build/NAME": spec path, "sync/aliases": None}``)
    that another work pool runs, or that builds another spec file, unless ``replace``: a
    second registry deploying to one Prefect server (staging beside production) took the
    other's deployments in place (Prefect updates a deployment of the same name), and its
    builds and syncs ran on the new pool's worker, with the new checkout's specs, from then
    on, without a word. One that this registry (``identity``) runs from this spec file on
    another pool is only said to need --replace to move."""
    if replace:
        return
    with _prefect() as (client, url):
        existing_ones = {name: _deployment(client, name) for name in planned}
    for name, spec_path in planned.items():
        existing = existing_ones[name]
        if existing is None:
            continue
        their_spec = (existing.parameters or {}).get("spec_path")
        other_pool = existing.work_pool_name not in (None, pool)
        theirs = _registry_of(existing)
        if spec_path is None:  # the sync deployment: this registry's, or another's?
            moving = identity is not None and theirs == identity
        else:  # a build: this spec file, for this registry (or one not recorded)?
            moving = their_spec == spec_path and theirs in (None, identity)
        if other_pool and moving:
            raise OrchestrationError(
                f"deployment {name} already runs on work pool {existing.work_pool_name!r} for "
                f"this registry{' from this spec file' if spec_path else ''}: pass --replace "
                f"to move it to pool {pool!r}; nothing was deployed"
            )
        if other_pool or (spec_path is not None and their_spec not in (None, spec_path)):
            where = f"work pool {existing.work_pool_name!r}" + (
                f" with spec {their_spec}" if their_spec else ""
            )
            instead = "give this spec another name" if spec_path else "deploy with --sync-every 0"
            raise OrchestrationError(
                f"deployment {name} on the Prefect server at {url} runs on {where}; deploying "
                f"to pool {pool!r}{' from ' + spec_path if spec_path else ''} would take it from "
                f"there (another registry's, or another checkout's?): {instead}, use a Prefect "
                "server of its own, or pass --replace to move it here; nothing was deployed"
            )


def check_pool_name(pool: str) -> None:
    """Refuse a work pool name Prefect would refuse deep in its client (``bad/name``: pydantic's
    ValidationError, exit 1; an empty one: 405 Method Not Allowed)."""
    forbidden = sorted({c for c in pool if c in "/%&><"})
    if not pool.strip() or forbidden:
        why = f"has {' '.join(forbidden)}" if forbidden else "is empty"
        raise OrchestrationError(
            f"work pool name {pool!r} {why}: Prefect takes a name without / % & > < (for "
            "example --pool staging); nothing was deployed"
        )


def _check_names_bound_alike(specs: list[tuple[Path, AdapterSpec]]) -> None:
    """Refuse a spec whose adapter name the registry binds to another base model, task,
    language or method: each run of its deployment would be refused, on the worker, at every
    cron (a registry that does not exist yet binds nothing)."""
    from registry import NoRegistryError, Registry  # noqa: PLC0415 - SQLAlchemy: when used

    try:
        registry = Registry(create=False)
    except NoRegistryError:
        return
    try:
        for path, spec in specs:
            registry.check_binding(spec.name, **spec.binding, what=str(path))
    finally:
        registry.close()


def this_registry(*, create: bool) -> str | None:
    """The id of the registry this environment names; with ``create``, created on first use as
    a build would (the deployments' runs will write there), else None where there is none."""
    from registry import NoRegistryError, Registry  # noqa: PLC0415 - SQLAlchemy: when used

    try:
        return Registry(create=create).identity
    except NoRegistryError:
        return None


def _registry_address() -> str:
    """Where the registry this environment names is, without its password."""
    from registry import Settings  # noqa: PLC0415
    from registry.db import hide_password  # noqa: PLC0415

    return hide_password(Settings.from_env().database_url)


def check_worker_registry(expected: str | None, deployment: str) -> None:
    """Refuse, before anything is built, to run ``deployment`` (``build/NAME``) on a worker whose
    environment names a registry other than ``expected``, the one it was deployed for (None:
    deployed before deployments recorded it)."""
    if expected is None:
        return
    from registry import NoRegistryError, Registry  # noqa: PLC0415

    try:
        registry = Registry(create=False)
        identity = registry.identity
        here = f"registry {identity} at {registry.database.safe_url}"
    except NoRegistryError as exc:
        here = f"no registry ({exc})"
    else:
        if identity == expected:
            return
    raise OrchestrationError(
        f"{deployment} was deployed for registry {expected}, but this worker's settings name "
        f"{here}: nothing was run. A worker runs every deployment of its work pool against its "
        "own registry: give each registry a work pool of its own (`adapterops deploy --pool "
        "NAME` with that registry's settings, and `prefect worker start --pool NAME` beside "
        "them; `adapterops db status` shows a registry's id)"
    )


def schedule_drift(spec: AdapterSpec, spec_path: str) -> str | None:
    """What to say when the deployment running this flow (none: None) fires on another cron
    than ``spec``'s ``schedule.cron`` now says, or under another name: a deployment keeps the
    cron and name it was deployed with, while each run reads the spec file afresh, so an edited
    schedule never took effect, and nothing said so. A server that cannot be asked says nothing
    here."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.runtime import deployment  # noqa: PLC0415

    if deployment.id is None:  # not a deployment's run
        return None
    try:
        with get_client(sync_client=True) as client:
            stored = client.read_deployment(deployment.id)
    except Exception:  # a courtesy: the build itself goes on
        return None
    if stored.name != spec.name:
        return (
            f"build/{stored.name} builds {spec_path}, whose spec is now named {spec.name}: run "
            f"`adapterops deploy {spec_path} --prune` (with the pool's other specs) to deploy it "
            "under that name"
        )
    crons = sorted(str(getattr(s.schedule, "cron", None)) for s in stored.schedules)
    wanted = [spec.schedule.cron] if spec.schedule.cron else []
    if crons == wanted:
        return None
    return (
        f"build/{stored.name} runs on {', '.join(crons) or 'no schedule'}, but its spec now says "
        f"{spec.schedule.cron or 'no schedule'}: run `adapterops deploy {spec_path}` to apply it"
    )


def check_pool_registry(
    pool: str, identity: str | None, *, replacing: Collection[str] = ()
) -> None:
    """Refuse to deploy to ``pool`` when it holds deployments made for a registry other than
    ``identity`` (None: one not created yet), other than ``replacing``, the names --replace takes
    over: its worker would run this registry's builds against that registry's settings, or that
    one's against this."""
    others: dict[str, list[str]] = {}
    with _prefect() as (client, url):
        for name, deployment in _in_pool(client, pool).items():
            theirs = _registry_of(deployment)
            if theirs not in (None, identity) and name not in replacing:
                others.setdefault(str(theirs), []).append(name)
    if others:
        theirs, names = sorted(others.items())[0]
        raise OrchestrationError(
            f"work pool {pool!r} on the Prefect server at {url} runs deployments made for "
            f"registry {theirs} ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}"
            f"), not the one this environment names ({identity or 'not created yet'} at "
            f"{_registry_address()}): its worker would build one registry's specs into the "
            "other's. Deploy to a work pool of its own (--pool NAME, then `prefect worker start "
            "--pool NAME` where this registry's settings are); nothing was deployed"
        )


def _in_pool(client: SyncPrefectClient, pool: str) -> dict[str, DeploymentResponse]:
    """Every deployment of work pool ``pool``, by ``flow/deployment`` name."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName  # noqa: PLC0415

    in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
    found: dict[str, DeploymentResponse] = {}
    page, offset = 200, 0  # the server's most per request
    while True:
        batch = client.read_deployments(work_pool_filter=in_pool, limit=page, offset=offset)
        for deployment in batch:
            flow_name = (deployment.entrypoint or "").rpartition(":")[2]  # build, sync
            found[f"{flow_name}/{deployment.name}"] = deployment
        if len(batch) < page:
            return found
        offset += page


def _registry_of(deployment: DeploymentResponse) -> str | None:
    """The id of the registry ``deployment`` was made for (None: made before deployments
    recorded it, or not by adapterops)."""
    value = (deployment.parameters or {}).get(REGISTRY_PARAMETER)
    return str(value) if value is not None else None


def _sync_name(pool: str, identity: str | None) -> str:
    """``aliases``, unless another pool runs a ``sync/aliases`` not recorded as made for registry
    ``identity`` (another registry's): then ``aliases-POOL``, so that each registry sharing a
    Prefect server syncs, each on its own pool."""
    with _prefect() as (client, _):
        existing = _deployment(client, f"sync/{SYNC_DEPLOYMENT}")
    if existing is None or existing.work_pool_name in (None, pool):
        return SYNC_DEPLOYMENT
    if identity and _registry_of(existing) == identity:
        return SYNC_DEPLOYMENT
    return f"{SYNC_DEPLOYMENT}-{pool}"


def _check_base_found_by_runs(spec: AdapterSpec, path: Path) -> None:
    """A deployment's runs start in :data:`_ROOT` (Prefect's pull step), where a ``base_model``
    folder written relative to the current one is not: refused now, not at the first run."""
    written = relative_folder(spec.base_model)
    if written is None or (_ROOT / written).is_dir():
        return  # a Hub name or packaged model, an absolute folder, or one the runs find
    raise SpecError(
        str(path),
        [
            (
                "base_model",
                f"{spec.base_model!r} is a folder relative to {Path.cwd()}, but a deployment's "
                f"runs start in {_ROOT}, which has none: write its absolute path, "
                f"{written.resolve()}",
            )
        ],
    )


def _from_source(flow: Flow[..., Any], entrypoint: str) -> Flow[..., Any]:
    """``flow`` as a worker loads it: from this checkout, by ``entrypoint``. (Prefect's
    ``from_source`` answers a coroutine inside an event loop; called from sync code, a Flow.)"""
    return cast("Flow[..., Any]", flow.from_source(source=str(_ROOT), entrypoint=entrypoint))


def deploy_specs(
    spec_paths: list[Path],
    *,
    pool: str = DEFAULT_POOL,
    sync_every: int = SYNC_EVERY,
    replace: bool = False,
) -> list[DeploymentInfo]:
    """Validate every spec first, then create (or update) one deployment per spec, and the sync
    deployment every ``sync_every`` seconds (0: none), each for the registry this environment
    names. A deployment of the same name that runs on another pool or builds another spec file
    is refused unless ``replace`` (:func:`check_not_taken`), and so is a pool that holds another
    registry's deployments (:func:`check_pool_registry`). The sync deployment is
    ``sync/aliases``, or ``sync/aliases-POOL`` where another registry's pool runs that one."""
    from prefect.client.schemas.objects import (  # noqa: PLC0415
        ConcurrencyLimitConfig,
        ConcurrencyLimitStrategy,
    )

    from .pipelines import build, sync  # noqa: PLC0415

    # One run of a deployment at a time: a build that outlasts its cron's interval (an LLM's
    # training) would otherwise train the same spec again beside itself; the next run waits
    # and then finds that build (reused) unless the data changed. A sync that outlasts its
    # interval has the next one cancelled: the one after it comes soon anyway.
    one_build = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    one_sync = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
    )
    check_pool_name(pool)
    heartbeat_seconds = heartbeat_seconds_to_deploy()
    specs = [(path.resolve(), load_spec(path)) for path in spec_paths]  # all errors before work
    for path, spec in specs:
        _check_base_found_by_runs(spec, path)
    for shared, why in shared_names(specs).items():  # the second deployment replaced the first
        raise SpecError(shared, [("name", why)])
    _check_names_bound_alike(specs)
    planned: dict[str, str | None] = {f"build/{spec.name}": str(path) for path, spec in specs}
    identity_now = this_registry(create=False)  # the registry is created once nothing is refused
    sync_name = _sync_name(pool, identity_now) if sync_every else ""
    if sync_every:
        planned[f"sync/{sync_name}"] = None
    check_not_taken(planned, pool, replace=replace, identity=identity_now)  # nothing changed yet
    check_pool_registry(pool, identity_now, replacing=set(planned) if replace else ())
    ensure_pool(pool)
    identity, registry_url = this_registry(create=True), _registry_address()
    # Each run sends heartbeats whichever way its worker was started (a plain `prefect worker
    # start` has no heartbeat setting): without them the automation that sets Crashed the runs
    # of a lost machine (flows.unresponsive_runs) never sees them. A process worker lays a
    # deployment's env over its own.
    heartbeats = {"env": {HEARTBEAT_VARIABLE: str(heartbeat_seconds)}}
    deployed = []
    # Prefect prints a table of its own per deployment (one deployment per call: its failure
    # raises, so nothing it would say is lost); the caller lists them all once.
    for path, spec in specs:
        with redirect_stdout(io.StringIO()):
            deployment_id = _from_source(build, ENTRYPOINT).deploy(
                name=spec.name,
                work_pool_name=pool,
                cron=spec.schedule.cron,
                concurrency_limit=one_build,
                job_variables=heartbeats,
                parameters={"spec_path": str(path), REGISTRY_PARAMETER: identity},
                description=f"Build {spec.name} ({spec.method.type} on {spec.base_model}) "
                f"from {path} into registry {identity} at {registry_url}",
                tags=["adapterops", spec.task, spec.language],
                print_next_steps=False,
                ignore_warnings=True,
            )
        info = DeploymentInfo(
            spec=str(path),
            name=f"build/{spec.name}",
            id=str(deployment_id),
            pool=pool,
            cron=spec.schedule.cron,
        )
        deployed.append(info)
    if sync_every:
        syncing = _from_source(sync, SYNC_ENTRYPOINT)
        with redirect_stdout(io.StringIO()):
            deployment_id = syncing.deploy(
                name=sync_name,
                work_pool_name=pool,
                interval=sync_every,
                concurrency_limit=one_sync,
                job_variables=heartbeats,
                parameters={REGISTRY_PARAMETER: identity},
                description="Take alias moves made in the MLflow UI into registry "
                f"{identity} at {registry_url}",
                tags=["adapterops"],
                print_next_steps=False,
                ignore_warnings=True,
            )
        deployed.append(
            DeploymentInfo("", f"sync/{sync_name}", str(deployment_id), pool, None, sync_every)
        )
    return deployed
