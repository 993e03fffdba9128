"""`raybalance prepare` with resampling end to end on real data and real Ray: stats -> split ->
(embed) -> resample, only the train split resampled, stats of the result beside the originals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from engine.strategy import resolve_targets
from jobs import cli

pytestmark = pytest.mark.usefixtures("ray_local")

RANDOM = [
    ("random_under", "auto", "under"),
    ("random_over", "auto", "over"),
    ("combined", "{max_ratio: 3}", "combined"),
]


@pytest.fixture(scope="module")
def page_blocks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "page_blocks0"
    assert cli.main(["datasets", "make", "page_blocks0", "--out", str(out)]) == 0
    return out


def _features(path: Path) -> list[str]:
    names = pads.dataset(str(path)).schema.names
    return [n for n in names if n.startswith("f")]


def _prepare(data: Path, run: Path, *sets: str) -> int:
    feats = ",".join(_features(data))
    args = ["prepare", "--set", f"data.path={data}", "--set", "data.label=label"]
    args += ["--set", f"data.features=[{feats}]", "--set", f"run_dir={run}"]
    for s in sets:
        args += ["--set", s]
    return cli.main(args + ["--overwrite"])


@pytest.mark.parametrize("method,strategy,kind", RANDOM)
def test_prepare_resamples_only_train(page_blocks, tmp_path, capsys, method, strategy, kind):
    run = tmp_path / "run"
    sets = [f"resample.method={method}", f"resample.sampling_strategy={strategy}"]
    assert _prepare(page_blocks, run, *sets) == 0
    printed = capsys.readouterr().out
    assert f"train after {method}" in printed

    manifest = json.loads((run / "splits" / "_manifest.json").read_text())
    train_counts = manifest["counts"]["train"]
    import yaml

    targets = resolve_targets(yaml.safe_load(strategy), train_counts, kind)
    after = json.loads((run / "resampled" / "stats.json").read_text())
    before = json.loads((run / "stats.json").read_text())
    assert after["counts"] == targets
    assert set(after) >= set(before) - {"null_labels_dropped"}  # same schema
    written = pads.dataset(str(run / "resampled" / "train")).to_table()
    assert dict(Counter(str(v) for v in written["label"].to_pylist())) == targets
    # val/test untouched: the manifest counts, in the splits folder
    for name in ("val", "test"):
        t = pads.dataset(str(run / "splits" / name)).to_table()
        assert dict(Counter(str(v) for v in t["label"].to_pylist())) == {
            k: v for k, v in manifest["counts"][name].items() if v
        }
    assert (run / "class_distribution.png").read_bytes()[:4] == b"\x89PNG"


def test_method_none_removes_a_stale_resampled_train(page_blocks, tmp_path):
    run = tmp_path / "run"
    assert _prepare(page_blocks, run, "resample.method=random_over") == 0
    assert (run / "resampled" / "stats.json").exists()
    assert _prepare(page_blocks, run, "resample.method=none") == 0
    assert not (run / "resampled").exists()


def test_bad_strategy_is_a_user_error(page_blocks, tmp_path, capsys):
    run = tmp_path / "run"
    code = _prepare(
        page_blocks, run, "resample.method=random_over", "resample.sampling_strategy=majority"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "majority" in err and "over-sampl" in err
    assert not (run / "resampled").exists()
