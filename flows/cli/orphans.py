"""Prefect's temporary servers that killed commands left running.

Without ``PREFECT_API_URL`` a flow command starts a temporary Prefect server, a child process
that it stops at exit. A command killed outright (``kill -9``, the out-of-memory killer: a
retraining cron job is killed exactly when memory is short) cannot stop it: the server ran on,
orphaned, holding 200 MB or more, one more after every kill. Each server the CLI starts carries
its owner (the command's process id and start time) in its environment, so the next command
that starts one finds those whose owner is gone and stops them first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil  # accelerate's own dependency

__all__ = ["owned_by_this_process", "stop_orphaned_servers"]

OWNER_VARIABLE = "ADAPTEROPS_TEMPORARY_PREFECT_OWNER"
# what a temporary server's command line runs (prefect.server.api.server.SubprocessASGIServer)
_SERVER_APP = "prefect.server.api.server:create_app"
_GRACE_SECONDS = 5  # as long as Prefect gives its own server to stop


@contextmanager
def owned_by_this_process() -> Iterator[None]:
    """Processes started in the block (Prefect's temporary server) carry this process as their
    owner in their environment; processes started later (torchrun) do not."""
    os.environ[OWNER_VARIABLE] = _mark(psutil.Process())
    try:
        yield
    finally:
        os.environ.pop(OWNER_VARIABLE, None)


def stop_orphaned_servers() -> list[int]:
    """Stop the temporary Prefect servers of this Prefect home (``$ADAPTEROPS_HOME/prefect``)
    whose owning command is gone (SIGTERM, then SIGKILL after a grace); returns their process
    ids. Another home's are left to the next command there; processes that cannot be read
    (another user's) are left alone."""
    orphans = []
    for process in psutil.process_iter(["cmdline"]):
        if _SERVER_APP not in (process.info["cmdline"] or []):
            continue
        try:
            environment = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        owner = environment.get(OWNER_VARIABLE)
        ours = environment.get("PREFECT_HOME") == os.environ.get("PREFECT_HOME")
        if owner is not None and ours and not _alive(owner):
            orphans.append(process)
    for process in orphans:
        with suppress(psutil.NoSuchProcess):  # it exited meanwhile
            process.terminate()
    _, still_running = psutil.wait_procs(orphans, timeout=_GRACE_SECONDS)
    for process in still_running:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    return [process.pid for process in orphans]


def _mark(process: psutil.Process) -> str:
    """A process's id and start time: an id alone may be another process's by now."""
    return f"{process.pid}:{process.create_time()}"


def _alive(owner: str) -> bool:
    """Whether the process ``owner`` marks (:func:`_mark`) still runs."""
    pid, _, _ = owner.partition(":")
    try:
        return pid.isdigit() and _mark(psutil.Process(int(pid))) == owner
    except psutil.NoSuchProcess:
        return False
