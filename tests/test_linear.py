"""The ``linear`` kind: an exact logistic-regression solve put into the engine's own models
(against scikit-learn on the same design), and trained end to end on real Ray on feature
columns and on text n-grams, exported as a model that loads, scores and predicts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from engine.config import LINEAR_C_GRID, ModelSpec, load_spec
from engine.data import LabelMap
from engine.evaluate import evaluate_split
from engine.linear import (
    ABSENT_BIAS,
    MAX_ITER,
    SGD_ABOVE_BYTES,
    SGD_EPOCHS,
    TOL,
    choose_solver,
    design_matrix,
    fit_logistic,
    fit_path,
    set_linear,
    sgd_path,
    weighted_log_loss,
)
from engine.models import build_model, load_model, logits_of
from engine.prepare import prepare
from engine.train import train_model
from jobs import cli

ROOT = Path(__file__).parent.parent


def _blobs(k: int, n: int = 300, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    x = rng.normal(size=(n, d)) * 3 + 5 + 1.5 * np.eye(k, d)[y]
    return x.astype(np.float32), y.astype(np.int64)


def _mlp(k: int, d: int, x: np.ndarray) -> torch.nn.Module:
    spec = ModelSpec(kind="mlp", hidden=[], dropout=0.0, standardize=True)
    model = build_model(spec, LabelMap.from_values("y", "int", list(range(k))), input_dim=d)
    model.set_standardization(x.mean(0).tolist(), (1 / x.std(0)).tolist())
    return model.eval()


@pytest.mark.parametrize("k", [2, 4])
def test_the_fitted_head_gives_sklearns_probabilities_on_raw_features(k):
    x, y = _blobs(k)
    model = _mlp(k, x.shape[1], x)
    design = design_matrix(model, {"features": x, "label": y})
    np.testing.assert_allclose(design.mean(0), 0, atol=1e-5)  # standardized by the model
    weights = [1.0, 3.0] + [2.0] * (k - 2)
    w, b = fit_logistic(design, y, k, C=0.5, class_weights=weights)
    set_linear(model, w, b)
    ref = LogisticRegression(C=0.5, max_iter=MAX_ITER, tol=TOL)
    ref.fit(design, y, sample_weight=np.asarray(weights)[y])
    with torch.no_grad():
        probs = torch.softmax(model(torch.as_tensor(x)).double(), 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(design), atol=1e-5)
    loss = weighted_log_loss(model, design, y, weights)
    assert 0 < loss < np.log(k)


def test_the_warm_started_path_reaches_each_Cs_own_solution():
    x, y = _blobs(3, n=400)
    design = design_matrix(_mlp(3, x.shape[1], x), {"features": x})
    path = list(fit_path(design, y, 3, [10.0, 0.01, 1.0]))
    assert [c for c, _, _ in path] == [0.01, 1.0, 10.0]  # increasing: each warm-starts the next
    for c, w, b in path:
        w1, b1 = fit_logistic(design, y, 3, c)
        z, z1 = design @ w.T + b, design @ w1.T + b1
        np.testing.assert_allclose(
            z - z.mean(1, keepdims=True), z1 - z1.mean(1, keepdims=True), atol=1e-2
        )
    norms = [np.abs(w).sum() for _, w, _ in path]
    assert norms[0] < norms[1] < norms[2]  # less regularization, larger weights


def test_a_class_absent_from_the_rows_is_never_predicted():
    x, y = _blobs(3)
    keep = y != 1
    model = _mlp(3, x.shape[1], x)
    w, b = fit_logistic(design_matrix(model, {"features": x[keep]}), y[keep], 3, C=1.0)
    set_linear(model, w, b)
    with torch.no_grad():
        pred = model(torch.as_tensor(x)).argmax(1).numpy()
    assert 1 not in set(pred) and {0, 2} <= set(pred)


def _macro_f1(y, pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def test_sgd_over_streamed_batches_comes_close_to_the_exact_solve():
    """Averaged SGD, batch by batch, one model per C: on 6,000 rows its decisions agree with
    the exact solve's, and a class no batch held is never predicted."""
    x, y = _blobs(4, n=6000)
    xv, yv = _blobs(4, n=2000, seed=1)
    keep = y != 3
    x, y = x[keep], y[keep]
    model = _mlp(4, x.shape[1], x)
    weights = [1.0, 1.5, 2.0, 1.0]
    passes = []

    def batches():
        passes.append(1)
        return (
            {"features": x[i : i + 1000], "label": y[i : i + 1000]} for i in range(0, len(y), 1000)
        )

    fits = list(sgd_path(batches, model, 4, [0.1, 1.0], weights, rows=len(y)))
    assert [c for c, _, _ in fits] == [0.1, 1.0] and len(passes) == SGD_EPOCHS
    exact_w, exact_b = fit_logistic(design_matrix(model, {"features": x}), y, 4, 1.0, weights)
    _, w, b = fits[1]
    assert (w[3] == 0).all() and b[3] == ABSENT_BIAS
    preds = []
    for ww, bb in ((w, b), (exact_w, exact_b)):
        set_linear(model, ww, bb)
        with torch.no_grad():
            preds.append(model(torch.as_tensor(xv)).argmax(1).numpy())
    assert 3 not in set(preds[0])
    assert (preds[0] == preds[1]).mean() > 0.9
    assert _macro_f1(yv, preds[0]) > _macro_f1(yv, preds[1]) - 0.03


