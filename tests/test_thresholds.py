"""Decision thresholds: exact binary cuts against scikit-learn, multi-class offsets."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score, fbeta_score
from sklearn.model_selection import TunedThresholdClassifierCV

from engine.config import ThresholdSpec
from engine.metrics import classification_metrics
from engine.thresholds import (
    Thresholds,
    _fit_logit_adjustment,
    apply_thresholds,
    class_prior,
    cross_validated,
    cv_folds,
    fit_thresholds,
    threshold_curve,
)


def _binary(seed: int, n: int = 600, pos: float = 0.15, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos).astype(int)
    p1 = 1 / (1 + np.exp(-(rng.standard_normal(n) + 1.5 * y - 1.0)))
    if decimals is not None:
        p1 = np.round(p1, decimals)
    return y, np.c_[1 - p1, p1]


def _multiclass(seed: int, n: int = 1500, k: int = 6, temper: float = 2.0):
    """Long-tailed classes whose model is under-confident on the tail: the prior is baked into
    the logits ``temper`` times over, so argmax under-predicts rare classes."""
    rng = np.random.default_rng(seed)
    prior = np.exp(-np.arange(k) / (k / 4))
    prior /= prior.sum()
    y = rng.choice(k, size=n, p=prior)
    logits = rng.standard_normal((n, k)) + 2.0 * np.eye(k)[y] + temper * np.log(prior)
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


class _FixedProba(ClassifierMixin, BaseEstimator):
    """A 'prefit' classifier whose features are its probabilities."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        return np.asarray(X)


# --- binary --------------------------------------------------------------------------------------


def _brute_force_best(y, p1, beta=1.0, macro=False):
    """The best F-beta (or macro-F1) over every cut ``p1 >= c``, by direct counting."""
    cut = p1[None, :] >= np.unique(p1)[:, None]  # (cuts, N)
    pos = y == 1

    def f(tp, npred, nsup):
        return np.where(tp > 0, (1 + beta**2) * tp / (beta**2 * nsup + npred), 0.0)

    tp, npred = (cut & pos).sum(1), cut.sum(1)
    score = f(tp, npred, pos.sum())
    if macro:
        tn, nneg = (~cut & ~pos).sum(1), (~cut).sum(1)
        score = (score + f(tn, nneg, (~pos).sum())) / 2
    return score.max()


def _tuned(p, y, grid):
    return TunedThresholdClassifierCV(
        _FixedProba().fit(p, y),
        scoring="f1",
        cv="prefit",
        refit=False,
        thresholds=grid,
        store_cv_results=True,
    ).fit(p, y)


@pytest.mark.parametrize("seed", range(2))
def test_binary_f1_beats_tuned_threshold_classifier_on_its_grid(seed):
    y, p = _binary(seed, n=3000)
    grid = np.linspace(0.0, 1.0, 101)
    tuned = _tuned(p, y, grid)
    t = fit_thresholds(y, p, ThresholdSpec(objective="f_beta"))
    assert t.kind == "binary"
    ours = f1_score(y, apply_thresholds(p, t))
    assert ours == pytest.approx(t.val_score)
    assert ours >= tuned.best_score_ - 1e-12
    # the exact optimum over every distinct score (threshold_curve is checked against counts)
    assert ours == pytest.approx(threshold_curve(y, p[:, 1])["f_beta"].max())
    scores = tuned.cv_results_["scores"]
    unique = np.sum(scores >= scores.max() - 1e-12) == 1
    if unique and tuned.best_score_ == pytest.approx(ours):
        assert abs(t.threshold - tuned.best_threshold_) <= grid[1] - grid[0]


@pytest.mark.parametrize("seed", range(2))
def test_binary_f1_equals_tuned_threshold_classifier_when_its_grid_covers_every_cut(seed):
    # scores on a 0.01 lattice and a grid halfway between: one grid point per distinct cut, and
    # our midpoint rule lands exactly on it
    y, p = _binary(seed, n=1500, decimals=2)
    grid = np.arange(100) / 100 + 0.005
    tuned = _tuned(p, y, grid)
    t = fit_thresholds(y, p, ThresholdSpec(objective="f_beta"))
    assert t.val_score == pytest.approx(tuned.best_score_)
    scores = tuned.cv_results_["scores"]
    if np.sum(scores >= scores.max() - 1e-12) == 1:
        assert t.threshold == pytest.approx(tuned.best_threshold_)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_binary_f_beta_and_macro_f1_are_the_exact_optimum(seed, beta):
    y, p = _binary(seed, decimals=2)  # many ties between scores
    t = fit_thresholds(y, p, ThresholdSpec(objective="f_beta", beta=beta))
    pred = apply_thresholds(p, t)
    assert fbeta_score(y, pred, beta=beta) == pytest.approx(t.val_score)
    assert t.val_score == pytest.approx(_brute_force_best(y, p[:, 1], beta=beta))
    assert t.val_score >= t.default_score
    t = fit_thresholds(y, p, ThresholdSpec(objective="macro_f1"))
    pred = apply_thresholds(p, t)
    assert f1_score(y, pred, average="macro") == pytest.approx(t.val_score)
    assert classification_metrics(y, p, y_pred=pred)["macro_f1"] == pytest.approx(t.val_score)
    assert t.val_score == pytest.approx(_brute_force_best(y, p[:, 1], macro=True))


