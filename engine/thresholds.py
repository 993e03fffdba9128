"""Decision thresholds fitted on validation probabilities, applied to test / new rows.

    t = fit_thresholds(y_val, proba_val, ThresholdSpec(objective="macro_f1"))
    y_pred = apply_thresholds(proba_test, t)          # (N,) int class indices
    write_json(path, t.to_json()); t = Thresholds.from_json(read_json(path))

Binary (K == 2): one threshold on p1 = proba[:, 1]; the positive class (index 1) is predicted
when ``p1 >= threshold``. Every distinct val score is a candidate cut (exact, one sort); the
threshold is then placed at the midpoint between the lowest score predicted positive and the
next lower distinct score (0 and 1 act as the outer neighbours), so that it is not sitting on
a val score and test rows with nearly equal scores are split the same way on both sides.

- ``f_beta``: maximize F-beta of the positive class; ``macro_f1``: maximize the mean F1 of both
  classes. Among equally good cuts the highest threshold wins.
- ``target_recall``: the highest cut whose val recall >= target (the best precision among
  those reaching the target); always reachable with positives in val (predict everything).
- ``target_precision``: the lowest cut whose val precision >= target (the best recall among
  those reaching it). If no cut reaches it, the cut with the highest val precision (lowest of
  those) is used and ``info["reached"]`` is False with a note.

Multi-class (K > 2): per-class additive offsets on log-probabilities, ``argmax(log p + o)``,
fitted by coordinate ascent on macro-F1 (macro F-beta for ``f_beta``). For class c, with the
other offsets fixed, row i predicts c exactly when ``o_c > b_i = max_{j≠c}(log p_ij + o_j) −
log p_ic``; sorting the breakpoints ``b`` and updating the confusion counts of c and of each
row's rival class incrementally scores every distinct choice of ``o_c`` in O(N log N). The new
offset is the midpoint between adjacent breakpoints; among equally good ones the closest to
the current offset wins. Passes over the classes repeat until one changes nothing (at most
``MAX_PASSES``). Offsets start at 0 and move only on a strict val improvement, so the result
is never worse on val than argmax; the mean offset is subtracted (argmax ignores it). A class
absent from val keeps its offset (nothing to fit it on), with a warning in ``info``.
Beside them, post-hoc logit adjustment: one τ for all classes, offsets ``−τ log π`` (π the
class frequencies of val). With ``cv_folds >= 2`` the rule kept (``info["rule"]``) is the one
whose decisions, fitted on ``cv_folds - 1`` folds of val, score best on the held-out folds:
per-class offsets, the logit adjustment (ties: it, one number) or argmax (it wins ties).

Rules shared by both: macro averages count the classes present in val or predicted (as
``engine.metrics.classification_metrics``); the fit moves away from plain argmax only when
that strictly improves the objective on val — otherwise ``kind == "argmax"``. A val split that
lacks all but one class cannot inform a decision rule: the result is argmax, with a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from engine.config import ThresholdSpec
from engine.metrics import pr_curve

log = logging.getLogger("raybalance")

OBJECTIVES = ("macro_f1", "f_beta", "target_recall", "target_precision")
KINDS = ("binary", "offsets", "argmax")
MAX_PASSES = 10
LA_TAUS = np.round(np.arange(0.0, 3.0 + 1e-9, 0.05), 2)  # logit adjustment's τ candidates
PROBA_FLOOR = 1e-15  # log-probabilities are taken of max(p, PROBA_FLOOR)
_TOL = 1e-12  # score differences below this are ties (float noise of equal fractions)


@dataclass(frozen=True)
class Thresholds:
    """A fitted decision rule. See the module docstring for the meaning of each kind."""

    kind: Literal["binary", "offsets", "argmax"]
    threshold: float | None  # binary: predict class 1 when p1 >= threshold
    offsets: list[float] | None  # multi-class: argmax(log p + offsets)
    objective: str
    val_score: float  # the objective on val at the fitted point
    default_score: float  # the objective on val with plain argmax
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Thresholds.kind is {self.kind!r}; use one of {KINDS}")
        if self.kind == "binary" and (self.threshold is None or not math.isfinite(self.threshold)):
            raise ValueError(
                f"Thresholds.threshold is {self.threshold!r} for kind 'binary'; give a number"
            )
        if self.kind == "offsets":
            if self.offsets is None or len(self.offsets) < 2:
                raise ValueError(
                    f"Thresholds.offsets is {self.offsets!r} for kind 'offsets'; "
                    "give one offset per class (K >= 2)"
                )
            if not all(math.isfinite(o) for o in self.offsets):
                raise ValueError(f"Thresholds.offsets has non-finite values: {self.offsets}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-safe dict (NaN is written as null)."""
        return _jsonable(
            {
                "kind": self.kind,
                "threshold": self.threshold,
                "offsets": self.offsets,
                "objective": self.objective,
                "val_score": self.val_score,
                "default_score": self.default_score,
                "info": self.info,
            }
        )

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Thresholds:
        """Inverse of :meth:`to_json`; raises ValueError on a missing or unknown key."""
        keys = {"kind", "threshold", "offsets", "objective", "val_score", "default_score"}
        missing = keys - set(d)
        unknown = set(d) - keys - {"info"}
        if missing or unknown:
            raise ValueError(
                f"thresholds JSON: missing keys {sorted(missing)}, unknown keys "
                f"{sorted(unknown)}; expected {sorted(keys | {'info'})} as written by to_json"
            )

        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(
            kind=d["kind"],
            threshold=None if d["threshold"] is None else float(d["threshold"]),
            offsets=None if d["offsets"] is None else [float(o) for o in d["offsets"]],
            objective=str(d["objective"]),
            val_score=num(d["val_score"]),
            default_score=num(d["default_score"]),
            info=dict(d.get("info") or {}),
        )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(x) else float(x)
    return x


