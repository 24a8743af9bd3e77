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

__all__ = ["check_answers", "check_prefect_login"]

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


def check_prefect_login(url: str, error: type[RedactedError]) -> None:
    """Raise ``error`` in one line when the Prefect server at ``url`` refuses this client's
    credentials (its ``/health`` answers anyone, so :func:`check_answers` cannot tell): a
    server started with ``PREFECT_SERVER_API_AUTH_STRING`` failed a deploy or a flow's start
    with Prefect's bare ``PrefectHTTPStatusError`` (exit 1), saying nothing of what to set; so
    did a ``PREFECT_API_URL`` without its ``/api`` (404)."""
    if url in _LOGGED_IN:
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - Prefect: when used
    from prefect.exceptions import PrefectHTTPStatusError  # noqa: PLC0415

    try:
        with get_client(sync_client=True) as client:
            client.hello()
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        if status == 404:  # the UI's address, or the server's without /api
            parts = urllib.parse.urlsplit(url)
            raise error(
                f"no Prefect API answers at {url} (404 Not Found): PREFECT_API_URL is the "
                f"server's address followed by /api ({parts.scheme}://{parts.netloc}/api?)"
            ) from None
        if status not in (401, 403):
            raise
        raise error(
            f"Prefect at {url} refused this client ({status} {exc.response.reason_phrase}): set "
            "PREFECT_API_AUTH_STRING to the user:password its server was started with "
            "(PREFECT_SERVER_API_AUTH_STRING), or PREFECT_API_KEY for Prefect Cloud"
        ) from None
    _LOGGED_IN.add(url)


_LOGGED_IN: set[str] = set()  # Prefect servers that took this client's credentials once


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
