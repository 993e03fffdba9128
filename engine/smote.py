"""SMOTE, Borderline-SMOTE 1/2 and ADASYN for one class, as pure numpy/scikit-learn functions.

    out = smote(X_class, n_new=1000, k=5, rng=np.random.default_rng(0), name="fraud")
    out.X            # (1000, d) float32; out.X[i] == X[seed] + step * (X[neighbor] - X[seed])

    # Borderline / ADASYN need, per class row, which of its m nearest rows in the WHOLE data
    # (itself excluded) belong to another class: a map-reduce kNN over the data's chunks.
    parts = [nearest_partial(X_class, Xc, yc, m, exclude=own_row_in(Xc)) for Xc, yc in chunks]
    dist2, labels = merge_nearest(parts, m)
    other = labels != class_id                    # (n, m) bool
    out = borderline(X_class, 1000, 5, rng, other, kind=1)
    out = adasyn(X_class, 1000, 5, rng, other)

The rules are those of imbalanced-learn 0.14.2 (``imblearn/over_sampling/_smote``, ``_adasyn.py``):

* **Neighbours.** A row's k neighbours are its k nearest rows of the same class, the row itself
  excluded (by index, so a duplicate of the row still counts as a neighbour, exactly as
  ``NearestNeighbors.kneighbors(X=None)``). Within-class kNN uses
  :class:`sklearn.neighbors.NearestNeighbors` (``algorithm="auto"``: brute force above 15
  features, a tree below), queried only for the rows actually drawn as seeds.
* **SMOTE.** Each new row picks a seed uniformly among the class's rows, one of its k neighbours
  uniformly, and a step ``u ~ U[0, 1)``: ``x = X[seed] + u * (X[nb] - X[seed])``.
* **Borderline.** A row is *danger* when ``m/2 <= n_other < m`` among its m nearest rows in the
  whole data (``danger_mask``; ``n_other == m`` is noise, ``n_other < m/2`` is safe); seeds are
  drawn uniformly among the danger rows only. Kind 1 steps toward same-class neighbours as SMOTE.
  Kind 2 (imblearn 0.14.2, not the beta(10, 10) split of imblearn <= 0.4): the candidates are the
  seed's k nearest rows in the whole data, built here by merging its k nearest same-class rows with
  its k nearest other-class rows (``other_nn`` into ``X_other``) by exact squared distance, ties to
  the same-class row; one candidate is picked uniformly; the step is ``u ~ U[0, 1)``, times a
  further ``v ~ U[0, 0.5)`` when the candidate is of another class (so that step is in [0, 0.5)).
* **ADASYN.** Row i's weight is ``n_other_i / m`` among its m nearest rows in the whole data,
  normalised; its number of new rows is that share of ``n_new``; each new row steps toward a
  uniformly chosen one of its k same-class neighbours with ``u ~ U[0, 1)``.

**Deviations from imblearn**, all on purpose:

* Exact counts: ``n_new`` rows always. ADASYN's ``np.rint`` per row can miss the total by a few
  rows; here the shares are split by largest-remainder rounding in exact integer arithmetic
  (remainder ties to the smaller row index), see :func:`adasyn_counts`. Rows with weight 0 get 0
  rows.
* Small classes never reach scikit-learn's errors: with ``n - 1 < k`` rows to pick from, k is
  lowered to ``n - 1`` (a warning names the class and the k used); with one row, or all rows
  identical, the class falls back to random oversampling (rows repeated with replacement, step 0,
  ``neighbor == seed``) with a warning. ``n == 0`` with ``n_new > 0`` is a ValueError.
* Borderline with no danger row, and ADASYN with no row having another-class neighbour, fall back to
  plain SMOTE for the class with a warning (imblearn returns nothing / raises RuntimeError).
* Features are computed in float32 (a float64 ``X`` is cast once); the output is float32.

**Memory budget** (``max_rows``). When ``n > max_rows`` the class's rows are partitioned into
``P = ceil(n / max_rows)`` groups by ``keys`` (one unsigned 64-bit key per row, e.g. a row-id hash;
group = ``key % P``, so groups are about ``max_rows`` rows when keys are well mixed), and kNN runs
per group: a row's neighbours are the k nearest *of its group*. ``n_new`` is split among the groups
in proportion to the rows each may seed from (all rows for SMOTE, danger rows for Borderline; for
ADASYN the per-row counts are global and a group gets the sum of its rows' counts), by largest
remainder (exact total, ties to the lower group). Groups are processed in order 0..P-1 drawing from
the same ``rng``; indices in the result still refer to the full ``X``. Borderline-2's other-class
candidates (``other_nn``) are whatever the caller computed and are not partitioned.

**Map-reduce kNN** (:func:`nearest_partial`, :func:`merge_nearest`). A chunk returns, per query,
its ``m`` smallest squared Euclidean distances and their labels, in the order (distance, label,
row position in the chunk). Squared distances are selected with a float64 GEMM and then recomputed
exactly as ``sum((q - x)**2)`` in float64 for the kept candidates, so the value for a (query, row)
pair does not depend on how the data was chunked. The query's own row is excluded *by index*:
``exclude[i]`` is the position in this chunk's ``X`` of query i's own row, or -1 when it is not in
this chunk (then nothing is skipped; a duplicate of the query elsewhere is a legitimate neighbour at
distance 0). ``merge_nearest`` keeps the global ``m`` smallest per query with ties broken by the
smaller label, then by part order (the order of ``parts``), then by position within the part, so
the merged result equals the single-chunk one for any chunking. A chunk with fewer than ``m``
candidates pads with distance ``inf`` and label -1; those sort last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "Synthetic",
    "adasyn",
    "adasyn_counts",
    "borderline",
    "danger_mask",
    "merge_nearest",
    "nearest_partial",
    "smote",
]

# Candidates kept from the float64 GEMM before the exact recomputation in nearest_partial.
_SLACK = 8
# Elements of the (queries x rows) distance block in nearest_partial (128 MiB of float64).
_BLOCK = 1 << 24


@dataclass(frozen=True)
class Synthetic:
    """Synthetic rows of one class and how each was made.

    ``X[i] = Xc[seed[i]] + step[i] * (Xn[neighbor[i]] - Xc[seed[i]])`` (float32 arithmetic), where
    ``Xc`` is the class's ``X`` and ``Xn`` is ``X_other`` when ``other[i]`` (Borderline-2 only)
    and ``Xc`` otherwise.
    """

    X: np.ndarray
    seed: np.ndarray
    neighbor: np.ndarray
    other: np.ndarray
    step: np.ndarray
    warnings: list[str]


# ----------------------------------------------------------------------------------- public API


def smote(
    X: np.ndarray,
    n_new: int,
    k: int,
    rng: np.random.Generator,
    *,
    keys: np.ndarray | None = None,
    max_rows: int | None = None,
    name: str = "",
) -> Synthetic:
    """SMOTE: ``n_new`` rows on segments between the class's rows and their k nearest.

    Args:
        X: (n, d) feature rows of one class, in a deterministic order.
        n_new: number of synthetic rows to make (exactly).
        k: k_neighbors.
        rng: the only source of randomness.
        keys: (n,) unsigned keys, required when ``max_rows`` partitions the class.
        max_rows: memory budget: kNN runs within groups of about this many rows.
        name: the class, for messages.
    """
    Xf, n_new, k = _check_common(X, n_new, k, name)
    warns: list[str] = []
    if n_new == 0:
        return _empty(Xf.shape[1], warns)
    groups = _groups(Xf.shape[0], keys, max_rows, name)
    counts = _split_counts(np.array([len(r) for r in groups]), n_new)
    parts = []
    for g, rows in enumerate(groups):
        n_g = int(counts[g])
        seeds = rows[rng.integers(len(rows), size=n_g)] if n_g else rows[:0]
        parts.append(_interpolate(Xf, rows, seeds, k, rng, _where(name, g, len(groups)), warns))
    return _concat(parts, Xf.shape[1], warns)


def borderline(
    X: np.ndarray,
    n_new: int,
    k: int,
    rng: np.random.Generator,
    other_neighbors: np.ndarray,
    *,
    kind: Literal[1, 2],
    X_other: np.ndarray | None = None,
    other_nn: np.ndarray | None = None,
    keys: np.ndarray | None = None,
    max_rows: int | None = None,
    name: str = "",
) -> Synthetic:
    """Borderline-SMOTE 1 or 2: seeds only from the class's *danger* rows.

    Args:
        X, n_new, k, rng, keys, max_rows, name: as :func:`smote`.
        other_neighbors: (n, m) bool, whether each of a row's m nearest rows in the whole data
            (itself excluded) is of another class.
        kind: 1 (step toward same-class neighbours) or 2 (toward the k nearest of any class).
        X_other: kind 2: (n_other, d) rows of the other classes that ``other_nn`` indexes.
        other_nn: kind 2: (n, k') int, each class row's k' nearest rows in ``X_other``, nearest
            first (k' >= k is not needed; the k nearest of the merged candidates are used).
    """
    Xf, n_new, k = _check_common(X, n_new, k, name)
    n, d = Xf.shape
    other = _check_other_neighbors(other_neighbors, n, name)
    if kind not in (1, 2):
        raise ValueError(f"borderline kind={kind!r} for class {name!r}: use 1 or 2")
    Xo = nn_o = None
    if kind == 2:
        Xo, nn_o = _check_kind2(X_other, other_nn, n, d, name)
    warns: list[str] = []
    if n_new == 0:
        return _empty(d, warns)
    danger = danger_mask(other)
    if not danger.any():
        warns.append(
            f"class {name!r}: no row is in danger (m/2 <= other-class neighbours < m of "
            f"m={other.shape[1]}), so Borderline-SMOTE has no seed; falling back to plain SMOTE"
        )
        out = smote(Xf, n_new, k, rng, keys=keys, max_rows=max_rows, name=name)
        return _with_warnings(out, warns)
    groups = _groups(n, keys, max_rows, name)
    pools = [rows[danger[rows]] for rows in groups]
    counts = _split_counts(np.array([len(p) for p in pools]), n_new)
    parts = []
    for g, (rows, pool) in enumerate(zip(groups, pools)):
        n_g = int(counts[g])
        seeds = pool[rng.integers(len(pool), size=n_g)] if n_g else pool[:0]
        where = _where(name, g, len(groups))
        if kind == 1:
            parts.append(_interpolate(Xf, rows, seeds, k, rng, where, warns))
        else:
            parts.append(_interpolate2(Xf, rows, seeds, k, rng, Xo, nn_o, where, warns))
    return _concat(parts, d, warns)


def adasyn(
    X: np.ndarray,
    n_new: int,
    k: int,
    rng: np.random.Generator,
    other_neighbors: np.ndarray,
    *,
    keys: np.ndarray | None = None,
    max_rows: int | None = None,
    name: str = "",
) -> Synthetic:
    """ADASYN: more synthetic rows from rows with more other-class neighbours.

    Args:
        X, n_new, k, rng, keys, max_rows, name: as :func:`smote`.
        other_neighbors: (n, m) bool as for :func:`borderline` (imblearn uses m = k).
    """
    Xf, n_new, k = _check_common(X, n_new, k, name)
    n, d = Xf.shape
    other = _check_other_neighbors(other_neighbors, n, name)
    warns: list[str] = []
    if n_new == 0:
        return _empty(d, warns)
    if not other.any():
        warns.append(
            f"class {name!r}: no row has another class among its {other.shape[1]} nearest "
            "neighbours, so every ADASYN weight is 0; falling back to plain SMOTE"
        )
        out = smote(Xf, n_new, k, rng, keys=keys, max_rows=max_rows, name=name)
        return _with_warnings(out, warns)
    counts = adasyn_counts(other, n_new)
    groups = _groups(n, keys, max_rows, name)
    parts = []
    for g, rows in enumerate(groups):
        seeds = np.repeat(rows, counts[rows])
        parts.append(_interpolate(Xf, rows, seeds, k, rng, _where(name, g, len(groups)), warns))
    return _concat(parts, d, warns)


def danger_mask(other_neighbors: np.ndarray) -> np.ndarray:
    """Borderline-SMOTE's danger rows: ``m/2 <= n_other < m`` of the m nearest neighbours.

    Args:
        other_neighbors: (n, m) bool, True where a neighbour belongs to another class.

    Returns:
        (n,) bool. Rows with ``n_other == m`` are noise, with ``n_other < m/2`` safe.
    """
    other = _check_other_neighbors(other_neighbors, None, "")
    m = other.shape[1]
    n_other = other.sum(axis=1)
    return (2 * n_other >= m) & (n_other < m)


def adasyn_counts(other_neighbors: np.ndarray, n_new: int) -> np.ndarray:
    """Synthetic rows per class row under ADASYN, summing exactly to ``n_new``.

    Row i's share is ``c_i / sum(c)`` with ``c_i`` its number of other-class neighbours (the
    ratio ``c_i / m`` normalised). ``n_new * c_i / sum(c)`` is rounded by largest remainder in
    exact integer arithmetic, remainder ties to the smaller index; rows with ``c_i == 0`` get 0.

    Raises:
        ValueError: ``n_new > 0`` but no row has any other-class neighbour (use SMOTE).
    """
    other = _check_other_neighbors(other_neighbors, None, "")
    n_new = _check_count(n_new, "n_new", None)
    c = other.sum(axis=1).astype(np.int64)
    if n_new == 0:
        return np.zeros(len(c), np.int64)
    if c.sum() == 0:
        raise ValueError(
            f"adasyn_counts: none of the {len(c)} rows has another class among its "
            f"{other.shape[1]} neighbours, so all ADASYN weights are 0; use SMOTE for this class"
        )
    return _split_counts(c, n_new)


def _checked_partial(queries, X, labels, m, exclude):
    """``nearest_partial``'s arguments checked: (Q, X, labels, m, exclude as int64 or -1)."""
    Q = _as_2d(queries, "queries")
    Xc = _as_2d(X, "X")
    if Q.shape[1] != Xc.shape[1]:
        raise ValueError(
            f"queries have {Q.shape[1]} features but X has {Xc.shape[1]}: pass the same columns"
        )
    lab = np.asarray(labels)
    if lab.shape != (Xc.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"labels must be ({Xc.shape[0]},) integers (one per row of X), got shape "
            f"{lab.shape} dtype {lab.dtype}"
        )
    m = _check_count(m, "m", None)
    if m < 1:
        raise ValueError(f"m={m}: ask for at least 1 neighbour")
    q, r = Q.shape[0], Xc.shape[0]
    if exclude is None:
        ex = np.full(q, -1, np.int64)
    else:
        ex = np.asarray(exclude)
        if ex.shape != (q,) or not np.issubdtype(ex.dtype, np.integer):
            raise ValueError(
                f"exclude must be ({q},) integers (a position in X or -1), got shape "
                f"{ex.shape} dtype {ex.dtype}"
            )
        ex = ex.astype(np.int64)
        if ((ex < -1) | (ex >= r)).any():
            raise ValueError(f"exclude values must be in [-1, {r}): got {ex.min()}..{ex.max()}")
    return Q, Xc, lab, m, ex


def nearest_partial(
    queries: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    m: int,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The map step of a chunked kNN: each query's m nearest rows of this chunk.

    Args:
        queries: (q, d) query rows.
        X: (r, d) this chunk's rows.
        labels: (r,) integer labels of ``X`` (class ids >= 0; -1 marks padding in the output).
        m: neighbours to keep.
        exclude: (q,) int, position in ``X`` of each query's own row, or -1 (skip nothing).

    Returns:
        ``(dist2, lab)``, both (q, min(m, r)): squared Euclidean distances (float64, exact
        ``sum((q - x)**2)``) ascending, ties by label then row position, and the labels (int64).
        Where fewer candidates exist (an excluded row), the tail is ``inf`` / -1.
    """
    Q, Xc, lab, m, ex = _checked_partial(queries, X, labels, m, exclude)
    q, r = Q.shape[0], Xc.shape[0]
    w = min(m, r)
    out_d = np.full((q, w), np.inf)
    out_l = np.full((q, w), -1, np.int64)
    if q == 0 or w == 0:
        return out_d, out_l
    X64 = Xc.astype(np.float64, copy=False)
    sq = np.einsum("ij,ij->i", X64, X64)
    lab64 = lab.astype(np.int64)
    keep = min(m + 1 + _SLACK, r)
    qb = max(1, _BLOCK // max(r, 1))
    for s in range(0, q, qb):
        Qb = Q[s : s + qb].astype(np.float64, copy=False)
        exb = ex[s : s + qb]
        approx = Qb @ X64.T
        approx *= -2.0
        approx += sq
        has = exb >= 0
        approx[np.flatnonzero(has), exb[has]] = np.inf
        if keep < r:
            cand = np.argpartition(approx, keep - 1, axis=1)[:, :keep]
        else:
            cand = np.broadcast_to(np.arange(r), approx.shape).copy()
        diff = X64[cand] - Qb[:, None, :]
        exact = (diff * diff).sum(axis=2)
        exact[cand == exb[:, None]] = np.inf
        cl = lab64[cand]
        order = np.lexsort((cand, cl, exact), axis=1)[:, :w]
        dist = np.take_along_axis(exact, order, axis=1)
        labs = np.take_along_axis(cl, order, axis=1)
        labs[np.isinf(dist)] = -1
        out_d[s : s + qb] = dist
        out_l[s : s + qb] = labs
    return out_d, out_l


def merge_nearest(
    parts: list[tuple[np.ndarray, np.ndarray]], m: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reduce step: the global m nearest per query from the chunks' :func:`nearest_partial`.

    Ties (equal squared distance) go to the smaller label, then to the earlier part in ``parts``,
    then to the earlier column within the part.

    Returns:
        ``(dist2, lab)``, (q, min(m, total columns)), ascending.
    """
    if not parts:
        raise ValueError("merge_nearest got no parts: pass at least one nearest_partial result")
    m = _check_count(m, "m", None)
    q = parts[0][0].shape[0]
    for i, (dp, lp) in enumerate(parts):
        if dp.ndim != 2 or dp.shape != lp.shape or dp.shape[0] != q:
            raise ValueError(
                f"parts[{i}] has shapes {dp.shape} / {lp.shape}; every part needs (q={q}, w) "
                "distances and labels from nearest_partial over the same queries"
            )
    D = np.concatenate([np.asarray(p[0], np.float64) for p in parts], axis=1)
    L = np.concatenate([np.asarray(p[1], np.int64) for p in parts], axis=1)
    w = min(m, D.shape[1])
    # lexsort is stable, so equal (distance, label) keep the concatenation (part, column) order.
    order = np.lexsort((L, D), axis=1)[:, :w]
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(L, order, axis=1)


# ------------------------------------------------------------------------------------- helpers


def _where(name: str, g: int, n_groups: int) -> str:
    return f"class {name!r}" + (f" (key group {g}/{n_groups})" if n_groups > 1 else "")


def _check_count(v: object, what: str, name: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        cls = "" if name is None else f" for class {name!r}"
        raise ValueError(f"{what}={v!r}{cls}: must be an integer >= 0")
    return int(v)


def _as_2d(X: np.ndarray, what: str) -> np.ndarray:
    A = np.asarray(X)
    if A.ndim != 2 or not (
        np.issubdtype(A.dtype, np.floating) or np.issubdtype(A.dtype, np.integer)
    ):
        raise ValueError(
            f"{what} must be a 2-D numeric array (rows x features), got shape {A.shape} "
            f"dtype {A.dtype}"
        )
    return A


def _check_common(X: np.ndarray, n_new: int, k: int, name: str) -> tuple[np.ndarray, int, int]:
    A = _as_2d(X, f"X of class {name!r}")
    n_new = _check_count(n_new, "n_new", name)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} for class {name!r}: k_neighbors must be an integer >= 1")
    if A.shape[0] == 0 and n_new > 0:
        raise ValueError(
            f"class {name!r} has no rows but n_new={n_new} synthetic rows were asked for: "
            "a class needs at least one row to oversample (drop it from the sampling strategy)"
        )
    Xf = np.ascontiguousarray(A, dtype=np.float32)
    if n_new and not np.isfinite(Xf).all():
        raise ValueError(f"X of class {name!r} holds NaN or inf: impute or drop those rows first")
    return Xf, n_new, int(k)


def _check_other_neighbors(other: np.ndarray, n: int | None, name: str) -> np.ndarray:
    A = np.asarray(other)
    if A.ndim != 2 or A.dtype != np.bool_ or A.shape[1] < 1:
        raise ValueError(
            f"other_neighbors for class {name!r} must be a 2-D bool array (rows x m >= 1), got "
            f"shape {A.shape} dtype {A.dtype}; build it as merge_nearest(...)[1] != class_id"
        )
    if n is not None and A.shape[0] != n:
        raise ValueError(
            f"other_neighbors for class {name!r} has {A.shape[0]} rows but X has {n}: "
            "one row per class row, in the same order"
        )
    return A


def _check_kind2(
    X_other: np.ndarray | None, other_nn: np.ndarray | None, n: int, d: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    if X_other is None or other_nn is None:
        raise ValueError(
            f"borderline kind=2 for class {name!r} needs X_other (rows of the other classes) "
            f"and other_nn (each class row's nearest rows in X_other); got "
            f"X_other={'None' if X_other is None else 'set'}, "
            f"other_nn={'None' if other_nn is None else 'set'}"
        )
    Xo = np.ascontiguousarray(_as_2d(X_other, "X_other"), dtype=np.float32)
    if Xo.shape[1] != d:
        raise ValueError(f"X_other has {Xo.shape[1]} features but X has {d}: use the same columns")
    nn = np.asarray(other_nn)
    if nn.ndim != 2 or nn.shape[0] != n or not np.issubdtype(nn.dtype, np.integer):
        raise ValueError(
            f"other_nn for class {name!r} must be ({n}, k) integers into X_other, got shape "
            f"{nn.shape} dtype {nn.dtype}"
        )
    if nn.size and (nn.min() < 0 or nn.max() >= len(Xo)):
        raise ValueError(
            f"other_nn for class {name!r} holds {nn.min()}..{nn.max()}, outside X_other's "
            f"{len(Xo)} rows"
        )
    return Xo, nn.astype(np.int64)


def _groups(n: int, keys: np.ndarray | None, max_rows: int | None, name: str) -> list[np.ndarray]:
    """The class's row indices per kNN group (ascending within a group)."""
    if max_rows is not None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)):
            raise ValueError(f"max_rows={max_rows!r} for class {name!r}: must be an int or None")
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} for class {name!r}: must be >= 1 (or None)")
    if max_rows is None or n <= max_rows:
        return [np.arange(n, dtype=np.int64)]
    if keys is None:
        raise ValueError(
            f"class {name!r} has {n} rows > max_rows={max_rows}: pass keys (one uint64 per row, "
            "e.g. a row-id hash) to partition it"
        )
    kk = np.asarray(keys)
    if kk.shape != (n,) or not np.issubdtype(kk.dtype, np.integer):
        raise ValueError(
            f"keys for class {name!r} must be ({n},) unsigned integers, got shape {kk.shape} "
            f"dtype {kk.dtype}"
        )
    if np.issubdtype(kk.dtype, np.signedinteger) and (kk < 0).any():
        raise ValueError(f"keys for class {name!r} hold negative values: pass uint64 keys")
    P = math.ceil(n / max_rows)
    g = (kk.astype(np.uint64) % np.uint64(P)).astype(np.int64)
    order = np.argsort(g, kind="stable")
    bounds = np.searchsorted(g[order], np.arange(P + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(P)]


def _split_counts(weights: np.ndarray, total: int) -> np.ndarray:
    """``total`` split in proportion to integer ``weights`` by largest remainder (exact)."""
    w = np.asarray(weights, dtype=np.int64)
    W = int(w.sum())
    if total == 0 or W == 0:
        assert total == 0, "a positive total needs a positive weight"
        return np.zeros(len(w), np.int64)
    prod = w * np.int64(total)
    base = prod // W
    rem = prod % W
    short = total - int(base.sum())
    order = np.lexsort((np.arange(len(w)), -rem))
    base[order[:short]] += 1
    return base


def _empty(d: int, warns: list[str]) -> Synthetic:
    return Synthetic(
        X=np.empty((0, d), np.float32),
        seed=np.empty(0, np.int64),
        neighbor=np.empty(0, np.int64),
        other=np.empty(0, bool),
        step=np.empty(0, np.float32),
        warnings=warns,
    )


def _with_warnings(out: Synthetic, first: list[str]) -> Synthetic:
    return Synthetic(out.X, out.seed, out.neighbor, out.other, out.step, first + out.warnings)


def _concat(parts: list[tuple], d: int, warns: list[str]) -> Synthetic:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return _empty(d, warns)
    if len(parts) == 1:
        return Synthetic(*parts[0], warnings=warns)
    cols = list(zip(*parts))
    return Synthetic(*(np.concatenate(c) for c in cols), warnings=warns)


def _same_class_nn(Xf: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(len(queries), k) indices into Xf: each query row's k nearest in ``rows``, itself out.

    ``rows`` ascending, ``queries`` a subset of it. The row itself is removed by index; when a
    duplicate pushed it out of the k+1 returned, the farthest is dropped (as scikit-learn's
    ``kneighbors(X=None)``).
    """
    Xg = Xf if len(rows) == len(Xf) else Xf[rows]
    local = np.searchsorted(rows, queries)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(Xg)
    idx = nn.kneighbors(Xg[local], return_distance=False)
    self_hit = idx == local[:, None]
    self_hit[~self_hit.any(axis=1), -1] = True
    return rows[idx[~self_hit].reshape(len(queries), k)]


def _all_identical(Xf: np.ndarray, rows: np.ndarray) -> bool:
    Xg = Xf if len(rows) == len(Xf) else Xf[rows]
    return bool((Xg.max(axis=0) == Xg.min(axis=0)).all())


def _fallback(
    Xf: np.ndarray, seeds: np.ndarray, where: str, n_rows: int, warns: list[str]
) -> tuple:
    why = "it has a single row" if n_rows == 1 else f"all its {n_rows} rows are identical"
    warns.append(
        f"{where}: {why}, so no neighbour exists to interpolate toward; falling back to random "
        "oversampling (rows repeated with replacement)"
    )
    z = len(seeds)
    return (Xf[seeds], seeds, seeds.copy(), np.zeros(z, bool), np.zeros(z, np.float32))


def _lower_k(k: int, avail: int, where: str, warns: list[str]) -> int:
    if avail < k:
        warns.append(
            f"{where}: only {avail} other rows to pick from, "
            f"k_neighbors lowered from {k} to {avail}"
        )
        return avail
    return k


def _interpolate(
    Xf: np.ndarray,
    rows: np.ndarray,
    seeds: np.ndarray,
    k: int,
    rng: np.random.Generator,
    where: str,
    warns: list[str],
) -> tuple:
    """New rows from ``seeds`` toward one of their k nearest same-class rows within ``rows``."""
    z = len(seeds)
    if z == 0:
        return _fallback_empty(Xf)
    m = len(rows)
    if m == 1 or _all_identical(Xf, rows):
        return _fallback(Xf, seeds, where, m, warns)
    k = _lower_k(k, m - 1, where, warns)
    cols = rng.integers(k, size=z)
    step = rng.random(z, dtype=np.float32)
    uniq, inv = np.unique(seeds, return_inverse=True)
    nbrs = _same_class_nn(Xf, rows, uniq, k)
    nb = nbrs[inv, cols]
    return (_lerp(Xf, seeds, Xf, nb, step), seeds, nb, np.zeros(z, bool), step)


def _interpolate2(
    Xf: np.ndarray,
    rows: np.ndarray,
    seeds: np.ndarray,
    k: int,
    rng: np.random.Generator,
    Xo: np.ndarray,
    other_nn: np.ndarray,
    where: str,
    warns: list[str],
) -> tuple:
    """Borderline-2: toward one of the seed's k nearest rows of any class (imblearn 0.14.2)."""
    z = len(seeds)
    if z == 0:
        return _fallback_empty(Xf)
    m = len(rows)
    k_same = min(k, m - 1)
    k_oth = other_nn.shape[1]
    width = _lower_k(k, k_same + k_oth, where, warns)
    if width == 0:
        return _fallback(Xf, seeds, where, m, warns)
    cols = rng.integers(width, size=z)
    step = rng.random(z, dtype=np.float32)
    uniq, inv = np.unique(seeds, return_inverse=True)
    q = Xf[uniq][:, None, :]
    cand_o = other_nn[uniq]
    d_o = ((Xo[cand_o] - q) ** 2).sum(axis=2, dtype=np.float64)
    if k_same:
        cand_s = _same_class_nn(Xf, rows, uniq, k_same)
        d_s = ((Xf[cand_s] - q) ** 2).sum(axis=2, dtype=np.float64)
        cand = np.concatenate([cand_s, cand_o], axis=1)
        dist = np.concatenate([d_s, d_o], axis=1)
    else:
        cand, dist = cand_o, d_o
    # Stable: equal distances keep same-class candidates first, each list in its own order.
    order = np.argsort(dist, axis=1, kind="stable")[:, :width]
    is_other = order >= k_same
    nb = np.take_along_axis(cand, order, axis=1)[inv, cols]
    oth = is_other[inv, cols]
    n_oth = int(oth.sum())
    if n_oth:
        step[oth] *= rng.random(n_oth, dtype=np.float32) * np.float32(0.5)
    out = np.empty((z, Xf.shape[1]), np.float32)
    same = ~oth
    out[same] = _lerp(Xf, seeds[same], Xf, nb[same], step[same])
    out[oth] = _lerp(Xf, seeds[oth], Xo, nb[oth], step[oth])
    return (out, seeds, nb, oth, step)


def _fallback_empty(Xf: np.ndarray) -> tuple:
    e = np.empty(0, np.int64)
    return (
        np.empty((0, Xf.shape[1]), np.float32),
        e,
        e,
        np.empty(0, bool),
        np.empty(0, np.float32),
    )


def _lerp(
    Xa: np.ndarray, ia: np.ndarray, Xb: np.ndarray, ib: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """``Xa[ia] + step * (Xb[ib] - Xa[ia])`` in float32 with two temporaries."""
    base = Xa[ia]
    out = Xb[ib]
    out -= base
    out *= step[:, None]
    out += base
    return out
