"""engine.quota: exact keyed quotas, independent of file layout and row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.config import DataSpec
from engine.data import LabelMap, fragments, resolve_columns, resolve_source
from engine.quota import (
    bucket_bits,
    concat_pending,
    find_cuts,
    histogram_task,
    keyed_batches,
    resolve_pending,
)


def _sides(folder, quotas_of, seed=3, stream="test"):
    source = resolve_source(str(folder))
    cols = resolve_columns(pq.read_schema(source.files[0]), DataSpec(label="y", id="id"))
    lm = LabelMap.from_values("y", "string", ["a", "b", "c"])
    frags = fragments(source, target=4)
    bits = 6  # coarse buckets: many rows fall in cut buckets and go through resolve_pending
    hist = histogram_task(source, frags, cols, None, lm, seed, bits, stream)
    counts = hist.reshape(3, -1).sum(axis=1)
    cuts = find_cuts(hist, quotas_of(counts), bits)
    sides: dict[int, int] = {}
    pending = []
    for _, b in keyed_batches(source, frags, cols, None, lm, seed, cuts, stream):
        ids = b.table.column("id").to_numpy()
        sides.update(zip(ids[~b.pend].tolist(), b.side[~b.pend].tolist()))
        if b.pend.any():
            pending.append(b.pending())
    table = concat_pending(pending)
    if table is not None:
        side = resolve_pending(table, cuts)
        sides.update(zip(table.column("id").to_pylist(), side.tolist()))
    return sides


def test_quotas_are_exact_and_do_not_depend_on_layout_or_order(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], size=3000, p=[0.8, 0.15, 0.05])
    table = pa.table({"id": np.arange(3000), "y": y})
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    pq.write_table(table, one / "t.parquet", row_group_size=500)
    shuffled = table.take(pa.array(rng.permutation(3000)))
    for i, part in enumerate(np.array_split(np.arange(3000), 3)):
        pq.write_table(shuffled.take(pa.array(part)), many / f"p{i}.parquet")

    def quotas(counts):  # (K, 3): 10 %, 30 %, the rest
        first = counts // 10
        second = (counts * 3) // 10
        return np.stack([first, second, counts - first - second], axis=1)

    got = _sides(one, quotas)
    assert _sides(many, quotas) == got  # same rows on the same side
    assert len(got) == 3000
    sides = np.array([got[i] for i in range(3000)])
    for c in "abc":
        n = int((y == c).sum())
        per_side = np.bincount(sides[y == c], minlength=3)
        assert per_side.tolist() == quotas(np.array([n]))[0].tolist()
    assert _sides(one, quotas, seed=4) != got  # the seed decides


def test_bucket_bits_bounds():
    assert bucket_bits(1) == 16 and bucket_bits(10**6) == 4
