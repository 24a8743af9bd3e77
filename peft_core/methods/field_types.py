"""Each field of a method configuration holds a value of the type it is annotated with.

A value of the wrong type (``rank: "big"`` in a hand-written adapter.json, ``pc.LoRA(rank="8")``
from Python) is named with the type its field takes; the configs' own range checks would fail on
it inside a comparison (``'>=' not supported between instances of 'str' and 'int'``).
"""

from __future__ import annotations

import numbers
import types
import typing
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["check_field_types", "plain_values"]


def check_field_types(
    owner: str, cls: type, fields: dict[str, Any], *, sequence: str = "list or tuple"
) -> None:
    """Raise :class:`ConfigError` for the first of ``fields`` that does not fit ``cls``'s
    annotation of it. ``owner`` starts the message; ``sequence`` is what a tuple field is called
    to the reader (a file holds a "list", Python code passes a "tuple")."""
    hints = typing.get_type_hints(cls)
    for key, value in fields.items():
        expected = hints.get(key, Any)
        if not _fits(value, expected):
            raise ConfigError(
                f"{owner}: {key} must be {_spelled(expected, sequence)}, got {value!r:.60}"
            )


def plain_values(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as the plain Python values their annotations name, where one was given in
    another spelling of the same thing: a list for a tuple field (``targets=["q", "v"]``, what
    people write and what a file holds), a NumPy integer or float for a number field
    (``rank=np.int64(8)``, computed from an array). The frozen config then stays hashable,
    compares equal to the one written plainly, and saves as JSON."""
    hints = typing.get_type_hints(cls)
    return {key: _plain(value, hints.get(key, Any)) for key, value in fields.items()}


def _plain(value: Any, expected: Any) -> Any:
    accepted = _arms(expected)
    if isinstance(value, list) and any(typing.get_origin(arm) is tuple for arm in accepted):
        return tuple(value)
    if type(value) in (bool, int, float):  # not a subclass: np.float64 is a float
        return value
    if isinstance(value, numbers.Integral) and (int in accepted or float in accepted):
        return int(value)
    if isinstance(value, numbers.Real) and float in accepted:
        return float(value)
    return value


def _arms(expected: Any) -> tuple[Any, ...]:
    """The types a (possibly union) annotation accepts."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return typing.get_args(expected)
    return (expected,)


# What a plain field accepts: JSON has one number type, so a float field takes whole numbers too.
_PLAIN_CHECKS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _fits(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin is Literal:
        return value in args
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, tuple) and all(_fits(item, args[0]) for item in value)
    # Any, mappings and nested configs: the config's own checks' job
    check = _PLAIN_CHECKS.get(expected)
    return check is None or bool(check(value))


def _spelled(expected: Any, sequence: str) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spelled(arm, sequence) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a {sequence} of {_spelled(args[0], sequence)}s"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(expected, "null" if expected is type(None) else str(expected))
