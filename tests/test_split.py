"""Exact stratified splits: counts, the partition property, and determinism across layouts."""

from __future__ import annotations

import glob
import os
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import DataSpec, SplitSpec
from engine.data import resolve_source
from engine.split import MANIFEST, SPLITS, row_keys, split, split_counts
from engine.stats import compute_stats
from tests.conftest import long_tail_table, write_layout

# --------------------------------------------------------------------------------------------
# counts (pure)


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(0, 100_000),
    val=st.sampled_from([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3]),
    test=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.45]),
)
def test_counts_sum_to_n_and_are_within_one_row(n, val, test):
    counts = split_counts(n, val, test)
    assert sum(counts) == n
    fractions = (
        1 - Fraction(repr(val)) - Fraction(repr(test)),
        Fraction(repr(val)),
        Fraction(repr(test)),
    )
    for c, f in zip(counts, fractions):
        assert abs(c - n * f) < 1


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (1, 0, 1)),
        (3, (2, 0, 1)),
        (4, (2, 1, 1)),
        (10, (7, 1, 2)),
    ],
)
def test_tiny_classes_go_to_train_first_then_test_then_val(n, expected):
    assert split_counts(n, 0.1, 0.2) == expected


def test_no_val_split():
    assert split_counts(7, 0.0, 0.3) == (5, 0, 2)


# --------------------------------------------------------------------------------------------
# end to end on Ray


def _read(folder: str) -> pa.Table:
    return pads.dataset(folder, format="parquet").to_table()


SPEC = SplitSpec(val=0.1, test=0.2, seed=7)


def _split(source, res, spec, out_dir):
    lm, counts = res.stats.label_map, res.summary.counts
    return split(source, res.columns, lm, counts, spec, str(out_dir), res.schema)


def _run_split(data_dir, out_dir, spec=SPEC, id_col="id"):
    source = resolve_source(str(data_dir))
    res = compute_stats(source, DataSpec(path=str(data_dir), label="label", id=id_col))
    return res, _split(source, res, spec, out_dir)


