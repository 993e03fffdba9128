"""Atomic writes: temporary folders beside the target, and what a killed writer left."""

from __future__ import annotations

import pyarrow.fs as pafs

from engine.io import clear_stale_temps, replace_dir, temp_dir_beside


def test_a_new_write_removes_what_a_dead_writer_left_and_nothing_else(tmp_path):
    fs = pafs.LocalFileSystem()
    final = str(tmp_path / "splits")
    (tmp_path / ".splits.tmp-deadbeef" / "train").mkdir(parents=True)
    (tmp_path / ".splits.tmp-deadbeef" / "train" / "part-0.parquet").write_bytes(b"half")
    (tmp_path / ".splits.tmp-0badc0de.old").mkdir()  # an old copy moved aside, never deleted
    (tmp_path / ".embedded.tmp-12345678").mkdir()  # another target's: kept
    (tmp_path / "splits-notes.txt").write_text("kept")
    tmp = temp_dir_beside(fs, final)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".embedded.tmp-12345678", tmp.rpartition("/")[2], "splits-notes.txt"]
    (tmp_path / tmp.rpartition("/")[2] / "x").write_text("new")
    replace_dir(fs, tmp, final)
    assert (tmp_path / "splits" / "x").read_text() == "new"
    assert clear_stale_temps(fs, final) == []
    assert clear_stale_temps(fs, str(tmp_path / "embedded")) == [
        str(tmp_path / ".embedded.tmp-12345678")
    ]
