"""A spec file read as a YAML document, with ``--set`` overrides applied, and the error that
says what is wrong with one. Light (PyYAML only): the CLI reads a spec file before torch
loads, so a file that is not YAML, or an override written wrong, is one line in half a second;
:mod:`flows.spec` validates the document against the methods after that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_SPEC_BYTES", "SpecError", "apply_overrides", "read_spec_document"]


class SpecError(Exception):
    """A spec file is unreadable or invalid; ``problems`` lists ``(path, message)`` pairs (a
    path in parentheses, ``(file)``, ``(yaml)`` or ``(top)``, is about the whole file: the
    message names no field then)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        # one line whatever the problems say: logs and people read an error whole
        self.problems = [(path, " ".join(str(message).split())) for path, message in problems]
        listed = "; ".join(
            message if path.startswith("(") else f"{path}: {message}"
            for path, message in self.problems
        )
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        super().__init__(f"{source}: {count}{listed}")


MAX_SPEC_BYTES = 1_048_576  # a spec is a page of YAML; a larger file is not one


def read_spec_document(file: Path, overrides: list[str] | None = None) -> Any:
    """The spec file's YAML document with ``overrides`` applied; unreadable files are spec
    errors."""
    if not file.is_file():
        what = "not a regular file; give a spec file (YAML)" if file.exists() else "no such file"
        raise SpecError(str(file), [("(file)", what)])
    size = file.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            str(file), [("(file)", f"{size} bytes; a spec is at most {MAX_SPEC_BYTES}")]
        )
    try:
        data = yaml.safe_load(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(
            str(file), [("(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None
    except RecursionError:
        raise SpecError(str(file), [("(yaml)", "nested too deeply to be a spec")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(file), [("(yaml)", _where_not_yaml(exc))]) from None
    if overrides:
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides, source=str(file))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], *, source: str) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML: numbers, booleans, lists)."""
    problems = []
    result = yaml.safe_load(yaml.safe_dump(data))  # a deep copy of plain data
    if _switches_method(result, overrides):
        # --set method.type=bitfit on a LoRA spec means "this spec with BitFit": LoRA's rank and
        # targets would be unknown fields of BitFit. Other method.* overrides still apply.
        result["method"] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append((item, "an override is written key.sub=value"))
            continue
        if not raw.strip():  # YAML reads it as null: `--set train.max_steps=$STEPS`, unset
            problems.append((key, "no value after '=' (an unset variable?); key=null clears it"))
            continue
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append((key, f"{part} is not a mapping"))
                break
        else:
            try:
                node[leaf] = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                problems.append((key, f"the value {raw!r} is not YAML ({_first_line(exc)})"))
    if problems:
        raise SpecError(source, problems)
    return dict(result)


def _switches_method(document: dict[str, Any], overrides: list[str]) -> bool:
    """Whether an override sets ``method.type`` to another method than the document's."""
    method = document.get("method")
    current = method.get("type") if isinstance(method, dict) else None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key.strip() == "method.type":
            try:
                return bool(yaml.safe_load(raw) != current)
            except yaml.YAMLError:
                return False  # apply_overrides reports it
    return False


def _first_line(exc: yaml.YAMLError) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _where_not_yaml(exc: yaml.YAMLError) -> str:
    """Where a file stops being YAML, and why, in a line: ``not YAML at line 5, column 1: could
    not find expected ':'``, without PyYAML's ``"<unicode string>"`` and quoted snippets."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return _first_line(exc)
    return f"not YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
