"""A small sentiment data set the quickstart writes for itself, so it runs offline on any machine.

Short movie-review sentences built from templates (written for this project): a subject, a verb
and an opinion word, sometimes negated ("not dull" is positive) or contrasted ("the plot is dull,
but the acting is superb" follows the clause after "but"). Balanced, seeded, and easy enough for a
few minutes of training on two CPU cores to learn well above chance, hard enough that it must
learn negation and contrast rather than single words.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

__all__ = ["write_sentiment_data"]

_SUBJECTS = (
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the script",
    "the ending", "the cast", "the dialogue", "the direction", "the pacing", "this sequel",
)  # fmt: skip
_VERBS = ("is", "was", "feels", "seemed", "turned out")
_POSITIVE = (
    "superb", "moving", "delightful", "gripping", "clever", "charming", "brilliant",
    "heartfelt", "funny", "beautiful", "fresh", "thrilling",
)  # fmt: skip
_NEGATIVE = (
    "dull", "clumsy", "tedious", "bland", "predictable", "messy", "shallow", "boring",
    "forgettable", "awkward", "lifeless", "tiresome",
)  # fmt: skip
_INTENSIFIERS = ("", "", "really ", "truly ", "rather ", "quite ")


def _clause(rng: random.Random, positive: bool) -> str:
    """A clause whose meaning is ``positive``; a third are negations of the opposite word."""
    negate = rng.random() < 0.33
    words = _NEGATIVE if positive == negate else _POSITIVE
    verb = rng.choice(_VERBS)
    opinion = rng.choice(words)
    middle = "not " if negate else rng.choice(_INTENSIFIERS)
    return f"{rng.choice(_SUBJECTS)} {verb} {middle}{opinion}"


def _sentence(rng: random.Random, label: int) -> str:
    positive = label == 1
    if rng.random() < 0.3:  # contrast: the clause after "but" carries the label
        return f"{_clause(rng, not positive)}, but {_clause(rng, positive)}"
    return _clause(rng, positive)


def write_sentiment_data(
    folder: Path, *, train_rows: int = 1600, validation_rows: int = 400, seed: int = 13
) -> Path:
    """Write ``train.tsv`` and ``validation.tsv`` (``sentence``, ``label``) into ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("validation", validation_rows)):
        labels = [i % 2 for i in range(rows)]
        rng.shuffle(labels)
        with (folder / f"{name}.tsv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(["sentence", "label"])
            writer.writerows([_sentence(rng, label), label] for label in labels)
    return folder
