"""Member kinds end to end on real Ray: a linear and a gbdt model trained by the engine on
feature columns, scored through the scoring pool, ensembled into one artifact (nothing pickled)
and applied by ``raybalance predict`` to rows without labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.config import ThresholdSpec, load_spec
from engine.ensemble import combine, fit_combination, model_ref, score_splits, write_artifact
from engine.predict import predict
from engine.prepare import prepare
from engine.rundir import RunDir
from engine.thresholds import apply_thresholds, fit_thresholds
from engine.train import train_model
from jobs import cli

ROOT = Path(__file__).parent.parent
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _no_pickle(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".pkl", ".pickle", ".pt", ".bin"), path
            assert path.read_bytes()[:2] not in PICKLE_MAGIC, path


@pytest.mark.slow
def test_linear_and_gbdt_members_score_ensemble_and_predict(ray_local, tmp_path):
    data = tmp_path / "digits"
    assert cli.main(["datasets", "make", "digits_lt100", "--out", str(data)]) == 0
    base = [f"data.path={data}", f"run_dir={tmp_path / 'run'}"]
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", base)
    prepare(spec)
    run = RunDir(spec.run_dir)
    refs = []
    for name, kind in (("m1", "linear"), ("m2", "gbdt")):
        member = load_spec(
            ROOT / "jobs/configs/digits_lt100.yaml",
            [*base, f"model.kind={kind}", "loss.weights=inverse_sqrt"],
        )
        result = train_model(member, out_dir=str(tmp_path / kind))
        refs.append(model_ref(spec.data, name, result.best_dir))
    assert [(r.kind, r.inputs) for r in refs] == [("mlp", "features"), ("gbdt", "features")]
    label_map = run.label_map()
    splits = {s: run.model_split(s) for s in ("val", "test")}
    scores = score_splits(refs, splits, spec.data, label_map)
    for r in refs:  # each member learned the digits (10 classes)
        assert (scores["test"].proba[r.name].argmax(1) == scores["test"].y).mean() > 0.7
    fit = fit_combination(scores["val"].y, [scores["val"].proba[r.name] for r in refs])
    p_val = combine(
        [scores["val"].proba[r.name] for r in refs],
        fit.weights,
        fit.temperature,
        fit.member_temperatures,
    )
    thresholds = fit_thresholds(scores["val"].y, p_val, ThresholdSpec(cv_folds=0))
    art = write_artifact(spec.data, refs, fit, thresholds, str(tmp_path / "art"), label_map)
    _no_pickle(Path(art))
    assert sorted(os.listdir(Path(art) / "members" / "m2")) == [
        "config.json",
        "label_map.json",
        "manifest.json",  # the model's own (it can predict by itself)
        "model.txt",
    ]

    raw = tmp_path / "raw"
    raw.mkdir()
    test = pq.read_table(splits["test"])
    pq.write_table(test.drop_columns([spec.data.label]), raw / "x.parquet")
    out = tmp_path / "pred"
    assert predict(art, str(raw), str(out)).rows == test.num_rows
    got = pq.read_table(out)
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in label_map.keys], 1)
    expected = combine(
        [scores["test"].proba[r.name] for r in refs],
        fit.weights,
        fit.temperature,
        fit.member_temperatures,
    )
    np.testing.assert_allclose(proba, expected, atol=1e-4)  # both in the split's row order
    pred = apply_thresholds(proba, thresholds)
    assert got.column("prediction").to_pylist() == [label_map.labels[i] for i in pred]
