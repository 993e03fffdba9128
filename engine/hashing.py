"""Row identity as 64-bit hashes, and per-row randomness derived from it.

Ray Data blocks and Parquet row groups are regrouped differently from run to run, so a per-block
RNG is not reproducible. Every random draw in the engine is instead a function of (seed, row
identity): the hash of an id column, or of the row's whole content. Equal rows hash equal, so
they are interchangeable for any draw; the same data written in another layout (other files,
row groups or row order) hashes the same.

Column order does not matter (columns are combined by name); integer widths and float widths
are normalized (int32 5 == int64 5, float32 0.5 == float64 0.5), -0.0 == 0.0 and all NaNs hash
alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NULL = np.uint64(0x6A09E667F3BCC909)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, vectorized over a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _const(text: str) -> np.ndarray:
    """A stable 64-bit constant for a name (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return np.frombuffer(digest, dtype=np.uint64).copy()


def seed_mix(seed: int, stream: str = "") -> np.ndarray:
    """A 1-element uint64 array mixing a seed and a stream name (e.g. "split")."""
    return splitmix64(_const(stream) ^ np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))


def column_hash(col: pa.Array | pa.ChunkedArray, name: str = "") -> np.ndarray:
    """One uint64 per value of ``col``; nulls hash to a fixed value."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_boolean(t):
        h = col.cast(pa.uint8()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
    elif pa.types.is_unsigned_integer(t):
        h = col.cast(pa.uint64()).fill_null(0).to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(t):
        h = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_floating(t):
        x = col.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) + 0.0
        x = np.where(np.isnan(x), np.nan, x)
        h = x.view(np.uint64)
    elif pa.types.is_temporal(t) or pa.types.is_decimal(t):
        h = column_hash(
            col.cast(pa.int64()) if not pa.types.is_decimal(t) else col.cast(pa.string())
        )
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        values = col.to_numpy(zero_copy_only=False)
        h = pd.util.hash_array(values.astype(object), categorize=False)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        values = column_hash(pc.list_flatten(col))
        pos = np.arange(len(values), dtype=np.int64) - np.repeat(
            np.cumsum(lengths) - lengths, lengths
        )
        mixed = splitmix64(values + pos.astype(np.uint64) * _GOLDEN)
        csum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(mixed, dtype=np.uint64)])
        ends = np.cumsum(lengths)
        h = splitmix64((csum[ends] - csum[ends - lengths]) ^ lengths.astype(np.uint64))
    elif pa.types.is_struct(t):
        h = row_hash(pa.Table.from_arrays(col.flatten(), names=[f.name for f in t]))
    else:
        raise ValueError(
            f"column {name!r} has type {t}, which the row hash does not cover; set data.id to a "
            "column of unique row ids (int or string) to identify rows"
        )
    h = splitmix64(h)
    if col.null_count:
        h = np.where(col.is_null().to_numpy(zero_copy_only=False), _NULL, h)
    return h


def row_hash(table: pa.Table, columns: Sequence[str] | None = None) -> np.ndarray:
    """The identity of every row: a hash of the named columns (all by default), by name."""
    names = sorted(columns if columns is not None else table.column_names)
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for name in names:
        h = splitmix64(h + splitmix64(column_hash(table[name], name) ^ _const(name)))
    return h


def seeded(identity: np.ndarray, seed: int, stream: str) -> np.ndarray:
    """Uniform uint64 draws, one per row, from (seed, stream, row identity)."""
    return splitmix64(identity ^ seed_mix(seed, stream))
