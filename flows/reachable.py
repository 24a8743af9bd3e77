"""Is a server there at all? One quick request before a client that retries for minutes.

MLflow's client retries a refused connection with backoff for about four minutes, and Prefect's
fails deep inside a flow start: a wrong ``MLFLOW_TRACKING_URI`` or ``PREFECT_API_URL`` looked like
a hung command or ended in a library's error. Any HTTP answer (even 401 or 404, or a certificate
the client may be told to accept) means the server is there; only silence or a refusal fails.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse
import urllib.request

from .errors import RedactedError

__all__ = ["check_answers"]

_ANSWERED: set[str] = set()  # servers that answered once in this process: asked once


def check_answers(
    url: str,
    *,
    service: str,
    variable: str,
    error: type[RedactedError],
    then: str = "",
    timeout: float = 10.0,
) -> None:
    """Raise ``error`` in one line when nothing answers at ``url``'s ``/health``: ``service``
    names the server, ``variable`` the setting to check, ``then`` is said last."""
    if url in _ANSWERED:
        return
    try:
        urllib.request.urlopen(_health_url(url), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        if not isinstance(cause, ssl.SSLError):  # a TLS answer is an answer
            raise error(
                f"{service} at {url} is not reachable ({_why(cause, timeout)}): check {variable} "
                f"and that the server runs{'; ' + then if then else ''}"
            ) from None
    _ANSWERED.add(url)


def _why(cause: object, timeout: float) -> str:
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout:g} s"
    return " ".join(str(cause).split())[:200]


def _health_url(url: str) -> str:
    """The server's ``/health``, without the user and password a URL may carry (urllib would
    read them as part of the host name; the answer, not the login, is what is checked)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = f"{parts.path.rstrip('/')}/health"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
