"""Validation metrics against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score

from engine.metrics import average_precision, classification_metrics


def _random(seed: int, n: int = 300, k: int = 5):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.array([0.6, 0.2, 0.1, 0.07, 0.03])[:k] / 1.0)
    logits = rng.standard_normal((n, k)) + 1.5 * np.eye(k)[y] * rng.random((n, 1))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed):
    y, p = _random(seed)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(5)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    for c in range(5):
        assert m["per_class"][c]["pr_auc"] == pytest.approx(
            average_precision_score(y == c, p[:, c])
        )
    assert m["absent"] == []


def test_average_precision_with_ties():
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.9, 0.5, 0.5, 0.1, 0.1])
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_a_class_absent_from_the_labels_is_nan_not_zero():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.3, 0.7, 0.0], [1, 0, 0]])
    m = classification_metrics(y, p)
    assert m["absent"] == [2]
    assert math.isnan(m["per_class"][2]["recall"]) and math.isnan(m["per_class"][2]["pr_auc"])
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
