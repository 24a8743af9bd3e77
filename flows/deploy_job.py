"""Prefect deployments of the build flow, one per spec, on a cron from the spec's ``schedule``,
and of the sync flow on an interval (``sync/aliases``: a reviewer's alias move in the MLflow UI
reaches the registry within minutes, also for commands that read only the registry).

A worker polling the work pool runs them (``prefect worker start --pool POOL``; the local stack
starts one). The worker's environment decides where runs write: registry, artifacts and MLflow.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import OrchestrationError
from .spec import load_spec

__all__ = [
    "DEFAULT_POOL",
    "DeploymentInfo",
    "check_not_taken",
    "deploy_specs",
    "ensure_pool",
    "pool_status",
    "pool_warning",
]

DEFAULT_POOL = "adapterops"
ENTRYPOINT = "flows/entrypoints.py:build"  # loaded by path on the worker
SYNC_ENTRYPOINT = "flows/entrypoints.py:sync"
SYNC_DEPLOYMENT = "aliases"  # run as "sync/aliases"
SYNC_EVERY = 300  # seconds between syncs by default
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


def ensure_pool(pool: str) -> None:
    """Create the ``process`` work pool ``pool`` unless it exists (or another ``deploy``
    creates it meanwhile: two CI jobs deploying to a new pool at once failed, one of them with
    Prefect's bare ``ObjectAlreadyExists``)."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.client.schemas.actions import WorkPoolCreate  # noqa: PLC0415
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound  # noqa: PLC0415

    url = _api_url()
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):
                    client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    except OSError as exc:
        raise OrchestrationError(f"Prefect server at {url} cannot be reached: {exc}") from None


def pool_status(pool: str) -> str | None:
    """Prefect's status of work pool ``pool``: ``READY`` (a worker polls it), ``NOT_READY`` (none
    does: its deployments' runs wait, then show as Late, with no word anywhere) or ``PAUSED``;
    None where Prefect keeps none (pools that push to a cloud)."""
    from prefect.client.orchestration import get_client  # noqa: PLC0415

    url = _api_url()
    try:
        with get_client(sync_client=True) as client:
            status = client.read_work_pool(pool).status
    except OSError as exc:
        raise OrchestrationError(f"Prefect server at {url} cannot be reached: {exc}") from None
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


def check_not_taken(planned: dict[str, str | None], pool: str, *, replace: bool = False) -> None:
    """Refuse to update a deployment (``{"build/NAME": spec path, "sync/aliases": None}``)
    that another work pool runs, or that builds another spec file, unless ``replace``: a
    second registry deploying to one Prefect server (staging beside production) took the
    other's deployments in place (Prefect updates a deployment of the same name), and its
    builds and syncs ran on the new pool's worker, with the new checkout's specs, from then
    on, without a word."""
    if replace:
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    url = _api_url()  # (get_client without one would start a server of its own)
    for name, spec_path in planned.items():
        try:
            with get_client(sync_client=True) as client:
                existing = client.read_deployment_by_name(name)
        except ObjectNotFound:
            continue
        except OSError as exc:
            raise OrchestrationError(f"Prefect server at {url} cannot be reached: {exc}") from None
        their_spec = (existing.parameters or {}).get("spec_path")
        other_pool = existing.work_pool_name not in (None, pool)
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


def deploy_specs(
    spec_paths: list[Path],
    *,
    pool: str = DEFAULT_POOL,
    sync_every: int = SYNC_EVERY,
    replace: bool = False,
) -> list[DeploymentInfo]:
    """Validate every spec first, then create (or update) one deployment per spec, and the sync
    deployment every ``sync_every`` seconds (0: none). A deployment of the same name that runs
    on another pool or builds another spec file is refused unless ``replace``
    (:func:`check_not_taken`)."""
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
    specs = [(path.resolve(), load_spec(path)) for path in spec_paths]  # all errors before work
    planned: dict[str, str | None] = {f"build/{spec.name}": str(path) for path, spec in specs}
    if sync_every:
        planned[f"sync/{SYNC_DEPLOYMENT}"] = None
    check_not_taken(planned, pool, replace=replace)  # before the pool is made: nothing changed
    ensure_pool(pool)
    deployed = []
    # Prefect prints a table of its own per deployment (one deployment per call: its failure
    # raises, so nothing it would say is lost); the caller lists them all once.
    for path, spec in specs:
        with redirect_stdout(io.StringIO()):
            deployment_id = build.from_source(source=str(_ROOT), entrypoint=ENTRYPOINT).deploy(
                name=spec.name,
                work_pool_name=pool,
                cron=spec.schedule.cron,
                concurrency_limit=one_build,
                parameters={"spec_path": str(path)},
                description=f"Build {spec.name} ({spec.method.type} on {spec.base_model}) "
                f"from {path}",
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
        syncing = sync.from_source(source=str(_ROOT), entrypoint=SYNC_ENTRYPOINT)
        with redirect_stdout(io.StringIO()):
            deployment_id = syncing.deploy(
                name=SYNC_DEPLOYMENT,
                work_pool_name=pool,
                interval=sync_every,
                concurrency_limit=one_sync,
                description="Take alias moves made in the MLflow UI into the registry",
                tags=["adapterops"],
                print_next_steps=False,
                ignore_warnings=True,
            )
        deployed.append(
            DeploymentInfo(
                "", f"sync/{SYNC_DEPLOYMENT}", str(deployment_id), pool, None, sync_every
            )
        )
    return deployed