# --------------------------------------------------------------------------------------------
# validation


def _check_proba(proba: Any, name: str, *, min_rows: int) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} has shape {p.shape}; pass (N, K) class probabilities")
    n, k = p.shape
    if k < 2:
        raise ValueError(
            f"{name} has K={k} column(s); thresholds need at least 2 classes "
            "(for a binary task pass both columns p0, p1)"
        )
    if n < min_rows:
        raise ValueError(f"{name} has {n} rows; fitting thresholds needs at least {min_rows}")
    bad = ~np.isfinite(p)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN/infinite values (first in row {row}); "
            "drop or fix those rows (a diverged model?) before thresholding"
        )
    if p.size and (p.min() < -1e-9 or p.max() > 1 + 1e-9):
        raise ValueError(
            f"{name} has values in [{p.min():.4g}, {p.max():.4g}]; pass probabilities in [0, 1] "
            "(softmax of the logits), not logits"
        )
    if n:
        sums = p.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1)))
        if abs(sums[worst] - 1) > 1e-3:
            raise ValueError(
                f"{name} rows must sum to 1 (row {worst} sums to {sums[worst]:.6g}); "
                "pass softmax probabilities, one column per class"
            )
    return p


def _check_labels(y: Any, n: int, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"y_val has shape {y.shape} but proba_val has {n} rows; pass one label per row"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.number) or not np.all(y == np.round(y)):
            raise ValueError(f"y_val must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"y_val holds classes in [{y.min()}, {y.max()}] but proba_val has {k} columns; "
            "labels must be indices 0..K-1 of the label map"
        )
    return y


def _check_spec(spec: ThresholdSpec, k: int) -> None:
    if spec.objective not in OBJECTIVES:
        raise ValueError(f"objective {spec.objective!r} is unknown; use one of {OBJECTIVES}")
    if spec.objective.startswith("target_"):
        if k != 2:
            raise ValueError(
                f"objective {spec.objective!r} is a binary objective (recall/precision of the "
                f"positive class) but proba_val has K={k} classes; use 'macro_f1' or 'f_beta'"
            )
        if spec.target is None or not 0 < spec.target <= 1:
            raise ValueError(
                f"objective {spec.objective!r} needs a target in (0, 1], got {spec.target!r}"
            )
    if not spec.beta > 0:
        raise ValueError(f"beta must be > 0, got {spec.beta}")


# --------------------------------------------------------------------------------------------
# scoring


def _f_beta(tp: Any, pred: Any, support: Any, beta: float) -> np.ndarray:
    """Per-class F-beta from counts, 0 where nothing is right (zero_division=0)."""
    tp = np.asarray(tp, dtype=np.float64)
    b2 = beta * beta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tp > 0, (1 + b2) * tp / (b2 * np.asarray(support) + pred), 0.0)


def _macro_from_counts(tp: np.ndarray, pred: np.ndarray, support: np.ndarray, beta: float):
    counted = (support > 0) | (pred > 0)
    return float(_f_beta(tp, pred, support, beta)[counted].mean()) if counted.any() else 0.0


