"""Resampling the train split to a target class distribution: exact, streaming, deterministic.

    raybalance prepare jobs/configs/digits_lt100.yaml --set resample.method=combined \\
        --set 'resample.sampling_strategy={max_ratio: 10}'

Only the train split is ever resampled; val and test keep the true distribution.

Targets. ``resample.sampling_strategy`` is resolved by ``resolve_targets`` (imbalanced-learn's
forms and meanings, plus ``balanced``, ``power`` and ``max_ratio``; see ``engine.strategy``) into
one table {class: rows after resampling}. ``random_over`` and the SMOTE family only raise
classes, ``random_under`` only lowers them, ``combined`` does both in one pass.

Random over/undersampling. Class c goes from n_c to t_c rows. Every row is written
``base_c = floor(t_c / n_c)`` times, and the r_c = t_c mod n_c rows with the smallest keys once
more (undersampling: base 0, the t_c smallest keys kept once). A row's key is a splitmix64 of
(seed, row identity) — the ``data.id`` column or the hash of the whole row — so the choice
depends only on the seed and the rows, not on files, blocks or workers. The r_c smallest keys
are found exactly without gathering a class, as the split does: a pass counts each class's keys
in 2^B buckets, a second pass writes every row whose bucket lies clearly on one side of the cut,
and the few rows in a cut bucket are ranked on the driver. Each task writes one Parquet file with
a name derived from its input, inside a temporary folder renamed into place only when the
written counts equal the targets. So undersampling keeps a subset of the original rows,
oversampling a superset, and the counts are exact.

Traceability. Four columns are added to every row: ``sample_id`` (uint64, unique per output row
unless the input itself holds identical rows), ``source_id`` (uint64: the identity of the
original row — equal for all copies of a row), ``copy_index`` (int32: 0 for the first copy, k
for the k-th duplicate; for a synthetic row, its ordinal among the rows grown from the same
seed row) and ``synthetic`` (bool). Within each output batch the rows are shuffled by a key of
``sample_id``, then copies of one row that came out adjacent are moved apart (impossible only
when one row makes up more than half of a batch).

SMOTE family (``smote``, ``borderline1``, ``borderline2``, ``adasyn``) on the feature columns
(``data.features``: numeric columns or one list column, or the ``embed.column`` made from text):
the original rows are written unchanged (as above, one copy each), then each class to raise has
its rows' features gathered (classes to oversample are small), ordered by ``source_id``, and
``engine.smote`` grows the synthetic rows, seeded by (seed, class). Borderline-SMOTE and ADASYN
need, for every row of those classes, the classes of its m nearest neighbours in the whole split:
a map-reduce kNN over the data (each task keeps the m nearest per query, the driver merges).
Synthetic rows carry the label and the features; other columns (text, id, ...) are null. A class
with more rows than ``resample.knn_max_rows`` is partitioned by a seeded key of its rows and kNN
runs inside each partition (bounded memory; neighbours then come from the same partition).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import SMOTE_METHODS, ResampleSpec, StatsSpec
from engine.data import Columns, Fragment, LabelMap, Source, run_fragments
from engine.hashing import seeded, splitmix64
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    replace_dir,
    temp_dir_beside,
    write_json_atomic,
)
from engine.quota import (
    ROW_GROUP_ROWS,
    SplitWriters,
    class_batches,
    concat_pending,
    find_cuts,
    key_histogram,
    keyed_batches,
    resolve_pending,
    row_identity,
    task_name,
)
from engine.stats import class_stats
from engine.strategy import describe, resolve_targets

__all__ = [
    "SAMPLE_COLUMNS",
    "SMOTE_METHODS",
    "ResampleResult",
    "resample",
    "resolve_targets",
    "plan",
    "spread_duplicates",
]

SAMPLE_COLUMNS = ("sample_id", "source_id", "copy_index", "synthetic")
SAMPLE_FIELDS = [
    pa.field("sample_id", pa.uint64()),
    pa.field("source_id", pa.uint64()),
    pa.field("copy_index", pa.int32()),
    pa.field("synthetic", pa.bool_()),
]
RECORD = "_resample.json"  # in the output folder: method, counts, the inputs digest
STATS = "stats.json"  # in the output folder, written last: the result is complete

KIND = {
    "random_over": "over",
    "random_under": "under",
    "combined": "combined",
    **dict.fromkeys(SMOTE_METHODS, "over"),
}
STREAM = "resample"
M_NEIGHBORS = 10  # Borderline-SMOTE's m (imbalanced-learn's default)


# --------------------------------------------------------------------------------------------
# the plan: how many copies of which rows


@dataclass(frozen=True)
class Plan:
    """Per class (label-map order): rows before and after, base copies of every row, and how
    many rows (the smallest keys) get one copy more. SMOTE methods copy every row once and
    grow ``synthetic`` rows."""

    counts: np.ndarray
    targets: np.ndarray
    base: np.ndarray
    extra: np.ndarray
    synthetic: np.ndarray

    @property
    def quotas(self) -> np.ndarray:
        """(K, 3) rows of each class per side of its keyed cut (``engine.quota.find_cuts``):
        the ``extra`` smallest keys (one copy more), none, the rest."""
        return np.stack([self.extra, np.zeros_like(self.counts), self.counts - self.extra], 1)


def plan(counts: np.ndarray, targets: np.ndarray, method: str) -> Plan:
    """The copies that take ``counts`` to ``targets`` for ``method``."""
    counts = np.asarray(counts, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if method in SMOTE_METHODS:
        base = np.ones_like(counts)
        return Plan(counts, targets, base, np.zeros_like(counts), targets - counts)
    safe = np.maximum(counts, 1)
    base = np.where(counts > 0, targets // safe, 0)
    extra = np.where(counts > 0, targets - base * counts, 0)
    return Plan(counts, targets, base, extra, np.zeros_like(counts))


# --------------------------------------------------------------------------------------------
# copies, traceability columns and the shuffle


def _copy_ids(source: np.ndarray, copy_index: np.ndarray, synthetic: bool) -> np.ndarray:
    stream = seeded(copy_index.astype(np.uint64), 0, "synthetic" if synthetic else "copy")
    return splitmix64(source ^ stream)


def spread_duplicates(source: np.ndarray, order: np.ndarray, max_scan: int = 256) -> np.ndarray:
    """Reorder ``order`` so that no two neighbours share a ``source`` id where avoidable.

    A left-to-right sweep: when position i+1 repeats position i, it is swapped with the first
    later position whose value fits at i+1 and whose neighbours accept the displaced value.
    Deterministic; touches only the (few) offending positions.
    """
    s = source[order]
    bad = np.flatnonzero(s[1:] == s[:-1])
    if len(bad) == 0:
        return order
    n = len(s)
    _, freq = np.unique(s, return_counts=True)
    if freq.max() > (n + 1) // 2:
        return order  # one row is more than half the batch: adjacency cannot be avoided
    order, s = order.copy(), s.copy()

    def fits(value, pos: int, skip: int) -> bool:
        return all(not (0 <= q < n and q != skip and s[q] == value) for q in (pos - 1, pos + 1))

    for i in bad:
        if s[i] != s[i + 1]:
            continue
        for step in range(max_scan):
            j = (i + 2 + step) % n
            if j in (i, i + 1):
                continue
            if s[j] != s[i] and fits(s[j], i + 1, j) and fits(s[i + 1], j, i + 1):
                s[i + 1], s[j] = s[j], s[i + 1]
                order[i + 1], order[j] = order[j], order[i + 1]
                break
    return order


def expand(
    table: pa.Table, identity: np.ndarray, copies: np.ndarray, seed: int, out_schema: pa.Schema
) -> pa.Table:
    """Each row ``copies`` times, with the traceability columns, shuffled (see the docstring)."""
    copies = copies.astype(np.int64)
    idx = np.repeat(np.arange(table.num_rows), copies)
    if len(idx) == 0:
        return out_schema.empty_table()
    starts = np.cumsum(copies) - copies
    copy_index = np.arange(len(idx), dtype=np.int64) - np.repeat(starts, copies)
    source = identity[idx]
    sample_id = _copy_ids(source, copy_index, synthetic=False)
    order = np.argsort(seeded(sample_id, seed, "shuffle"))  # unique keys: any sort is stable
    if copies.max() > 1:
        order = spread_duplicates(source, order)
    out = table.take(pa.array(idx[order]))
    extra = {
        "sample_id": pa.array(sample_id[order]),
        "source_id": pa.array(source[order]),
        "copy_index": pa.array(copy_index[order].astype(np.int32)),
        "synthetic": pa.array(np.zeros(len(idx), dtype=bool)),
    }
    for name, values in extra.items():
        out = out.append_column(name, values)
    return _conform(out, out_schema)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema)


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The input schema plus the traceability columns; refuses inputs that already have them."""
    clash = [c for c in SAMPLE_COLUMNS if c in schema.names]
    if clash:
        raise ValueError(
            f"the train split already has column(s) {clash}, which resampling adds to trace "
            "duplicated and synthetic rows; rename them in the input"
        )
    return pa.schema(list(schema) + SAMPLE_FIELDS, metadata=schema.metadata)


