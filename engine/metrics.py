"""Imbalance metrics from true labels and class probabilities (pure numpy).

    m = classification_metrics(y_true, proba)      # proba: (N, K), rows sum to 1
    m["macro_f1"], m["balanced_accuracy"], m["per_class"][c]["recall"], m["macro_pr_auc"]
    m = classification_metrics(y_true, proba, y_pred=apply_thresholds(proba, t), labels=keys)
    m["per_class"]["spam"]["roc_auc"], m["g_mean"], m["mcc"], m["ece"], m["warnings"]

Decisions: ``y_pred`` (thresholded predictions) when given, else ``argmax(proba)``. The decision
metrics (accuracy, F1s, recalls, G-mean, MCC) score the decisions; the ranking and probability
metrics (PR-AUC, ROC-AUC, ECE, log loss) score ``proba`` and do not depend on ``y_pred``.

A class absent from ``y_true`` has no recall, PR-AUC or ROC-AUC: those are NaN for it and left
out of the macro averages (``absent`` lists such classes, ``warnings`` says so in words), rather
than counted as 0 or raising. Macro-F1 counts every class of the label map that is present in
``y_true`` or in the predictions (an absent class that is never predicted is left out; one that
is predicted has F1 0 and is counted — scikit-learn's ``f1_score(labels=all, zero_division=0)``
counts both as 0). ``g_mean`` is the geometric mean of the recalls of the classes present in
``y_true`` (imbalanced-learn's ``geometric_mean_score`` would also count a predicted-but-absent
class, with recall 0, making the whole score 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
LOG_LOSS_EPS = 1e-15


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _binary_curve(y_true_binary: np.ndarray, score: np.ndarray):
    """Cumulative (tp, fp) at each distinct score, scores descending (ties grouped)."""
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], np.asarray(y_true_binary, dtype=np.float64)[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    return tp[last], fp[last], s[last]


def average_precision(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``:
    Σ_n (R_n − R_{n−1}) P_n over score thresholds (ties grouped). NaN without positives."""
    pos = int(np.sum(y_true_binary))
    if pos == 0:
        return math.nan
    tp, fp, _ = _binary_curve(y_true_binary, np.asarray(score, dtype=np.float64))
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(
    y_true_binary: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` as scikit-learn's ``precision_recall_curve``.

    ``thresholds`` are the distinct scores ascending; ``precision[i]``/``recall[i]`` are those
    of predicting positive when ``score >= thresholds[i]``; the last point is (1, 0) with no
    threshold. Without positives recall is 1 everywhere (scikit-learn's convention, without its
    warning).
    """
    y = np.asarray(y_true_binary).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or score.shape != y.shape:
        raise ValueError(
            f"pr_curve: y_true_binary {y.shape} and score {score.shape} must be the same 1-D "
            "shape; pass one score per row"
        )
    if len(y) == 0:
        raise ValueError("pr_curve: no rows; pass at least one score")
    tp, fp, thresholds = _binary_curve(y, score)
    precision = tp / (tp + fp)
    recall = tp / tp[-1] if tp[-1] > 0 else np.ones_like(tp)
    return (
        np.r_[precision[::-1], 1.0],
        np.r_[recall[::-1], 0.0],
        thresholds[::-1].copy(),
    )


def recall_at_precision(y_true_binary: np.ndarray, score: np.ndarray, floor: float) -> float:
    """The highest recall of any cut ``score >= t`` whose precision is at least ``floor``
    (0.0 when no cut reaches it; NaN without positives)."""
    y = np.asarray(y_true_binary).astype(bool)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(y, score)
    ok = precision[:-1] >= floor  # the last point (1, 0) is no cut
    return float(recall[:-1][ok].max()) if ok.any() else 0.0


def roc_auc(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), as
    scikit-learn's ``roc_auc_score``. NaN without positives or without negatives."""
    y = np.asarray(y_true_binary).astype(bool)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return math.nan
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    # average rank (1-based) of each tie group
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE: rows binned by confidence ``max(proba)`` into ``n_bins`` equal-width bins
    ``(lo, hi]`` of [0, 1]; Σ_b |B|/N · |accuracy(B) − mean confidence(B)|, where accuracy is
    that of ``argmax(proba)``. NaN with no rows."""
    n = len(y_true)
    if n == 0:
        return math.nan
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    gap = np.abs(
        np.bincount(b, weights=correct, minlength=n_bins)
        - np.bincount(b, weights=conf, minlength=n_bins)
    )
    return float(gap.sum() / n)


def log_loss(y_true: np.ndarray, proba: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """Mean negative log-probability of the true class, probabilities clipped to [eps, 1]."""
    if len(y_true) == 0:
        return math.nan
    p = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1.0)
    return float(-np.mean(np.log(p)))


def matthews(cm: np.ndarray) -> float:
    """Multiclass Matthews correlation from a confusion matrix (scikit-learn's
    ``matthews_corrcoef``: 0 when either marginal is constant)."""
    t = cm.sum(axis=1, dtype=np.float64)
    p = cm.sum(axis=0, dtype=np.float64)
    c = float(np.trace(cm))
    s = float(p.sum())
    cov_tp = c * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    denom = cov_pp * cov_tt
    return 0.0 if denom == 0 else float(cov_tp / math.sqrt(denom))


def _check_labels(name: str, y: np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} has shape {y.shape} for {n} rows of probabilities; pass (N,)")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(
            f"{name} holds classes in [{y.min()}, {y.max()}] but proba has {k} columns; "
            "labels must be indices 0..K-1 of the label map"
        )
    return y


def _checked_inputs(y_true, proba, y_pred, labels):
    """(proba as float64 (N, K), y_true, y_pred (argmax by default), K keys); raises naming
    the argument at fault."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba has shape {proba.shape}; pass (N, K) class probabilities")
    n, k = proba.shape
    if k == 0:
        raise ValueError("proba has 0 columns; pass one column per class")
    y_true = _check_labels("y_true", y_true, n, k)
    y_pred = proba.argmax(axis=1) if y_pred is None else _check_labels("y_pred", y_pred, n, k)
    keys: list[Any] = list(range(k)) if labels is None else list(labels)
    if len(keys) != k:
        raise ValueError(f"{len(keys)} labels for {k} columns of proba; pass one per class")
    return proba, y_true, y_pred, keys


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    y_pred: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Imbalance metrics of a split.

    Args:
        y_true: (N,) int class indices.
        proba: (N, K) class probabilities.
        y_pred: (N,) int decisions to score instead of ``argmax(proba)`` (e.g. thresholded).
        labels: K label keys; when given, ``per_class`` and ``absent`` use them instead of ints.

    Returns:
        accuracy, macro_f1, weighted_f1, balanced_accuracy, g_mean, mcc, macro_pr_auc,
        macro_roc_auc, ece, log_loss, per_class {key: precision, recall, f1, support, pr_auc,
        roc_auc}, absent (keys of classes with no rows), warnings (strings).
    """
    proba, y_true, y_pred, keys = _checked_inputs(y_true, proba, y_pred, labels)
    n, k = proba.shape
    warnings: list[str] = []
    if not np.all(np.isfinite(proba)):
        warnings.append("proba has NaN or infinite values: ranking and calibration are unreliable")
    cm = confusion(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(tp > 0, 2 * tp / (support + predicted), 0.0)
    counted = present | (predicted > 0)
    pr_auc = np.array([average_precision(y_true == c, proba[:, c]) for c in range(k)])
    auc = np.array([roc_auc(y_true == c, proba[:, c]) for c in range(k)])
    for c in np.flatnonzero(~present):
        warnings.append(
            f"class {keys[c]} has no rows in this split: recall, PR-AUC and ROC-AUC are NaN for it"
        )
    per_class = {
        keys[c]: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
            "pr_auc": float(pr_auc[c]),
            "roc_auc": float(auc[c]),
        }
        for c in range(k)
    }
    with np.errstate(divide="ignore"):
        g_mean = float(np.exp(np.mean(np.log(recall[present])))) if present.any() else math.nan
    has_auc = ~np.isnan(auc)
    return {
        "accuracy": float(tp.sum() / max(n, 1)),
        "macro_f1": float(f1[counted].mean()) if counted.any() else math.nan,
        "weighted_f1": float((f1 * support).sum() / n) if n else math.nan,
        "balanced_accuracy": float(np.nanmean(recall)) if present.any() else math.nan,
        "g_mean": g_mean,
        "mcc": matthews(cm),
        "macro_pr_auc": float(np.nanmean(pr_auc)) if present.any() else math.nan,
        "macro_roc_auc": float(auc[has_auc].mean()) if has_auc.any() else math.nan,
        "ece": expected_calibration_error(y_true, proba),
        "log_loss": log_loss(y_true, proba),
        "per_class": per_class,
        "absent": [keys[c] for c in np.flatnonzero(~present)],
        "warnings": warnings,
    }
