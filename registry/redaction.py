"""Secrets never reach a person's screen, a log, MLflow or a registry row: :func:`redact`.

Two kinds of secret are masked as ``***``:

- the password of any URL written with one (``postgresql://user:PASSWORD@host/db``), including
  passwords with an unencoded ``@`` (the last ``@`` before the host ends it);
- the values of the variables that hold credentials (AWS keys, ``PGPASSWORD``, MLflow's
  credentials) and of the passwords inside the URLs our settings read
  (``ADAPTEROPS_REGISTRY_URL``, ``MLFLOW_TRACKING_URI``, S3 endpoint URLs), wherever they appear
  (a driver may echo a password without its URL), decoded or percent-encoded.
"""

from __future__ import annotations

import os
import re
from typing import Any, TextIO
from urllib.parse import quote, unquote

__all__ = [
    "MASK",
    "SECRET_VARIABLES",
    "URL_VARIABLES",
    "RedactedError",
    "RedactingStream",
    "redact",
    "secrets_in_environment",
]

MASK = "***"

# Variables whose whole value is a credential.
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",  # user:password of a Prefect server started with an auth string
)
# Variables holding URLs that may carry a password.
URL_VARIABLES = (
    "ADAPTEROPS_REGISTRY_URL",
    "ADAPTEROPS_ARTIFACTS_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "PREFECT_API_URL",
)
# A value this short would mask ordinary words (and says little about the secret).
_SHORTEST_SECRET = 4


def _maskable(value: str) -> bool:
    """Whether a credential's value can be masked wherever it appears. A value made of letters
    alone (a local test key such as ``adapterops``) would also mask ordinary words, the product's
    name included; in a URL it is still masked by position."""
    return len(value) >= _SHORTEST_SECRET and not value.isalpha()


# scheme://user:PASSWORD@host: the password is everything up to the '@' that starts a host
# (no '@', '/', '?', '#' or space in it) followed by the end of the authority.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>\S*?)"
    r"(?P<tail>@[^@\s/?#]+(?=[/?#\s'\")\]]|$))"
)


def redact(text: str) -> str:
    """``text`` with every URL password and every credential the environment holds as ``***``."""
    return _mask(text, secrets_in_environment()) if text else text


def _mask(text: str, secrets: list[str]) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def secrets_in_environment() -> list[str]:
    """The credential values the environment holds now, longest first (so that a secret that
    contains another is masked whole), each also in its percent-encoded form."""
    found: set[str] = set()
    for name in SECRET_VARIABLES:
        found.add(os.environ.get(name, ""))
    for name in URL_VARIABLES:
        for match in _URL_PASSWORD.finditer(os.environ.get(name, "")):
            found.add(match["password"])
    values = {form for value in found for form in _written_forms(value)}
    return sorted(filter(_maskable, values), key=len, reverse=True)


def _written_forms(secret: str) -> tuple[str, str, str]:
    """A secret as given, percent-decoded and percent-encoded (its bytes that are not UTF-8,
    read from the environment as surrogates, encoded as they were: they failed to encode)."""
    return secret, unquote(secret), quote(secret, safe="", errors="surrogateescape")


class RedactedError(Exception):
    """An error whose message is redacted when it is made, so that neither a terminal, nor a
    log, nor a traceback a flow run's log keeps can show the secrets in it."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class RedactingStream:
    """A text stream that redacts what is written to it, for ``sys.stdout``/``sys.stderr`` of
    the CLI: libraries print too (MLflow writes run links with the tracking URI, credentials
    included, straight to stdout). The secrets are read when the stream is made."""

    def __init__(self, stream: TextIO) -> None:
        self.unredacted = stream  # for the one command whose output is the secrets (stack env)
        self._secrets = secrets_in_environment()

    def write(self, text: str) -> int:
        """Write ``text`` with URL passwords and known credentials masked."""
        return self.unredacted.write(_mask(text, self._secrets) if text else text)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding, ...
        return getattr(self.unredacted, name)
