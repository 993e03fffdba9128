"""Row identity hashes: equal rows hash equal, whatever the layout or the column types' widths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engine.hashing import column_hash, row_hash, seeded, splitmix64


def test_splitmix64_matches_the_reference_values():
    # First outputs of the splitmix64 generator seeded with 0 (Vigna's reference code):
    # state += golden; z = mix(state) — i.e. our finalizer applied to 0, golden, 2·golden.
    golden = 0x9E3779B97F4A7C15
    states = np.array([0, golden, (2 * golden) % 2**64], dtype=np.uint64)
    out = splitmix64(states)
    assert [int(x) for x in out] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]


def test_row_hash_ignores_column_order_and_widths():
    a = pa.table(
        {"x": pa.array([1, 2, 3], pa.int32()), "y": pa.array([0.5, -0.0, 2.0], pa.float32())}
    )
    b = pa.table(
        {"y": pa.array([0.5, 0.0, 2.0], pa.float64()), "x": pa.array([1, 2, 3], pa.int64())}
    )
    assert np.array_equal(row_hash(a), row_hash(b))


def test_row_hash_separates_rows_and_columns():
    t = pa.table({"a": [1, 2, 1], "b": ["x", "x", "y"]})
    h = row_hash(t)
    assert len(set(h.tolist())) == 3
    swapped = pa.table({"a": ["x", "x", "y"], "b": [1, 2, 1]})
    assert not np.array_equal(row_hash(swapped), h)


def test_equal_rows_hash_equal_and_nulls_are_values():
    t = pa.table({"a": [1, None, 1, None], "s": ["q", "q", "q", None]})
    h = row_hash(t)
    assert h[0] == h[2]
    assert len({h[0], h[1], h[3]}) == 3


@pytest.mark.parametrize(
    "values, typ",
    [
        ([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], []], pa.list_(pa.float32())),
        ([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [0.0, 0.0]], pa.list_(pa.float64(), 2)),
    ],
)
def test_list_columns_hash_by_value_and_position(values, typ):
    h = column_hash(pa.array(values, typ))
    assert h[0] == h[1] and h[0] != h[2] and h[2] != h[3]


def test_hash_is_independent_of_batching():
    rng = np.random.default_rng(1)
    t = pa.table({"v": rng.standard_normal(1000), "s": [str(i % 13) for i in range(1000)]})
    whole = row_hash(t)
    parts = np.concatenate([row_hash(t.slice(o, 137)) for o in range(0, 1000, 137)])
    assert np.array_equal(whole, parts)


def test_seeded_draws_are_uniform_and_seed_dependent():
    ids = row_hash(pa.table({"id": np.arange(200_000)}))
    u0, u1 = seeded(ids, 0, "split"), seeded(ids, 1, "split")
    assert not np.array_equal(u0, u1)
    top = (u0 >> np.uint64(60)).astype(int)  # 16 buckets
    counts = np.bincount(top, minlength=16)
    expected = len(ids) / 16
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 40  # 15 dof: p ~ 5e-4


def test_unsupported_types_say_how_to_fix():
    col = pa.array([{"a": 1}], pa.map_(pa.string(), pa.int64()))
    with pytest.raises(ValueError, match="set data.id"):
        column_hash(col, "m")
