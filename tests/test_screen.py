"""Unreadable input files under ``data.max_errored_blocks``: which files are dropped, what they
lose per class (as far as each file still allows), the limit, and what the report says."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import SpecError, load_spec
from engine.data import resolve_source
from engine.pipeline import input_notes
from engine.screen import Screen, dropped_warning, screen_files
from jobs import cli

LABELS = ["ant", "bee", "cat"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "label": [LABELS[i] for i in rng.choice(3, n, p=[0.7, 0.2, 0.1])],
            "text": [f"row {seed} {i} " + "word " * int(rng.integers(1, 9)) for i in range(n)],
            "x": rng.random(n),
        }
    )


def _write(path: Path, table: pa.Table) -> None:
    # two row groups, no dictionary or compression: each column chunk is plain bytes
    pq.write_table(table, path, row_group_size=table.num_rows // 2, use_dictionary=False,
                   compression="NONE")  # fmt: skip


def _corrupt(path: Path, row_group: int, column: str) -> None:
    """Overwrite one column chunk of one row group (its page headers included) with junk."""
    meta = pq.ParquetFile(path).metadata.row_group(row_group)
    cols = [meta.column(i) for i in range(meta.num_columns)]
    col = next(c for c in cols if c.path_in_schema == column)
    start, size = col.data_page_offset, col.total_compressed_size
    data = bytearray(path.read_bytes())
    data[start : start + size] = b"\xff" * size
    path.write_bytes(bytes(data))


def _counts(table: pa.Table) -> dict[str, int]:
    return dict(Counter(table.column("label").to_pylist()))


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, pa.Table]]:
    """Five files: two readable, one truncated, one with a corrupt text chunk (its labels
    still read), one with a corrupt label chunk in its first row group."""
    data = tmp_path / "data"
    data.mkdir()
    tables = {name: _table(200, seed) for seed, name in enumerate("abcde")}
    for name, t in tables.items():
        _write(data / f"{name}.parquet", t)
    c = data / "c.parquet"
    c.write_bytes(c.read_bytes()[: c.stat().st_size // 2])  # truncated: no footer
    _corrupt(data / "d.parquet", 1, "text")
    _corrupt(data / "e.parquet", 0, "label")
    return data, tables


def test_each_unreadable_file_is_named_and_its_rows_counted_per_class_where_known(folder):
    data, tables = folder
    source = resolve_source(str(data))
    got = dict(zip(source.files, screen_files(source, list(source.files), "label")))
    assert got[str(data / "a.parquet")] is None and got[str(data / "b.parquet")] is None
    c, d, e = (got[str(data / f"{n}.parquet")] for n in "cde")
    assert "c.parquet" in c.error and c.rows is None and c.unknown_rows is None and not c.per_class
    assert "d.parquet" in d.error
    assert (d.rows, d.unknown_rows, d.per_class) == (200, 0, _counts(tables["d"]))
    second_half = tables["e"].slice(100)
    assert (e.rows, e.unknown_rows, e.per_class) == (200, 100, _counts(second_half))

    rec = Screen(tuple(str(data / f"{n}.parquet") for n in "ab"), (c, d, e)).dropped(3)
    want = Counter(_counts(tables["d"])) + Counter(_counts(second_half))
    assert rec["per_class"] == dict(sorted(want.items()))
    assert rec["unknown_class_rows"] == 100 and rec["files_with_unknown_rows"] == 1
    assert rec["rows"] == 400  # d's 200, e's 100 labelled and 100 of unknown class
    line = dropped_warning(rec)
    assert "dropped 3 unreadable input file(s)" in line and "100 rows of unknown class" in line
    assert f"ant: {want['ant']}" in line and "1 file(s) of unknown size" in line


def _prepare(data: Path, run: Path, allowed: int) -> int:
    args = ["prepare", "--set", f"data.path={data}", "--set", "data.features=[x]"]
    args += ["--set", f"run_dir={run}", "--set", f"data.max_errored_blocks={allowed}"]
    return cli.main(args)


def test_prepare_drops_unreadable_files_within_the_limit_and_the_report_counts_them(
    ray_local, folder, tmp_path, capsys
):
    data, tables = folder
    run = tmp_path / "run"
    # three unreadable files, two allowed: refused, every bad file named, nothing written
    assert _prepare(data, run, 2) == 2
    err = capsys.readouterr().err
    assert "3 of 5 input files" in err and "data.max_errored_blocks=2" in err
    for n in "cde":
        assert f"{n}.parquet" in err
    assert not (run / "stats.json").exists() and not (run / "splits").exists()

    assert _prepare(data, run, 3) == 0
    stats = json.loads((run / "stats.json").read_text())
    kept = Counter(_counts(tables["a"])) + Counter(_counts(tables["b"]))
    assert stats["counts"] == {k: kept[k] for k in LABELS}  # only the readable files' rows
    manifest = json.loads((run / "splits" / "_manifest.json").read_text())
    split_rows = Counter()
    for per_split in manifest["counts"].values():
        split_rows.update(per_split)
    assert dict(split_rows) == dict(kept)  # no row lost or doubled among the kept files
    dropped = stats["dropped"]
    names = [Path(f["path"]).name for f in dropped["files"]]
    assert names == ["c.parquet", "d.parquet", "e.parquet"]
    assert dropped["unknown_class_rows"] == 100 and dropped["files_with_unknown_rows"] == 1

    got, notes = input_notes(str(run))
    assert got == dropped and len(notes) == 1 and notes[0].startswith("input: dropped 3")


def test_without_the_setting_nothing_is_screened_and_the_first_bad_file_stops(
    ray_local, folder, tmp_path, capsys
):
    data, _ = folder
    assert _prepare(data, tmp_path / "run", 0) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_max_errored_blocks_must_be_a_count(value):
    with pytest.raises(SpecError, match="max_errored_blocks"):
        load_spec(None, [f"data.max_errored_blocks={json.dumps(value)}"])
