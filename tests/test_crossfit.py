"""Cross-fitting (engine.crossfit): exact stratified folds of train + val, each candidate
trained again on every fold's training rows with what its trial chose on val fixed, and every
row of train + val scored by the one fold model that did not see it — on real Ray."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import crossfit
from engine.config import load_spec, spec_record
from engine.data import LabelMap
from engine.prepare import prepare
from engine.rundir import RunDir
from engine.scoring import score_splits
from engine.train import train_model
from jobs import cli

ROOT = Path(__file__).parent.parent


def test_folds_are_exactly_stratified_and_a_one_row_class_is_held_by_none():
    y = np.repeat(np.arange(5), [103, 41, 9, 2, 1])
    fold = crossfit.assign_folds(y, 5, seed=3)
    assert (fold[y == 4] == -1).all()
    for c in range(4):  # each class dealt evenly over the folds
        n = np.bincount(fold[y == c], minlength=5)
        assert n.max() - n.min() <= 1 and n.sum() == (y == c).sum()
    sizes = np.bincount(fold[fold >= 0], minlength=5)
    assert sizes.max() - sizes.min() <= 1
    assert not np.array_equal(fold, crossfit.assign_folds(y, 5, seed=4))
    assert np.array_equal(fold, crossfit.assign_folds(y, 5, seed=3))


def test_settings_added_later_leave_a_specs_record_while_at_their_defaults():
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", [])
    rec = spec_record(spec)
    assert "rounds" not in rec["model"] and "keep" not in rec["train"]
    assert "cross_fit" not in rec["ensemble"]
    set_ = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", ["ensemble.cross_fit=3"])
    assert spec_record(set_)["ensemble"]["cross_fit"] == 3


def test_a_trial_stopped_early_is_cross_fitted_to_its_best_epoch(tmp_path):
    for trial, history in (("t1", None), ("t2", [{"epoch": 0, "val_macro_f1": 0.5, "C": 10.0}])):
        (tmp_path / trial / "best").mkdir(parents=True)
        with open(tmp_path / trial / "attempts.jsonl", "w") as f:
            f.write(json.dumps({"knobs": {"loss.name": "focal"}}) + "\n")
        if history:
            (tmp_path / trial / "metrics.json").write_text(json.dumps(history))
    best = str(tmp_path / "t1" / "best")
    cand = crossfit.trial_candidate("m1", "mlp", best, "val_macro_f1", best_epoch=3)
    assert cand.best == {"epoch": 2} and cand.knobs == {"loss.name": "focal"}
    with pytest.raises(ValueError, match="no metrics.json"):
        crossfit.trial_candidate("m1", "linear", best, "val_macro_f1", best_epoch=1)
    cand = crossfit.trial_candidate("m2", "linear", str(tmp_path / "t2" / "best"), "val_macro_f1")
    assert cand.best["C"] == 10.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    assert cli.main(["datasets", "make", "digits_lt100", "--out", str(out)]) == 0
    return out


def _trial(spec_sets: list[str], kind: str, out: Path, knobs: dict) -> str:
    """A trial folder as the search leaves it: the exported model, its history and the
    knobs of its attempt."""
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", spec_sets)
    result = train_model(spec, out_dir=str(out))
    with open(out / "attempts.jsonl", "w") as f:
        f.write(json.dumps({"knobs": knobs}) + "\n")
    return result.best_dir


def _ids(folder: str) -> list[int]:
    return pq.read_table(folder, columns=["id"]).column("id").to_pylist()


@pytest.mark.slow
def test_no_row_is_scored_by_a_model_that_saw_it(ray_local, digits, tmp_path):
    # an id column makes each row nameable (digits_lt100 has none: add one)
    table = pq.read_table(digits)
    table = table.append_column("id", pa.array(np.arange(table.num_rows)))
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(table, data / "d.parquet")
    base = [f"data.path={data}", f"run_dir={tmp_path / 'run'}", "data.id=id", "train.epochs=4"]
    base += ["train.num_workers=1"]
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", base)
    prepare(spec)
    run = RunDir(spec.run_dir)
    kinds = {"m1": "linear", "m2": "gbdt", "m3": "mlp"}
    cands = []
    for name, kind in kinds.items():
        knobs = {"model.kind": kind, "loss.name": "weighted_ce"}
        sets = [*base, f"model.kind={kind}", "loss.name=weighted_ce", "loss.weights=inverse"]
        best = _trial(sets, kind, tmp_path / "trials" / name, knobs)
        cands.append(crossfit.trial_candidate(name, kind, best, spec.tune.metric))
    assert "C" in cands[0].best and "rounds" in cands[1].best and "epoch" in cands[2].best

    plan = crossfit.write_folds(run, 3, seed=0)
    train_ids = _ids(run.model_split("train")) + _ids(run.model_split("val"))
    held_ids = [_ids(plan.held_dir(f)) for f in range(3)]
    kept = _ids(plan.kept_dir)
    # the folds' held-out rows and the kept rows partition train + val, in the plan's positions
    assert sorted(sum(held_ids, []) + kept) == sorted(train_ids)
    for f in range(3):
        assert held_ids[f] == [train_ids[i] for i in plan.held[f]]
        fold_train = _ids(plan.train_dir(f))
        assert not set(fold_train) & set(held_ids[f])  # a fold never trains on what it holds
        assert sorted(fold_train + held_ids[f]) == sorted(train_ids)
    assert len(kept) == 1  # digits_lt100's class with one row in train + val

    fits = crossfit.fit_folds(spec, run, plan, cands)
    refs = crossfit.fold_refs(spec, cands, fits)
    for c in cands:  # what the trial chose on val is fixed in each fold
        for f in range(3):
            folder = Path(fits[c.name][f]).parent
            history = json.loads((folder / "metrics.json").read_text())
            if c.kind == "linear":
                assert [r["C"] for r in history] == [c.best["C"]]
            elif c.kind == "gbdt":
                assert history[0]["rounds"] == c.best["rounds"]
            else:
                assert len(history) == c.best["epoch"] + 1
    # a second ensemble reuses the fold models; a candidate trained from other choices gets
    # new ones, and the fold models no candidate has any more are removed
    assert crossfit.fit_folds(spec, run, plan, cands) == fits
    other = replace(cands[0], best={**cands[0].best, "C": cands[0].best["C"] * 10})
    fits2 = crossfit.fit_folds(spec, run, plan, [other])
    assert Path(fits2["m1"][0]).parents[1] != Path(fits["m1"][0]).parents[1]
    assert not Path(fits["m2"][0]).exists() and Path(fits2["m1"][2]).exists()
    history = json.loads((Path(fits2["m1"][0]).parent / "metrics.json").read_text())
    assert [r["C"] for r in history] == [cands[0].best["C"] * 10]
    fits = crossfit.fit_folds(spec, run, plan, cands)
    assert crossfit.write_folds(run, 3, seed=0).held[1].tolist() == plan.held[1].tolist()
    cf = crossfit.fold_scores(spec, run, plan, refs)
    label_map = run.label_map()
    assert cf.held.sum() == len(train_ids) - 1
    for f in range(3):  # each held-out row's probabilities are its own fold's model's
        mine = [refs[c.name][f] for c in cands]
        again = score_splits(mine, {"h": plan.held_dir(f)}, spec.data, label_map)["h"]
        for c, r in zip(cands, mine):
            np.testing.assert_allclose(cf.oof[c.name][plan.held[f]], again.proba[r.name])
    # a model that saw the rows scores them better than the one that did not (memorized)
    inside = score_splits([refs["m2"][1]], {"h": plan.held_dir(0)}, spec.data, label_map)[
        "h"
    ].proba["m2f1"]
    y0 = cf.y[plan.held[0]]
    ll_in = -np.log(inside[np.arange(len(y0)), y0]).mean()
    ll_out = -np.log(cf.oof["m2"][plan.held[0]][np.arange(len(y0)), y0]).mean()
    assert ll_in < ll_out
    assert all(len(cf.test[c.name]) == 3 for c in cands)
    assert np.array_equal(cf.y[crossfit.val_rows(plan)], score_splits(
        refs["m1"][:1], {"v": run.model_split("val")}, spec.data, label_map
    )["v"].y)  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_a_cross_fitted_pipeline_saves_fold_models_that_predict_as_it_scored(
    digits, tmp_path, ray_env
):
    """`raybalance run` with ensemble.cross_fit: a linear, a gbdt and an MLP trial, each
    cross-fitted on 3 folds; the artifact holds the chosen members' fold models (nothing
    pickled) and `raybalance predict` reproduces the pipeline's test probabilities — with the
    stacker combining them, then (the fold models reused) with their mean."""
    from engine.pipeline import load_scores
    from tests.test_members import _no_pickle

    run = tmp_path / "run"
    sets = [
        f"data.path={digits}",
        f"run_dir={run}",
        "train.epochs=3",
        "train.num_workers=1",
        "model.hidden=[32]",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.search_space={model.kind: {grid: [linear, gbdt, mlp]}}",
        "ensemble.cross_fit=3",
        "ensemble.selection=top_k",
    ]
    for combiner in ("stack", "mean"):
        out = _cli(["run", "--config", str(ROOT / "jobs/configs/digits_lt100.yaml")], [
            *sets, f"ensemble.combiner={combiner}"
        ], ray_env)  # fmt: skip
        assert "oof)" in out  # the member line says what each added out of fold
        manifest = json.loads((run / "ensemble/manifest.json").read_text())
        info = manifest["extra"]
        assert info["cross_fit"]["folds"] == 3 and info["cross_fit"]["rows_in_every_fold"] == 1
        names = [m["name"] for m in manifest["members"]]
        assert names == [f"m{i}f{f}" for i in (1, 2, 3) for f in range(3)]
        assert {m["kind"] for m in info["members"]} == {"linear", "gbdt", "mlp"}
        assert sum(manifest["weights"]) == pytest.approx(1.0)
        _no_pickle(run / "ensemble")
        scores = load_scores(str(run / "scores.safetensors"))
        oof = scores["oof"]
        assert len(oof["y"]) == info["cross_fit"]["rows"] + 1
        held = np.bincount(oof["y"])[oof["y"]] > 1  # (the one-row class is in every fold)
        for name in ("m1", "m2", "m3"):  # each candidate's out-of-fold score, as recorded
            got = _macro_f1(oof["y"][held], oof[name][held])
            assert info["cross_fit"]["oof"][name] == pytest.approx(got)
        comb = info["combiner"]
        assert comb["kind"] == combiner
        stacked = {"oof_stack", "C", "cv"} if combiner == "stack" else set()
        assert set(comb) == {"kind", "oof_mean"} | stacked
        assert info["cross_fit"]["oof_ensemble"] == pytest.approx(comb[f"oof_{combiner}"])
        ens = _macro_f1(oof["y"][held], oof["ensemble"][held])
        assert ens == pytest.approx(comb[f"oof_{combiner}"])
        if combiner == "stack":
            assert "stacked (out of fold" in out
            assert manifest["stacker"]["groups"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
            assert all(m["contribution"]["oof"] is not None for m in info["members"])
        else:
            assert manifest["stacker"] is None
        assert "table-candidates" in (run / "report/report.html").read_text()
        _predicts_as_scored(run, tmp_path / combiner, scores["test"]["ensemble"], ray_env)


def _cli(args: list[str], sets: list[str], env) -> str:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "jobs.cli", *args]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _predicts_as_scored(run, tmp, want: np.ndarray, env) -> None:
    """`raybalance predict` on the test rows (no label) gives the pipeline's test probabilities."""
    raw = tmp / "raw"
    raw.mkdir(parents=True)
    test = pq.read_table(run / "splits/test")
    pq.write_table(test.drop_columns(["label"]), raw / "x.parquet")
    out = tmp / "pred.parquet"
    _cli(["predict", str(run / "ensemble"), str(raw), "--out", str(out)], [], env)
    got = pq.read_table(out)
    keys = LabelMap.from_json(json.loads((run / "label_map.json").read_text())).keys
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in keys], 1)
    np.testing.assert_allclose(proba, want, atol=2e-4)


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    from engine.combining import decision_score

    return decision_score(y, p, "macro_f1")
