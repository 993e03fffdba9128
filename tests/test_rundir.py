"""engine.rundir: the run folder's layout, ownership and staleness, on a real prepared run."""

from __future__ import annotations

import json
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
