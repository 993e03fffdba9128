"""engine.combining's contributions: what the ensemble's decisions lose without each member."""

from __future__ import annotations

import math

import numpy as np

from engine.combining import Combination, combine, contributions, decision_score


def _onehot(pred: np.ndarray, k: int, sure: float = 0.9) -> np.ndarray:
    p = np.full((len(pred), k), (1 - sure) / (k - 1))
    p[np.arange(len(pred)), pred] = sure
    return p


def test_a_member_that_fixes_the_others_mistakes_adds_and_a_copy_adds_nothing():
    y = np.array([0, 0, 1, 1, 2, 2])
    good = _onehot(y, 3)  # always right
    bad = _onehot(np.array([0, 0, 0, 0, 0, 0]), 3, sure=0.6)  # majority everywhere
    fit = Combination([0.5, 0.5], 1.0, 0.0, 0.0, [1.0, 1.0])
    added = contributions(y, [good, bad], fit)
    full = decision_score(y, combine([good, bad], [0.5, 0.5], 1.0), "macro_f1")
    assert added[0] == full - decision_score(y, bad, "macro_f1") > 0.5  # without it: majority
    assert added[1] == full - decision_score(y, good, "macro_f1") == 0.0  # good alone is as good
    copy = contributions(y, [good, good.copy()], Combination([0.5, 0.5], 1.0, 0.0, 0.0))
    assert copy == [0.0, 0.0]


def test_weights_and_temperatures_are_kept_and_one_member_has_no_contribution():
    y = np.array([0, 1, 1, 0])
    a, b, c = _onehot(y, 2), _onehot(1 - y, 2), _onehot(np.array([1, 1, 1, 1]), 2)
    fit = Combination([0.7, 0.2, 0.1], 1.0, 0.0, 0.0, [1.0, 2.0, 0.5])
    got = contributions(y, [a, b, c], fit)
    without_a = combine([b, c], [0.2, 0.1], 1.0, [2.0, 0.5])
    full = combine([a, b, c], [0.7, 0.2, 0.1], 1.0, [1.0, 2.0, 0.5])
    want = decision_score(y, full, "macro_f1") - decision_score(y, without_a, "macro_f1")
    assert got[0] == want
    assert all(math.isnan(x) for x in contributions(y, [a], Combination([1.0], 1.0, 0.0, 0.0)))
    assert not math.isnan(contributions(y, [a, b], Combination([1.0, 0.0], 1.0, 0.0, 0.0))[1])
    assert math.isnan(contributions(y, [a, b], Combination([0.0, 1.0], 1.0, 0.0, 0.0))[1])
