"""Class statistics: counts in one pass, weight schemes against their definitions, outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.utils.class_weight import compute_class_weight

from engine.config import DataSpec, StatsSpec
from engine.data import LabelMap, resolve_source
from engine.stats import class_stats, class_weights, compute_stats, plot_class_distribution
from tests.conftest import long_tail_table, write_layout

COUNTS = np.array([900, 60, 30, 7, 3])


def test_inverse_equals_scikit_learn_balanced():
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    expected = compute_class_weight("balanced", classes=np.arange(len(COUNTS)), y=y)
    assert np.allclose(class_weights(COUNTS, "inverse"), expected)


def test_inverse_sqrt_definition():
    w = class_weights(COUNTS, "inverse_sqrt")
    assert np.allclose(w * np.sqrt(COUNTS), (w * np.sqrt(COUNTS))[0])  # ∝ 1/sqrt(n)
    assert np.isclose((w * COUNTS).sum(), COUNTS.sum())


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999, 0.9999])
def test_effective_number_follows_cui_et_al(beta):
    w = class_weights(COUNTS, "effective_number", beta)
    effective = (1 - beta ** COUNTS.astype(float)) / (1 - beta)
    ref = 1 / effective
    ref = ref / ref.sum() * len(COUNTS)
    assert np.allclose(w, ref)


def test_effective_number_limits():
    # beta -> 0: every class weighs the same; beta -> 1: tends to inverse frequency.
    assert np.allclose(class_weights(COUNTS, "effective_number", 0.0), 1.0)
    w = class_weights(COUNTS, "effective_number", 1 - 1e-9)
    inv = 1 / COUNTS
    assert np.allclose(w, inv / inv.sum() * len(COUNTS), rtol=1e-4)


def test_median_frequency():
    w = class_weights(COUNTS, "median_frequency")
    assert np.isclose(w[2], 1.0)  # 30 is the median count
    assert np.allclose(w, 30 / COUNTS)


def test_bad_counts_and_schemes():
    with pytest.raises(ValueError, match="positive"):
        class_weights(np.array([3, 0]), "inverse")
    with pytest.raises(ValueError, match="unknown class-weight scheme 'magic'"):
        class_weights(COUNTS, "magic")


def test_explicit_weights_must_cover_every_class():
    lm = LabelMap.from_values("y", "string", ["a", "b", "c"])
    counts = {"a": 5, "b": 3, "c": 1}
    st = class_stats(lm, counts, StatsSpec(weights={"a": 1.0, "b": 2.0, "c": 9.0}))
    assert st.weights["explicit"] == (1.0, 2.0, 9.0)
    with pytest.raises(ValueError, match=r"labels \['z'\] are not classes .* classes \['c'\]"):
        class_stats(lm, counts, StatsSpec(weights={"a": 1.0, "b": 2.0, "z": 9.0}))


def test_pass_counts_equal_numpy_whatever_the_layout(ray_local, tmp_path):
    table = long_tail_table(n=30_000, k=7, ratio=300, seed=11)
    expected = np.bincount(table["label"].to_numpy(), minlength=7)
    for i, layout in enumerate([dict(files=1, row_group=30_000), dict(files=9, row_group=1000)]):
        write_layout(table, tmp_path / f"d{i}", **layout)
        res = compute_stats(resolve_source(str(tmp_path / f"d{i}")), DataSpec(label="label"))
        assert res.stats.counts == tuple(expected)
        assert res.stats.label_map.labels == tuple(range(7))
        assert res.summary.rows == 30_000
        assert res.stats.imbalance_ratio == expected.max() / expected.min()


def test_stats_json_schema_and_plot(ray_local, tmp_path):
    pq.write_table(pa.table({"label": ["x"] * 50 + ["y"] * 5 + ["z"] * 2}), tmp_path / "d.parquet")
    res = compute_stats(resolve_source(str(tmp_path / "d.parquet")), DataSpec(label="label"))
    out = json.loads(json.dumps(res.stats.to_json()))
    assert out["labels"] == ["x", "y", "z"]
    assert out["counts"] == {"x": 50, "y": 5, "z": 2}
    assert out["imbalance_ratio"] == 25.0
    assert set(out["weights"]) == {
        "inverse",
        "inverse_sqrt",
        "effective_number",
        "median_frequency",
    }
    assert out["weights"]["inverse"]["z"] == pytest.approx(57 / (3 * 2))
    png = plot_class_distribution({"all": res.stats.count_of()}, str(tmp_path / "p" / "c.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