def test_binary_threshold_sits_midway_between_val_scores():
    y = np.array([0, 0, 1, 0, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.9])
    t = fit_thresholds(y, np.c_[1 - p1, p1], ThresholdSpec(objective="f_beta"))
    # best F1 predicts {0.7, 0.9} positive (F1 0.8) vs everything >= 0.3 (F1 6/7)
    assert t.threshold == pytest.approx((0.3 + 0.2) / 2)
    assert t.val_score == pytest.approx(6 / 7)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_target_recall_is_reached_with_the_best_precision(seed, target):
    y, p = _binary(seed)
    t = fit_thresholds(y, p, ThresholdSpec(objective="target_recall", target=target))
    pred = apply_thresholds(p, t)
    recall = pred[y == 1].mean()
    assert recall >= target and t.info["reached"] and t.val_score == pytest.approx(recall)
    assert t.info["val_recall"] == pytest.approx(recall)
    # any higher threshold (one more distinct score excluded) falls below the target
    higher = np.unique(p[:, 1])
    higher = higher[higher >= t.threshold]
    if len(higher) > 1:
        assert (p[y == 1, 1] >= higher[1]).mean() < target


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_target_precision_is_reached_with_the_best_recall(seed, target):
    y, p = _binary(seed)
    t = fit_thresholds(y, p, ThresholdSpec(objective="target_precision", target=target))
    pred = apply_thresholds(p, t)
    precision = y[pred == 1].mean()
    assert precision >= target and t.info["reached"]
    assert t.val_score == pytest.approx(precision)
    recall = pred[y == 1].mean()
    for c in np.unique(p[:, 1]):  # no cut with this precision has a better recall
        cut = p[:, 1] >= c
        if y[cut].mean() >= target:
            assert cut[y == 1].mean() <= recall + 1e-12


def test_unreachable_precision_falls_back_to_the_best_and_says_so(caplog):
    y, p = _binary(0)
    with caplog.at_level(logging.WARNING, logger="raybalance"):
        t = fit_thresholds(y, p, ThresholdSpec(objective="target_precision", target=1.0))
    best = max(y[p[:, 1] >= c].mean() for c in np.unique(p[:, 1]))
    if best < 1.0:
        assert not t.info["reached"] and "unreachable" in t.info["note"]
        assert t.val_score == pytest.approx(best)
        assert "unreachable" in caplog.text


def test_threshold_curve_matches_direct_counts():
    y, p = _binary(1, n=200, decimals=2)
    c = threshold_curve(y, p[:, 1], beta=2.0)
    assert np.all(np.diff(c["thresholds"]) > 0)
    for i in [0, 7, len(c["thresholds"]) - 1]:
        pred = (p[:, 1] >= c["thresholds"][i]).astype(int)
        assert c["recall"][i] == pytest.approx(pred[y == 1].mean())
        assert c["precision"][i] == pytest.approx(y[pred == 1].mean())
        assert c["f_beta"][i] == pytest.approx(fbeta_score(y, pred, beta=2.0))


# --- multi-class ---------------------------------------------------------------------------------


def test_offsets_improve_macro_f1_on_under_confident_tail_classes():
    y, p = _multiclass(0)
    t = fit_thresholds(y, p, ThresholdSpec())
    assert t.kind == "offsets" and len(t.offsets) == p.shape[1]
    assert sum(t.offsets) == pytest.approx(0.0, abs=1e-9)
    pred = apply_thresholds(p, t)
    m = classification_metrics(y, p, y_pred=pred)
    base = classification_metrics(y, p)
    assert m["macro_f1"] == pytest.approx(t.val_score)
    assert base["macro_f1"] == pytest.approx(t.default_score)
    assert t.val_score > t.default_score + 0.05
    assert t.offsets[-1] > t.offsets[0]  # the rare class is pushed up
    assert np.allclose(pred, (np.log(p) + np.array(t.offsets)).argmax(1))
    # fitted on one draw, better on a fresh draw from the same model too
    y2, p2 = _multiclass(1)
    after = classification_metrics(y2, p2, y_pred=apply_thresholds(p2, t))["macro_f1"]
    assert after > classification_metrics(y2, p2)["macro_f1"]


