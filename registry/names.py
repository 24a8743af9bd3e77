"""Names and references: ``name``, ``name@3``, ``name@champion``.

Names become file names, S3 keys and MLflow model names, so they are restricted to letters, digits,
``_`` and ``-`` (no ``/``, no ``..``). Aliases may not be all digits (``name@3`` is version 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidNameError

__all__ = [
    "CHAMPION",
    "LANGUAGE_PATTERN",
    "LANGUAGE_WORDS",
    "MAX_VERSION",
    "NAME_PATTERN",
    "NAME_WORDS",
    "Ref",
    "base_model_name",
    "check_alias",
    "check_alias_case",
    "check_key",
    "check_language",
    "check_name",
    "check_new_alias",
    "check_storable_text",
    "member_name",
    "parse_ref",
]

# an adapter, composition or task name: what check_name and the spec accept (base models are
# hub ids or folders, checked where they load)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$"
NAME_WORDS = (
    "use 1-128 letters, digits, '_' or '-', starting with a letter or digit (no '/', '.' or spaces)"
)
_NAME = re.compile(NAME_PATTERN)  # used with fullmatch: no name ends in a newline
# a language code (en, pt, pt-BR, zh_Hant): what resolve matches a request's language against
LANGUAGE_PATTERN = r"^[a-z]{2,3}([_-][A-Za-z0-9]+)?$"
LANGUAGE_WORDS = (
    "a language code: 2-3 lowercase letters, then optionally '-' or '_' and a region or script "
    "(en, pt, pt-BR, zh_Hant)"
)
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: "²".isdigit() is True, int("²") fails
_OTHER_SEPARATOR = re.compile(r"([A-Za-z0-9][A-Za-z0-9_\-]{0,127})([:/])([A-Za-z0-9_\-]+)")
CHAMPION = "champion"  # the alias the serving path and the promotion gate use
MAX_VERSION = 2**31 - 1  # the database column is a 32-bit integer on every backend
MAX_ALIAS = 64  # the alias and metric-key columns: one limit, checked before any database sees it


def base_model_name(value: str) -> str:
    """The name a base model is registered under: a folder written with a trailing ``/`` (a
    shell's completion adds one) is the same folder, so the same base, as the one without."""
    return value.rstrip("/") or value


def check_storable_text(value: str, what: str, *, one_line: bool = False) -> str:
    """Return ``value`` if a registry database can hold it, else raise :class:`InvalidNameError`
    naming the character. A lone surrogate (a byte Python could not decode: a file, terminal or
    variable in another encoding) failed inside the SQL driver with ``UnicodeEncodeError``; a NUL
    was stored by SQLite and refused by PostgreSQL. ``one_line`` refuses every control
    character (a base model's name: a hub id or a folder)."""
    found = (_CONTROL_OR_SURROGATE if one_line else _NUL_OR_SURROGATE).search(value)
    if found is None:
        return value
    char, position = found.group(), found.start()
    if "\ud800" <= char <= "\udfff":
        raise InvalidNameError(
            f"{what} {value!r} is not UTF-8 text: {char!r} at position {position} stands for a "
            "byte that was not decoded (a file, terminal or variable in another encoding?); "
            "give it as UTF-8"
        )
    held_by = "no registry database stores" if char == "\x00" else "no name holds"
    raise InvalidNameError(
        f"{what} {value!r} holds the control character {char!r} at position {position}, which "
        f"{held_by}; remove it"
    )


_NUL_OR_SURROGATE = re.compile("[\x00\ud800-\udfff]")
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Cc: C0, DEL, C1


def check_name(value: str, what: str = "adapter name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidNameError(f"invalid {what} {value!r}: {NAME_WORDS}")
    return value


def check_language(value: str) -> str:
    """Return ``value`` if it is a language code, else raise :class:`InvalidNameError` (an
    adapter registered under ``English`` would never be found for ``en``)."""
    if not isinstance(value, str) or not re.fullmatch(LANGUAGE_PATTERN, value):
        raise InvalidNameError(f"invalid language {value!r}: {LANGUAGE_WORDS}")
    return value


def check_alias(value: str) -> str:
    """Return ``value`` if it is a valid alias (a name of at most 64 characters, not a number)."""
    check_key(value, "alias")
    if _DIGITS.fullmatch(value):
        raise InvalidNameError(f"invalid alias {value!r}: an alias cannot be a number")
    return value


_MLFLOW_RESERVED = re.compile(r"latest|v[0-9]+", re.IGNORECASE)  # MLflow names versions so
_MLFLOW_VERSION = re.compile(r"^[vV]([0-9]+)$")


def check_new_alias(value: str) -> str:
    """``value`` if an alias may be set to it: :func:`check_alias`'s rules, and none of the
    names MLflow, where reviewers move aliases, keeps for itself (``latest``, ``v1``, ``V2``...)."""
    check_alias(value)
    if _MLFLOW_RESERVED.fullmatch(value):
        raise InvalidNameError(
            f"invalid alias {value!r}: MLflow, where reviewers see and move aliases, reserves "
            "'latest' and 'v' followed by a number for its own version names; choose another "
            "(champion, staging, production...)"
        )
    return value


def check_alias_case(alias: str, existing: Iterable[str], owner: str) -> None:
    """Refuse ``alias`` when ``owner`` (an adapter or a composition) already has an alias that
    differs from it only by case: ``Champion`` beside ``champion`` would be a second alias here
    and in MLflow's API, but MLflow's UI (and Unity Catalog) lowercase what reviewers type."""
    twins = sorted({a for a in existing if a != alias and a.lower() == alias.lower()})
    if twins:
        raise InvalidNameError(
            f"alias {alias!r}: {owner} already has the alias {twins[0]!r}, which differs only "
            f"by case, and MLflow's UI lowercases aliases; use {twins[0]!r} (or remove it first)"
        )


def check_key(value: str, what: str = "metric name") -> str:
    """A name of at most 64 characters (aliases, metric names)."""
    check_name(value, what)
    if len(value) > MAX_ALIAS:
        raise InvalidNameError(
            f"invalid {what} {value[:20]!r}... ({len(value)} characters): at most {MAX_ALIAS}"
        )
    return value


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` and ``alias`` is set, or neither (latest)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        suffix = self.version if self.version is not None else self.alias
        return f"{self.name}@{suffix}" if suffix is not None else self.name


def member_name(ref: str) -> str:
    """The adapter name in a registry reference: ``name@champion`` -> ``name``."""
    return ref.partition("@")[0]


def parse_ref(text: str | Ref) -> Ref:
    """Parse ``name``, ``name@<version>`` or ``name@<alias>``. ``name@latest`` is ``name`` (its
    newest version) and ``name@v3`` is ``name@3``: MLflow's spellings, which it keeps from
    aliases (:func:`check_new_alias`), so neither can mean an alias."""
    if not isinstance(text, str | Ref):
        # str() of anything is some string, which was then refused as an odd adapter name
        # ("no adapter named 'None'") or, worse, taken for one.
        given = type(text).__name__
        use = " (a version record: pass its .ref)" if hasattr(text, "ref") else ""
        raise TypeError(
            f"a registry reference is a string (name, name@VERSION or name@ALIAS), not {given}{use}"
        )
    name, sep, suffix = str(text).partition("@")
    # ``name:3`` (Docker's and Hugging Face's habit) and ``name/3`` get the spelling they meant.
    if not sep and (habit := _OTHER_SEPARATOR.fullmatch(name)):
        meant = f"{habit.group(1)}@{habit.group(3)}"
        raise InvalidNameError(
            f"invalid reference {text!r}: write {meant} (name@VERSION or name@ALIAS)"
        )
    check_name(name)
    if not sep or suffix.lower() == "latest":  # MLflow's word for it, never an alias here
        return Ref(name)
    if not suffix:  # was "invalid alias ''": the '@' was the mistake, not an alias
        raise InvalidNameError(
            f"invalid reference {text!r}: give a version or an alias after '@' ({name}@1, "
            f"{name}@champion), or the name alone for its newest version"
        )
    suffix = _MLFLOW_VERSION.sub(r"\1", suffix)  # name@v3, as MLflow's UI writes version 3
    if _DIGITS.fullmatch(suffix.removeprefix("-")):  # name@-1 was "invalid alias '-1'"
        version = int(suffix)
        if not 1 <= version <= MAX_VERSION:
            raise InvalidNameError(
                f"invalid reference {text!r}: versions are numbered 1 to {MAX_VERSION}"
            )
        return Ref(name, version=version)
    return Ref(name, alias=check_alias(suffix))
