"""The ``gbdt`` kind: a LightGBM booster as the engine's own module (its raw scores as logits,
saved as LightGBM's text model), and trained end to end on real Ray on feature columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import SpecError, load_spec
from engine.data import LabelMap
from engine.evaluate import evaluate_split
from engine.gbdt import MAX_ROUNDS, MODEL_TXT, GBDTClassifier, fit_booster
from engine.models import load_model, save_model
from engine.prepare import prepare
from engine.train import train_model
from jobs import cli

ROOT = Path(__file__).parent.parent


def _data(k: int, n: int = 400, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.linspace(3, 1, k) / np.linspace(3, 1, k).sum())
    x = rng.normal(size=(n, d)) + 2.0 * np.eye(k, d)[y]
    return x, y


@pytest.mark.parametrize("k", [2, 3])
def test_the_module_gives_the_boosters_probabilities_and_round_trips_without_pickle(k, tmp_path):
    x, y = _data(k)
    xv, yv = _data(k, seed=1)
    booster = fit_booster(x, y, k, [1.0] + [3.0] * (k - 1), xv, yv, seed=0)
    assert 0 < booster.current_iteration() <= MAX_ROUNDS
    model = GBDTClassifier(x.shape[1], k, booster.model_to_string())
    probs = torch.softmax(model(torch.as_tensor(x, dtype=torch.float32)).double(), 1).numpy()
    expect = booster.predict(x.astype(np.float32).astype(np.float64))
    expect = np.stack([1 - expect, expect], 1) if k == 2 else expect
    np.testing.assert_allclose(probs, expect, atol=1e-5)
    assert probs[np.arange(len(y)), y].mean() > 0.6  # it learned

    folder = tmp_path / "m"
    save_model(model, str(folder), LabelMap.from_values("y", "int", list(range(k))))
    assert sorted(os.listdir(folder)) == ["config.json", "label_map.json", MODEL_TXT]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "raybalance-gbdt"
    loaded, label_map = load_model(str(folder))
    assert len(label_map) == k
    xt = torch.as_tensor(xv, dtype=torch.float32)
    assert torch.equal(loaded(xt), model(xt))


def test_class_weights_move_the_decisions_toward_the_rare_class():
    x, y = _data(2, n=600)
    xv, yv = _data(2, n=300, seed=1)
    plain = GBDTClassifier(6, 2, fit_booster(x, y, 2, None, xv, yv).model_to_string())
    heavy = GBDTClassifier(6, 2, fit_booster(x, y, 2, [1.0, 10.0], xv, yv).model_to_string())
    xt = torch.as_tensor(xv, dtype=torch.float32)
    assert (heavy(xt).argmax(1) == 1).sum() > (plain(xt).argmax(1) == 1).sum()


def _page_blocks(tmp_path: Path, *sets: str):
    data = tmp_path / "page_blocks0"
    if not data.exists():
        assert cli.main(["datasets", "make", "page_blocks0", "--out", str(data)]) == 0
    return load_spec(
        None,
        [
            f"data.path={data}",
            "data.label=label",
            f"data.features=[{', '.join(f'f{i}' for i in range(10))}]",
            "model.kind=gbdt",
            "loss.weights=inverse",
            *sets,
        ],
    )


def _root_rows(model_txt: str) -> int:
    """The rows the first tree's root split saw (LightGBM's ``internal_count``)."""
    tree = model_txt.split("Tree=0\n", 1)[1]
    line = next(ln for ln in tree.splitlines() if ln.startswith("internal_count="))
    return int(line.split("=")[1].split()[0])


@pytest.mark.slow
def test_gbdt_on_a_binary_tabular_set_trains_in_one_fit_and_evaluates(ray_local, tmp_path):
    spec = _page_blocks(
        tmp_path,
        f"run_dir={tmp_path / 'run'}",
        "model.num_leaves=7",  # the search's knobs reach the booster
        "model.feature_fraction=0.8",
        "train.use_gpu=true",  # LightGBM's CPU learner: the gbdt kind trains on the CPU
    )
    prepare(spec)
    result = train_model(spec)
    row = result.metrics[0]
    assert [r["epoch"] for r in result.metrics] == [0] and row["rounds"] >= 1
    assert row["workers"] == 1 and row["shard_rows"] == sum(spec_counts(spec))
    assert result.best["val_macro_f1"] > 0.8  # LR with a tuned threshold reaches ~0.8 here
    files = ["config.json", "label_map.json", "manifest.json", MODEL_TXT]
    assert sorted(os.listdir(result.best_dir)) == files
    m = evaluate_split(spec, result.best_dir, "test")
    assert m["macro_f1"] > 0.8
    text = (Path(result.best_dir) / MODEL_TXT).read_text()
    assert "[num_leaves: 7]" in text and "[feature_fraction: 0.8]" in text
    assert "[tree_learner: serial]" in text
    # model.stopping reaches the booster: grown on while val macro-F1 still rises
    by_f1 = _page_blocks(
        tmp_path, f"run_dir={tmp_path / 'run'}", "model.num_leaves=7", "model.stopping=loss_or_f1"
    )
    rounds = train_model(by_f1, overwrite=True).metrics[0]["rounds"]
    assert rounds >= row["rounds"]
    assert _page_blocks(tmp_path, f"run_dir={tmp_path / 'run'}").model.stopping == "loss"
    with pytest.raises(SpecError, match="stopping"):
        _page_blocks(tmp_path, f"run_dir={tmp_path / 'run'}", "model.stopping=f1")


def spec_counts(spec) -> list[int]:
    from engine.rundir import RunDir

    run = RunDir(spec.run_dir)
    return run.class_counts("train", run.label_map().keys).tolist()


@pytest.mark.slow
def test_gbdt_on_two_workers_is_one_data_parallel_fit_under_a_lightgbm_trainer(ray_local, tmp_path):
    """``train.num_workers=2``: a LightGBMTrainer whose workers each read half the train rows
    (their Ray Data shards) and grow the same trees from the summed histograms: the first
    root split sees every bagged row (0.8 of them), not one worker's half."""
    spec = _page_blocks(tmp_path, f"run_dir={tmp_path / 'run2'}", "train.num_workers=2")
    prepare(spec)
    result = train_model(spec)
    row = result.metrics[0]
    total = sum(spec_counts(spec))
    assert row["workers"] == 2 and abs(row["shard_rows"] - total / 2) <= 0.05 * total
    text = (Path(result.best_dir) / MODEL_TXT).read_text()
    assert "[tree_learner: data]" in text and "[num_machines: 2]" in text
    assert _root_rows(text) > 0.7 * total
    assert result.best["val_macro_f1"] > 0.8
    assert evaluate_split(spec, result.best_dir, "test")["macro_f1"] > 0.8
    assert (Path(spec.run_dir) / "train" / "ray").is_dir()  # Ray Train's run, not in process


