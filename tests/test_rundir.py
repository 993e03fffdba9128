"""engine.rundir: the run folder's layout, ownership and staleness, on a real prepared run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import load_spec
from engine.prepare import prepare
from engine.rundir import RunDir

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    from engine.datasets import make_dataset

    data = tmp_path_factory.mktemp("data") / "digits"
    make_dataset("digits_lt10", data)
    spec = load_spec(
        ROOT / "jobs/configs/digits_lt100.yaml",
        [f"data.path={data}", f"run_dir={tmp_path_factory.mktemp('runs') / 'r'}"],
    )
    prepare(spec)
    return spec


def test_paths_are_spelled_once_and_point_at_what_prepare_wrote(prepared):
    run = RunDir(prepared.run_dir)
    for path in (run.run_record, run.spec_yaml, run.stats, run.label_map_path, run.plot):
        assert run.exists(path[len(run.path) + 1 :]), path
    assert run.model_split("val") == run.split("val") == f"{run.path}/splits/val"
    keys = run.label_map().keys
    counts = run.class_counts("train", keys)
    assert counts.sum() == run.require_splits()["rows"]["train"] and len(counts) == 10
    assert run.resampled_counts(keys) is None and run.resampled_record() is None
    rels = [rel for rel, _ in run.prepared_records()]
    assert rels == [
        "splits/_manifest.json",
        "embedded/_complete.json",
        "resampled/_resample.json",
        "label_map.json",
    ]


def test_an_embedded_run_reads_its_splits_from_embedded(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.model_split("train") == f"{tmp_path}/splits/train"
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "_complete.json").write_text("{}")
    assert run.model_split("train") == f"{tmp_path}/embedded/train"


def test_another_run_is_refused_and_a_stale_spec_named(prepared):
    run = RunDir(prepared.run_dir)
    other = replace(prepared, name="someone-else")
    with pytest.raises(ValueError, match="holds the artifacts of run .* different name"):
        run.claim(other, overwrite=False)
    run.claim(prepared, overwrite=False)  # its own run: accepted
    changed = replace(prepared, embed=replace(prepared.embed, batch_size=7))
    with pytest.raises(ValueError, match="prepared with another embed spec"):
        run.check_prepared_with(changed)
    run.check_prepared_with(prepared)
    assert json.loads(Path(run.run_record).read_text())["name"] == prepared.name


def test_a_folder_without_splits_says_what_to_run(tmp_path):
    with pytest.raises(ValueError, match="no complete splits: run `raybalance prepare` first"):
        RunDir(str(tmp_path)).require_splits()
    assert RunDir(str(tmp_path)).split_manifest() is None


def _holder_process(run: Path, ready: Path) -> subprocess.Popen:
    code = (
        "import sys, time, pathlib\n"
        "from engine.rundir import RunDir\n"
        f"with RunDir({str(run)!r}).lock('raybalance prepare'):\n"
        f"    pathlib.Path({str(ready)!r}).write_text('held')\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    return proc


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder_process(run, tmp_path / "ready")
    try:
        with pytest.raises(ValueError) as e:
            with RunDir(str(run)).lock("raybalance run"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "`raybalance prepare`" in msg
        assert "remove" in msg and ".raybalance.lock" in msg
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".raybalance.lock").exists()  # left behind by the killed writer
    with RunDir(str(run)).lock("raybalance run"):  # taken over: its pid is gone
        with RunDir(str(run)).lock("raybalance prepare"):  # the same process may nest
            held = json.loads((run / ".raybalance.lock").read_text())
            assert held["pid"] == os.getpid() and held["command"] == "raybalance run"
        assert (run / ".raybalance.lock").exists()  # the inner one did not release it
    assert not (run / ".raybalance.lock").exists()


def test_prepare_is_refused_while_another_writer_holds_the_folder(prepared, tmp_path):
    run = Path(prepared.run_dir)
    stamp = (run / "splits" / "_manifest.json").stat().st_mtime_ns
    holder = _holder_process(run, tmp_path / "ready")
    try:
        with pytest.raises(ValueError, match=f"being written by .* \\(pid {holder.pid} "):
            prepare(prepared, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert (run / "splits" / "_manifest.json").stat().st_mtime_ns == stamp  # untouched
