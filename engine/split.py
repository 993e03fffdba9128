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
import hashlib
import math
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.config import SplitSpec
from engine.data import Columns, Fragment, LabelMap, Source, iter_fragment, run_fragments
from engine.hashing import row_hash, seeded
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    read_json,
    replace_dir,
    temp_dir_beside,
    write_json_atomic,
)

SPLITS = ("train", "val", "test")
ROW_GROUP_ROWS = 1 << 20
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
# per-row keys


def bucket_bits(num_classes: int) -> int:
    """Histogram resolution: ~4M counters in all, 4 to 16 bits per class."""
    return int(min(16, max(4, math.floor(math.log2((1 << 22) / max(num_classes, 1))))))


def row_identity(table: pa.Table, cols: Columns) -> np.ndarray:
    """The identity of every row: the hash of the id column, or of the row's input columns."""
    return row_hash(table, [cols.id]) if cols.id else row_hash(table, cols.all)


def row_keys(table: pa.Table, cols: Columns, seed: int, stream: str = "split") -> np.ndarray:
    """The rank key of every row for a pass (``stream``): uniform, from (seed, row identity)."""
    return seeded(row_identity(table, cols), seed, stream)


def class_batches(
    source: Source,
    frag: Fragment,
    cols: Columns,
    schema: pa.Schema | None,
    lm: LabelMap,
    columns: list[str] | None = None,
):
    """Batches (``columns`` only, default all) with null labels dropped, and class indices."""
    for table in iter_fragment(source, frag, columns, schema):
        if table[cols.label].null_count:
            table = table.filter(pc.is_valid(table[cols.label]))
        if table.num_rows == 0:
            continue
        yield table, lm.encode(table[cols.label])


def histogram_task(
    source: Source,
    frags: list[Fragment],
    cols: Columns,
    schema,
    lm: LabelMap,
    seed: int,
    bits: int,
    stream: str = "split",
) -> np.ndarray:
    """Per class, the number of rows whose key falls in each of 2^bits buckets (flattened)."""
    hist = np.zeros(len(lm) << bits, dtype=np.int64)
    for frag in frags:
        # With an id column the keys need only the label and the id.
        needed = [cols.label, cols.id] if cols.id else None
        for table, cls in class_batches(source, frag, cols, schema, lm, needed):
            bucket = (row_keys(table, cols, seed, stream) >> np.uint64(64 - bits)).astype(np.int64)
            hist += np.bincount((cls << bits) | bucket, minlength=len(hist))
    return hist


@dataclass(frozen=True)
class Cuts:
    """Per class c and cut j (0: train|val, 1: val|test): a row is above cut j when its bucket is
    >= ``above[c, j]``; it is pending when its bucket == ``pending[c, j]`` (-1: none)."""

    bits: int
    above: np.ndarray  # (K, 2) int64
    pending: np.ndarray  # (K, 2) int64
    ranks: np.ndarray  # (K, 2) int64: the cut ranks
    before: np.ndarray  # (K, 2^B) int64: rows of the class in lower buckets


def find_cuts(hist: np.ndarray, counts: np.ndarray, bits: int) -> Cuts:
    """Locate the bucket of every cut rank from the per-class bucket histogram."""
    k = len(counts)
    h = hist.reshape(k, 1 << bits)
    cum = np.cumsum(h, axis=1)
    before = cum - h
    ranks = np.stack([counts[:, 0], counts[:, 0] + counts[:, 1]], axis=1)
    above = np.zeros((k, 2), dtype=np.int64)
    pending = np.full((k, 2), -1, dtype=np.int64)
    for c in range(k):
        for j in range(2):
            r = ranks[c, j]
            b = int(np.searchsorted(cum[c], r, side="right"))
            if b >= h.shape[1] or before[c, b] == r:
                above[c, j] = b  # a clean cut at a bucket boundary
            else:
                above[c, j], pending[c, j] = b + 1, b
    return Cuts(bits, above, pending, ranks, before)


# --------------------------------------------------------------------------------------------
# writing


def task_name(frags: list[Fragment]) -> str:
    """A file name that depends only on the task's input, so a retried task overwrites."""
    text = "\n".join(f"{f.path}:{f.row_groups}" for f in frags)
    return "part-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class SplitWriters:
    """One streaming Parquet writer per split, each to a temporary name renamed on close.

    Rows are buffered up to ``ROW_GROUP_ROWS`` per split so that files get full row groups
    rather than one small group per input batch. Only the label column is dictionary-encoded:
    trying it on free text and float features costs most of the write time and saves nothing.
    """

    def __init__(
        self,
        fs,
        out_dir: str,
        name: str,
        schema: pa.Schema,
        label: str,
        splits: tuple[str, ...] = SPLITS,
    ):
        self.fs, self.out_dir, self.name, self.schema = fs, out_dir, name, schema
        self.label, self.splits = label, splits
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.buffers: dict[str, list[pa.Table]] = {s: [] for s in splits}
        self.buffered: dict[str, int] = dict.fromkeys(splits, 0)

    def write(self, split: str, table: pa.Table, where: str) -> None:
        if table.num_rows == 0:
            return
        if not table.schema.equals(self.schema):
            try:
                table = table.select(self.schema.names).cast(self.schema)
            except (pa.ArrowException, KeyError, ValueError) as e:
                raise ValueError(
                    f"{where} disagrees with the first file on the schema, and cannot be cast "
                    f"to it ({e}); the first file has: "
                    f"{self.schema.to_string(show_schema_metadata=False)}"
                ) from None
        self.buffers[split].append(table)
        self.buffered[split] += table.num_rows
        if self.buffered[split] >= ROW_GROUP_ROWS:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if not self.buffers[split]:
            return
        if split not in self.writers:
            tmp = join(self.out_dir, split, f".{self.name}.tmp")
            self.writers[split] = pq.ParquetWriter(
                tmp, self.schema, filesystem=self.fs, use_dictionary=[self.label]
            )
        table = pa.concat_tables(self.buffers[split])
        self.writers[split].write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.buffers[split], self.buffered[split] = [], 0

    def close(self) -> None:
        for split in self.splits:
            self._flush(split)
        for split, w in self.writers.items():
            w.close()
            self.fs.move(
                join(self.out_dir, split, f".{self.name}.tmp"),
                join(self.out_dir, split, f"{self.name}.parquet"),
            )