def test_a_booster_of_several_workers_outside_a_lightgbm_trainer_is_refused():
    from engine.train import distributed_params

    with pytest.raises(RuntimeError, match="must run under a LightGBMTrainer"):
        distributed_params(2)


def test_leaves_and_feature_fraction_shape_the_trees():
    x, y = _data(3, n=600)
    xv, yv = _data(3, seed=1)
    small = fit_booster(x, y, 3, None, xv, yv, rounds=20, params={"num_leaves": 3})
    big = fit_booster(x, y, 3, None, xv, yv, rounds=20)
    leaves = [t["num_leaves"] for t in small.dump_model()["tree_info"]]
    assert max(leaves) <= 3 < max(t["num_leaves"] for t in big.dump_model()["tree_info"])
    one = fit_booster(x, y, 3, None, xv, yv, rounds=20, params={"feature_fraction": 1 / 6})
    per_tree = [_split_features(t["tree_structure"]) for t in one.dump_model()["tree_info"]]
    assert all(len(f) <= 1 for f in per_tree)  # each tree sees one of the 6 columns
    assert len(set().union(*per_tree)) > 1  # drawn at random per tree
    assert any(len(_split_features(t["tree_structure"])) > 1 for t in big.dump_model()["tree_info"])


def _split_features(node: dict) -> set[int]:
    if "split_feature" not in node:
        return set()
    below = _split_features(node["left_child"]) | _split_features(node["right_child"])
    return {node["split_feature"]} | below


def test_rounds_stop_at_the_lowest_class_weighted_val_loss():
    """The kept rounds are those with the lowest val log-loss under the training's class
    weights (the plain val loss bottoms out far later here)."""
    from sklearn.metrics import log_loss

    from engine.gbdt import EARLY_STOP

    x, y = _data(3, n=600)
    xv, yv = _data(3, n=300, seed=10)
    w = np.array([1.0, 5.0, 40.0])
    best = fit_booster(x, y, 3, w.tolist(), xv, yv, seed=0).best_iteration
    full = fit_booster(x, y, 3, w.tolist(), xv, yv, seed=0, rounds=best + 3 * EARLY_STOP)
    staged = [full.predict(xv, num_iteration=i) for i in range(1, best + 3 * EARLY_STOP + 1)]
    plain = [log_loss(yv, p, labels=[0, 1, 2]) for p in staged]
    weighted = [log_loss(yv, p, labels=[0, 1, 2], sample_weight=w[yv]) for p in staged]
    assert best == int(np.argmin(weighted[: best + EARLY_STOP])) + 1
    assert int(np.argmin(plain)) + 1 > best + 10


def test_loss_or_f1_grows_until_neither_the_weighted_val_loss_nor_val_macro_f1_improves():
    """``stopping="loss_or_f1"``: grown until neither the val log-loss under the training's
    class weights has fallen nor val macro-F1 risen for EARLY_STOP_OR_F1 rounds; kept: the
    later of their best rounds (F1 ties go to the later round). Here the weighted loss bottoms
    out early and the decisions improve after it."""
    from sklearn.metrics import f1_score, log_loss

    from engine.gbdt import EARLY_STOP_OR_F1 as PATIENCE

    x, y = _data(3, n=600)
    xv, yv = _data(3, n=300, seed=10)
    w = np.array([1.0, 5.0, 40.0])
    best = fit_booster(x, y, 3, w.tolist(), xv, yv, seed=0, stopping="loss_or_f1").best_iteration
    full = fit_booster(x, y, 3, w.tolist(), xv, yv, seed=0, rounds=best + PATIENCE)
    staged = [full.predict(xv, num_iteration=i) for i in range(1, best + PATIENCE + 1)]
    weighted = [log_loss(yv, p, labels=[0, 1, 2], sample_weight=w[yv]) for p in staged]
    f1 = np.array([f1_score(yv, p.argmax(1), average="macro") for p in staged])
    by_loss = int(np.argmin(weighted)) + 1
    by_f1 = int(np.flatnonzero(f1 == f1.max())[-1]) + 1
    assert best == max(by_loss, by_f1)
    assert by_f1 > by_loss + 10  # the F1 kept it growing past the loss's best round
    loss_only = fit_booster(x, y, 3, w.tolist(), xv, yv, seed=0).best_iteration
    assert loss_only < best
    with pytest.raises(ValueError, match="stopping 'f1'"):
        fit_booster(x, y, 3, None, xv, yv, stopping="f1")
