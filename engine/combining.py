"""Combining members: per-member and ensemble temperatures, weights fitted on val NLL, greedy
selection by a val decision metric.

    fit = fit_combination(y_val, [p1, p2, p3], weights="fitted", temperature=True)
    p = combine([q1, q2, q3], fit.weights, fit.temperature, fit.member_temperatures)

Pure numpy over (N, K) probability arrays; nothing here reads data or looks at test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBA_FLOOR = 1e-12
T_BOUNDS = (0.01, 20.0)  # a lexical model's flat TF-IDF scores may need T ≈ 0.05


# --------------------------------------------------------------------------------------------
# combining: weights and temperature fitted on val


def combine(
    probas: Sequence[np.ndarray],
    weights: Sequence[float],
    temperature: float,
    member_temperatures: Sequence[float] | None = None,
):
    """Each member's probabilities scaled by its own temperature, their weighted mean, scaled
    by the ensemble's temperature; rows sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    ts = member_temperatures if member_temperatures is not None else [1.0] * len(probas)
    p = (
        sum(
            wi * temperature_scale(np.asarray(pi, dtype=np.float64), ti)
            for wi, pi, ti in zip(w, probas, ts)
        )
        / w.sum()
    )
    return temperature_scale(p, temperature)


def temperature_scale(p: np.ndarray, temperature: float) -> np.ndarray:
    """``p ∝ exp(log p / T)``; T = 1 leaves p as it is."""
    logp = np.log(np.maximum(p, PROBA_FLOOR)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], PROBA_FLOOR))))


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """The temperature in ``T_BOUNDS`` minimizing val NLL (1.0 without val rows)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(
        lambda t: nll(y, temperature_scale(p, math.exp(t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(math.exp(res.x))
    return t if nll(y, temperature_scale(p, t)) <= nll(y, p) else 1.0


def fit_weights(y: np.ndarray, probas: Sequence[np.ndarray]) -> np.ndarray:
    """Simplex weights (softmax-parametrized) minimizing the val NLL of the weighted mean."""
    from scipy.optimize import minimize

    m = len(probas)
    if m == 1 or len(y) == 0:
        return np.full(m, 1.0 / m)
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probas])  # (m, N, K)
    picked = stacked[:, np.arange(len(y)), y]  # (m, N): each member's p of the true class

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return float(-np.mean(np.log(np.maximum(w @ picked, PROBA_FLOOR))))

    res = minimize(loss, np.zeros(m), method="L-BFGS-B")
    w = np.exp(res.x - res.x.max())
    w /= w.sum()
    return w if loss(res.x) <= loss(np.zeros(m)) else np.full(m, 1.0 / m)


def calibrated_nll(y: np.ndarray, p: np.ndarray, temperature: bool = True) -> float:
    """Val NLL of ``p`` after its own fitted temperature (when ``temperature``)."""
    t = fit_temperature(y, p) if temperature else 1.0
    return nll(y, temperature_scale(p, t))


def decision_score(y: np.ndarray, p: np.ndarray, criterion: str) -> float:
    """Higher is better: ``macro_f1`` / ``balanced_accuracy`` of argmax decisions (classes
    present in ``y`` or predicted, as ``engine.metrics``), or ``nll`` negated."""
    if criterion == "nll":
        return -nll(y, p)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    tp = np.bincount(y[pred == y], minlength=k).astype(np.float64)
    support = np.bincount(y, minlength=k).astype(np.float64)
    if criterion == "balanced_accuracy":
        present = support > 0
        return float(np.mean(tp[present] / support[present])) if present.any() else float("nan")
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    seen = (support > 0) | (predicted > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    return float(f1[seen].mean()) if seen.any() else float("nan")


CRITERIA = {"val_macro_f1": "macro_f1", "val_balanced_accuracy": "balanced_accuracy"}


def select_greedy(
    y_val: np.ndarray,
    probas: Sequence[np.ndarray],
    *,
    criterion: str = "nll",
    temperature: bool = True,
    tol: float = 1e-4,
) -> list[int]:
    """Indices of the members to keep (Caruana et al., 2004, without replacement): the first
    (the best trial), then, while one improves the val ``criterion`` of the mean by more than
    ``tol``, the candidate that improves it most. ``criterion``: ``nll`` (of the mean after its
    own temperature, when ``temperature``), ``macro_f1`` or ``balanced_accuracy`` (of argmax
    decisions, which a temperature does not change)."""
    if criterion not in ("nll", "macro_f1", "balanced_accuracy"):
        raise ValueError(f"criterion {criterion!r}: use nll, macro_f1 or balanced_accuracy")
    chosen = [0]
    left = list(range(1, len(probas)))

    def score(idx: list[int]) -> float:
        p = np.mean([probas[i] for i in idx], axis=0)
        if criterion == "nll":
            return -calibrated_nll(y_val, p, temperature)
        return decision_score(y_val, p, criterion)

    cur = score(chosen)
    while left:
        best, i = max((score(chosen + [i]), -i) for i in left)
        i = -i  # ties: the better-ranked candidate
        if not best > cur + tol:
            break
        chosen.append(i)
        left.remove(i)
        cur = best
    return chosen


def member_temperatures(y_val: np.ndarray, probas: Sequence[np.ndarray]) -> list[float]:
    """Each member's own temperature on val: members of different kinds are calibrated before
    they are averaged (a lexical model's flat probabilities would otherwise count for little)."""
    return [fit_temperature(y_val, p) for p in probas]


@dataclass(frozen=True)
class Combination:
    weights: list[float]
    temperature: float
    val_nll_mean: float  # val NLL of the plain mean of the members
    val_nll: float  # val NLL of the fitted combination
    member_temperatures: list[float] | None = None


def fit_combination(
    y_val: np.ndarray,
    probas: Sequence[np.ndarray],
    *,
    weights: str = "equal",
    temperature: bool = True,
) -> Combination:
    """Member temperatures (when ``temperature``), weights (``equal`` or ``fitted``) and the
    ensemble's temperature (when ``temperature``), all on val."""
    m = len(probas)
    ts = member_temperatures(y_val, probas) if temperature else [1.0] * m
    calibrated = [temperature_scale(np.asarray(p, dtype=np.float64), t) for p, t in zip(probas, ts)]
    w = fit_weights(y_val, calibrated) if weights == "fitted" else np.full(m, 1.0 / m)
    mean = combine(probas, np.full(m, 1.0 / m), 1.0)
    p = combine(calibrated, w, 1.0)
    t = fit_temperature(y_val, p) if temperature else 1.0
    return Combination(
        [float(x) for x in w],
        t,
        nll(y_val, mean),
        nll(y_val, temperature_scale(p, t)),
        [float(x) for x in ts],
    )


def contributions(
    y: np.ndarray,
    probas: Sequence[np.ndarray],
    fit: Combination,
    criterion: str = "macro_f1",
    groups: Sequence[Sequence[int]] | None = None,
) -> list[float]:
    """What each member adds: the ensemble's ``decision_score`` (argmax decisions) minus that
    of the ensemble without the member (the others' fitted weights renormalized, every
    temperature kept). ``groups``: the indices of ``probas`` that make one member (a
    cross-fitted member's fold models; default: one each). Positive: the ensemble is better
    with it. NaN for one member or no rows."""
    groups = [[i] for i in range(len(probas))] if groups is None else groups
    m = len(groups)
    if m < 2 or len(y) == 0:
        return [float("nan")] * m
    ts = fit.member_temperatures or [1.0] * len(probas)
    full = decision_score(y, combine(probas, fit.weights, fit.temperature, ts), criterion)
    out = []
    for group in groups:
        rest = [j for j in range(len(probas)) if j not in group]
        w = [fit.weights[j] for j in rest]
        if sum(w) <= 0:  # the others carry no weight: without this member, nothing is left
            out.append(float("nan"))
            continue
        p = combine([probas[j] for j in rest], w, fit.temperature, [ts[j] for j in rest])
        out.append(full - decision_score(y, p, criterion))
    return out