# --------------------------------------------------------------------------------------------
# the write pass


def _write_task(
    source: Source,
    frags: list[Fragment],
    cols: Columns,
    lm: LabelMap,
    seed: int,
    cuts,
    base: np.ndarray,
    fs,
    out_dir: str,
    out_schema: pa.Schema,
) -> tuple[np.ndarray, pa.Table | None]:
    writers = SplitWriters(fs, out_dir, task_name(frags), out_schema, cols.label, ("train",))
    written = np.zeros(len(lm), dtype=np.int64)
    pending: list[pa.Table] = []
    for frag, b in keyed_batches(source, frags, cols, None, lm, seed, cuts, STREAM):
        copies = base[b.cls] + (b.side == 0)
        if b.pend.any():
            pending.append(b.pending(__id=b.identity))
            copies = np.where(b.pend, 0, copies)
        writers.write("train", expand(b.table, b.identity, copies, seed, out_schema), frag.path)
        written += np.bincount(b.cls, weights=copies, minlength=len(lm)).astype(np.int64)
    writers.close()
    return written, concat_pending(pending)


def _write_pending(
    pending: pa.Table, cuts, base: np.ndarray, seed: int, fs, out_dir: str, out_schema, k: int
) -> np.ndarray:
    side = resolve_pending(pending.drop_columns(["__id"]), cuts)
    cls = pending["__cls"].to_numpy()
    identity = pending["__id"].to_numpy()
    copies = base[cls] + (side == 0)
    body = pending.drop_columns(["__cls", "__key", "__id"])
    out = expand(body, identity, copies, seed, out_schema)
    _write_file(out, fs, join(out_dir, "train", "part-pending.parquet"))
    return np.bincount(cls, weights=copies, minlength=k).astype(np.int64)


