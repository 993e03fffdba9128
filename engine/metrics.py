"""Imbalance metrics from true labels and class probabilities (pure numpy).

    m = classification_metrics(y_true, proba)      # proba: (N, K), rows sum to 1
    m["macro_f1"], m["balanced_accuracy"], m["per_class"][c]["recall"], m["macro_pr_auc"]

A class absent from ``y_true`` has no recall and no PR-AUC: those are NaN for it and left out of
the macro averages (``absent`` lists such classes), rather than counted as 0 or raising.
Macro-F1 counts every class of the label map (an absent class that is never predicted has
F1 0 and is left out, one that is predicted has F1 0 and is counted — scikit-learn's
``f1_score(labels=all, zero_division=0)`` counts both as 0; we follow it only for classes present
in ``y_true`` or in the predictions).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def average_precision(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``:
    Σ_n (R_n − R_{n−1}) P_n over score thresholds (ties grouped). NaN without positives."""
    pos = int(y_true_binary.sum())
    if pos == 0:
        return math.nan
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], y_true_binary[order].astype(np.float64)
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Macro-F1, balanced accuracy, per-class precision/recall/F1/support, macro PR-AUC."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    if len(y_true) != n:
        raise ValueError(f"{len(y_true)} labels for {n} rows of probabilities")
    y_pred = proba.argmax(axis=1)
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
    per_class = {
        c: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
            "pr_auc": float(pr_auc[c]),
        }
        for c in range(k)
    }
    return {
        "accuracy": float(tp.sum() / max(n, 1)),
        "macro_f1": float(f1[counted].mean()) if counted.any() else math.nan,
        "balanced_accuracy": float(np.nanmean(recall)) if present.any() else math.nan,
        "macro_pr_auc": float(np.nanmean(pr_auc)) if present.any() else math.nan,
        "per_class": per_class,
        "absent": [int(c) for c in np.flatnonzero(~present)],
    }
