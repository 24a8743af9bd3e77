"""The promotion gate is a pure decision: every case, no services."""

from __future__ import annotations

import math

import pytest

from flows.promotion import Policy, decide

HIGHER = Policy(metric="accuracy", min_delta=0.0)
STRICT = Policy(metric="accuracy", min_delta=0.01)
LOWER = Policy(metric="perplexity", min_delta=0.5, higher_is_better=False)


@pytest.mark.parametrize(
    ("candidate", "champion", "policy", "promote", "outcome"),
    [
        (0.80, None, HIGHER, True, "no-champion"),
        (0.80, None, STRICT, True, "no-champion"),
        (0.81, 0.80, HIGHER, True, "better"),
        (0.80, 0.80, HIGHER, True, "better"),  # a tie: the newer version wins at min_delta 0
        (0.79, 0.80, HIGHER, False, "not-better"),
        (0.80, 0.80, STRICT, False, "not-better"),
        (0.8099, 0.80, STRICT, False, "not-better"),
        (0.82, 0.80, STRICT, True, "better"),
        (9.0, 10.0, LOWER, True, "better"),  # perplexity: lower is better
        (9.6, 10.0, LOWER, False, "not-better"),
        (11.0, 10.0, LOWER, False, "not-better"),
        (math.nan, 0.80, HIGHER, False, "not-better"),  # a broken evaluation never promotes
        (math.nan, None, HIGHER, False, "not-better"),
        (math.inf, None, LOWER, False, "not-better"),  # an infinite perplexity is no result
        (math.inf, 0.80, HIGHER, False, "not-better"),
        (0.70, math.nan, HIGHER, True, "no-champion"),  # an unusable champion score counts as none
    ],
)
def test_decide(candidate, champion, policy, promote, outcome):
    decision = decide(candidate, champion, policy)
    assert (decision.promote, decision.outcome) == (promote, outcome)
    assert policy.metric in decision.reason


def test_reason_states_the_numbers():
    decision = decide(0.79, 0.80, STRICT)
    assert decision.reason == "accuracy 0.7900 vs champion 0.8000 (gain -0.0100, required +0.0100)"
