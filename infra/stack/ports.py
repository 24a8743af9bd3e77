"""Loopback ports and server processes: is a port taken, find free ones, wait for a server,
stop one."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "free_port",
    "http_ok",
    "pid_alive",
    "port_in_use",
    "running_or_raise",
    "stop_pid_group",
    "stop_process_group",
    "wait_until",
]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


# Where free_port looks: below the ports the kernel hands to outgoing connections (Linux's
# 32768-60999, macOS's 49152-65535), with room for SeaweedFS's +10000. A port the kernel picked
# there (bind to port 0) and a server bound a moment later could meanwhile become the local end
# of some process's connection (a test run makes thousands): "address already in use".
_PICK_FROM = range(15000, 22768)
_RANDOM = random.SystemRandom()  # not the random module's state, which tests seed alike


def free_port(*, also_free_at: tuple[int, ...] = ()) -> int:
    """A free loopback port ``p`` such that ``p + offset`` is free too for each offset given.

    SeaweedFS puts gRPC on port + 10000, so its ports need that room.
    """
    for _ in range(200):
        port = _RANDOM.choice(_PICK_FROM)  # at random: two processes seldom try the same one
        if all(port + o < 65536 and not port_in_use(port + o) for o in (0, *also_free_at)):
            return port
    raise RuntimeError("no free loopback port found")


def http_ok(url: str, *, any_status: bool = False) -> bool:
    """Whether ``url`` answers HTTP 200 (or, with ``any_status``, any HTTP status at all)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


def running_or_raise(process: subprocess.Popen[bytes] | None, what: str, log: object) -> None:
    """A server process that exited while we wait for it is an error naming its log and
    quoting its last line (on one line: logs and people read the error whole)."""
    if process is not None and process.poll() is not None:
        raise RuntimeError(f"{what} exited with {process.returncode}; see {log}{_last_line(log)}")


def _last_line(log: object) -> str:
    try:
        lines = [line for line in Path(str(log)).read_text(errors="replace").splitlines() if line]
    except OSError:
        return ""
    return f" (last line: {' '.join(lines[-1].split())[:300]})" if lines else ""


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: str = "") -> None:
    """Poll ``check`` until it is true; a clear error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(
        f"{what} did not come up within {timeout:.0f} s{f'; see {log}' if log else ''}"
    )


def stop_process_group(process: subprocess.Popen[bytes] | None, *, grace: float) -> None:
    """SIGTERM a server started with ``start_new_session=True``; SIGKILL after ``grace`` s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie waiting for its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or ``None`` if gone.

    A PID is reused once its process exits; the pair (pid, start time) names one process.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop_pid_group(pid: int, *, grace: float) -> None:
    """Like :func:`stop_process_group` for a server this process did not start (a PID file's)."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
