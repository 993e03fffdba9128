"""Exact stratified train/val/test splits that never gather a class onto one node.

    raybalance prepare jobs/configs/trec50.yaml

Counts. For a class with n rows and fractions (train, val, test), each split first gets
floor(n·f); the 0–2 rows left over go one each to splits with a fractional remainder, first to
splits that would otherwise get no row of the class (in the order train, test, val), then to the
largest remainders (ties: train, test, val). So every count differs from n·f by less than one
row and the counts sum to n. Tiny classes: 1 row -> train; 2 rows -> train + test (with the
default fractions); a warning names every class that some split lacks.

Rows. Each row gets a uniform 64-bit key from (seed, row identity) — the ``data.id`` column, or a
hash of the whole row — and a class's rows go, in key order, to train, then val, then test. The
ranks are found without sorting a class in one place:

1. a pass counts the keys of every class in 2^B buckets (their top B bits);
2. the bucket holding each cut rank is found on the driver; a second pass writes every row whose
   bucket lies clearly on one side of its class's cuts straight into its split, and returns the
   few rows that fall in a cut bucket (about 2·N/2^B rows in all);
3. the driver sorts those rows (by key, then content hash) and writes them.

The result depends only on the seed and the rows — not on files, row groups, blocks, workers or
row order. Rows with equal keys are equal (or share an id), so any fixed order among them gives
the same output. Memory per task is one batch plus a histogram of K·2^B counts.

Output: ``splits/{train,val,test}/part-*.parquet`` with the input's columns unchanged, written
into a temporary folder renamed into place when complete, and ``splits/_manifest.json`` with the
per-split class counts.
"""

from __future__ import annotations

import functools
import math
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.config import SplitSpec
from engine.data import Columns, Fragment, LabelMap, Source, run_fragments
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    read_json,
    replace_dir,
    temp_dir_beside,
    write_json_atomic,
)
from engine.quota import (  # noqa: F401 - the keyed-quota names split has always offered
    ROW_GROUP_ROWS,
    SPLITS,
    Cuts,
    SplitWriters,
    assign,
    bucket_bits,
    class_batches,
    concat_pending,
    find_cuts,
    histogram_task,
    key_histogram,
    keyed_batches,
    resolve_pending,
    row_identity,
    row_keys,
    task_name,
)

STREAM = "split"  # the key stream of the split pass
MANIFEST = "_manifest.json"


# --------------------------------------------------------------------------------------------
# counts


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """Exact (train, val, test) counts for a class of ``n`` rows (see the module docstring)."""
    fv, ft = Fraction(repr(float(val))), Fraction(repr(float(test)))
    fracs = (1 - fv - ft, fv, ft)
    exact = [n * f for f in fracs]
    counts = [math.floor(e) for e in exact]
    left = n - sum(counts)
    rema = [e - c for e, c in zip(exact, counts)]
    order = (0, 2, 1)  # train, test, val
    while left:
        empty = [i for i in order if counts[i] == 0 and rema[i] > 0]
        pick = empty[0] if empty else max(order, key=lambda i: (rema[i], -order.index(i)))
        counts[pick] += 1
        rema[pick] = Fraction(-1)  # at most one extra row per split
        left -= 1
    return counts[0], counts[1], counts[2]


# --------------------------------------------------------------------------------------------
# writing


def _write_task(
    source: Source,
    frags: list[Fragment],
    cols: Columns,
    schema,
    lm: LabelMap,
    seed: int,
    cuts: Cuts,
    fs,
    out_dir: str,
    out_schema: pa.Schema,
) -> tuple[np.ndarray, pa.Table | None]:
    writers = SplitWriters(fs, out_dir, task_name(frags), out_schema, cols.label)
    written = np.zeros((3, len(lm)), dtype=np.int64)
    pending: list[pa.Table] = []
    for frag, b in keyed_batches(source, frags, cols, schema, lm, seed, cuts, STREAM):
        if b.pend.any():
            pending.append(b.pending())
        for s, name in enumerate(SPLITS):
            mask = (b.side == s) & ~b.pend
            if mask.any():
                writers.write(name, b.table.filter(pa.array(mask)), frag.path)
                written[s] += np.bincount(b.cls[mask], minlength=len(lm))
    writers.close()
    return written, concat_pending(pending)


@dataclass(frozen=True)
class SplitResult:
    path: str
    counts: dict[str, dict[str, int]]  # split -> label key -> rows
    warnings: list[str]
    pending_rows: int


_MEANS = {  # what a class missing from a split means for the run
    "train": "no model can learn them",
    "val": "model selection, the ensemble and the thresholds cannot see them",
    "test": "they are not evaluated (no test recall or F1 for them)",
}


def split_warnings(lm: LabelMap, counts: np.ndarray, spec: SplitSpec) -> list[str]:
    fractions = {"train": 1 - spec.val - spec.test, "val": spec.val, "test": spec.test}
    out = []
    for s, name in enumerate(SPLITS):
        if fractions[name] <= 0:
            continue
        lacking = [k for k, n in zip(lm.keys, counts[:, s]) if n == 0]
        if lacking:
            out.append(
                f"split {name!r} has no rows of {len(lacking)} class(es) too small to reach it: "
                f"{lacking[:10]}{' ...' if len(lacking) > 10 else ''}; {_MEANS[name]}"
            )
    return out