def _write_file(table: pa.Table, fs, path: str) -> None:
    import pyarrow.parquet as pq

    if table.num_rows:
        pq.write_table(table, path, filesystem=fs, row_group_size=ROW_GROUP_ROWS)


# --------------------------------------------------------------------------------------------
# SMOTE: gathering features, map-reduce neighbours, synthetic rows


def table_features(table: pa.Table, cols: Columns) -> np.ndarray:
    """The feature columns of an Arrow table as a float32 (n, d) matrix."""
    if cols.vector:
        col = table[cols.vector].combine_chunks()
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
        return flat.reshape(table.num_rows, -1) if table.num_rows else flat.reshape(0, 0)
    return np.stack(
        [table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in cols.features],
        axis=1,
    )


def _gather_task(
    source: Source, frags: list[Fragment], cols: Columns, lm: LabelMap, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, identity, features) of the rows of the ``wanted`` classes."""
    parts = []
    for frag in frags:
        for table, cls in class_batches(source, frag, cols, None, lm):
            mask = wanted[cls]
            if mask.any():
                t = table.filter(pa.array(mask))
                parts.append((cls[mask], row_identity(t, cols), table_features(t, cols)))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def _neighbors_task(
    source: Source,
    frags: list[Fragment],
    cols: Columns,
    lm: LabelMap,
    queries: np.ndarray,
    query_cls: np.ndarray,
    m: int,
    k_other: int,
) -> dict[str, Any]:
    """Per query: the m nearest rows' classes; with ``k_other``, the k nearest other-class
    rows' features (for Borderline-2)."""
    from engine.smote import merge_nearest, nearest_partial

    near: list[tuple[np.ndarray, np.ndarray]] = []
    other: list[tuple[np.ndarray, np.ndarray]] = []
    for frag in frags:
        for table, cls in class_batches(source, frag, cols, None, lm):
            x = table_features(table, cols)
            near.append(nearest_partial(queries, x, cls, m))
            if k_other:
                other.append(_nearest_other(queries, query_cls, x, cls, k_other))
    out: dict[str, Any] = {"near": merge_nearest(near, m) if near else None}
    if k_other and other:
        out["other"] = _merge_other(other, k_other)
    return out