def _reference(table: pa.Table, spec: SplitSpec, id_col: str | None) -> dict[str, set]:
    """Sort every class by key and cut it: the single-process definition of the split."""
    from engine.data import Columns

    cols = Columns("label", None, (), None, id_col, tuple(table.column_names))
    keys = row_keys(table, cols, spec.seed)
    labels = table["label"].to_numpy()
    ids = table["id"].to_numpy()
    out = {s: set() for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = idx[np.argsort(keys[idx], kind="stable")]
        a, b, _ = split_counts(len(idx), spec.val, spec.test)
        for name, part in zip(SPLITS, (order[:a], order[a : a + b], order[a + b :])):
            out[name] |= set(ids[part].tolist())
    return out


@pytest.mark.parametrize("id_col", ["id", None])
def test_split_is_exact_partition_and_matches_the_reference(ray_local, tmp_path, id_col):
    table = long_tail_table(n=20_000, k=8, ratio=200)
    write_layout(table, tmp_path / "data", files=3, row_group=2000)
    spec = SplitSpec(val=0.1, test=0.2, seed=7)
    res, out = _run_split(tmp_path / "data", tmp_path / "splits", spec, id_col)
    expected = _reference(table, spec, id_col)
    counts = {c: int((table["label"].to_numpy() == c).sum()) for c in range(8)}
    seen: list[int] = []
    for s, name in enumerate(SPLITS):
        got = _read(str(tmp_path / "splits" / name))
        assert got.schema.names == table.schema.names  # the input's columns, unchanged
        ids = got["id"].to_numpy()
        seen += ids.tolist()
        assert set(ids.tolist()) == expected[name]
        for c in range(8):
            n_c = int((got["label"].to_numpy() == c).sum())
            assert n_c == split_counts(counts[c], spec.val, spec.test)[s]
            assert out.counts[name][str(c)] == n_c
    assert sorted(seen) == list(range(table.num_rows))  # no row lost or duplicated
    assert os.path.exists(tmp_path / "splits" / MANIFEST)
    assert not glob.glob(str(tmp_path / ".*tmp*"))


@pytest.mark.parametrize("id_col", ["id", None])
def test_same_seed_same_split_whatever_the_layout(ray_local, tmp_path, id_col):
    table = long_tail_table(n=12_000, k=5, ratio=100, seed=3)
    layouts = [
        dict(files=1, row_group=12_000),
        dict(files=1, row_group=500),  # one file cut into row-group fragments
        dict(files=7, row_group=300, shuffle_seed=1),
        dict(files=2, row_group=4000, shuffle_seed=2),
    ]
    results = []
    for i, layout in enumerate(layouts):
        write_layout(table, tmp_path / f"d{i}", **layout)
        _run_split(tmp_path / f"d{i}", tmp_path / f"s{i}", id_col=id_col)
        results.append(
            {s: sorted(_read(str(tmp_path / f"s{i}" / s))["id"].to_pylist()) for s in SPLITS}
        )
    assert all(r == results[0] for r in results[1:])
    # another seed gives another split
    _run_split(tmp_path / "d0", tmp_path / "other", SplitSpec(val=0.1, test=0.2, seed=8), id_col)
    other = sorted(_read(str(tmp_path / "other" / "test"))["id"].to_pylist())
    assert other != results[0]["test"]


def test_identical_rows_at_the_cut_keep_counts_exact(ray_local, tmp_path):
    n_dup = 1001
    base = long_tail_table(n=3000, k=3, seed=5).drop_columns(["id"])
    dup = pa.table(
        {
            "label": np.full(n_dup, 9, np.int64),
            "x0": np.zeros(n_dup),
            "x1": np.zeros(n_dup, np.float32),
            "note": ["same"] * n_dup,
        }
    )
    table = pa.concat_tables([base, dup])
    write_layout(table, tmp_path / "data", files=4, row_group=700, shuffle_seed=0)
    source = resolve_source(str(tmp_path / "data"))
    res = compute_stats(source, DataSpec(path=str(tmp_path / "data"), label="label"))
    spec = SplitSpec(val=0.25, test=0.25, seed=1)
    out = _split(source, res, spec, tmp_path / "s")
    assert out.pending_rows >= n_dup  # all identical: one key, one bucket, resolved on the driver
    for s, name in enumerate(SPLITS):
        got = _read(str(tmp_path / "s" / name))
        n9 = int((got["label"].to_numpy() == 9).sum())
        assert n9 == split_counts(n_dup, 0.25, 0.25)[s]
    total = sum(_read(str(tmp_path / "s" / n)).num_rows for n in SPLITS)
    assert total == table.num_rows


def test_rows_left_for_the_driver_are_few(ray_local, tmp_path):
    table = long_tail_table(n=200_000, k=4, ratio=10, seed=2)
    write_layout(table, tmp_path / "data", files=2, row_group=50_000)
    _, out = _run_split(tmp_path / "data", tmp_path / "s")
    # two cut buckets per class out of 2^16 -> a handful of rows, not a class
    assert out.pending_rows < 50


def test_empty_split_still_has_the_schema(ray_local, tmp_path):
    table = long_tail_table(n=500, k=3, seed=4)
    write_layout(table, tmp_path / "data", files=1, row_group=500)
    _run_split(tmp_path / "data", tmp_path / "s", SplitSpec(val=0.0, test=0.3, seed=0))
    val = _read(str(tmp_path / "s" / "val"))
    assert val.num_rows == 0 and val.schema.names == table.schema.names


def test_failed_split_leaves_the_old_splits_and_no_temporary_files(ray_local, tmp_path):
    table = long_tail_table(n=2000, k=3, seed=6)
    write_layout(table, tmp_path / "data", files=2, row_group=1000)
    _run_split(tmp_path / "data", tmp_path / "run" / "splits")
    before = sorted(_read(str(tmp_path / "run" / "splits" / "train"))["id"].to_pylist())
    # A third file whose `x0` holds text: hashing works, writing it under one schema fails.
    bad = table.slice(0, 10).set_column(2, "x0", pa.array(["n/a"] * 10))
    pq.write_table(bad, tmp_path / "data" / "p999.parquet")
    source = resolve_source(str(tmp_path / "data"))
    res = compute_stats(source, DataSpec(path=str(tmp_path / "data"), label="label", id="id"))
    with pytest.raises(ValueError, match="p999.parquet disagrees with the first file"):
        _split(source, res, SplitSpec(), tmp_path / "run" / "splits")
    after = sorted(_read(str(tmp_path / "run" / "splits" / "train"))["id"].to_pylist())
    assert after == before
    assert sorted(os.listdir(tmp_path / "run")) == ["splits"]


def test_csv_and_jsonl_inputs_split_exactly_and_alike(ray_local, tmp_path):
    import json

    import pyarrow.csv as pacsv

    table = long_tail_table(n=3000, k=4, seed=8).drop_columns(["x1"])
    (tmp_path / "csv").mkdir()
    (tmp_path / "jsonl").mkdir()
    for i, idx in enumerate(np.array_split(np.arange(3000), 3)):
        part = table.take(pa.array(idx))
        pacsv.write_csv(part, tmp_path / "csv" / f"p{i}.csv")
    with open(tmp_path / "jsonl" / "all.jsonl", "w") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")
    ids = {}
    for fmt in ("csv", "jsonl"):
        _, out = _run_split(tmp_path / fmt, tmp_path / f"s-{fmt}", id_col=None)
        ids[fmt] = {
            s: sorted(_read(str(tmp_path / f"s-{fmt}" / s))["id"].to_pylist()) for s in SPLITS
        }
        assert sum(len(v) for v in ids[fmt].values()) == 3000
        assert _read(str(tmp_path / f"s-{fmt}" / "train")).column_names == table.column_names
    assert ids["csv"] == ids["jsonl"]


def test_null_labels_are_dropped_when_asked(ray_local, tmp_path):
    table = long_tail_table(n=2000, k=3, seed=9)
    labels = table["label"].to_pylist()
    for i in range(0, 2000, 10):
        labels[i] = None
    table = table.set_column(1, "label", pa.array(labels, pa.int64()))
    write_layout(table, tmp_path / "data", files=2, row_group=500)
    source = resolve_source(str(tmp_path / "data"))
    spec = DataSpec(path=str(tmp_path / "data"), label="label", id="id", drop_null_labels=True)
    res = compute_stats(source, spec)
    assert res.summary.null_labels == 200
    _split(source, res, SPEC, tmp_path / "s")
    got = pa.concat_tables([_read(str(tmp_path / "s" / s)) for s in SPLITS])
    assert got.num_rows == 1800 and got["label"].null_count == 0
    assert sorted(got["id"].to_pylist()) == [i for i in range(2000) if i % 10]
