"""Where the registry keeps its records and bytes, from the environment.

- ``ADAPTEROPS_HOME``: the embedded defaults' folder (default ``./.adapterops``);
- ``ADAPTEROPS_REGISTRY_URL``: SQLAlchemy URL (default ``sqlite:///$ADAPTEROPS_HOME/registry.db``;
  production: ``postgresql+psycopg://user:password@host/db``);
- ``ADAPTEROPS_ARTIFACTS_URL``: ``file:///path`` or ``s3://bucket/prefix`` (default
  ``file://$ADAPTEROPS_HOME/artifacts``). S3 endpoint and credentials come from the usual AWS
  variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import RegistryError

__all__ = [
    "HomeNotAFolderError",
    "NotUtf8SettingError",
    "SettingError",
    "Settings",
    "adapterops_home",
    "set_but_blank",
]


class SettingError(RegistryError, ValueError):
    """A registry setting from the environment that cannot be used."""


class HomeNotAFolderError(SettingError):
    """``ADAPTEROPS_HOME`` names something that is not a folder (a file)."""


class NotUtf8SettingError(SettingError):
    """A registry setting (``ADAPTEROPS_HOME``, a URL), or the folder the default home is in,
    is not UTF-8 text: the database URL made of it cannot be (SQL drivers take UTF-8 only)."""


def setting(name: str) -> str:
    """The variable ``name``, stripped; empty or blank counts as unset (``""``): written as
    ``ADAPTEROPS_HOME=${DIR}`` in a shell or compose file with ``DIR`` unset, it is empty, and
    an empty home put the registry in the current folder itself (a blank artifacts URL, in a
    folder named ``%20``). Bytes that are not UTF-8 are refused (:func:`_utf8`)."""
    value = os.environ.get(name, "").strip()
    if name == "ADAPTEROPS_HOME":
        return _utf8(value, name, "give a folder whose name is UTF-8")
    return _utf8(value, name, "write it in UTF-8", shown=False)  # a URL may hold a password


def _utf8(value: str, named: str, advice: str, *, shown: bool = True) -> str:
    """``value`` if it is UTF-8 text, else :class:`NotUtf8SettingError` naming its first byte
    that is not (Python reads such bytes from the environment as lone surrogates, which failed
    in a ``UnicodeEncodeError`` traceback where the database URL was quoted); ``shown``: the
    value is said, each such byte as \ufffd."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(value[exc.start]) - 0xDC00
        said = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise NotUtf8SettingError(
            f"{named}{f' {said!r}' if shown else ''} is not UTF-8 (byte {byte:#04x} at position "
            f"{exc.start}): the registry's URLs are made of it, and take UTF-8 only; {advice}"
        ) from None
    return value


def set_but_blank(name: str) -> bool:
    """Whether the variable ``name`` is present but empty or blank (:func:`setting` takes it as
    unset): what a CI system passes for a secret that is not set."""
    return name in os.environ and not setting(name)


def adapterops_home() -> Path:
    """``ADAPTEROPS_HOME`` (default ``./.adapterops``; empty counts as unset), resolved: the
    embedded defaults' folder. A file there is refused (:class:`HomeNotAFolderError`) before
    anything is made under it."""
    value = setting("ADAPTEROPS_HOME")
    home = Path(value or ".adapterops").expanduser().resolve()
    if not value:  # the current folder's name, then
        advice = "set ADAPTEROPS_HOME to a folder whose name is UTF-8"
        _utf8(str(home), "the default home (ADAPTEROPS_HOME unset)", advice)
    if home.exists() and not home.is_dir():
        named = f"ADAPTEROPS_HOME={value}" if value else "./.adapterops (ADAPTEROPS_HOME unset)"
        raise HomeNotAFolderError(
            f"{named} is a file, not a folder: the registry, its files and the flows' caches go "
            "in that folder. Point ADAPTEROPS_HOME at a folder (it is made if missing)"
        )
    return home


@dataclass(frozen=True)
class Settings:
    """The registry's two locations."""

    database_url: str
    artifacts_url: str

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment, falling back to the embedded defaults under ``ADAPTEROPS_HOME``."""
        home = adapterops_home()
        return cls(
            database_url=setting("ADAPTEROPS_REGISTRY_URL") or f"sqlite:///{home / 'registry.db'}",
            artifacts_url=setting("ADAPTEROPS_ARTIFACTS_URL") or (home / "artifacts").as_uri(),
        )

    def sqlite_file(self) -> Path | None:
        """The file a SQLite registry URL names (None: a server database, or in memory)."""
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only the commands that ask
        from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

        try:
            url = make_url(self.database_url)
        except ArgumentError:
            return None  # opening it says what is wrong
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).absolute()

    @staticmethod
    def database_origin() -> str:
        """Which variable chose the database URL, for messages about a registry not found."""
        if setting("ADAPTEROPS_REGISTRY_URL"):
            return "ADAPTEROPS_REGISTRY_URL"
        if set_but_blank("ADAPTEROPS_REGISTRY_URL"):  # a CI secret that is not set
            return (
                "ADAPTEROPS_REGISTRY_URL is set but empty (a CI secret that is not set arrives "
                "empty), taken as unset: the embedded default under ADAPTEROPS_HOME "
                "(./.adapterops if unset)"
            )
        if setting("ADAPTEROPS_HOME"):
            return f"ADAPTEROPS_HOME={os.environ['ADAPTEROPS_HOME']}"
        return "ADAPTEROPS_HOME unset: the default ./.adapterops, in the current folder"

    @staticmethod
    def where_to_look(missing: str) -> str:
        """``missing`` (a registry not found at the environment's URL), with the variable that
        chose it and where to point instead."""
        return (
            f"{missing} ({Settings.database_origin()}). If your registry is elsewhere, set "
            "ADAPTEROPS_HOME or ADAPTEROPS_REGISTRY_URL to it; `adapterops build SPEC` or "
            "`adapterops push FOLDER` starts one here"
        )