def _nearest_other(queries, query_cls, x, cls, k):
    """Per query, the k nearest rows of x of another class: (distances, features)."""
    from engine.smote import nearest_partial

    q, d = queries.shape
    dist = np.full((q, k), np.inf, dtype=np.float64)
    feats = np.zeros((q, k, d), dtype=np.float32)
    for c in np.unique(query_cls):
        rows = np.flatnonzero(query_cls == c)
        cand = x[cls != c]
        if len(cand) == 0:
            continue
        # the candidates' positions as "labels": nearest_partial returns which rows they are
        dd, pos = nearest_partial(queries[rows], cand, np.arange(len(cand)), k)
        found = pos >= 0
        dist[rows] = np.where(found, dd, np.inf)
        feats[rows] = np.where(found[..., None], cand[np.maximum(pos, 0)], 0)
    return dist, feats


def _merge_other(parts, k):
    dist = np.concatenate([p[0] for p in parts], axis=1)
    feats = np.concatenate([p[1] for p in parts], axis=1)
    o = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, o, axis=1), np.take_along_axis(feats, o[..., None], axis=1)


def _class_rng(seed: int, c: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, c, 0x5E07E])


def _synthesize(
    source: Source,
    cols: Columns,
    lm: LabelMap,
    spec: ResampleSpec,
    p: Plan,
) -> tuple[list[tuple[int, Any, np.ndarray]], list[str]]:
    """Synthetic rows per class to raise: (class, Synthetic, seed identities)."""
    wanted = p.synthetic > 0
    if not wanted.any():
        return [], []
    from engine import smote

    parts = run_fragments(
        source,
        functools.partial(_gather_task, cols=cols, lm=lm, wanted=wanted),
        description="resample: gather classes to oversample",
    )
    parts = [x for x in parts if len(x[0])]
    cls = np.concatenate([x[0] for x in parts])
    ident = np.concatenate([x[1] for x in parts])
    feats = np.concatenate([x[2] for x in parts])
    order = np.lexsort((ident, cls))  # deterministic whatever the layout
    cls, ident, feats = cls[order], ident[order], feats[order]

    method = spec.method
    near = other = None
    if method != "smote":
        # m nearest plus the row itself (column 0, dropped below as imbalanced-learn does)
        m = (spec.k_neighbors if method == "adasyn" else M_NEIGHBORS) + 1
        got = run_fragments(
            source,
            functools.partial(
                _neighbors_task,
                cols=cols,
                lm=lm,
                queries=feats,
                query_cls=cls,
                m=m,
                k_other=spec.k_neighbors if method == "borderline2" else 0,
            ),
            description=f"resample: {method} neighbours",
        )
        near_parts = [g["near"] for g in got if g["near"] is not None]
        near = smote.merge_nearest(near_parts, m)
        if method == "borderline2":
            other = _merge_other([g["other"] for g in got if "other" in g], spec.k_neighbors)

    out, warnings = [], []
    for c in np.flatnonzero(wanted):
        rows = np.flatnonzero(cls == c)
        syn = _grow_class(
            spec, int(c), feats[rows], ident[rows], int(p.synthetic[c]), lm, near, other, rows
        )
        warnings += syn.warnings
        out.append((int(c), syn, ident[rows]))
    return out, warnings


def _grow_class(spec: ResampleSpec, c: int, x, ident, n_new: int, lm: LabelMap, near, other, rows):
    """``n_new`` synthetic rows of class ``c`` from its rows ``x`` by ``spec.method``
    (``near``/``other``: the merged neighbour tables of the whole gather, ``rows`` its rows of
    this class)."""
    from engine import smote

    method = spec.method
    rng = _class_rng(spec.seed, c)
    keys = seeded(ident, spec.seed, "knn-partition")
    common = {"keys": keys, "max_rows": spec.knn_max_rows, "name": lm.keys[c]}
    if method == "smote":
        return smote.smote(x, n_new, spec.k_neighbors, rng, **common)
    # Column 0 is the row itself (distance 0), as imbalanced-learn drops it.
    is_other = near[1][rows][:, 1:] != c
    if method == "adasyn":
        return smote.adasyn(x, n_new, spec.k_neighbors, rng, is_other, **common)
    if method == "borderline1":
        return smote.borderline(x, n_new, spec.k_neighbors, rng, is_other, kind=1, **common)
    x_other = other[1][rows].reshape(-1, x.shape[1])
    kk = other[1].shape[1]
    other_nn = np.arange(len(rows) * kk).reshape(len(rows), kk)
    return smote.borderline(
        x,
        n_new,
        spec.k_neighbors,
        rng,
        is_other,
        kind=2,
        X_other=x_other,
        other_nn=other_nn,
        **common,
    )


