"""What is said of a metric that no version recorded: the ones recorded, and the one meant."""

from __future__ import annotations

import pytest

from registry.metrics import unrecorded_metric

RECORDED = ["accuracy", "examples", "macro_f1"]


@pytest.mark.parametrize(
    ("asked", "guess"),
    [
        ("f1", "did you mean 'macro_f1'? "),  # a part of one name (it said only the list)
        ("acc", "did you mean 'accuracy'? "),
        ("acuracy", "did you mean 'accuracy'? "),  # a typo
        ("bleu", ""),  # like none of them
        ("a", ""),  # in several: no one guess
    ],
)
def test_the_metric_meant_is_guessed_only_when_one_is_close(asked: str, guess: str) -> None:
    assert unrecorded_metric("no version of x", asked, RECORDED, " to order by") == (
        f"no version of x recorded {asked!r} to order by; {guess}they recorded: "
        "accuracy, examples, macro_f1"
    )


def test_nothing_recorded_says_so() -> None:
    assert unrecorded_metric("no version here", "accuracy", []) == (
        "no version here recorded 'accuracy'; they recorded: no metric"
    )
