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

__all__ = ["check_answers", "check_mlflow_store", "check_prefect_login", "store_down_message"]

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
    did a ``PREFECT_API_URL`` without its ``/api`` (404). A server whose database is down
    answers ``hello`` (it reads no table) and then 500 to the flow run's start, Prefect's bare
    ``PrefectHTTPStatusError`` (exit 1): one read of its flows tells that first."""
    if url in _LOGGED_IN:
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - Prefect: when used
    from prefect.exceptions import PrefectHTTPStatusError  # noqa: PLC0415

    try:
        with get_client(sync_client=True) as client:
            client.hello()
            client.read_flows(limit=1)  # its database answers too
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        if status >= 500:
            path = urllib.parse.urlsplit(str(exc.request.url)).path
            raise error(
                f"Prefect at {url} runs but cannot answer now ({status} "
                f"{exc.response.reason_phrase} on {path}): the database it keeps flow runs in "
                "(the server's PREFECT_API_DATABASE_CONNECTION_URL) is likely down or "
                "unreachable from it; check that database and the Prefect server's log"
            ) from None
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


def check_mlflow_store(
    url: str,
    experiment: str,
    *,
    error: type[RedactedError],
    then: str = "",
    timeout: float = 30.0,
) -> None:
    """Raise ``error`` in one line when the MLflow server at ``url`` answers, but not from its
    database: with its backend store down, a server answers ``/health`` and then 503 to every
    API call, which MLflow's client retried for four minutes in silence before an error that
    blamed ``MLFLOW_TRACKING_URI`` ("could not find the experiment ... too many 503 error
    responses"); one whose database cannot be reached at all retries it for minutes on each
    request, and the client's two-minute timeouts and retries held a build for a quarter of an
    hour. One request for ``experiment`` within ``timeout`` seconds, without retries, with
    this client's credentials; any other answer (found, not found, refused) is left to the
    calls that follow."""
    if url in _STORE_ANSWERED:
        return
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 - MLflow: when used
    from mlflow.utils.credentials import get_default_host_creds  # noqa: PLC0415
    from mlflow.utils.rest_utils import http_request  # noqa: PLC0415

    try:
        response = http_request(
            get_default_host_creds(url), "/api/2.0/mlflow/experiments/get-by-name", "GET",
            max_retries=0, timeout=timeout, raise_on_status=False,
            params={"experiment_name": experiment},
        )  # fmt: skip
    except Exception as exc:  # a check only: an auth plugin's own error is left to MLflow too
        if not isinstance(exc, MlflowException | OSError) or "timed out" not in str(exc).lower():
            return  # the calls that follow retry, and then say what failed
        silent = f"/health answers, but an API call got no answer within {timeout:g} s"
        raise error(store_down_message(url, silent, then)) from None
    if response.status_code in (500, 503):
        try:
            body = response.json()
        except ValueError:  # not JSON: a proxy's page
            body = response.text
        detail = str(body.get("message", body) if isinstance(body, dict) else body)
        status = f"{response.status_code} {response.reason}"
        raise error(store_down_message(url, f"{status}: {detail}", then))
    _STORE_ANSWERED.add(url)


_STORE_ANSWERED: set[str] = set()  # MLflow servers whose store answered once in this process


def store_down_message(url: str, reason: str, then: str = "") -> str:
    """What to check when the MLflow server at ``url`` runs but answers 5xx (``reason``)."""
    reason = " ".join(reason.split())[:300]
    return (
        f"MLflow at {url} runs but cannot answer now ({reason}): the database it keeps runs "
        "and models in (its --backend-store-uri) is likely down or unreachable from it; check "
        f"that database and the MLflow server's log{'; ' + then if then else ''}"
    )


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
