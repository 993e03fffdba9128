"""engine.smote against imbalanced-learn 0.14.2 and scikit-learn's NearestNeighbors."""

from __future__ import annotations

import numpy as np
import pytest
from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE
from sklearn.neighbors import NearestNeighbors

from engine.smote import (
    Synthetic,
    adasyn,
    adasyn_counts,
    borderline,
    danger_mask,
    merge_nearest,
    nearest_partial,
    smote,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _own_knn(X: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest rows of X, itself excluded (rows are distinct in these tests)."""
    idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X, return_distance=False)
    assert (idx[:, 0] == np.arange(len(X))).all()
    return idx[:, 1:]


def _other_neighbors(X_all: np.ndarray, y: np.ndarray, cls: int, m: int) -> np.ndarray:
    """(n_cls, m) bool via the map-reduce kNN in 3 chunks, each class row excluding itself."""
    rows = np.flatnonzero(y == cls)
    parts = []
    for chunk in np.array_split(np.arange(len(X_all)), 3):
        pos = np.searchsorted(chunk, rows)
        inside = (pos < len(chunk)) & (chunk[np.minimum(pos, len(chunk) - 1)] == rows)
        exclude = np.where(inside, pos, -1)
        parts.append(nearest_partial(X_all[rows], X_all[chunk], y[chunk], m, exclude))
    _, labels = merge_nearest(parts, m)
    return labels != cls


def _check_on_segments(X: np.ndarray, out: Synthetic, k: int) -> None:
    X32 = X.astype(np.float32)
    nn = _own_knn(X32, k)
    expect = X32[out.seed] + out.step[:, None] * (X32[out.neighbor] - X32[out.seed])
    np.testing.assert_allclose(out.X, expect, atol=1e-5)
    assert (nn[out.seed] == out.neighbor[:, None]).any(axis=1).all()
    assert ((out.step >= 0) & (out.step < 1)).all()
    assert not out.other.any()


def _two_classes(n_min: int, n_maj: int, d: int = 4, shift: float = 1.0, seed: int = 0):
    rng = _rng(seed)
    X = np.vstack([rng.standard_normal((n_min, d)) + shift, rng.standard_normal((n_maj, d))])
    return X, np.r_[np.ones(n_min, np.int64), np.zeros(n_maj, np.int64)]


# ------------------------------------------------------------------------------------- SMOTE


@pytest.mark.parametrize("n_min,n_maj", [(30, 100), (7, 50), (200, 210), (50, 333)])
def test_smote_count_matches_imblearn(n_min, n_maj):
    X, y = _two_classes(n_min, n_maj)
    _, y_res = SMOTE(k_neighbors=5, random_state=0).fit_resample(X, y)
    n_imb = len(y_res) - len(y)
    out = smote(X[y == 1], n_maj - n_min, 5, _rng())
    assert len(out.X) == n_imb == n_maj - n_min
    assert out.X.dtype == np.float32 and out.step.dtype == np.float32
    assert out.seed.dtype == np.int64 and out.neighbor.dtype == np.int64
    assert out.warnings == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smote_points_lie_on_segments_to_k_nearest(dtype):
    X = _rng(1).standard_normal((300, 6)).astype(dtype)
    out = smote(X, 800, 5, _rng(2))
    assert out.X.shape == (800, 6)
    _check_on_segments(X, out, 5)
    # every one of the k neighbour slots is used, seeds cover most rows
    assert len(np.unique(out.seed)) > 200


def test_smote_is_deterministic_per_seed():
    X = _rng(3).standard_normal((120, 3))
    a, b = smote(X, 90, 5, _rng(7)), smote(X, 90, 5, _rng(7))
    for f in ("X", "seed", "neighbor", "other", "step"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = smote(X, 90, 5, _rng(8))
    assert not np.array_equal(a.X, c.X)
    assert not np.array_equal(a.seed, c.seed)


def test_zero_new_rows_gives_empty_arrays():
    X = _rng().standard_normal((10, 3))
    for out in (
        smote(X, 0, 5, _rng()),
        borderline(X, 0, 5, _rng(), np.ones((10, 4), bool), kind=1),
        adasyn(X, 0, 5, _rng(), np.ones((10, 4), bool)),
        smote(np.empty((0, 3)), 0, 5, _rng()),
    ):
        assert out.X.shape == (0, 3) and len(out.seed) == len(out.step) == 0


# ------------------------------------------------------------------------------- small classes


def test_k_is_lowered_with_a_warning_for_small_classes():
    X = _rng().standard_normal((3, 2))
    out = smote(X, 40, 5, _rng(), name="rare")
    assert len(out.X) == 40
    assert len(out.warnings) == 1
    assert "'rare'" in out.warnings[0] and "to 2" in out.warnings[0]
    _check_on_segments(X, out, 2)


@pytest.mark.parametrize("X", [np.array([[1.0, 2.0]]), np.tile([[3.0, -1.0]], (4, 1))])
def test_single_row_or_identical_rows_fall_back_to_random_oversampling(X):
    out = smote(X, 9, 5, _rng(), name="solo")
    assert len(out.X) == 9 and "'solo'" in out.warnings[0] and "random" in out.warnings[0]
    np.testing.assert_array_equal(out.X, X[out.seed].astype(np.float32))
    np.testing.assert_array_equal(out.neighbor, out.seed)
    assert (out.step == 0).all()
    other = np.ones((len(X), 3), bool)
    for res in (
        borderline(X, 5, 5, _rng(), other, kind=1, name="solo"),
        adasyn(X, 5, 5, _rng(), other),
    ):
        assert len(res.X) == 5 and res.warnings


def test_borderline2_single_row_steps_toward_other_classes():
    X = np.array([[0.0, 0.0]])
    X_other = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    other_nn = np.array([[0, 1, 2]])
    out = borderline(
        X,
        20,
        5,
        _rng(),
        np.array([[True, True, False]]),
        kind=2,
        X_other=X_other,
        other_nn=other_nn,
        name="one",
    )
    assert len(out.X) == 20 and out.other.all() and (out.step < 0.5).all()
    assert any("lowered from 5 to 3" in w for w in out.warnings)


def test_empty_class_with_rows_to_make_is_an_error():
    with pytest.raises(ValueError, match="'ghost'.*no rows"):
        smote(np.empty((0, 4)), 3, 5, _rng(), name="ghost")
    with pytest.raises(ValueError, match="'ghost'"):
        adasyn(np.empty((0, 4)), 3, 5, _rng(), np.empty((0, 2), bool), name="ghost")


def test_bad_arguments_are_value_errors():
    X = _rng().standard_normal((10, 2))
    with pytest.raises(ValueError, match="k=0"):
        smote(X, 3, 0, _rng())
    with pytest.raises(ValueError, match="n_new=-1"):
        smote(X, -1, 5, _rng())
    with pytest.raises(ValueError, match="NaN"):
        smote(np.full((4, 2), np.nan), 3, 5, _rng())
    with pytest.raises(ValueError, match="X_other"):
        borderline(X, 3, 5, _rng(), np.ones((10, 4), bool), kind=2)
    with pytest.raises(ValueError, match="kind=3"):
        borderline(X, 3, 5, _rng(), np.ones((10, 4), bool), kind=3)
    with pytest.raises(ValueError, match="bool"):
        danger_mask(np.ones((10, 4)))
    with pytest.raises(ValueError, match="keys"):
        smote(X, 3, 2, _rng(), max_rows=4)


# ---------------------------------------------------------------------------------- Borderline


def _hand_case():
    """Majority: a 5x5 grid on [0, 1]^2. Minority, with m = 4 (worked out by hand):

    0-4 a far cluster at (10, 10): all neighbours minority -> safe;
    5 inside the grid: 4 majority neighbours -> noise;
    6, 7 just right of the grid: 2 majority of 4 -> danger;
    8, 9 further right: 1 majority of 4 -> safe;
    10, 11 below-left of the grid: 3 majority of 4 -> danger.
    """
    g = np.arange(5) * 0.25
    maj = np.array([(a, b) for a in g for b in g])
    mino = np.array(
        [[10.0, 10.0], [10.1, 10.0], [10.0, 10.1], [10.1, 10.1], [10.05, 10.2], [0.6, 0.55],
         [1.15, 0.5], [1.15, 0.62], [1.3, 0.56], [1.45, 0.56], [-0.1, -0.1], [-0.3, -0.32]]
    )  # fmt: skip
    X = np.vstack([mino, maj])
    y = np.r_[np.ones(len(mino), np.int64), np.zeros(len(maj), np.int64)]
    return X, y, mino, maj


def test_danger_noise_safe_on_a_hand_case():
    X, y, mino, maj = _hand_case()
    other = _other_neighbors(X, y, 1, 4)
    n_other = other.sum(axis=1)
    np.testing.assert_array_equal(n_other, [0, 0, 0, 0, 0, 4, 2, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(np.flatnonzero(danger_mask(other)), [6, 7, 10, 11])
    np.testing.assert_array_equal(np.flatnonzero(other.all(axis=1)), [5])  # noise
    out = borderline(mino, 300, 2, _rng(), other, kind=1)
    assert len(out.X) == 300 and out.warnings == []
    assert set(np.unique(out.seed)) == {6, 7, 10, 11}
    _check_on_segments(mino, out, 2)

    nn_o = NearestNeighbors(n_neighbors=2).fit(maj).kneighbors(mino, return_distance=False)
    out2 = borderline(mino, 300, 2, _rng(), other, kind=2, X_other=maj, other_nn=nn_o)
    assert len(out2.X) == 300 and set(np.unique(out2.seed)) <= {6, 7, 10, 11}
    assert out2.other.any() and (~out2.other).any()


def test_danger_mask_matches_imblearn_in_danger_noise():
    rng = _rng(5)
    X = np.vstack([rng.standard_normal((150, 3)) + s for s in (0.0, 0.7, 1.4)])
    y = np.repeat(np.arange(3), 150)
    m = 10
    nn_m = NearestNeighbors(n_neighbors=m + 1).fit(X)
    for cls in range(3):
        imb = BorderlineSMOTE(m_neighbors=m)._in_danger_noise(
            nn_m, X[y == cls], cls, y, kind="danger"
        )
        ours = danger_mask(_other_neighbors(X, y, cls, m))
        np.testing.assert_array_equal(ours, imb)
        assert 0 < ours.sum() < len(ours)


@pytest.mark.parametrize("kind", ["borderline-1", "borderline-2"])
def test_borderline_count_matches_imblearn(kind):
    X, y = _two_classes(60, 200, d=3, shift=0.8)
    _, y_res = BorderlineSMOTE(kind=kind, random_state=0).fit_resample(X, y)
    other = _other_neighbors(X, y, 1, 10)
    maj = X[y == 0]
    nn_o = NearestNeighbors(n_neighbors=5).fit(maj).kneighbors(X[y == 1], return_distance=False)
    out = borderline(X[y == 1], 140, 5, _rng(), other, kind=int(kind[-1]), X_other=maj,
                     other_nn=nn_o)  # fmt: skip
    assert len(out.X) == len(y_res) - len(y) == 140


def test_borderline2_steps_toward_the_k_nearest_of_any_class():
    X, y = _two_classes(80, 240, d=3, shift=0.8, seed=4)
    mino, maj, k = X[y == 1], X[y == 0], 5
    other = _other_neighbors(X, y, 1, 10)
    nn_o = NearestNeighbors(n_neighbors=k).fit(maj).kneighbors(mino, return_distance=False)
    n_new = 20000
    out = borderline(mino, n_new, k, _rng(9), other, kind=2, X_other=maj, other_nn=nn_o)
    assert len(out.X) == n_new and out.warnings == []
    assert danger_mask(other)[out.seed].all()
    m32, o32 = mino.astype(np.float32), maj.astype(np.float32)
    nb = np.empty_like(out.X)
    nb[out.other] = o32[out.neighbor[out.other]]
    nb[~out.other] = m32[out.neighbor[~out.other]]
    np.testing.assert_allclose(out.X, m32[out.seed] + out.step[:, None] * (nb - m32[out.seed]),
                               atol=1e-5)  # fmt: skip
    assert (out.step[out.other] < 0.5).all() and (out.step >= 0).all()
    assert out.step[~out.other].max() > 0.9
    assert (nn_o[out.seed][out.other] == out.neighbor[out.other][:, None]).any(axis=1).all()
    # imblearn 0.14.2: the neighbour is among the seed's k nearest rows of the whole data
    whole = np.vstack([mino, maj])
    knn = NearestNeighbors(n_neighbors=k + 1).fit(whole).kneighbors(mino, return_distance=False)
    knn = knn[:, 1:]
    chosen = np.where(out.other, out.neighbor + len(mino), out.neighbor)
    assert (knn[out.seed] == chosen[:, None]).any(axis=1).all()
    # ... picked uniformly: the other-class share matches the expected one
    danger = np.flatnonzero(danger_mask(other))
    p = (knn[danger] >= len(mino)).mean()
    sd = np.sqrt(p * (1 - p) / n_new)
    assert abs(out.other.mean() - p) < 5 * sd + 0.01


def test_borderline_without_danger_falls_back_to_smote():
    X = _rng().standard_normal((40, 2))
    out = borderline(X, 25, 5, _rng(), np.zeros((40, 6), bool), kind=1, name="calm")
    assert len(out.X) == 25 and "'calm'" in out.warnings[0] and "SMOTE" in out.warnings[0]
    _check_on_segments(X, out, 5)


# -------------------------------------------------------------------------------------- ADASYN


def test_adasyn_counts_by_hand():
    other = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], bool)
    # quotas 10 * (3, 1, 0, 2) / 6 = 5, 1.67, 0, 3.33 -> floors 5, 1, 0, 3 + one to row 1
    np.testing.assert_array_equal(adasyn_counts(other, 10), [5, 2, 0, 3])
    np.testing.assert_array_equal(adasyn_counts(np.ones((3, 2), bool), 2), [1, 1, 0])
    np.testing.assert_array_equal(adasyn_counts(other, 0), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="SMOTE"):
        adasyn_counts(np.zeros((3, 2), bool), 5)


def test_adasyn_gives_more_rows_to_rows_with_more_other_neighbours():
    X, y, mino, _ = _hand_case()
    other = _other_neighbors(X, y, 1, 4)
    out = adasyn(mino, 101, 3, _rng(), other)
    counts = np.bincount(out.seed, minlength=len(mino))
    np.testing.assert_array_equal(counts, adasyn_counts(other, 101))
    assert counts.sum() == 101
    c = other.sum(axis=1)
    assert (counts[c == 0] == 0).all()
    order = np.argsort(c, kind="stable")
    assert (np.diff(counts[order]) >= 0).all()
    assert counts[5] > counts[10] > counts[6] > counts[8] > 0
    _check_on_segments(mino, out, 3)


def test_adasyn_counts_match_imblearn_within_rounding():
    X, y = _two_classes(120, 400, d=3, shift=1.0, seed=6)
    k = 5
    n_new = 400 - 120
    _, y_res = ADASYN(n_neighbors=k, random_state=0).fit_resample(X, y)
    n_imb = len(y_res) - len(y)
    # imblearn's own per-row counts: rint(ratio * n) from a kNN on the whole data
    knn = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[y == 1], return_distance=False)
    ratio = (y[knn[:, 1:]] != 1).sum(axis=1) / k
    imb = np.rint(ratio / ratio.sum() * n_new).astype(np.int64)
    assert imb.sum() == n_imb
    ours = adasyn_counts(_other_neighbors(X, y, 1, k), n_new)
    assert ours.sum() == n_new
    assert np.abs(ours - imb).max() <= 1
    assert abs(n_imb - n_new) <= max(2, int(np.abs(ours - imb).sum()))
    out = adasyn(X[y == 1], n_new, k, _rng(), _other_neighbors(X, y, 1, k))
    assert len(out.X) == n_new


def test_adasyn_without_other_neighbours_falls_back_to_smote():
    X = _rng().standard_normal((30, 2))
    out = adasyn(X, 17, 5, _rng(), np.zeros((30, 5), bool), name="pure")
    assert len(out.X) == 17 and "'pure'" in out.warnings[0]
    _check_on_segments(X, out, 5)


# -------------------------------------------------------------------------------- partitioning


def test_partitioned_neighbours_stay_within_their_key_group():
    rng = _rng(11)
    n, max_rows, k = 500, 120, 4
    X = rng.standard_normal((n, 3))
    keys = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    group = (keys % np.uint64(5)).astype(np.int64)  # P = ceil(500 / 120) = 5
    other = rng.random((n, 6)) < 0.5
    for out in (
        smote(X, 777, k, _rng(), keys=keys, max_rows=max_rows),
        borderline(X, 777, k, _rng(), other, kind=1, keys=keys, max_rows=max_rows),
        adasyn(X, 777, k, _rng(), other, keys=keys, max_rows=max_rows),
    ):
        assert len(out.X) == 777 and out.warnings == []
        np.testing.assert_array_equal(group[out.seed], group[out.neighbor])
        for g in range(5):
            rows = np.flatnonzero(group == g)
            sel = group[out.seed] == g
            local = _own_knn(X[rows].astype(np.float32), k)
            seed_l = np.searchsorted(rows, out.seed[sel])
            nb_l = np.searchsorted(rows, out.neighbor[sel])
            assert (local[seed_l] == nb_l[:, None]).any(axis=1).all()
    # the SMOTE split follows the group sizes (largest remainder)
    out = smote(X, 777, k, _rng(), keys=keys, max_rows=max_rows)
    sizes = np.bincount(group, minlength=5)
    got = np.bincount(group[out.seed], minlength=5)
    assert (np.abs(got - 777 * sizes / n) < 1).all() and got.sum() == 777


def test_partitioning_is_off_when_the_class_fits():
    X = _rng().standard_normal((50, 2))
    a = smote(X, 30, 5, _rng(1), max_rows=50)
    b = smote(X, 30, 5, _rng(1))
    np.testing.assert_array_equal(a.X, b.X)


# --------------------------------------------------------------------------- map-reduce kNN


@pytest.mark.parametrize("n_chunks", [1, 3, 7])
@pytest.mark.parametrize("n,m", [(300, 10), (20, 8)])
def test_nearest_partial_merge_matches_sklearn(n_chunks, n, m):
    rng = _rng(n + n_chunks)
    X = rng.standard_normal((n, 5))
    labels = rng.integers(0, 4, size=n)
    own = np.arange(min(n, 50))  # queries that are rows of X: their own row is excluded
    ext = rng.standard_normal((10, 5))  # queries from elsewhere: nothing excluded
    nn = NearestNeighbors(n_neighbors=m + 1).fit(X)
    d_own, i_own = nn.kneighbors(X[own])
    assert (i_own[:, 0] == own).all()
    d_ext, i_ext = nn.kneighbors(ext, n_neighbors=m)
    for Q, excl_rows, d_ref, i_ref in (
        (X[own], own, d_own[:, 1:], i_own[:, 1:]),
        (ext, None, d_ext, i_ext),
    ):
        parts = []
        for chunk in np.array_split(np.arange(n), n_chunks):
            if excl_rows is None:
                ex = None
            else:
                ex = np.where((excl_rows >= chunk[0]) & (excl_rows <= chunk[-1]),
                              excl_rows - chunk[0], -1)  # fmt: skip
            dp, lp = nearest_partial(Q, X[chunk], labels[chunk], m, ex)
            assert dp.shape == lp.shape == (len(Q), min(m, len(chunk)))
            parts.append((dp, lp))
        dist2, lab = merge_nearest(parts, m)
        assert dist2.shape == (len(Q), m)
        np.testing.assert_allclose(dist2, d_ref**2, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(lab, labels[i_ref])


def test_merge_nearest_ties_go_to_the_smaller_label_then_the_earlier_part():
    X = np.array([[0.0], [1.0], [1.0], [-1.0], [1.0]])
    labels = np.array([0, 2, 1, 3, 2])
    q = np.array([[0.0]])
    whole = nearest_partial(q, X, labels, 3, np.array([0]))
    np.testing.assert_array_equal(whole[1], [[1, 2, 2]])
    np.testing.assert_array_equal(whole[0], [[1.0, 1.0, 1.0]])
    parts = [
        nearest_partial(q, X[:2], labels[:2], 3, np.array([0])),
        nearest_partial(q, X[2:], labels[2:], 3, np.array([-1])),
    ]
    assert np.isinf(parts[0][0][0, 1]) and parts[0][1][0, 1] == -1  # padding
    merged = merge_nearest(parts, 3)
    np.testing.assert_array_equal(merged[1], whole[1])
    np.testing.assert_array_equal(merged[0], whole[0])
    # a duplicate of the query elsewhere is a neighbour at distance 0; the row itself is not
    d, lab = nearest_partial(q, np.array([[0.0], [0.0]]), np.array([5, 6]), 2, np.array([1]))
    np.testing.assert_array_equal(lab, [[5, -1]])
    assert d[0, 0] == 0 and np.isinf(d[0, 1])
