"""Validation metrics against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from imblearn.metrics import geometric_mean_score
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import log_loss as sk_log_loss

from engine.metrics import average_precision, classification_metrics, pr_curve


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


# --- the extended metrics -----------------------------------------------------------------------


def _random_k(seed: int, k: int, n: int = 400):
    rng = np.random.default_rng(seed)
    prior = np.array([0.6, 0.2, 0.1, 0.07, 0.03])[:k] if k <= 5 else np.ones(k)
    y = rng.choice(k, size=n, p=prior / prior.sum())
    logits = rng.standard_normal((n, k)) + 1.5 * np.eye(k)[y] * rng.random((n, 1))
    # round so that tied scores occur (ROC/PR ties, ECE bin edges)
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    p = np.clip(p, 0.005, None)
    return y, p / p.sum(axis=1, keepdims=True), rng


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("given_pred", [False, True])
def test_new_metrics_against_scikit_learn_and_imblearn(seed, k, given_pred):
    y, p, rng = _random_k(seed, k)
    pred = rng.integers(0, k, size=len(y)) if given_pred else p.argmax(1)
    m = classification_metrics(y, p, y_pred=pred if given_pred else None)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["g_mean"] == pytest.approx(geometric_mean_score(y, pred))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["log_loss"] == pytest.approx(sk_log_loss(y, p, labels=range(k)))
    precision = precision_score(y, pred, average=None, labels=range(k), zero_division=0)
    recall = recall_score(y, pred, average=None, labels=range(k), zero_division=0)
    for c in range(k):
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(precision[c])
        assert pc["recall"] == pytest.approx(recall[c])
        assert pc["roc_auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
        assert pc["pr_auc"] == pytest.approx(average_precision_score(y == c, p[:, c]))
    if k == 2:
        assert m["per_class"][1]["roc_auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    else:
        assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert m["warnings"] == [] and m["absent"] == []


def test_ece_hand_case():
    # confidences 0.9 (two rows, one right) and 0.6 (two rows, both right), 0.55 (wrong)
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6], [0.55, 0.45]])
    # bins (0.8667, 0.9333]: acc 0.5, conf 0.9 -> 2/5 * 0.4
    # bin (0.5333, 0.6]: rows 2, 3, 4 -> acc 2/3, conf (0.6 + 0.6 + 0.55) / 3
    expected = 2 / 5 * 0.4 + 3 / 5 * abs(2 / 3 - 1.75 / 3)
    assert classification_metrics(y, p)["ece"] == pytest.approx(expected)
    # perfectly calibrated -> 0
    y2 = np.array([0, 0, 0, 1, 1])
    p2 = np.array([[0.6, 0.4]] * 5)
    assert classification_metrics(y2, p2)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_matches_a_loop_reference():
    y, p, _ = _random_k(3, 2)
    # confidences exactly on bin edges belong to the bin below: (lo, hi]
    edges = np.linspace(0, 1, 16)[8:]
    y = np.r_[y, np.zeros(len(edges), dtype=int)]
    p = np.r_[p, np.c_[edges, 1 - edges]]
    conf, correct = p.max(1), (p.argmax(1) == y)
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
    assert classification_metrics(y, p)["ece"] == pytest.approx(ece)


def test_labels_key_per_class_and_absent():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.3, 0.7, 0.0], [1, 0, 0]])
    m = classification_metrics(y, p, labels=["ham", "spam", "eggs"])
    assert set(m["per_class"]) == {"ham", "spam", "eggs"}
    assert m["absent"] == ["eggs"]
    assert m["warnings"] == [
        "class eggs has no rows in this split: recall, PR-AUC and ROC-AUC are NaN for it"
    ]
    assert m["per_class"]["spam"]["support"] == 2
    with pytest.raises(ValueError, match="2 labels for 3 columns"):
        classification_metrics(y, p, labels=["ham", "spam"])


def test_absent_class_gives_nan_and_a_warning_not_an_exception():
    y, p, _ = _random_k(0, 5)
    keep = y != 3
    y, p = y[keep], p[keep]
    m = classification_metrics(y, p)
    assert m["absent"] == [3]
    assert len(m["warnings"]) == 1 and m["warnings"][0].startswith("class 3 has no rows")
    pc = m["per_class"][3]
    assert math.isnan(pc["recall"]) and math.isnan(pc["pr_auc"]) and math.isnan(pc["roc_auc"])
    present = [0, 1, 2, 4]
    aucs = [roc_auc_score(y == c, p[:, c]) for c in present]
    assert m["macro_roc_auc"] == pytest.approx(np.mean(aucs))
    pred = p.argmax(1)
    assert m["g_mean"] == pytest.approx(geometric_mean_score(y, pred, labels=present))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["log_loss"] == pytest.approx(sk_log_loss(y, p, labels=range(5)))


def test_a_single_class_present_still_works():
    y = np.zeros(6, dtype=int)
    p = np.array([[0.7, 0.2, 0.1]] * 4 + [[0.1, 0.8, 0.1]] * 2)
    m = classification_metrics(y, p)
    assert m["absent"] == [1, 2] and len(m["warnings"]) == 2
    assert m["balanced_accuracy"] == pytest.approx(4 / 6)
    assert m["g_mean"] == pytest.approx(4 / 6)
    assert m["mcc"] == 0.0  # constant truth, as scikit-learn
    assert math.isnan(m["macro_roc_auc"])  # one class: no negatives for it, no positives else
    assert m["per_class"][0]["pr_auc"] == pytest.approx(1.0)


def test_bad_inputs_raise():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="y_true has shape"):
        classification_metrics(np.array([0, 1]), p)
    with pytest.raises(ValueError, match="proba has 2 columns"):
        classification_metrics(np.array([0, 1, 2]), p)
    with pytest.raises(ValueError, match="y_pred has shape"):
        classification_metrics(np.array([0, 1, 1]), p, y_pred=np.array([0]))


@pytest.mark.parametrize("seed", range(3))
def test_pr_curve_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.2
    s = np.round(rng.random(200) * 0.5 + 0.5 * y * rng.random(200), 2)
    ours = pr_curve(y, s)
    ref = precision_recall_curve(y, s)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b)


def test_recall_at_a_precision_floor_is_the_best_recall_of_the_cuts_that_reach_it():
    from sklearn.metrics import precision_recall_curve

    from engine.metrics import recall_at_precision

    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.1
    score = np.round(rng.random(500) * 0.6 + 0.4 * y, 2)  # ties, as real scores have
    precision, recall, _ = precision_recall_curve(y, score)
    for floor in (0.2, 0.5, 0.8, 0.95):
        ok = precision[:-1] >= floor
        expected = recall[:-1][ok].max() if ok.any() else 0.0
        assert recall_at_precision(y, score, floor) == pytest.approx(expected), floor
    assert recall_at_precision(y, score, 0.01) == 1.0  # predict everything
    assert math.isnan(recall_at_precision(np.zeros(5, bool), np.arange(5.0), 0.5))