@pytest.mark.parametrize("seed", range(12))
def test_offsets_never_lose_to_argmax_on_val(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 8))
    y, p = _multiclass(seed, n=int(rng.integers(20, 400)), k=k, temper=float(rng.uniform(-1, 3)))
    for spec in (ThresholdSpec(), ThresholdSpec(objective="f_beta", beta=2.0)):
        t = fit_thresholds(y, p, spec)
        assert t.val_score >= t.default_score
        pred = apply_thresholds(p, t)
        ref = fbeta_score(
            y, pred, beta=spec.beta if spec.objective == "f_beta" else 1.0, average="macro"
        )
        assert t.val_score == pytest.approx(ref)


def test_multiclass_f_beta_is_macro_f_beta():
    y, p = _multiclass(3)
    t = fit_thresholds(y, p, ThresholdSpec(objective="f_beta", beta=0.5))
    pred = apply_thresholds(p, t)
    assert t.val_score == pytest.approx(fbeta_score(y, pred, beta=0.5, average="macro"))
    assert t.default_score == pytest.approx(fbeta_score(y, p.argmax(1), beta=0.5, average="macro"))


def test_fit_is_deterministic_and_round_trips_through_json():
    y, p = _multiclass(5)
    a = fit_thresholds(y, p, ThresholdSpec())
    b = fit_thresholds(y, p.copy(), ThresholdSpec())
    assert a == b
    back = Thresholds.from_json(json.loads(json.dumps(a.to_json(), allow_nan=False)))
    assert back == a
    np.testing.assert_array_equal(apply_thresholds(p, back), apply_thresholds(p, a))
    yb, pb = _binary(2)
    tb = fit_thresholds(yb, pb, ThresholdSpec(objective="target_recall", target=0.9))
    back = Thresholds.from_json(json.loads(json.dumps(tb.to_json(), allow_nan=False)))
    assert back == tb
    with pytest.raises(ValueError, match="missing keys"):
        Thresholds.from_json({"kind": "argmax"})


def test_argmax_result_when_nothing_beats_it():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.eye(3)[y] * 0.8 + 0.2 / 3
    t = fit_thresholds(y, p, ThresholdSpec())
    assert t.kind == "argmax" and t.val_score == t.default_score == 1.0
    np.testing.assert_array_equal(apply_thresholds(p, t), y)
    assert Thresholds.from_json(t.to_json()) == t


def test_a_class_absent_from_val_is_handled():
    y, p = _multiclass(4, k=5)
    keep = y != 2
    t = fit_thresholds(y[keep], p[keep], ThresholdSpec())
    assert any("class 2 has no rows in val" in w for w in t.info["warnings"])
    assert t.val_score >= t.default_score
    apply_thresholds(p, t)
    # binary val with only negatives: nothing to fit, argmax with a warning
    yb, pb = _binary(0)
    t = fit_thresholds(np.zeros_like(yb), pb, ThresholdSpec(objective="f_beta"))
    assert t.kind == "argmax" and "only class [0]" in t.info["warnings"][0]
    t = fit_thresholds(np.ones_like(yb), pb, ThresholdSpec(objective="target_recall", target=0.9))
    assert t.kind == "argmax"
    assert Thresholds.from_json(json.loads(json.dumps(t.to_json(), allow_nan=False))).kind == (
        "argmax"
    )


def test_a_large_multiclass_fit_improves_on_argmax():
    y, p = _multiclass(0, n=5000, k=50, temper=1.5)
    t = fit_thresholds(y, p, ThresholdSpec())
    assert t.kind == "offsets" and t.val_score > t.default_score
    assert t.info["cv_score"] > t.info["cv_default"]


# --- cross-validated check of multi-class offsets ------------------------------------------------


def test_folds_are_stratified_and_balanced():
    y = np.repeat(np.arange(5), [50, 20, 7, 2, 1])
    fold = cv_folds(y, 5, seed=0)
    for c in range(5):
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1  # every class spread over the folds
    assert np.bincount(fold, minlength=5).max() - np.bincount(fold, minlength=5).min() <= 1
    assert np.array_equal(fold, cv_folds(y, 5, seed=0))
    assert not np.array_equal(fold, cv_folds(y, 5, seed=1))