def _objective(y: np.ndarray, pred: np.ndarray, k: int, spec: ThresholdSpec) -> float:
    """The spec's objective of decisions ``pred`` on labels ``y``."""
    tp = np.bincount(y[y == pred], minlength=k)
    pred_n = np.bincount(pred, minlength=k)
    support = np.bincount(y, minlength=k)
    if spec.objective == "macro_f1":
        return _macro_from_counts(tp, pred_n, support, 1.0)
    if spec.objective == "f_beta":
        if k == 2:
            return float(_f_beta(tp[1], pred_n[1], support[1], spec.beta))
        return _macro_from_counts(tp, pred_n, support, spec.beta)
    if spec.objective == "target_recall":
        return float(tp[1] / support[1]) if support[1] else math.nan
    return float(tp[1] / pred_n[1]) if pred_n[1] else 0.0  # target_precision


def _pr_info(y: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    tp = int(np.sum((pred == 1) & (y == 1)))
    npred, npos = int(np.sum(pred == 1)), int(np.sum(y == 1))
    return {
        f"{prefix}_precision": tp / npred if npred else 0.0,
        f"{prefix}_recall": tp / npos if npos else math.nan,
    }


# --------------------------------------------------------------------------------------------
# fitting


def _between(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A point t with lo < t <= hi, the midpoint unless rounding puts it on ``lo``."""
    t = lo + (hi - lo) / 2
    return np.where((t > lo) & (t <= hi), t, hi)


def _binary_candidates(y: np.ndarray, p1: np.ndarray):
    """Counts and thresholds of every distinct cut: j = 0..m top score groups positive."""
    order = np.argsort(-p1, kind="mergesort")
    s, yy = p1[order], (y[order] == 1).astype(np.int64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.r_[0, np.cumsum(yy)[last]]
    fp = np.r_[0, np.cumsum(1 - yy)[last]]
    s = s[last]  # distinct scores, descending
    top = max(1.0, float(np.nextafter(s[0], np.inf)))
    hi = np.r_[top, s]  # lowest score still positive for cut j (a sentinel above all for j=0)
    lo = np.r_[s, min(0.0, float(s[-1]))]  # the next lower score (0 below the lowest)
    return tp, fp, _between(hi, lo)


def _argmax_result(spec, y, proba, k, warnings: list[str], info: dict | None = None):
    score = _objective(y, proba.argmax(axis=1), k, spec)
    for w in warnings:
        log.warning("thresholds: %s", w)
    return Thresholds(
        kind="argmax",
        threshold=None,
        offsets=None,
        objective=spec.objective,
        val_score=score,
        default_score=score,
        info={**(info or {}), "warnings": warnings},
    )


def _fit_binary(y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec) -> Thresholds:
    default_pred = proba.argmax(axis=1)
    default = _objective(y, default_pred, 2, spec)
    tp, fp, cuts = _binary_candidates(y, proba[:, 1])
    npos, nneg = tp[-1], fp[-1]
    predpos = tp + fp
    info: dict[str, Any] = {"candidates": len(cuts), "warnings": []}
    info.update(_pr_info(y, default_pred, "default"))

    if spec.objective in ("f_beta", "macro_f1"):
        if spec.objective == "f_beta":
            score = _f_beta(tp, predpos, npos, spec.beta)
        else:
            tn, predneg = nneg - fp, len(y) - predpos
            score = (_f_beta(tp, predpos, npos, 1.0) + _f_beta(tn, predneg, nneg, 1.0)) / 2
        best = float(score.max())
        if best <= default + _TOL:
            info["note"] = "no threshold beats argmax on val"
            return _argmax_result(spec, y, proba, 2, [], info)
        j = int(np.flatnonzero(score >= best - _TOL)[0])  # highest threshold among ties
    else:
        # j = 0 predicts nothing: no precision, recall 0; targets are checked on j >= 1
        recall = tp[1:] / npos
        precision = tp[1:] / predpos[1:]
        target = float(spec.target)  # checked by _check_spec
        info["target"] = target
        metric = recall if spec.objective == "target_recall" else precision
        ok = np.flatnonzero(metric >= target - _TOL)
        info["reached"] = bool(ok.size)
        if spec.objective == "target_recall":
            j = 1 + int(ok[0])  # always reachable: j = m has recall 1
        elif ok.size:
            j = 1 + int(ok[-1])
        else:
            best = precision.max()
            j = 1 + int(np.flatnonzero(precision >= best - _TOL)[-1])
            note = (
                f"target precision {target} is unreachable on val (best {best:.4f}); "
                "using the threshold with the highest val precision"
            )
            info["note"] = note
            info["warnings"].append(note)
            log.warning("thresholds: %s", note)

    t = Thresholds(
        kind="binary",
        threshold=float(cuts[j]),
        offsets=None,
        objective=spec.objective,
        val_score=math.nan,
        default_score=default,
        info=info,
    )
    pred = apply_thresholds(proba, t)
    info.update(_pr_info(y, pred, "val"))
    return replace(t, val_score=_objective(y, pred, 2, spec))


def _sweep(logp: np.ndarray, o: np.ndarray, c: int, y: np.ndarray, support: np.ndarray, beta):
    """Macro F-beta (counted classes) for every distinct choice of offset c, and the offsets.

    Row i predicts c when o_c > b_i, otherwise its rival r_i = argmax_{j≠c}(log p_ij + o_j).
    With the breakpoints sorted ascending, choice t (0..N) switches the first t rows to c."""
    n, k = logp.shape
    a = logp + o
    a[:, c] = -np.inf
    r = a.argmax(axis=1)
    b = a[np.arange(n), r] - logp[:, c]
    order = np.argsort(b, kind="stable")
    bs, ys, rs = b[order], y[order], r[order]
    pred0 = np.bincount(r, minlength=k)
    tp0 = np.bincount(r[y == r], minlength=k)
    # how many earlier switched rows share this row's rival (and were right for it)
    # a stable sort of small ints is a radix sort in numpy
    g = np.argsort(rs.astype(np.int16) if k < 2**15 else rs, kind="stable")
    starts = np.flatnonzero(np.diff(rs[g], prepend=-1))
    group_start = np.repeat(starts, np.diff(starts, append=n))
    hit = (ys == rs).astype(np.int64)
    cum = np.cumsum(hit[g]) - hit[g]
    earlier_pred = np.empty(n, np.int64)
    earlier_tp = np.empty(n, np.int64)
    earlier_pred[g] = np.arange(n) - group_start
    earlier_tp[g] = cum - cum[group_start]
    pred_before = pred0[rs] - earlier_pred
    tp_before = tp0[rs] - earlier_tp
    sup_r = support[rs]
    d_f = _f_beta(tp_before - hit, pred_before - 1, sup_r, beta) - _f_beta(
        tp_before, pred_before, sup_r, beta
    )
    d_count = ((sup_r > 0) | (pred_before > 1)).astype(np.int64) - (
        (sup_r > 0) | (pred_before > 0)
    ).astype(np.int64)
    tp_c = np.cumsum(ys == c, dtype=np.int64)
    tp_c = np.concatenate(([0], tp_c))
    pred_c = np.arange(n + 1)
    others = np.arange(k) != c
    f0 = _f_beta(tp0, pred0, support, beta)[others].sum()
    count0 = ((support > 0) | (pred0 > 0))[others].sum()
    total = np.concatenate(([0.0], np.cumsum(d_f)))
    total += f0 + _f_beta(tp_c, pred_c, support[c], beta)
    count = np.concatenate(([0], np.cumsum(d_count)))
    count += count0 + ((support[c] > 0) | (pred_c > 0))
    score = total / count
    valid = np.concatenate(([True], bs[1:] > bs[:-1], [True]))
    score[~valid] = -np.inf
    offsets = np.concatenate(([bs[0] - 1.0], _between(bs[1:], bs[:-1]), [bs[-1] + 1.0]))
    return score, offsets


def _fit_offsets(
    y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec, quiet: bool = False
) -> Thresholds:
    n, k = proba.shape
    beta = 1.0 if spec.objective == "macro_f1" else spec.beta
    logp = np.log(np.maximum(proba, PROBA_FLOOR))
    support = np.bincount(y, minlength=k)

    def real(o: np.ndarray) -> float:
        return _objective(y, (logp + o).argmax(axis=1), k, spec)

    warnings = [
        f"class {c} has no rows in val: its offset stays 0" for c in np.flatnonzero(support == 0)
    ]
    o = np.zeros(k)
    default = cur = real(o)
    passes, converged = 0, False
    changes, swept_at = 0, np.full(k, -1)  # a class swept since the last change would not move
    while passes < MAX_PASSES and not converged:
        passes += 1
        converged = True
        for c in np.flatnonzero(support > 0):
            if swept_at[c] == changes:
                continue
            swept_at[c] = changes
            score, offsets = _sweep(logp, o, int(c), y, support, beta)
            best = score.max()
            if best <= cur + _TOL:
                continue
            tied = np.flatnonzero(score >= best - _TOL)
            i = tied[np.argmin(np.abs(offsets[tied] - o[c]))]  # least change among ties
            trial = o.copy()
            trial[c] = offsets[i]
            new = real(trial)  # the sweep's exact count, checked against rounding
            if new > cur + _TOL:
                o, cur, converged = trial, new, False
                changes += 1
                swept_at[c] = changes  # its own sweep already chose the best o_c
    o = o - o.mean()
    final = real(o)
    info = {"rule": "offsets", "passes": passes, "converged": converged, "warnings": warnings}
    if final <= default + _TOL:
        info["note"] = "no offsets beat argmax on val"
        return _argmax_result(spec, y, proba, k, [] if quiet else warnings, info)
    for w in [] if quiet else warnings:
        log.warning("thresholds: %s", w)
    return Thresholds(
        kind="offsets",
        threshold=None,
        offsets=[float(v) for v in o],
        objective=spec.objective,
        val_score=final,
        default_score=default,
        info=info,
    )


def fit_thresholds(y_val: np.ndarray, proba_val: np.ndarray, spec: ThresholdSpec) -> Thresholds:
    """Fit the decision rule of ``spec`` on validation labels and probabilities.

    Args:
        y_val: (N,) int class indices.
        proba_val: (N, K) class probabilities, rows summing to 1, K >= 2.
        spec: objective (macro_f1, f_beta, target_recall, target_precision), beta, target.

    Returns:
        A :class:`Thresholds`; ``val_score`` / ``default_score`` are the objective on val at the
        fitted point / with plain argmax (for ``target_*``: the val recall / precision).
    """
    proba = _check_proba(proba_val, "proba_val", min_rows=1)
    n, k = proba.shape
    y = _check_labels(y_val, n, k)
    _check_spec(spec, k)
    present = np.flatnonzero(np.bincount(y, minlength=k))
    if len(present) < 2:
        return _argmax_result(
            spec,
            y,
            proba,
            k,
            [
                f"val has rows of only class {present.tolist()}: no decision rule can be fitted; "
                "using argmax"
            ],
        )
    if k == 2:
        return _fit_binary(y, proba, spec)
    fitted = _fit_offsets(y, proba, spec)
    if spec.cv_folds < 2:
        return fitted
    adjusted = _fit_logit_adjustment(y, proba, spec)
    if fitted.kind != "offsets" and adjusted.kind != "offsets":
        return fitted
    return _choose_rule(y, proba, spec, {"offsets": fitted, "logit_adjusted": adjusted})


def _choose_rule(y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec, rules: dict) -> Thresholds:
    """The rule with the best objective on the held-out folds of val: per-class offsets, the
    logit adjustment or argmax (ties: the one with fewer fitted numbers)."""
    k = proba.shape[1]
    cv = cross_validated_rules(y, proba, spec)
    cv_default = cv["argmax"]
    usable = [r for r in ("logit_adjusted", "offsets") if rules[r].kind == "offsets"]
    best = max(usable, key=lambda r: cv[r] - (_TOL if r == "offsets" else 0.0))
    info = {"cv_score": cv[best], "cv_default": cv_default, "cv_folds": spec.cv_folds}
    info["cv_rules"] = {r: float(v) for r, v in cv.items()}
    if not cv[best] > cv_default + _TOL:
        note = (
            f"{best} fitted on {spec.cv_folds - 1}/{spec.cv_folds} of val did not beat argmax "
            f"on the held-out folds ({cv[best]:.4f} vs {cv_default:.4f}): using argmax"
        )
        log.info("thresholds: %s", note)
        info = {**rules["offsets"].info, **info, "rule": "argmax", "note": note}
        return _argmax_result(spec, y, proba, k, [], info)
    return replace(rules[best], info={**rules[best].info, **info})


def cv_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index per row: each class's rows dealt round-robin in a seeded order."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = (start + np.arange(len(rows))) % folds
        start += len(rows)  # the next class starts where this one ended: balanced folds
    return fold


def cross_validated(y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec) -> tuple[float, float]:
    """(objective of out-of-fold offset decisions, objective of argmax) on val."""
    cv = cross_validated_rules(y, proba, spec)
    return cv["offsets"], cv["argmax"]


def cross_validated_rules(y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec) -> dict:
    """The objective on val of each multi-class rule's out-of-fold decisions: ``offsets``
    (per-class), ``logit_adjusted`` (one τ) and ``argmax``; each fitted on ``cv_folds - 1``
    folds and applied to the one held out."""
    k = proba.shape[1]
    fold = cv_folds(y, spec.cv_folds, spec.seed)
    pred = proba.argmax(axis=1)
    fits = {"offsets": _fit_offsets, "logit_adjusted": _fit_logit_adjustment}
    oof = {r: pred.copy() for r in fits}
    for f in range(spec.cv_folds):
        held = fold == f
        if not held.any() or len(np.unique(y[~held])) < 2:
            continue
        for r, fit in fits.items():
            t = fit(y[~held], proba[~held], spec, quiet=True)
            oof[r][held] = apply_thresholds(proba[held], t)
    out = {r: _objective(y, o, k, spec) for r, o in oof.items()}
    return {**out, "argmax": _objective(y, pred, k, spec)}


def class_prior(y: np.ndarray, k: int) -> np.ndarray:
    """Class frequencies of ``y``; a class without rows counts as often as the rarest one."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    counts[counts == 0] = counts[counts > 0].min()
    return counts / counts.sum()


def _fit_logit_adjustment(
    y: np.ndarray, proba: np.ndarray, spec: ThresholdSpec, quiet: bool = False
) -> Thresholds:
    """Post-hoc logit adjustment (Menon et al., 2021): ``argmax(log p − τ log π)`` with π the
    class frequencies of ``y`` and τ on ``LA_TAUS`` maximizing the objective (the smallest
    among ties); offsets ``−τ log π`` (mean 0). One number fitted, so less noise than one
    offset per class where the tail has few rows."""
    k = proba.shape[1]
    logp = np.log(np.maximum(proba, PROBA_FLOOR))
    log_prior = np.log(class_prior(y, k))
    scores = [_objective(y, (logp - tau * log_prior).argmax(axis=1), k, spec) for tau in LA_TAUS]
    i = int(np.argmax(scores))  # the first (smallest τ) of the best
    default = float(scores[0])
    if not scores[i] > default + _TOL:
        return _argmax_result(spec, y, proba, k, [], {"note": "no logit adjustment beats argmax"})
    o = -float(LA_TAUS[i]) * log_prior
    return Thresholds(
        kind="offsets",
        threshold=None,
        offsets=[float(v) for v in o - o.mean()],
        objective=spec.objective,
        val_score=float(scores[i]),
        default_score=default,
        info={"rule": "logit_adjusted", "tau": float(LA_TAUS[i]), "warnings": []},
    )


def apply_thresholds(proba: np.ndarray, t: Thresholds) -> np.ndarray:
    """(N,) int64 class indices of ``proba`` under the fitted rule ``t``."""
    p = _check_proba(proba, "proba", min_rows=0)
    if t.kind == "argmax":
        return p.argmax(axis=1).astype(np.int64)
    if t.kind == "binary":
        if p.shape[1] != 2:
            raise ValueError(
                f"binary thresholds applied to proba with {p.shape[1]} columns; pass (N, 2)"
            )
        return (p[:, 1] >= t.threshold).astype(np.int64)
    offsets = np.asarray(t.offsets, dtype=np.float64)
    if len(offsets) != p.shape[1]:
        raise ValueError(
            f"{len(offsets)} offsets applied to proba with {p.shape[1]} columns; "
            "fit and apply with the same label map"
        )
    return (np.log(np.maximum(p, PROBA_FLOOR)) + offsets).argmax(axis=1).astype(np.int64)


def threshold_curve(y: np.ndarray, p_pos: np.ndarray, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Precision, recall and F-beta of predicting positive when ``p_pos >= threshold``, for every
    distinct score as threshold (ascending) — for the report's plot. Recall is NaN without
    positives."""
    y = np.asarray(y)
    p = np.asarray(p_pos, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(
            f"y {y.shape} and p_pos {p.shape} must be the same 1-D shape; pass one score per row"
        )
    if len(y) == 0:
        raise ValueError("threshold_curve needs at least one row")
    if not np.all(np.isfinite(p)):
        raise ValueError("p_pos has NaN/infinite values; drop or fix those rows")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    positive = y == 1
    precision, recall, thresholds = pr_curve(positive, p)
    precision, recall = precision[:-1], recall[:-1]
    if not positive.any():
        recall = np.full_like(recall, math.nan)
    b2 = beta * beta
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(
            precision + recall > 0, (1 + b2) * precision * recall / (b2 * precision + recall), 0.0
        )
    return {"thresholds": thresholds, "precision": precision, "recall": recall, "f_beta": f}
