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


# --- the stacker ---------------------------------------------------------------------------------


def _members(seed: int, n: int, k: int = 4):
    """Three members on a long-tailed problem: one sees classes 0–1 well, one 2–3, one is noise."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.55, 0.25, 0.15, 0.05])
    out = []
    for good in ((0, 1), (2, 3), ()):
        z = rng.standard_normal((n, k))
        for c in good:
            z[:, c] += 3.0 * (y == c)
        out.append(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))
    return y, out


def test_a_stacker_learns_which_member_to_trust_for_which_class():
    from engine.combining import fit_stacker, stack_features, stack_proba

    y, ps = _members(0, 2000)
    y_new, ps_new = _members(1, 5000)
    groups = [[0], [1], [2]]
    st = {**fit_stacker(y, stack_features(ps, groups), 4, 1.0), "groups": groups}
    stacked = combine(ps_new, [1 / 3] * 3, 1.0, stacker=st)
    np.testing.assert_allclose(stacked, stack_proba(stack_features(ps_new, groups), st))
    np.testing.assert_allclose(stacked.sum(axis=1), 1.0)
    mean = combine(ps_new, [1 / 3] * 3, 1.0)
    assert (
        decision_score(y_new, stacked, "macro_f1") > decision_score(y_new, mean, "macro_f1") + 0.05
    )
    coef = np.abs(np.asarray(st["coef"]))
    assert coef[:, 8:].sum() < 0.5 * coef[:, :4].sum()  # the noise member weighs little


def test_a_member_of_fold_models_is_their_mean_and_a_missing_class_is_never_predicted():
    from engine.combining import fit_stacker, stack_features, stack_proba

    y, ps = _members(2, 600)
    x = stack_features([ps[0], ps[1], ps[2]], [[0, 1], [2]])
    np.testing.assert_allclose(x[:, :4], np.log(np.maximum((ps[0] + ps[1]) / 2, 1e-6)))
    keep = y != 3  # class 3 absent from the rows the stacker is fitted on
    st = fit_stacker(y[keep], x[keep], 4, 1.0)
    assert np.asarray(st["coef"]).shape == (4, 8) and not np.any(np.asarray(st["coef"])[3])
    assert not np.any(stack_proba(x, st).argmax(axis=1) == 3)
    # class c's logit reads only the members' log p(c): one weight per member and class
    coef = np.asarray(fit_stacker(y, x, 4, 1.0)["coef"]).reshape(4, 2, 4)  # class, member, read
    reads_own = np.broadcast_to(np.eye(4, dtype=bool)[:, None, :], coef.shape)
    assert not coef[~reads_own].any() and coef[reads_own].all()


def test_the_stacker_objective_has_the_gradient_it_reports_and_is_minimized():
    from engine.combining import fit_stacker, stack_features, stack_loss

    y, ps = _members(4, 300)
    x = stack_features(ps, [[0], [1], [2]])
    xs, lam = x.reshape(300, 3, 4), 1.0 / (0.1 * 300)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=3 * 4 + 4)
    value, grad = stack_loss(theta, xs, y, lam)
    eps = 1e-6
    numeric = [
        (stack_loss(theta + eps * e, xs, y, lam)[0] - stack_loss(theta - eps * e, xs, y, lam)[0])
        / (2 * eps)
        for e in np.eye(len(theta))
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
    st = fit_stacker(y, x, 4, 0.1)
    coef = np.asarray(st["coef"])
    a = np.stack([coef[np.arange(4), j * 4 + np.arange(4)] for j in range(3)])
    best = np.r_[a.ravel(), st["intercept"]]
    assert np.linalg.norm(stack_loss(best, xs, y, lam)[1]) < 1e-4  # at the optimum
    assert stack_loss(best, xs, y, lam)[0] < stack_loss(theta, xs, y, lam)[0]


def test_out_of_fold_stacking_scores_no_row_with_a_stacker_fitted_on_it():
    from engine.combining import STACK_CS, choose_stacker, fit_stacker, stack_cv, stack_proba

    y, ps = _members(3, 900)
    x = np.concatenate([np.log(p) for p in ps], axis=1)
    fold = np.arange(len(y)) % 3
    got = stack_cv(y, x, 4, 0.1, fold)
    for f in range(3):
        held = fold == f
        want = stack_proba(x[held], fit_stacker(y[~held], x[~held], 4, 0.1))
        np.testing.assert_allclose(got[held], want)
    in_sample = stack_proba(x, fit_stacker(y, x, 4, 0.1))
    assert not np.allclose(got, in_sample)
    choice = choose_stacker(y, x, 4, fold)
    assert set(choice.cv) == set(STACK_CS) and choice.cv[choice.c] == max(choice.cv.values())
    np.testing.assert_allclose(choice.proba, stack_cv(y, x, 4, choice.c, fold))
