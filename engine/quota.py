"""Exact keyed quotas: pick exactly q_c rows of every class c, streaming, without gathering a
class anywhere — the mechanism under the exact splits (``engine.split``) and the exact random
resampling (``engine.resample``).

    hist, bits = key_histogram(source, cols, None, lm, seed, stream, "counting keys")  # pass 1
    cuts = find_cuts(hist, quotas, bits)                                       # on the driver
    for frag, batch in keyed_batches(source, frags, cols, None, lm, seed, cuts, stream):  # pass 2
        ... batch.side (0, 1, 2 per row), batch.pend (rows left for the driver)
    side = resolve_pending(pending, cuts)                                      # exact ranks

Every row gets a uniform 64-bit key from (seed, row identity, pass name); a class's rows are
ranked by key and cut at two ranks per class (``quotas``: (K, 3) rows below the first cut,
between, above). Pass 1 counts keys per class in 2^B buckets; the bucket holding each cut rank
is found on the driver; pass 2 sends every row whose bucket is clearly on one side of its
class's cuts to that side, and returns the few rows of cut buckets, which the driver ranks
exactly (by key, then content hash). The outcome depends only on the seed and the rows.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data import (
    Columns,
    Fragment,
    LabelMap,
    Source,
    iter_fragment,
    normalize_labels,
    run_fragments,
)
from engine.hashing import row_hash, seeded
from engine.io import join

SPLITS = ("train", "val", "test")
ROW_GROUP_ROWS = 1 << 20


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
        labels = normalize_labels(table[cols.label], cols.label)  # blank strings are null too
        if labels.null_count:
            table = table.filter(pc.is_valid(labels))
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


def key_histogram(
    source: Source,
    cols: Columns,
    schema: pa.Schema | None,
    lm: LabelMap,
    seed: int,
    stream: str,
    description: str,
) -> tuple[np.ndarray, int]:
    """Pass 1 as Ray tasks over ``source``'s fragments: (the summed histogram, its bits)."""
    bits = bucket_bits(len(lm))
    task = functools.partial(
        histogram_task, cols=cols, schema=schema, lm=lm, seed=seed, bits=bits, stream=stream
    )
    return sum(run_fragments(source, task, description=description)), bits


@dataclass(frozen=True)
class Cuts:
    """Per class c and cut j (two cuts for a split: 0 train|val, 1 val|test; k-1 for k folds):
    a row is above cut j when its bucket is >= ``above[c, j]``; it is pending when its bucket
    == ``pending[c, j]`` (-1: none)."""

    bits: int
    above: np.ndarray  # (K, J) int64
    pending: np.ndarray  # (K, J) int64
    ranks: np.ndarray  # (K, J) int64: the cut ranks
    before: np.ndarray  # (K, 2^B) int64: rows of the class in lower buckets


def find_cuts(hist: np.ndarray, counts: np.ndarray, bits: int) -> Cuts:
    """Locate the bucket of every cut rank from the per-class bucket histogram; ``counts``
    (K, J+1) are the rows of each class on each side, in key order."""
    k = len(counts)
    h = hist.reshape(k, 1 << bits)
    cum = np.cumsum(h, axis=1)
    before = cum - h
    ranks = np.cumsum(np.asarray(counts, dtype=np.int64)[:, :-1], axis=1)
    cuts = ranks.shape[1]
    above = np.zeros((k, cuts), dtype=np.int64)
    pending = np.full((k, cuts), -1, dtype=np.int64)
    for c in range(k):
        for j in range(cuts):
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
    """Side index (split 0 train, 1 val, 2 test; or fold) per row, and a mask of rows left for
    the driver."""
    bucket = (keys >> np.uint64(64 - cuts.bits)).astype(np.int64)
    side = np.zeros(len(keys), dtype=np.int8)
    pend = np.zeros(len(keys), dtype=bool)
    for j in range(cuts.above.shape[1]):
        side += bucket >= cuts.above[cls, j]
        pend |= bucket == cuts.pending[cls, j]
    return side, pend


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
    split_sorted = np.zeros(len(rank), dtype=np.int8)
    for j in range(cuts.ranks.shape[1]):
        split_sorted += rank >= cuts.ranks[cls_s, j]
    split = np.empty_like(split_sorted)
    split[order] = split_sorted
    return split


@dataclass
class KeyedBatch:
    """One input batch of a keyed pass: the rows, their classes, identities and keys, the side
    of the cuts each falls on (0, 1, 2) and the mask of rows left for the driver."""

    table: pa.Table
    cls: np.ndarray
    identity: np.ndarray
    keys: np.ndarray
    side: np.ndarray
    pend: np.ndarray

    def pending(self, **extra: np.ndarray) -> pa.Table:
        """The pending rows with ``__cls``, ``__key`` and ``extra`` columns appended."""
        mask = pa.array(self.pend)
        out = self.table.filter(mask)
        columns = {"__cls": self.cls, "__key": self.keys, **extra}
        for name, v in columns.items():
            out = out.append_column(name, pa.array(v[self.pend]))
        return out


def keyed_batches(
    source: Source,
    frags: list[Fragment],
    cols: Columns,
    schema: pa.Schema | None,
    lm: LabelMap,
    seed: int,
    cuts: Cuts,
    stream: str,
) -> Iterator[tuple[Fragment, KeyedBatch]]:
    """Pass 2 of a keyed quota over ``frags``: every batch with its rows' sides of the cuts."""
    for frag in frags:
        for table, cls in class_batches(source, frag, cols, schema, lm):
            identity = row_identity(table, cols)
            keys = seeded(identity, seed, stream)
            side, pend = assign(cls, keys, cuts)
            yield frag, KeyedBatch(table, cls, identity, keys, side, pend)


def concat_pending(pending: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(pending, promote_options="permissive") if pending else None
