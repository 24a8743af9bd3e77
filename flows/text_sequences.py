"""Texts to predict that are not held as a list of Python strings: a data file's column read
from its Arrow cache (``predict_job.FileTexts``), and lines piped to ``--text -`` kept in a
temporary file (:class:`SpooledTexts`). predict reads either a window at a time, so a stream of
millions of texts costs a window's strings, not every one. Light: no torch here, since the CLI
reads standard input before the libraries load."""

from __future__ import annotations

import tempfile
from abc import abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload


class WindowedTexts(Sequence[str]):
    """A sequence of texts read a slice at a time: subclasses say how long it is and how to
    read ``[start, stop)``. Equal to any sequence of the same texts (a list as ``--text``
    gives them), so code and tests written for lists keep working."""

    _READ_ROWS = 4096  # texts read per slice when iterating

    @abstractmethod
    def _read(self, start: int, stop: int) -> list[str]:
        """Texts ``start`` to ``stop`` (excluded), ``0 <= start <= stop <= len(self)``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            texts = self._read(start, max(start, stop)) if step > 0 else []
            return texts[::step] if step != 1 else texts
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"text {index} of {len(self)}")
        return self._read(index, index + 1)[0]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), self._READ_ROWS):
            yield from self[start : start + self._READ_ROWS]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # compared by value, like a list


class SpooledTexts(WindowedTexts):
    """Texts written, as they come, to an anonymous temporary file (gone when this object is,
    or when the process ends), with where each one ends: 8 bytes of memory per text, however
    long the stream. A text may hold newlines (``--text "$(cat review.txt)"``)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as this object
        self._ends = array("q")  # byte offset where each text ends
        written = 0
        for text in texts:
            written += self._file.write(text.encode("utf-8", "surrogateescape"))
            self._ends.append(written)
        self._file.flush()

    def __len__(self) -> int:
        return len(self._ends)

    def _read(self, start: int, stop: int) -> list[str]:
        if start >= stop:
            return []
        first = self._ends[start - 1] if start else 0
        self._file.seek(first)
        block = self._file.read(self._ends[stop - 1] - first)
        texts, begin = [], 0
        for end in self._ends[start:stop]:
            texts.append(block[begin : end - first].decode("utf-8", "surrogateescape"))
            begin = end - first
        return texts


class Conversation(str):
    """A chat to continue, read from a data file: its text is the last user turn (what predict
    shows beside the answer), ``turns`` the whole conversation the chat template lays out."""

    turns: list[dict[str, Any]]

    def __new__(cls, turns: list[dict[str, Any]]) -> Conversation:
        conversation = super().__new__(cls, str(turns[-1]["content"] or ""))
        conversation.turns = turns
        return conversation

    def __reduce__(self) -> tuple[Any, ...]:  # copied and pickled as the turns it is made of
        return (Conversation, (self.turns,))