def _synthetic_table(
    c: int, syn, seed_ids: np.ndarray, cols: Columns, lm: LabelMap, schema: pa.Schema, seed: int
) -> pa.Table:
    n = len(syn.X)
    source = seed_ids[syn.seed]
    # ordinal of each synthetic row among those grown from the same seed row
    order = np.argsort(syn.seed, kind="stable")
    ordinal = np.empty(n, dtype=np.int64)
    sorted_seed = syn.seed[order]
    starts = np.r_[0, np.flatnonzero(sorted_seed[1:] != sorted_seed[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ordinal[order] = np.arange(n) - run_start
    sample_id = _copy_ids(source, ordinal, synthetic=True)
    columns: dict[str, pa.Array] = {}
    label_type = schema.field(cols.label).type
    columns[cols.label] = pa.array([lm.labels[c]] * n).cast(label_type)
    x = syn.X.astype(np.float32)
    if cols.vector:
        vtype = schema.field(cols.vector).type
        flat = pa.array(x.reshape(-1).astype(vtype.value_type.to_pandas_dtype()))
        d = x.shape[1]
        if pa.types.is_fixed_size_list(vtype):
            arr = pa.FixedSizeListArray.from_arrays(flat, d)
        else:
            arr = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), flat
            )
        columns[cols.vector] = arr.cast(vtype)
    else:
        for j, name in enumerate(cols.features):
            t = schema.field(name).type
            v = x[:, j]
            if pa.types.is_integer(t):
                v = np.rint(v)
            columns[name] = pa.array(v).cast(t, safe=False)
    columns["sample_id"] = pa.array(sample_id)
    columns["source_id"] = pa.array(source)
    columns["copy_index"] = pa.array(ordinal.astype(np.int32))
    columns["synthetic"] = pa.array(np.ones(n, dtype=bool))
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    shuffle = np.argsort(seeded(sample_id, seed, "shuffle"), kind="stable")
    return table.take(pa.array(shuffle))


# --------------------------------------------------------------------------------------------
# the stage


@dataclass(frozen=True)
class ResampleResult:
    path: str  # RUN_DIR/resampled/train
    method: str
    strategy: Any
    before: dict[str, int]
    after: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    pending_rows: int = 0


def resample(
    source: Source,
    cols: Columns,
    label_map: LabelMap,
    counts: Mapping[str, int],
    spec: ResampleSpec,
    out_dir: str,
    schema: pa.Schema,
    stats_spec: StatsSpec | None = None,
    stats_extra: Mapping[str, Any] | None = None,
    inputs: str | None = None,
) -> ResampleResult:
    """Resample the train split ``source`` to ``spec``'s targets into ``out_dir/train/``.

    ``counts`` are the split's rows per label key and ``schema`` its schema. ``out_dir`` is
    written as a whole: ``train/``, ``_resample.json`` and ``stats.json`` (the statistics of the
    result, in ``stats.json``'s schema, with ``stats_extra`` added) go into a temporary folder
    renamed into place when complete, so a ``stats.json`` there means a complete result.
    ``inputs`` (a digest of what the result depends on) is recorded in ``_resample.json``.
    """
    keys = label_map.keys
    n, t, p = class_targets(spec, cols, keys, counts)
    cuts = _cuts(source, cols, label_map, spec, n, p)
    out_schema = output_schema(schema)
    fs, final = filesystem_and_path(out_dir)
    tmp = temp_dir_beside(fs, final)
    try:
        fs.create_dir(join(tmp, "train"), recursive=True)
        written, pending_rows = _write_kept(
            source, cols, label_map, spec, cuts, p, fs, tmp, out_schema
        )
        synth, warnings = _synthesize(source, cols, label_map, spec, p)
        for c, syn, seed_ids in synth:
            table = _synthetic_table(c, syn, seed_ids, cols, label_map, out_schema, spec.seed)
            _write_file(table, fs, join(tmp, "train", f"part-synthetic-{c:05d}.parquet"))
            written[c] += table.num_rows
        if not np.array_equal(written, t):
            raise RuntimeError(
                f"resampling {source.path} wrote {written.tolist()} rows per class, expected "
                f"{t.tolist()}; nothing was moved into {out_dir}"
            )
        if not any(i.path.endswith(".parquet") for i in _list(fs, join(tmp, "train"))):
            _write_file(out_schema.empty_table(), fs, join(tmp, "train", "part-empty.parquet"))
        before, after = dict(zip(keys, n.tolist())), dict(zip(keys, t.tolist()))
        record = {
            "method": spec.method,
            "sampling_strategy": _jsonable(spec.sampling_strategy),
            "seed": spec.seed,
            "k_neighbors": spec.k_neighbors,
            "before": before,
            "after": after,
            "pending_rows": pending_rows,
            "warnings": warnings,
            "inputs": inputs,
        }
        write_json_atomic(join(tmp, RECORD), record, fs)
        stats = class_stats(
            label_map, dict(zip(label_map.labels, t.tolist())), stats_spec or StatsSpec()
        )
        extra = {"method": spec.method, **(stats_extra or {})}
        write_json_atomic(join(tmp, STATS), stats.to_json(**extra), fs)
        replace_dir(fs, tmp, final)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_dir(tmp)
        raise
    return ResampleResult(
        join(out_dir, "train"),
        spec.method,
        spec.sampling_strategy,
        before,
        after,
        warnings,
        pending_rows,
    )


def class_targets(spec: ResampleSpec, cols: Columns, keys: list[str], counts: Mapping[str, int]):
    """(rows per class, target rows per class, the plan); raises on a spec that cannot apply."""
    if spec.method == "none":
        raise ValueError("resample.method=none: nothing to resample")
    if spec.method in SMOTE_METHODS and not (cols.features or cols.vector):
        raise ValueError(
            f"resample.method={spec.method} interpolates feature vectors: set data.features "
            "(numeric columns or one list column), or data.text with an embedding (embed.*)"
        )
    n = np.array([int(counts.get(k, 0)) for k in keys], dtype=np.int64)
    targets = resolve_targets(spec.sampling_strategy, dict(zip(keys, n)), KIND[spec.method])
    t = np.array([targets[k] for k in keys], dtype=np.int64)
    emptied = [k for k, a, b in zip(keys, n, t) if a > 0 and b == 0]
    if emptied:
        raise ValueError(
            f"resample.sampling_strategy={describe(spec.sampling_strategy)} leaves class(es) "
            f"{emptied[:10]} with no rows; keep at least one row of every class"
        )
    return n, t, plan(n, t, spec.method)


def _cuts(source: Source, cols: Columns, label_map: LabelMap, spec: ResampleSpec, n, p: Plan):
    """The keyed-quota cuts that pick each class's extra copies exactly (one histogram pass)."""
    hist, bits = key_histogram(
        source, cols, None, label_map, spec.seed, STREAM, "resample: key histogram"
    )
    if not np.array_equal(hist.reshape(len(n), -1).sum(axis=1), n):
        raise RuntimeError(
            f"{source.path} does not hold the class counts of the split manifest "
            f"({hist.reshape(len(n), -1).sum(axis=1).tolist()} vs {n.tolist()}); "
            "rerun prepare with --overwrite"
        )
    return find_cuts(hist, p.quotas, bits)


def _write_kept(source, cols, label_map, spec, cuts, p: Plan, fs, tmp: str, out_schema):
    """The kept and copied rows written under ``tmp/train``; returns (rows written per class,
    rows placed after the pass because their keys fell on a cut)."""
    parts = run_fragments(
        source,
        functools.partial(
            _write_task,
            cols=cols,
            lm=label_map,
            seed=spec.seed,
            cuts=cuts,
            base=p.base,
            fs=fs,
            out_dir=tmp,
            out_schema=out_schema,
        ),
        description=f"resample: {spec.method}",
    )
    written = sum(x[0] for x in parts)
    pend = [x[1] for x in parts if x[1] is not None]
    if not pend:
        return written, 0
    pending = pa.concat_tables(pend, promote_options="permissive")
    k = len(label_map)
    extra = _write_pending(pending, cuts, p.base, spec.seed, fs, tmp, out_schema, k)
    return written + extra, pending.num_rows


def _list(fs, path: str):
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(path))


def _jsonable(strategy: Any) -> Any:
    if callable(strategy):
        return f"callable {getattr(strategy, '__name__', repr(strategy))}"
    return strategy
