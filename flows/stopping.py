"""A stop asked of the process (SIGTERM, Ctrl-C) as an exception, so that the work unwinds.

Python's default for SIGTERM ends the process at once: no ``finally`` runs. What a build had
started outlived it: Prefect's temporary server (one more orphaned server per stopped CI job or
``timeout`` of a cron line), the torchrun group training it, and the one line saying what
happened (there was none; the build's log just stopped). A supervisor sends SIGTERM first
(Kubernetes, systemd, ``timeout``, a cancelled CI job, a Prefect worker cancelling a run) and
leaves a grace period for exactly this cleanup. The CLI raises :class:`StopRequested` on
SIGTERM instead; Prefect's own handler, installed while a flow runs, raises its
``TerminationSignal`` and, after marking the flow run crashed, gives the signal back to the
handler it found (ours). Ctrl-C is Python's ``KeyboardInterrupt`` already.

SIGHUP (the terminal closed: an SSH session that dropped under a build run at its prompt) ended
the CLI at once just the same; it unwinds the same way now, unless the command was started with
SIGHUP ignored (``nohup``), which stays ignored.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopRequested", "raise_on_sigterm", "stop_reason"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """The process was asked to stop by ``signum`` (SIGTERM, SIGHUP). A ``BaseException``, as
    ``KeyboardInterrupt`` is: no ``except Exception`` that keeps going after one failure (a
    retraining's other specs) swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process this signal ended: 128 + its number (143 for
        SIGTERM, 129 for SIGHUP)."""
        return 128 + self.signum


def raise_on_sigterm() -> None:
    """From now on SIGTERM and SIGHUP raise :class:`StopRequested` in the main thread, once
    each: a second one (a supervisor that will not wait for the cleanup) ends the process as
    before. SIGHUP only where it is not ignored (``nohup``). Only from the main thread (where
    Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise StopRequested(signum)

    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, stop)


def stop_reason(exc: BaseException) -> str | None:
    """``"stopped by SIGTERM"`` (or SIGHUP) or ``"interrupted (Ctrl-C)"`` when ``exc`` is a
    stop asked of the process rather than a failure of its work; None otherwise. Prefect's
    ``TerminationSignal`` (raised while a flow runs) carries the signal but no message."""
    if isinstance(exc, StopRequested):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    # Prefect is loaded if it raised one; not imported here for the commands that never run
    # a flow
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    if prefect_exceptions is not None and isinstance(exc, prefect_exceptions.TerminationSignal):
        return f"stopped by {signal.Signals(exc.signal).name}"
    return None