def test_the_solver_turns_to_sgd_only_past_the_memory_bound():
    dense = {"features": np.zeros((2, 100), dtype=np.float32)}
    rows = SGD_ABOVE_BYTES // (100 * 8)
    assert choose_solver("auto", rows, dense) == "lbfgs"
    assert choose_solver("auto", rows + 1, dense) == "sgd"
    sparse = {"lex_idx": np.zeros((2, 256), dtype=np.int32)}
    assert choose_solver("auto", 10**6, sparse) == "sgd"  # 256 terms x 16 bytes x 1M rows
    assert (
        choose_solver("sgd", 10, dense) == "sgd" and choose_solver("lbfgs", 10**9, dense) == "lbfgs"
    )
    with pytest.raises(ValueError, match="model.solver"):
        load_spec(None, ["model.kind=linear", "model.solver=newton"])


def test_the_lexical_bag_takes_the_sparse_solution():
    from engine.lexical import LexicalClassifier

    rng = np.random.default_rng(0)
    n, width, feats = 200, 6, 64
    idx = rng.integers(0, feats, size=(n, width)).astype(np.int32)
    val = rng.random((n, width)).astype(np.float32)
    val[:, -1] = 0.0  # padding
    y = (idx[:, 0] % 3).astype(np.int64)
    core = LexicalClassifier(feats, [], 3, 0.0).eval()
    design = design_matrix(core, {"lex_idx": idx, "lex_val": val})
    assert design.shape == (n, feats)
    dense = np.zeros((n, feats))
    for r in range(n):
        np.add.at(dense[r], idx[r], val[r])
    np.testing.assert_allclose(design.toarray(), dense, atol=1e-6)
    w, b = fit_logistic(design, y, 3, C=10.0)
    set_linear(core, w, b)
    ref = LogisticRegression(C=10.0, max_iter=MAX_ITER, tol=TOL).fit(design, y)
    with torch.no_grad():
        logits = core(torch.as_tensor(idx).long(), torch.as_tensor(val))
    probs = torch.softmax(logits.double(), 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(design), atol=1e-4)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    assert cli.main(["datasets", "make", "digits_lt100", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_linear_on_features_trains_in_one_solve_and_exports_a_model_that_evaluates(
    ray_local, digits, tmp_path
):
    sets = [
        f"data.path={digits}",
        f"run_dir={tmp_path / 'run'}",
        "model.kind=linear",
        "model.C=0.3",
        "loss.weights=inverse",
        "train.num_workers=2",  # a linear fit is one solve: trained in one process anyway
    ]
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", sets)
    prepare(spec)
    result = train_model(spec)
    assert [r["epoch"] for r in result.metrics] == [0] and result.metrics[0]["steps"] == 1
    assert result.best["val_macro_f1"] > 0.6  # measured ~0.8; chance ~0.1
    config = json.loads(Path(result.best_dir, "config.json").read_text())
    assert config["model_type"] == "raybalance-mlp" and config["hidden"] == []
    m = evaluate_split(spec, result.best_dir, "test")
    assert m["macro_f1"] > 0.6
    model, label_map = load_model(result.best_dir)
    assert len(label_map) == 10 and model(torch.randn(3, 64)).shape == (3, 10)
    assert not os.path.exists(tmp_path / "run" / "train" / "ray")


@pytest.mark.slow
def test_linear_by_sgd_streams_the_train_rows_and_exports_a_model_that_evaluates(
    ray_local, digits, tmp_path
):
    """``model.solver=sgd``: the train rows are never materialized — the fit reads them from
    their Ray Data source, a batch at a time, in each of its passes."""
    from engine.rundir import RunDir
    from engine.train import loop_inputs

    sets = [
        f"data.path={digits}",
        f"run_dir={tmp_path / 'run'}",
        "model.kind=linear",
        "model.solver=sgd",
        "loss.weights=inverse",
    ]
    spec = load_spec(ROOT / "jobs/configs/digits_lt100.yaml", sets)
    prepare(spec)
    config, datasets = loop_inputs(spec, RunDir(spec.run_dir))
    assert config["linear_solver"] == "sgd" and "train_ref" not in config
    assert set(datasets) == {"train"}
    result = train_model(spec)
    row = result.metrics[0]
    assert row["solver"] == "sgd" and row["steps"] == SGD_EPOCHS and row["C"] in LINEAR_C_GRID
    # measured: val 0.76 (the exact solve 0.97: ten passes over 1,100 rows are few), test
    # 0.58-0.65 (the exact solve's 0.65: the test split's tail classes have 1-2 rows); chance 0.1
    assert result.best["val_macro_f1"] > 0.6
    assert evaluate_split(spec, result.best_dir, "test")["macro_f1"] > 0.4
    config = json.loads(Path(result.best_dir, "config.json").read_text())
    assert config["model_type"] == "raybalance-mlp" and config["hidden"] == []


@pytest.mark.slow
def test_linear_on_text_fits_tfidf_ngrams_and_predicts_raw_text(ray_local, trec50, tmp_path):
    sets = [
        f"data.path={trec50}",
        f"run_dir={tmp_path / 'run'}",
        "model.kind=linear",  # model.C null: chosen on val
        "model.n_features=65536",
    ]
    spec = load_spec(ROOT / "jobs/configs/trec50.yaml", sets)
    prepare(spec)
    result = train_model(spec)
    assert result.metrics[0]["C"] in LINEAR_C_GRID
    assert result.best["val_macro_f1"] > 0.4  # 50 classes; the lexical AdamW test gets ~0.5
    model, label_map = load_model(result.best_dir)
    assert model.config["hidden"] == [] and model.vectorizer is not None
    with torch.no_grad():
        probs = torch.softmax(logits_of(model, model.encode(["How far is Paris from Rome ?"])), 1)
    assert label_map.keys[int(probs.argmax())] == "NUM:dist"
