"""Combining members: per-member and ensemble temperatures, weights fitted on val NLL, greedy
selection by a val decision metric; or a stacker (a multinomial logistic regression on the
members' log-probabilities, its C chosen out of fold).

    fit = fit_combination(y_val, [p1, p2, p3], weights="fitted", temperature=True)
    p = combine([q1, q2, q3], fit.weights, fit.temperature, fit.member_temperatures)

Pure numpy over (N, K) probability arrays; nothing here reads data or looks at test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    stacker: dict[str, Any] | None = None,
):
    """Each member's probabilities scaled by its own temperature, their weighted mean, scaled
    by the ensemble's temperature; rows sum to 1. With ``stacker`` (``fit_stacker`` plus its
    ``groups``): the stacker's probabilities on the members' log-probabilities instead."""
    if stacker is not None:
        return stack_proba(stack_features(probas, stacker["groups"]), stacker)
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
    stacker: dict[str, Any] | None = None  # ``fit_stacker``'s + ``groups``: it replaces the mean


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


# --------------------------------------------------------------------------------------------
# stacking: a multinomial logistic regression on the members' log-probabilities, class c's
# logit reading the members' log p(c)

STACK_FLOOR = 1e-6  # members' probabilities are floored here before their log is a feature
STACK_CS = (0.01, 0.1, 1.0)  # the stacker's inverse regularization, chosen out of fold


def stack_features(probas: Sequence[np.ndarray], groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, G·K): per member (``groups``: the indices of ``probas`` that make it, e.g. its fold
    models, averaged), the log of its probabilities."""
    cols = [
        np.log(
            np.maximum(np.mean([np.asarray(probas[i], np.float64) for i in g], axis=0), STACK_FLOOR)
        )
        for g in groups
    ]
    return np.concatenate(cols, axis=1)


def fit_stacker(y: np.ndarray, x: np.ndarray, k: int, c: float) -> dict[str, list]:
    """``{"coef": (K, G·K), "intercept": (K,)}``: a multinomial logistic regression of ``y`` on
    ``x`` (``stack_features`` of G members) whose class c reads only the members' log p(c) —
    logit_c = Σ_g a[g, c] · log p_g(c) + b_c, a per-class weighted log-linear pool with a
    class bias: G·K + K numbers, where a full regression would fit G·K² (and, with 50 classes
    and a few rows of each rare one, fit their noise, slowly). The L2 penalty
    ``‖a − 1/G‖² / (2 c N)`` pulls toward the plain geometric mean (scikit-learn's C scaling).
    Rows are not class-weighted: the decision rule fitted after it (offsets or a logit
    adjustment) moves decisions toward rare classes, on its out-of-fold probabilities. A class
    without rows in ``y`` gets an intercept far below the others (never predicted)."""
    from scipy.optimize import minimize

    n, g = len(y), x.shape[1] // k
    present = np.bincount(y, minlength=k) > 0
    args = (x.reshape(n, g, k), np.asarray(y, np.int64), 1.0 / (c * n))
    theta0 = np.r_[np.full(g * k, 1.0 / g), np.zeros(k)]
    res = minimize(stack_loss, theta0, args, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    a, b = res.x[: g * k].reshape(g, k), res.x[g * k :]
    coef = np.zeros((k, g * k))
    for j in range(g):
        coef[np.arange(k), j * k + np.arange(k)] = a[j]
    coef[~present] = 0.0
    b = np.where(present, b, float(b[present].min()) - 50.0)
    return {"coef": coef.tolist(), "intercept": b.tolist()}


def stack_loss(theta: np.ndarray, xs: np.ndarray, y: np.ndarray, lam: float):
    """The stacker's objective and gradient at ``theta`` (a (G, K) raveled, then b (K,)):
    mean cross-entropy of ``y`` under logit_c = Σ_g a[g, c] · xs[:, g, c] + b_c, plus
    ``lam / 2 · ‖a − 1/G‖²``."""
    n, g, k = xs.shape
    a, b = theta[: g * k].reshape(g, k), theta[g * k :]
    z = np.einsum("ngk,gk->nk", xs, a) + b
    z -= z.max(axis=1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    d = np.exp(logq)
    d[np.arange(n), y] -= 1.0
    d /= n  # d(mean CE)/dz
    grad_a = np.einsum("ngk,nk->gk", xs, d) + lam * (a - 1.0 / g)
    value = -float(logq[np.arange(n), y].mean()) + 0.5 * lam * float(((a - 1.0 / g) ** 2).sum())
    return value, np.r_[grad_a.ravel(), d.sum(axis=0)]


def stack_proba(x: np.ndarray, stacker: dict[str, Any]) -> np.ndarray:
    """The stacker's class probabilities for features ``x`` (``stack_features``)."""
    z = x @ np.asarray(stacker["coef"], np.float64).T + np.asarray(stacker["intercept"])
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def stack_cv(y: np.ndarray, x: np.ndarray, k: int, c: float, fold: np.ndarray) -> np.ndarray:
    """Out-of-fold stacker probabilities: each ``fold`` value's rows scored by a stacker fitted
    on the others."""
    out = np.empty((len(y), k))
    for f in np.unique(fold):
        held = fold == f
        out[held] = stack_proba(x[held], fit_stacker(y[~held], x[~held], k, c))
    return out


@dataclass(frozen=True)
class StackChoice:
    c: float  # the chosen inverse regularization
    cv: dict[float, float]  # out-of-fold decision score per C tried
    proba: np.ndarray  # (N, K) out-of-fold probabilities at ``c``


def choose_stacker(
    y: np.ndarray, x: np.ndarray, k: int, fold: np.ndarray, criterion: str = "macro_f1"
) -> StackChoice:
    """The C of ``STACK_CS`` whose out-of-fold stacker decides best (the smaller on ties)."""
    cvs = {c: stack_cv(y, x, k, c, fold) for c in STACK_CS}
    scores = {c: decision_score(y, p, criterion) for c, p in cvs.items()}
    best = max(STACK_CS, key=lambda c: (scores[c], -c))
    return StackChoice(best, scores, cvs[best])
