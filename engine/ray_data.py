"""Ray Data in, Ray Data out: class statistics, exact stratified splits and k-folds, and exact
random resampling of a ``ray.data.Dataset`` — from ``read_parquet``, ``read_csv``,
``from_pandas``, a lakehouse table or one's own ``map_batches`` chain.

    import ray
    from engine import ray_data as rb

    ds = ray.data.read_parquet("s3://bucket/events/")
    stats = rb.class_stats(ds, "is_fraud")                       # counts, ratio, every weight
    parts = rb.stratified_split(ds, "is_fraud", val=0.1, test=0.2, seed=0)
    folds = rb.stratified_kfold(ds, "is_fraud", k=5)            # [(train, val)] * 5
    train = rb.resample(parts.train, "is_fraud", method="combined",
                        sampling_strategy={"max_ratio": 10}).dataset
    train = train.map_batches(my_features)                       # still lazy
    TorchTrainer(loop, datasets={"train": train}, ...)           # get_dataset_shard("train")

Guarantees (the same as the file path — ``raybalance prepare`` — which runs on the same core,
``engine.quota`` and ``engine.resample``'s targets, copy plan and ``expand``):

- **Exact counts.** Each class of n rows gets exactly ``engine.split.split_counts`` rows per
  split (every count within one row of n·f, summing to n); folds differ by at most one row per
  class; resampling reaches exactly the ``sampling_strategy`` targets (imbalanced-learn's forms,
  plus ``balanced``, ``power``, ``max_ratio``; ``engine.strategy``).
- **A partition.** Every input row is in exactly one split (one fold's val).
- **Determinism.** Which rows go where depends only on the seed and the rows — a row's identity
  is the ``id`` column, or the hash of the whole row — not on blocks, files, row order or
  workers; the same rows as ``raybalance prepare`` picks from the same data and seed.
- **Memory.** Nothing gathers a class. Two passes read the input (per-class key histograms;
  then the few rows whose keys fall on a cut, about 2·N/2^B, which the driver ranks exactly);
  the outputs are lazy ``Dataset``s that read and key the input once more each when consumed;
  ``materialize=True`` (splits, folds) instead keys it once more at the call and holds the rows,
  tagged, in the object store (spilled to disk past its size), and the outputs only filter them.
  Rows come out in no particular order; resampled rows carry ``sample_id``, ``source_id``,
  ``copy_index`` and ``synthetic`` (see ``engine.resample``).

The SMOTE family needs a class's feature vectors in one place: use the file path
(``raybalance prepare --set resample.method=smote``) or ``engine.smote`` on your arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import DataSpec, ResampleSpec, SplitSpec, StatsSpec
from engine.data import Columns, LabelMap, label_kind, normalize_labels, resolve_columns
from engine.hashing import seeded
from engine.quota import Cuts, assign, bucket_bits, find_cuts, resolve_pending, row_identity
from engine.resample import class_targets, expand, output_schema
from engine.split import split_counts
from engine.stats import ClassStats
from engine.stats import class_stats as _class_stats

__all__ = [
    "KFold",
    "Resampled",
    "Splits",
    "class_stats",
    "label_counts",
    "resample",
    "stratified_kfold",
    "stratified_split",
]

FINE_BITS = 16  # pass 1 counts keys in 2^16 buckets per class; coarser ones are sums of these
_TAGS = ["__cls", "__key", "__id"]
SIDE = "__side"  # materialized outputs: each row's split or fold


@dataclass(frozen=True)
class Splits:
    """Three lazy Datasets and the exact rows of each class in each (label key -> rows)."""

    train: Any  # ray.data.Dataset
    val: Any
    test: Any
    counts: dict[str, dict[str, int]]  # split -> label key -> rows
    label_map: LabelMap


@dataclass(frozen=True)
class KFold:
    """Fold ``i``: ``train`` (every other fold) and ``val`` (fold i), lazy; ``counts[i]`` the
    rows of each class in fold i."""

    folds: list[tuple[Any, Any]]
    counts: list[dict[str, int]]
    label_map: LabelMap


@dataclass(frozen=True)
class Resampled:
    """The lazy resampled Dataset and the rows of each class before and after."""

    dataset: Any  # ray.data.Dataset
    before: dict[str, int]
    after: dict[str, int]
    label_map: LabelMap


# --------------------------------------------------------------------------------------------
# the columns and the label map


def _columns(ds, label: str, id: str | None) -> tuple[Columns, pa.Schema]:
    schema = ds.schema(fetch_if_missing=True)
    if schema is None:
        raise ValueError("the Dataset has no schema (no blocks): give a Dataset with rows")
    arrow = schema.base_schema if isinstance(schema.base_schema, pa.Schema) else None
    if arrow is None:
        arrow = pa.schema([pa.field(n, t) for n, t in zip(schema.names, schema.types)])
    return resolve_columns(arrow, DataSpec(label=label, id=id), "the Dataset"), arrow


def _keys(table: pa.Table, cols: Columns, seed: int, stream: str) -> np.ndarray:
    return seeded(row_identity(table, cols), seed, stream)


def _fine_histogram(table: pa.Table, cols: Columns, seed: int, stream: str, bits: int) -> pa.Table:
    """Rows per (label, key bucket) of one batch — null labels as their own group."""
    labels = normalize_labels(table[cols.label], cols.label, "the Dataset")
    if bits == 0:
        bucket = np.zeros(table.num_rows, dtype=np.int64)
    else:
        bucket = (_keys(table, cols, seed, stream) >> np.uint64(64 - bits)).astype(np.int64)
    t = pa.table({"label": labels, "bucket": bucket})
    # one thread: acero's thread pool inside a Ray worker can fail ("thread index out of range")
    return t.group_by(["label", "bucket"], use_threads=False).aggregate([("bucket", "count")])


def _value_error(error: BaseException) -> ValueError | None:
    """The ValueError (a data error raised by engine code in a Ray worker) inside ``error``:
    the original, not Ray's wrapper of it."""
    import ray

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ValueError) and not isinstance(error, ray.exceptions.RayError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


def _collect(ds, fn, **kwargs):
    """The batches of ``ds.map_batches(fn, fn_kwargs=kwargs)``, as Arrow tables; a data error
    in a worker is raised here as the ValueError it is."""
    import ray

    mapped = ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow", zero_copy_batch=True)
    mapped.context.raise_original_map_exception = True  # this Dataset's own copy
    try:
        yield from mapped.iter_batches(batch_format="pyarrow", batch_size=None)
    except ray.exceptions.RayError as e:
        cause = _value_error(e)
        if cause is None:
            raise
        raise ValueError(str(cause)) from None


def _histograms(
    ds, cols: Columns, schema: pa.Schema, seed: int, stream: str, bits: int, drop_null: bool
) -> tuple[LabelMap, np.ndarray, int]:
    """Pass 1: (label map, per-class key histogram (K, 2^bits), rows with no label)."""
    per_label: dict[Any, np.ndarray] = {}
    nulls = 0
    kw = {"cols": cols, "seed": seed, "stream": stream, "bits": bits}
    for batch in _collect(ds, _fine_histogram, **kw):
        labels = batch["label"]
        buckets = batch["bucket"].to_numpy()
        n = batch["bucket_count"].to_numpy()
        nulls += int(n[pc.is_null(labels).to_numpy(zero_copy_only=False)].sum())
        for lab in pc.unique(labels.drop_null()).to_pylist():  # (label, bucket) pairs are unique
            mask = pc.equal(labels, lab).fill_null(False).to_numpy(zero_copy_only=False)
            per_label.setdefault(lab, np.zeros(1 << bits, dtype=np.int64))[buckets[mask]] += n[mask]
    if nulls and not drop_null:
        raise ValueError(
            f"{nulls} row(s) of the Dataset have no label in column {cols.label!r}; fill or "
            "filter them, or pass drop_null_labels=True to leave them out"
        )
    if not per_label:
        raise ValueError(f"the Dataset has no labelled rows in column {cols.label!r}")
    kind = label_kind(schema.field(cols.label).type)
    lm = LabelMap.from_values(cols.label, kind, list(per_label))
    return lm, np.stack([per_label[v] for v in lm.labels]), nulls


def label_counts(ds, label: str, *, drop_null_labels: bool = False) -> tuple[LabelMap, np.ndarray]:
    """(label map, rows per class in label-map order) of ``ds``: one pass.

    Labels are read as ``raybalance prepare`` reads them: int, string or bool; floats with
    whole values as ints; blank strings as missing. Raises ValueError on missing labels
    unless ``drop_null_labels``."""
    cols, schema = _columns(ds, label, None)
    lm, hist, _ = _histograms(ds, cols, schema, 0, "count", 0, drop_null_labels)
    return lm, hist[:, 0]


def class_stats(
    ds,
    label: str,
    *,
    beta: float = 0.999,
    weights: Mapping[str, float] | None = None,
    drop_null_labels: bool = False,
) -> ClassStats:
    """Class counts, imbalance ratio and every class-weight scheme (``inverse``,
    ``inverse_sqrt``, ``effective_number`` with ``beta``, ``median_frequency``, and
    ``weights`` given by label key as ``explicit``) of ``ds``: one pass."""
    lm, counts = label_counts(ds, label, drop_null_labels=drop_null_labels)
    spec = StatsSpec(beta=beta, weights=dict(weights) if weights else None)
    return _class_stats(lm, dict(zip(lm.labels, counts.tolist())), spec)


# --------------------------------------------------------------------------------------------
# keyed passes over a Dataset


@dataclass(frozen=True)
class _Quota:
    """What a keyed pass needs in every batch: the columns, the label map, the seed and pass
    name, and the cuts."""

    cols: Columns
    lm: LabelMap
    seed: int
    stream: str
    cuts: Cuts

    def sides(self, table: pa.Table):
        """(rows with labels, class, identity, key, side, pending mask)."""
        labels = normalize_labels(table[self.cols.label], self.cols.label)
        if labels.null_count:
            table = table.filter(pc.is_valid(labels))
        cls = self.lm.encode(table[self.cols.label])
        identity = row_identity(table, self.cols)
        keys = seeded(identity, self.seed, self.stream)
        side, pend = assign(cls, keys, self.cuts)
        return table, cls, identity, keys, side, pend


def _pending_rows(table: pa.Table, quota: _Quota) -> pa.Table:
    table, cls, identity, keys, _, pend = quota.sides(table)
    out = table.filter(pa.array(pend))
    for name, v in zip(_TAGS, (cls, keys, identity)):
        out = out.append_column(name, pa.array(v[pend]))
    return out


def _gather_pending(ds, quota: _Quota) -> pa.Table | None:
    """Pass 2: the rows whose keys fall in a cut bucket (few), with their tags."""
    tables = [t for t in _collect(ds, _pending_rows, quota=quota) if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


@dataclass(frozen=True)
class _Counted:
    """Pass 1's outcome: the columns, the label map and each class's key histogram at the
    file path's resolution (``bucket_bits``)."""

    cols: Columns
    lm: LabelMap
    hist: np.ndarray  # (K, 2^bits)
    bits: int

    @property
    def counts(self) -> np.ndarray:
        return self.hist.sum(axis=1)


def _count(ds, cols: Columns, schema: pa.Schema, seed: int, stream: str, drop: bool) -> _Counted:
    """Pass 1 of a keyed quota over ``ds`` (``drop``: rows without a label left out)."""
    lm, fine, _ = _histograms(ds, cols, schema, seed, stream, FINE_BITS, drop)
    bits = bucket_bits(len(lm))
    return _Counted(cols, lm, fine.reshape(len(lm), 1 << bits, -1).sum(axis=2), bits)


def _place(ds, counted: _Counted, seed: int, stream: str, quotas) -> tuple[_Quota, Any]:
    """Pass 2 for ``quotas`` ((K, J+1) rows of each class per side, in key order): the quota
    every batch applies, and (the rows on a cut, their exact sides)."""
    cuts = find_cuts(counted.hist.ravel(), np.asarray(quotas, dtype=np.int64), counted.bits)
    quota = _Quota(counted.cols, counted.lm, seed, stream, cuts)
    pending = _gather_pending(ds, quota)
    sides = resolve_pending(pending.drop_columns(["__id"]), cuts) if pending else None
    return quota, (pending, sides)


def _side_rows(table: pa.Table, quota: _Quota, keep: tuple[int, ...]) -> pa.Table:
    table, _, _, _, side, pend = quota.sides(table)
    return table.filter(pa.array(np.isin(side, keep) & ~pend))


def _with_rows(ds, table: pa.Table | None):
    import ray

    if table is None or table.num_rows == 0:
        return ds
    return ds.union(ray.data.from_arrow(table))


def _part(ds, quota: _Quota, pending, keep: tuple[int, ...], tagged: bool = False):
    """The lazy Dataset of the rows on sides ``keep`` (``tagged``: ``ds`` is ``_source``'s
    materialized rows, and this is a filter on their tag)."""
    rows, sides = pending
    if tagged:
        fn, kw = _tagged_rows, {"keep": keep}
    else:
        fn, kw = _side_rows, {"quota": quota, "keep": keep}
    part = ds.map_batches(fn, fn_kwargs=kw, batch_format="pyarrow", zero_copy_batch=True)
    if rows is None:
        return part
    return _with_rows(part, rows.filter(pa.array(np.isin(sides, keep))).drop_columns(_TAGS))


def _tag_sides(table: pa.Table, quota: _Quota) -> pa.Table:
    """The rows that are not on a cut, with their side as column ``__side``."""
    table, _, _, _, side, pend = quota.sides(table)
    return table.filter(pa.array(~pend)).append_column(SIDE, pa.array(side[~pend]))


def _tagged_rows(table: pa.Table, keep: tuple[int, ...]) -> pa.Table:
    mask = pc.is_in(table[SIDE], value_set=pa.array(keep, type=pa.int8()))
    return table.filter(mask).drop_columns([SIDE])


def _source(ds, quota: _Quota, materialize: bool):
    """What the outputs read: ``ds`` itself (each output keys every row again), or — with
    ``materialize`` — ``ds`` keyed once, tagged with each row's side and held in the object
    store (spilled to disk past its size), which the outputs only filter."""
    if not materialize:
        return ds
    return ds.map_batches(
        _tag_sides, fn_kwargs={"quota": quota}, batch_format="pyarrow", zero_copy_batch=True
    ).materialize()


# --------------------------------------------------------------------------------------------
# splits and folds


def stratified_split(
    ds,
    label: str,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    id: str | None = None,
    drop_null_labels: bool = False,
    materialize: bool = False,
) -> Splits:
    """An exact stratified train/val/test split of ``ds`` (see the module docstring): two
    passes, then three lazy Datasets. ``id``: a column of unique row ids used as each row's
    identity (default: the hash of the whole row). ``materialize``: key the rows once more now
    and hold them in the object store, so that the three outputs only filter them (instead of
    each reading and keying the input again)."""
    spec = SplitSpec(val=val, test=test, seed=seed)
    counted = _count(ds, *_columns(ds, label, id), seed, "split", drop_null_labels)
    q = np.array([split_counts(int(x), spec.val, spec.test) for x in counted.counts])
    quota, pending = _place(ds, counted, seed, "split", q)
    lm = counted.lm
    src = _source(ds, quota, materialize)
    parts = [_part(src, quota, pending, (s,), materialize) for s in range(3)]
    counts = {
        name: dict(zip(lm.keys, (int(x) for x in q[:, s])))
        for s, name in enumerate(("train", "val", "test"))
    }
    return Splits(parts[0], parts[1], parts[2], counts, lm)


def fold_counts(counts: np.ndarray, k: int) -> np.ndarray:
    """(K, k) rows of each class per fold: n // k each, the n % k left over one each to the
    folds that have had fewest so far (so folds differ by at most one row overall too)."""
    out = np.repeat((np.asarray(counts) // k)[:, None], k, axis=1)
    given = np.zeros(k, dtype=np.int64)
    for c, n in enumerate(counts):
        for f in np.argsort(given, kind="stable")[: int(n) % k]:
            out[c, f] += 1
            given[f] += 1
    return out


def stratified_kfold(
    ds,
    label: str,
    *,
    k: int = 5,
    seed: int = 0,
    id: str | None = None,
    drop_null_labels: bool = False,
    materialize: bool = False,
) -> KFold:
    """Exact stratified k-fold of ``ds``: the folds partition the rows, each class spread over
    them within one row (``fold_counts``); fold i's (train, val) are lazy Datasets.
    ``materialize``: as ``stratified_split``'s (2k outputs read the input otherwise)."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r}: k-fold needs an integer k >= 2")
    counted = _count(ds, *_columns(ds, label, id), seed, "kfold", drop_null_labels)
    q = fold_counts(counted.counts, k)
    quota, pending = _place(ds, counted, seed, "kfold", q)
    lm = counted.lm
    src = _source(ds, quota, materialize)
    folds = []
    for i in range(k):
        rest = tuple(j for j in range(k) if j != i)
        train = _part(src, quota, pending, rest, materialize)
        folds.append((train, _part(src, quota, pending, (i,), materialize)))
    counts = [dict(zip(lm.keys, (int(x) for x in q[:, i]))) for i in range(k)]
    return KFold(folds, counts, lm)


# --------------------------------------------------------------------------------------------
# resampling


def _copies(table: pa.Table, quota: _Quota, base: np.ndarray, out_schema: pa.Schema):
    table, cls, identity, _, side, pend = quota.sides(table)
    copies = np.where(pend, 0, base[cls] + (side == 0))
    return expand(table, identity, copies, quota.seed, out_schema)


def resample(
    ds,
    label: str,
    *,
    method: str = "random_over",
    sampling_strategy: Any = "auto",
    seed: int = 0,
    id: str | None = None,
    drop_null_labels: bool = False,
) -> Resampled:
    """Exact random resampling of ``ds`` (``random_over``, ``random_under`` or ``combined``)
    to ``sampling_strategy`` (imbalanced-learn's forms, plus ``balanced``, ``power``,
    ``max_ratio``): every row ``floor(t/n)`` times and the ``t mod n`` rows with the smallest
    keys once more, chosen exactly without gathering a class; a lazy Dataset that composes
    with ``map_batches`` and feeds ``ray.train`` through ``get_dataset_shard``."""
    if method not in ("random_over", "random_under", "combined"):
        raise ValueError(
            f"method={method!r}: the Dataset API resamples with random_over, random_under or "
            "combined; the SMOTE family runs in the file path (raybalance prepare)"
        )
    spec = ResampleSpec(method=method, sampling_strategy=sampling_strategy, seed=seed)
    cols, schema = _columns(ds, label, id)
    out_schema = output_schema(schema)  # refuses inputs that hold the traceability columns
    counted = _count(ds, cols, schema, seed, "resample", drop_null_labels)
    lm = counted.lm
    by_key = dict(zip(lm.keys, counted.counts.tolist()))
    n, _, p = class_targets(spec, cols, lm.keys, by_key)
    quota, (rows, sides) = _place(ds, counted, seed, "resample", p.quotas)
    out = ds.map_batches(
        _copies,
        fn_kwargs={"quota": quota, "base": p.base, "out_schema": out_schema},
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
    if rows is not None:
        copies = p.base[rows["__cls"].to_numpy()] + (sides == 0)
        body = rows.drop_columns(_TAGS)
        out = _with_rows(out, expand(body, rows["__id"].to_numpy(), copies, seed, out_schema))
    keys = lm.keys
    return Resampled(out, dict(zip(keys, n.tolist())), dict(zip(keys, p.targets.tolist())), lm)