def test_offsets_that_only_fit_val_noise_are_dropped_for_argmax():
    """Many classes, few val rows each, probabilities that carry no class bias: coordinate
    ascent still finds offsets that raise val macro-F1, but they do not carry over to held-out
    folds, so argmax is kept (and says why)."""
    rng = np.random.default_rng(0)
    k, n = 30, 300
    y = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 1.0 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    raw = fit_thresholds(y, p, ThresholdSpec(cv_folds=0))
    assert raw.kind == "offsets" and raw.val_score > raw.default_score  # overfits val
    t = fit_thresholds(y, p, ThresholdSpec(cv_folds=5))
    assert t.kind == "argmax" and t.val_score == t.default_score
    assert t.info["cv_score"] <= t.info["cv_default"]
    assert "did not beat argmax on the held-out folds" in t.info["note"]
    assert t.info["rule"] == "argmax"  # the rule kept, not the one that lost
    np.testing.assert_array_equal(apply_thresholds(p, t), p.argmax(1))


def test_offsets_that_correct_a_real_bias_survive_the_check():
    y, p = _multiclass(0, n=1500, k=6, temper=2.0)
    cv, default = cross_validated(y, p, ThresholdSpec())
    assert cv > default + 0.05
    t = fit_thresholds(y, p, ThresholdSpec())
    rules = t.info["cv_rules"]
    assert t.kind == "offsets" and rules["offsets"] == pytest.approx(cv)
    assert t.info["cv_score"] == pytest.approx(rules[t.info["rule"]])
    with pytest.raises(Exception, match="cv_folds"):
        ThresholdSpec(cv_folds=-1)


def test_logit_adjustment_undoes_a_prior_baked_into_the_logits():
    spec = ThresholdSpec()
    y, p = _multiclass(0, n=3000, k=10, temper=1.5)
    y_new, p_new = _multiclass(1, n=20000, k=10, temper=1.5)
    t = _fit_logit_adjustment(y, p, spec)
    tau = t.info["tau"]
    assert t.kind == "offsets" and t.info["rule"] == "logit_adjusted" and 0.5 <= tau <= 2.0
    o = -tau * np.log(class_prior(y, 10))
    np.testing.assert_allclose(t.offsets, o - o.mean())
    f1 = f1_score(y_new, apply_thresholds(p_new, t), average="macro")
    assert (
        f1 > f1_score(y_new, p_new.argmax(1), average="macro") + 0.1
    )  # it carries over to new rows
    # without a baked-in prior there is little to undo
    y0, p0 = _multiclass(0, n=3000, k=10, temper=0.0)
    t0 = _fit_logit_adjustment(y0, p0, spec)
    assert t0.kind == "argmax" or t0.info["tau"] <= 0.3


def test_the_rule_kept_is_the_best_on_held_out_folds():
    """Long tail with 1–8 val rows per tail class: per-class offsets or one τ, whichever
    decides better on the held-out folds (the logit adjustment on ties) — both happen."""
    kept = set()
    for seed in range(4):
        y, p = _multiclass(seed, n=600, k=20, temper=1.5)
        t = fit_thresholds(y, p, ThresholdSpec())
        cv = t.info["cv_rules"]
        best = "offsets" if cv["offsets"] > cv["logit_adjusted"] else "logit_adjusted"
        assert t.info["rule"] == best and t.info["cv_score"] == cv[best] > cv["argmax"]
        kept.add(best)
        if best == "logit_adjusted":
            o = -t.info["tau"] * np.log(class_prior(y, 20))
            np.testing.assert_allclose(t.offsets, o - o.mean())
    assert kept == {"offsets", "logit_adjusted"}


# --- bad inputs ----------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    y, p = _binary(0, n=50)
    spec = ThresholdSpec()
    with pytest.raises(ValueError, match="y_val has shape .* 50 rows"):
        fit_thresholds(y[:-1], p, spec)
    bad = p.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/infinite values .*row 3"):
        fit_thresholds(y, bad, spec)
    with pytest.raises(ValueError, match="K=1"):
        fit_thresholds(y, p[:, :1], spec)
    with pytest.raises(ValueError, match="pass \\(N, K\\)"):
        fit_thresholds(y, p[:, 1], spec)
    with pytest.raises(ValueError, match="sum to 1"):
        fit_thresholds(y, p * 2 / 3, spec)
    with pytest.raises(ValueError, match="not logits"):
        fit_thresholds(y, np.c_[-p[:, 1], 1 + p[:, 1]], spec)
    with pytest.raises(ValueError, match="0..K-1"):
        fit_thresholds(y + 1, p, spec)
    ym, pm = _multiclass(0, n=60)
    with pytest.raises(ValueError, match="binary objective"):
        fit_thresholds(ym, pm, ThresholdSpec(objective="target_recall", target=0.8))
    t = fit_thresholds(ym, pm, spec)
    with pytest.raises(ValueError, match="same label map"):
        apply_thresholds(pm[:, :4] / pm[:, :4].sum(1, keepdims=True), t)
    with pytest.raises(ValueError, match="kind"):
        Thresholds("sigmoid", None, None, "macro_f1", math.nan, math.nan, {})
