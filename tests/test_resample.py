"""Random over/under/combined resampling and the SMOTE stage on real Ray: exact counts, subsets
and supersets of the original rows, determinism across file/row-group layouts, traceability,
no adjacent duplicates, atomic output."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.config import DataSpec, ResampleSpec
from engine.data import LabelMap, read_schema, resolve_columns, resolve_source
from engine.hashing import row_hash, seeded
from engine.resample import (
    SAMPLE_COLUMNS,
    expand,
    output_schema,
    plan,
    resample,
    spread_duplicates,
)
from engine.strategy import resolve_targets
from tests.conftest import long_tail_table, write_layout

pytestmark = pytest.mark.usefixtures("ray_local")

KIND = {"random_over": "over", "random_under": "under", "combined": "combined"}


def _setup(tmp_path, table, files=1, row_group=1 << 20, shuffle_seed=None, id=True, name="in"):
    folder = write_layout(table, tmp_path / name, files, row_group, shuffle_seed)
    source = resolve_source(folder)
    schema = read_schema(source)
    data = DataSpec(path=folder, label="label", features=["x0", "x1"], id="id" if id else None)
    cols = resolve_columns(schema, data)
    counts = Counter(table["label"].to_pylist())
    lm = LabelMap.from_values("label", "int", list(counts))
    return source, cols, lm, {lm.keys[i]: counts[v] for i, v in enumerate(lm.labels)}, schema


def _read(path) -> pa.Table:
    return pq.read_table(path)


def _identity(table: pa.Table, id: bool) -> np.ndarray:
    cols = ["id"] if id else ["id", "label", "x0", "x1", "note"]
    return row_hash(table, cols)


def _expected_copies(table: pa.Table, method, strategy, seed, id=True) -> dict[int, int]:
    """A one-process reference: per class, base copies and the extra ones for the smallest keys."""
    labels = table["label"].to_numpy()
    ident = _identity(table, id)
    keys = seeded(ident, seed, "resample")
    classes = sorted(set(labels.tolist()))
    counts = {str(c): int((labels == c).sum()) for c in classes}
    targets = resolve_targets(strategy, counts, KIND[method])
    copies: Counter = Counter()
    for c in classes:
        rows = np.flatnonzero(labels == c)
        n, t = len(rows), targets[str(c)]
        base, extra = t // n, t % n
        order = rows[np.argsort(keys[rows], kind="stable")]
        for rank, r in enumerate(order):
            copies[int(ident[r])] += base + (rank < extra)
    return copies


CASES = [
    ("random_under", "auto"),
    ("random_under", {"power": 0.5}),
    ("random_over", "auto"),
    ("random_over", {"max_ratio": 4}),
    ("combined", "balanced"),
    ("combined", {"max_ratio": 5}),
]


@pytest.mark.parametrize("method,strategy", CASES)
def test_exact_counts_and_rows_match_the_reference(tmp_path, method, strategy):
    table = long_tail_table(4000, k=6, ratio=40, seed=1)
    source, cols, lm, counts, schema = _setup(tmp_path, table, files=3, row_group=500)
    spec = ResampleSpec(method=method, sampling_strategy=strategy, seed=7)
    res = resample(source, cols, lm, counts, spec, str(tmp_path / "out"), schema)
    out = _read(res.path)
    targets = resolve_targets(strategy, counts, KIND[method])
    got = Counter(str(v) for v in out["label"].to_pylist())
    assert dict(got) == {k: v for k, v in targets.items() if v}
    assert res.after == targets and res.before == counts
    # exactly the reference's rows, with the reference's number of copies
    expected = _expected_copies(table, method, strategy, 7)
    produced = Counter(out["source_id"].to_pylist())
    assert produced == Counter({k: v for k, v in expected.items() if v})
    # the copies carry the original content
    orig = {int(i): r for i, r in zip(_identity(table, True), table.to_pylist())}
    for row in out.slice(0, 300).to_pylist():
        src = orig[row["source_id"]]
        assert all(row[c] == src[c] for c in table.column_names)
    if method == "random_under":
        assert max(produced.values()) == 1  # a subset, no duplicates
        assert set(out["id"].to_pylist()) <= set(table["id"].to_pylist())
    if method == "random_over":
        assert set(out["id"].to_pylist()) == set(table["id"].to_pylist())  # a superset
    assert pc.all(pc.equal(out["synthetic"], False)).as_py()
    assert len(set(out["sample_id"].to_pylist())) == out.num_rows
    # copy indices run 0..copies-1 per source row
    by_src: dict[int, list[int]] = {}
    for s, c in zip(out["source_id"].to_pylist(), out["copy_index"].to_pylist()):
        by_src.setdefault(s, []).append(c)
    assert all(sorted(v) == list(range(len(v))) for v in by_src.values())
    assert res.pending_rows >= 0


def _canonical(path) -> pa.Table:
    t = _read(path)
    return t.take(pc.sort_indices(t, [("sample_id", "ascending")]))


@pytest.mark.parametrize("id", [True, False])
def test_deterministic_across_layouts(tmp_path, id):
    table = long_tail_table(3000, k=5, ratio=30, seed=2)
    spec = ResampleSpec(method="combined", sampling_strategy={"power": 0.3}, seed=3)
    outs = []
    for i, (files, rg, shuffle) in enumerate([(1, 1 << 20, None), (7, 123, 5), (2, 999, 9)]):
        source, cols, lm, counts, schema = _setup(
            tmp_path, table, files, rg, shuffle, id=id, name=f"in{i}"
        )
        res = resample(source, cols, lm, counts, spec, str(tmp_path / f"out{i}"), schema)
        outs.append(_canonical(res.path))
    assert outs[0].equals(outs[1]) and outs[0].equals(outs[2])
    # another seed chooses other rows
    other = resample(
        source,
        cols,
        lm,
        counts,
        ResampleSpec("combined", {"power": 0.3}, seed=4),
        str(tmp_path / "other"),
        schema,
    )
    assert not _canonical(other.path)["source_id"].equals(outs[0]["source_id"])


def test_pending_rows_resolved_exactly(tmp_path):
    # Rows repeated many times share a key, so cut buckets hold many rows: the driver ranks them.
    rng = np.random.default_rng(0)
    n0, n1 = 30_000, 500
    x = np.r_[np.arange(n0) % 40, 1000 + rng.standard_normal(n1)]
    table = pa.table(
        {
            "id": np.r_[np.arange(n0) % 40, 100 + np.arange(n1)].astype(np.int64),
            "label": np.r_[np.zeros(n0), np.ones(n1)].astype(np.int64),
            "x0": x,
            "x1": x,
            "note": ["x"] * (n0 + n1),
        }
    )
    source, cols, lm, counts, schema = _setup(
        tmp_path, table, files=3, row_group=4000, shuffle_seed=1, id=False
    )
    spec = ResampleSpec(method="combined", sampling_strategy="balanced", seed=1)
    res = resample(source, cols, lm, counts, spec, str(tmp_path / "out"), schema)
    assert res.pending_rows > 0
    out = _read(res.path)
    half = (n0 + n1) // 2
    assert Counter(out["label"].to_pylist()) == {0: half, 1: n0 + n1 - half}
    expected = _expected_copies(table, "combined", "balanced", 1, id=False)
    assert Counter(out["source_id"].to_pylist()) == Counter(
        {k: v for k, v in expected.items() if v}
    )


def _adjacent_pairs(t: pa.Table) -> int:
    s = t["source_id"].to_numpy()
    return int((s[1:] == s[:-1]).sum())


def test_duplicates_not_adjacent_in_written_files(tmp_path):
    table = long_tail_table(5000, k=4, ratio=100, seed=3)
    source, cols, lm, counts, schema = _setup(tmp_path, table, files=2, row_group=5000)
    spec = ResampleSpec(method="random_over", sampling_strategy="auto", seed=0)
    res = resample(source, cols, lm, counts, spec, str(tmp_path / "out"), schema)
    files = [f for f in os.listdir(res.path) if f.endswith(".parquet")]
    assert files
    dup = 0
    for f in files:
        t = pq.read_table(os.path.join(res.path, f))
        assert _adjacent_pairs(t) == 0, f
        dup += t.num_rows - len(set(t["source_id"].to_pylist()))
    assert dup > 10_000  # heavy duplication was there to spread


def test_spread_duplicates_properties():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 400))
        src = rng.integers(0, max(2, n // int(rng.integers(1, 8))), size=n).astype(np.uint64)
        order = spread_duplicates(src, rng.permutation(n))
        assert sorted(order.tolist()) == list(range(n))
        s = src[order]
        if np.unique(src, return_counts=True)[1].max() <= (n + 1) // 2:
            assert (s[1:] == s[:-1]).sum() <= 1, trial  # at most a local dead end
    # one value over half the batch: left as is, no error
    src = np.array([1, 1, 1, 2], dtype=np.uint64)
    assert sorted(spread_duplicates(src, np.arange(4)).tolist()) == [0, 1, 2, 3]


def test_expand_copies_and_ids():
    t = pa.table({"a": [1, 2, 3], "label": [0, 0, 1]})
    schema = output_schema(t.schema)
    ident = np.array([10, 20, 30], dtype=np.uint64)
    out = expand(t, ident, np.array([3, 0, 1]), 0, schema)
    assert Counter(out["a"].to_pylist()) == {1: 3, 3: 1}
    assert sorted(out["copy_index"].to_pylist()) == [0, 0, 1, 2]
    assert out.schema.names == ["a", "label", *SAMPLE_COLUMNS]
    assert len(set(out["sample_id"].to_pylist())) == 4


def test_plan_counts():
    p = plan(np.array([10, 3, 4]), np.array([5, 7, 4]), "combined")
    assert p.base.tolist() == [0, 2, 1] and p.extra.tolist() == [5, 1, 0]
    assert (p.base * np.array([10, 3, 4]) + p.extra).tolist() == [5, 7, 4]
    s = plan(np.array([10, 3]), np.array([10, 9]), "smote")
    assert s.base.tolist() == [1, 1] and s.synthetic.tolist() == [0, 6]


def test_errors_name_the_problem(tmp_path):
    table = long_tail_table(500, k=3, ratio=5, seed=4)
    source, cols, lm, counts, schema = _setup(tmp_path, table)
    with pytest.raises(ValueError, match="no rows"):
        resample(
            source,
            cols,
            lm,
            counts,
            ResampleSpec("random_under", {"0": 0}),
            str(tmp_path / "o1"),
            schema,
        )
    assert not os.path.exists(tmp_path / "o1")
    clash = table.append_column("sample_id", pa.array(np.arange(500)))
    s2, c2, lm2, n2, sc2 = _setup(tmp_path, clash, name="clash")
    with pytest.raises(ValueError, match="sample_id"):
        resample(s2, c2, lm2, n2, ResampleSpec("random_over"), str(tmp_path / "o2"), sc2)
    nofeat = resolve_columns(schema, DataSpec(path="x", label="label", text="note"))
    with pytest.raises(ValueError, match="data.features"):
        resample(source, nofeat, lm, counts, ResampleSpec("smote"), str(tmp_path / "o3"), schema)
    with pytest.raises(ValueError, match="over-sampl|under-sampl|majority"):
        resample(
            source,
            cols,
            lm,
            counts,
            ResampleSpec("random_over", "majority"),
            str(tmp_path / "o4"),
            schema,
        )


def test_rerun_replaces_atomically(tmp_path):
    table = long_tail_table(800, k=3, ratio=8, seed=5)
    source, cols, lm, counts, schema = _setup(tmp_path, table)
    out = str(tmp_path / "out")
    a = resample(source, cols, lm, counts, ResampleSpec("random_over"), out, schema)
    n1 = _read(a.path).num_rows
    b = resample(source, cols, lm, counts, ResampleSpec("random_over"), out, schema)
    assert _read(b.path).num_rows == n1  # replaced, not appended
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no temporary folder left
    assert {"train", "_resample.json", "stats.json"} <= set(os.listdir(out))


# --------------------------------------------------------------------------------------------
# the SMOTE family through the stage


def _clustered(n0=1500, n1=120, n2=40, seed=0) -> pa.Table:
    """Three classes in 2-D: a big one, and two small ones next to / inside it (borderline)."""
    rng = np.random.default_rng(seed)
    x = np.r_[
        rng.normal(0, 1, (n0, 2)), rng.normal([2.5, 0], 0.7, (n1, 2)), rng.normal(1, 0.5, (n2, 2))
    ]
    labels = np.r_[np.zeros(n0), np.ones(n1), np.full(n2, 2)].astype(np.int64)
    n = len(labels)
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "label": labels,
            "x0": x[:, 0],
            "x1": x[:, 1].astype(np.float32),
            "note": [f"r{i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("method", ["smote", "borderline1", "borderline2", "adasyn"])
def test_smote_family_through_the_stage(tmp_path, method):
    table = _clustered()
    spec = ResampleSpec(method=method, sampling_strategy="auto", k_neighbors=5, seed=2)
    outs = []
    for i, (files, rg, shuffle) in enumerate([(1, 1 << 20, None), (3, 200, 4)]):
        source, cols, lm, counts, schema = _setup(tmp_path, table, files, rg, shuffle, name=f"i{i}")
        res = resample(source, cols, lm, counts, spec, str(tmp_path / f"o{i}"), schema)
        outs.append(_canonical(res.path))
    out = outs[0]
    assert outs[0].equals(outs[1])  # the same whatever the layout
    assert dict(Counter(out["label"].to_pylist())) == {0: 1500, 1: 1500, 2: 1500}
    orig = out.filter(pc.invert(out["synthetic"]))
    syn = out.filter(out["synthetic"])
    assert sorted(orig["id"].to_pylist()) == list(range(table.num_rows))  # originals kept once
    assert syn.num_rows == 1500 * 2 - 160
    assert syn["id"].null_count == syn.num_rows and syn["note"].null_count == syn.num_rows
    assert len(set(out["sample_id"].to_pylist())) == out.num_rows
    # each synthetic point lies on a segment from its seed row (source_id) to a row of its
    # class (borderline2 may step halfway toward another class's row)
    ident = _identity(table, True)
    feats = np.c_[table["x0"].to_numpy(), table["x1"].to_numpy().astype(np.float64)]
    labels = table["label"].to_numpy()
    by_id = {int(h): i for i, h in enumerate(ident)}
    sx = np.c_[syn["x0"].to_numpy(), syn["x1"].to_numpy().astype(np.float64)]
    for j, (src, lab) in enumerate(zip(syn["source_id"].to_pylist(), syn["label"].to_pylist())):
        i = by_id[src]
        assert labels[i] == lab
        d = sx[j] - feats[i]
        pool = feats if method == "borderline2" else feats[labels == lab]
        e = pool - feats[i]
        # some row r with sx = x_i + t (x_r - x_i), t in [0, 1]
        cross = np.abs(d[0] * e[:, 1] - d[1] * e[:, 0])
        t = (e @ d) / np.maximum((e * e).sum(1), 1e-12)
        on = (cross < 1e-4 * (1 + np.abs(e).sum(1))) & (t >= -1e-6) & (t <= 1 + 1e-6)
        assert on.any() or np.allclose(d, 0, atol=1e-5), (method, j)


def test_smote_on_a_list_column_and_tiny_classes(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    labels = np.r_[np.zeros(n - 4), [1, 1, 1, 2]].astype(np.int64)
    vec = rng.standard_normal((n, 8)).astype(np.float32)
    table = pa.table(
        {
            "label": labels,
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), 8),
        }
    )
    folder = write_layout(table, tmp_path / "in", 2, 100)
    source = resolve_source(folder)
    schema = read_schema(source)
    cols = resolve_columns(schema, DataSpec(path=folder, label="label", features=["vec"]))
    lm = LabelMap.from_values("label", "int", [0, 1, 2])
    counts = {"0": n - 4, "1": 3, "2": 1}
    spec = ResampleSpec(method="smote", sampling_strategy={"1": 50, "2": 10}, k_neighbors=5)
    res = resample(source, cols, lm, counts, spec, str(tmp_path / "out"), schema)
    out = _read(res.path)
    assert dict(Counter(out["label"].to_pylist())) == {0: n - 4, 1: 50, 2: 10}
    assert out.schema.field("vec").type == schema.field("vec").type
    text = " ".join(res.warnings)
    assert "'1'" in text or "1" in text  # k lowered for class 1 (3 rows)
    assert any("random" in w.lower() for w in res.warnings)  # class 2 (1 row) falls back
    two = out.filter(pc.equal(out["label"], 2))
    v = np.stack(two["vec"].to_numpy(zero_copy_only=False))
    assert np.allclose(v, vec[-1])  # copies of its only row