def split(
    source: Source,
    cols: Columns,
    label_map: LabelMap,
    class_counts: dict[Any, int],
    spec: SplitSpec,
    out_dir: str,
    schema: pa.Schema,
    extra_manifest: dict[str, Any] | None = None,
) -> SplitResult:
    """Split ``source`` exactly and write ``out_dir/{train,val,test}/`` atomically.

    ``class_counts`` (label value -> rows, null labels excluded) and ``schema`` (the first
    file's) come from the stats pass; every written file has that schema. ``extra_manifest``
    is merged into ``_manifest.json``.
    """
    read_schema = schema if source.format != "parquet" else None
    n = np.array([class_counts[v] for v in label_map.labels], dtype=np.int64)
    target = np.array([split_counts(int(x), spec.val, spec.test) for x in n], dtype=np.int64)
    hist, bits = key_histogram(
        source, cols, read_schema, label_map, spec.seed, STREAM, "split: key histogram"
    )
    if not np.array_equal(hist.reshape(len(n), -1).sum(axis=1), n):
        raise RuntimeError(
            f"{source.path} changed between passes: the class counts differ from the stats pass "
            "(was it rewritten while running?)"
        )
    cuts = find_cuts(hist, target, bits)

    fs, final = filesystem_and_path(out_dir)
    tmp = temp_dir_beside(fs, final)
    try:
        for name in SPLITS:
            fs.create_dir(join(tmp, name), recursive=True)
        write_task = functools.partial(
            _write_task,
            cols=cols,
            schema=read_schema,
            lm=label_map,
            seed=spec.seed,
            cuts=cuts,
            fs=fs,
            out_dir=tmp,
            out_schema=schema,
        )
        parts = run_fragments(source, write_task, description="split: write")
        written, pending_rows = _write_pending(parts, cuts, schema, fs, tmp, len(n))
        if not np.array_equal(written.T, target):
            raise RuntimeError(
                f"split of {source.path} wrote {written.sum(axis=1).tolist()} rows per split, "
                f"expected {target.sum(axis=0).tolist()}; nothing was moved into {out_dir}"
            )
        _ensure_schema_files(fs, tmp, schema)
        counts = {
            name: dict(zip(label_map.keys, (int(x) for x in target[:, s])))
            for s, name in enumerate(SPLITS)
        }
        warnings = split_warnings(label_map, target, spec)
        manifest = {**_manifest(spec, cols, source, target, counts, extra_manifest)}
        manifest["warnings"] = warnings  # kept: a reused split repeats them
        write_json_atomic(join(tmp, MANIFEST), manifest, fs)
        replace_dir(fs, tmp, final)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_dir(tmp)
        raise
    return SplitResult(out_dir, counts, warnings, pending_rows)


def _write_pending(parts, cuts, schema: pa.Schema, fs, tmp: str, k: int):
    """The rows whose keys fell on a cut, placed exactly and written as ``part-pending``
    files; returns (rows written per split and class, pending rows)."""
    written = sum(p[0] for p in parts)
    pend_tables = [p[1] for p in parts if p[1] is not None]
    if not pend_tables:
        return written, 0
    pending = pa.concat_tables(pend_tables, promote_options="permissive")
    which = resolve_pending(pending, cuts)
    cls = pending["__cls"].to_numpy()
    body = pending.drop_columns(["__cls", "__key"]).select(schema.names).cast(schema)
    for s, name in enumerate(SPLITS):
        mask = which == s
        if mask.any():
            pq.write_table(
                body.filter(pa.array(mask)),
                join(tmp, name, "part-pending.parquet"),
                filesystem=fs,
            )
            written[s] += np.bincount(cls[mask], minlength=k)
    return written, pending.num_rows


def _manifest(spec: SplitSpec, cols: Columns, source: Source, target, counts, extra):
    return {
        "seed": spec.seed,
        "fractions": {"train": 1 - spec.val - spec.test, "val": spec.val, "test": spec.test},
        "identity": f"column {cols.id!r}" if cols.id else "hash of every column",
        "source": source.path,
        "rows": {name: int(target[:, s].sum()) for s, name in enumerate(SPLITS)},
        "counts": counts,
        "run": uuid.uuid4().hex,
        **(extra or {}),
    }


def _ensure_schema_files(fs, tmp: str, schema: pa.Schema) -> None:
    """A split with no rows still gets one empty file, so readers see the columns."""
    for name in SPLITS:
        infos = fs.get_file_info(pafs.FileSelector(join(tmp, name)))
        if any(i.path.endswith(".parquet") for i in infos):
            continue
        pq.write_table(schema.empty_table(), join(tmp, name, "part-empty.parquet"), filesystem=fs)


def read_manifest(splits_dir: str) -> dict[str, Any] | None:
    """The manifest of complete splits, or None when there are none."""
    fs, p = filesystem_and_path(splits_dir)
    if not exists(fs, join(p, MANIFEST)):
        return None
    return read_json(join(splits_dir, MANIFEST))