def assign(cls: np.ndarray, keys: np.ndarray, cuts: Cuts) -> tuple[np.ndarray, np.ndarray]:
    """Split index (0 train, 1 val, 2 test) per row, and a mask of rows left for the driver."""
    bucket = (keys >> np.uint64(64 - cuts.bits)).astype(np.int64)
    split = (bucket >= cuts.above[cls, 0]).astype(np.int8) + (bucket >= cuts.above[cls, 1])
    pend = (bucket == cuts.pending[cls, 0]) | (bucket == cuts.pending[cls, 1])
    return split, pend


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
    for frag in frags:
        for table, cls in class_batches(source, frag, cols, schema, lm):
            keys = row_keys(table, cols, seed)
            split, pend = assign(cls, keys, cuts)
            if pend.any():
                extra = {"__cls": cls[pend], "__key": keys[pend]}
                pt = table.filter(pa.array(pend))
                for name, v in extra.items():
                    pt = pt.append_column(name, pa.array(v))
                pending.append(pt)
            for s, name in enumerate(SPLITS):
                mask = (split == s) & ~pend
                if mask.any():
                    writers.write(name, table.filter(pa.array(mask)), frag.path)
                    written[s] += np.bincount(cls[mask], minlength=len(lm))
    writers.close()
    return written, (pa.concat_tables(pending, promote_options="permissive") if pending else None)


def resolve_pending(pending: pa.Table, cuts: Cuts) -> np.ndarray:
    """Split index of each pending row: exact ranks inside its cut bucket."""
    cls = pending["__cls"].to_numpy()
    keys = pending["__key"].to_numpy()
    order = np.lexsort((keys, cls))
    ties = np.r_[False, (keys[order][1:] == keys[order][:-1]) & (cls[order][1:] == cls[order][:-1])]
    if ties.any():
        # Equal keys: equal rows (any order gives the same output) or rows sharing an id. The
        # content hash orders the latter the same way in every run.
        try:
            content = row_hash(pending.drop_columns(["__cls", "__key"]))
        except ValueError:
            raise ValueError(
                f"{int(ties.sum())} rows share their id with another row of the same class; "
                "the values of data.id must be unique"
            ) from None
        order = np.lexsort((content, keys, cls))  # by class, then key, then content
    cls_s, keys_s = cls[order], keys[order]
    bucket = (keys_s >> np.uint64(64 - cuts.bits)).astype(np.int64)
    # rank = rows of the class in lower buckets + position inside (class, bucket)
    group_start = np.r_[True, (cls_s[1:] != cls_s[:-1]) | (bucket[1:] != bucket[:-1])]
    idx = np.arange(len(order))
    first = np.maximum.accumulate(np.where(group_start, idx, 0))
    rank = cuts.before[cls_s, bucket] + (idx - first)
    split_sorted = (rank >= cuts.ranks[cls_s, 0]).astype(np.int8) + (rank >= cuts.ranks[cls_s, 1])
    split = np.empty_like(split_sorted)
    split[order] = split_sorted
    return split


@dataclass(frozen=True)
class SplitResult:
    path: str
    counts: dict[str, dict[str, int]]  # split -> label key -> rows
    warnings: list[str]
    pending_rows: int


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
                f"{lacking[:10]}{' ...' if len(lacking) > 10 else ''}"
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
    bits = bucket_bits(len(label_map))
    hist_task = functools.partial(
        histogram_task, cols=cols, schema=read_schema, lm=label_map, seed=spec.seed, bits=bits
    )
    hist = sum(run_fragments(source, hist_task, description="split: key histogram"))
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
        written = sum(p[0] for p in parts)
        pend_tables = [p[1] for p in parts if p[1] is not None]
        pending_rows = 0
        if pend_tables:
            pending = pa.concat_tables(pend_tables, promote_options="permissive")
            pending_rows = pending.num_rows
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
                    written[s] += np.bincount(cls[mask], minlength=len(n))
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
        manifest = {
            "seed": spec.seed,
            "fractions": {"train": 1 - spec.val - spec.test, "val": spec.val, "test": spec.test},
            "identity": f"column {cols.id!r}" if cols.id else "hash of every column",
            "source": source.path,
            "rows": {name: int(target[:, s].sum()) for s, name in enumerate(SPLITS)},
            "counts": counts,
            "run": uuid.uuid4().hex,
            **(extra_manifest or {}),
        }
        write_json_atomic(join(tmp, MANIFEST), manifest, fs)
        replace_dir(fs, tmp, final)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_dir(tmp)
        raise
    return SplitResult(out_dir, counts, split_warnings(label_map, target, spec), pending_rows)


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
