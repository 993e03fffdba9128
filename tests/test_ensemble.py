"""The ensemble: combining and calibrating on val, greedy member selection, scoring members of
mixed kinds through the Ray Data actor pool, and the artifact (hashes, refused pickles)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.config import JobSpec, load_spec
from engine.ensemble import (
    Combination,
    combine,
    decision_score,
    fit_combination,
    fit_temperature,
    fit_weights,
    load_artifact,
    member_temperatures,
    model_ref,
    nll,
    select_greedy,
    select_members,
    temperature_scale,
    verify_artifact,
    write_artifact,
)

# --------------------------------------------------------------------------------------------
# combining and calibration (pure numpy)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_fitted_on_val_recovers_the_temperature_that_made_the_scores():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    logits = rng.normal(size=(n, k)) * 2
    y = np.array([rng.choice(k, p=p) for p in _softmax(logits)])  # calibrated at T=1
    overconfident = _softmax(logits * 3.0)  # = temperature 1/3
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(y, temperature_scale(overconfident, t)) < nll(y, overconfident)
    assert np.allclose(temperature_scale(overconfident, t).sum(axis=1), 1.0)
    assert fit_temperature(y[:0], overconfident[:0]) == 1.0


def test_fitted_weights_favour_the_informative_member_and_combine_is_a_distribution():
    rng = np.random.default_rng(1)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    good = np.full((n, k), 0.1 / (k - 1))
    good[np.arange(n), y] = 0.9
    noise = _softmax(rng.normal(size=(n, k)))
    w = fit_weights(y, [noise, good])
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.9
    fit = fit_combination(y, [noise, good], weights="fitted", temperature=False)
    assert fit.temperature == 1.0 and fit.val_nll < fit.val_nll_mean
    p = combine([noise, good], fit.weights, 1.0)
    assert np.allclose(p.sum(axis=1), 1.0) and (p >= 0).all()
    equal = fit_combination(y, [noise, good])
    assert equal.weights == [0.5, 0.5]


def test_greedy_selection_keeps_the_best_and_adds_only_members_that_help_on_val():
    rng = np.random.default_rng(2)
    n, k = 3000, 3
    y = rng.integers(0, k, n)

    def noisy_oracle(strength: float, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).normal(size=(n, k))
        z[np.arange(n), y] += strength
        return _softmax(z)

    best, second, useless = noisy_oracle(2.0, 3), noisy_oracle(1.8, 4), _softmax(np.zeros((n, k)))
    assert select_greedy(y, [best, second]) == [0, 1]  # independent errors: averaging helps
    assert select_greedy(y, [best, useless]) == [0]
    assert select_greedy(y, [best]) == [0]


def test_members_are_calibrated_one_by_one_before_they_are_averaged():
    """A member with flat probabilities (a lexical model's TF-IDF scores) is sharpened by its
    own temperature, so that the mean of two complementary members beats either."""
    rng = np.random.default_rng(5)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    z_a = rng.normal(size=(n, k))
    z_b = rng.normal(size=(n, k))
    first = y < 2  # member a knows classes 0-1, member b classes 2-3
    z_a[np.arange(n)[first], y[first]] += 4
    z_b[np.arange(n)[~first], y[~first]] += 4
    a = _softmax(z_a)
    b = _softmax(z_b / 20)  # flat: argmax is right on classes 2-3, but with p ≈ 1/k
    ts = member_temperatures(y, [a, b])
    assert ts[1] < 0.15 < 0.5 < ts[0]  # the flat member is sharpened, the other hardly
    fit = fit_combination(y, [a, b])
    assert fit.member_temperatures == pytest.approx(ts)
    p = combine([a, b], fit.weights, fit.temperature, fit.member_temperatures)
    expected = temperature_scale(
        (temperature_scale(a, ts[0]) + temperature_scale(b, ts[1])) / 2, fit.temperature
    )
    np.testing.assert_allclose(p, expected)
    f1 = {
        "a": decision_score(y, a, "macro_f1"),
        "b": decision_score(y, b, "macro_f1"),
        "raw mean": decision_score(y, combine([a, b], [0.5, 0.5], 1.0), "macro_f1"),
        "calibrated": decision_score(y, p, "macro_f1"),
    }
    assert f1["calibrated"] > max(f1["a"], f1["b"], f1["raw mean"]) + 0.1, f1
    cal = [temperature_scale(a, ts[0]), temperature_scale(b, ts[1])]
    for criterion in ("macro_f1", "balanced_accuracy", "nll"):
        assert select_greedy(y, cal, criterion=criterion) == [0, 1], criterion
    with pytest.raises(ValueError, match="criterion 'auc'"):
        select_greedy(y, cal, criterion="auc")


def test_decision_scores_match_the_metrics_module():
    from engine.metrics import classification_metrics

    rng = np.random.default_rng(6)
    y = rng.integers(0, 5, 400)
    p = _softmax(rng.normal(size=(400, 6)))  # class 5 never true, sometimes predicted
    m = classification_metrics(y, p)
    assert decision_score(y, p, "macro_f1") == pytest.approx(m["macro_f1"])
    assert decision_score(y, p, "balanced_accuracy") == pytest.approx(m["balanced_accuracy"])
    assert decision_score(y, p, "nll") == pytest.approx(-nll(y, p))


def test_top_trials_are_chosen_by_the_metric_skipping_errors_and_missing_models(tmp_path):
    import pandas as pd

    dirs = []
    for i in range(4):
        d = tmp_path / f"t{i}"
        d.mkdir()
        dirs.append(str(d))
    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d", "e"],
            "status": ["completed", "stopped", "error", "completed", "completed"],
            "val_macro_f1": [0.5, 0.7, 0.9, 0.6, float("nan")],
            "best_dir": [dirs[0], dirs[1], dirs[2], str(tmp_path / "gone"), dirs[3]],
        }
    )
    rows = select_members(table, 2, "val_macro_f1")
    assert [r["trial_id"] for r in rows] == ["b", "a"]
    losses = table.assign(val_loss=[0.3, 0.1, 0.0, 0.2, 0.4])
    assert [r["trial_id"] for r in select_members(losses, 5, "val_loss")] == ["b", "a", "e"]
    with pytest.raises(ValueError, match="no trial of the search finished"):
        select_members(table.iloc[2:4], 2, "val_macro_f1")


def test_per_kind_candidates_put_each_kinds_best_first(tmp_path):
    import pandas as pd

    d = tmp_path / "m"
    d.mkdir()
    table = pd.DataFrame(
        {
            "trial_id": list("abcdef"),
            "status": ["completed"] * 6,
            "model.kind": ["mlp", "mlp", "mlp", "linear", "lexical", "linear"],
            "val_macro_f1": [0.9, 0.8, 0.7, 0.5, 0.6, 0.55],
            "best_dir": [str(d)] * 6,
        }
    )
    best = [r["trial_id"] for r in select_members(table, 3, "val_macro_f1")]
    assert best == ["a", "b", "c"]  # by rank alone: one kind
    mixed = [r["trial_id"] for r in select_members(table, 3, "val_macro_f1", per_kind=True)]
    assert mixed == ["a", "e", "f"]  # mlp, lexical, linear: each kind's best, best first
    wide = [r["trial_id"] for r in select_members(table, 5, "val_macro_f1", per_kind=True)]
    assert wide == ["a", "e", "f", "b", "c"]
    one_kind = table.drop(columns=["model.kind"])
    assert [r["trial_id"] for r in select_members(one_kind, 2, "val_macro_f1", True)] == ["a", "b"]


# --------------------------------------------------------------------------------------------
# members of mixed kinds, scored by the actor pool, saved as one artifact


@pytest.fixture
def built(ensemble_artifact):
    return ensemble_artifact


def _direct_proba(ref, texts: list[str], spec: JobSpec) -> np.ndarray:
    from engine.embed import load_encoder, mean_pool
    from engine.models import load_model

    model, _ = load_model(ref.dir)
    model.eval()
    with torch.no_grad():
        if ref.kind == "lexical":
            logits = model(**model.encode(texts))
        else:
            tok, enc = load_encoder(spec.embed)
            x = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
            logits = model(mean_pool(enc(**x).last_hidden_state, x["attention_mask"]))
    return torch.softmax(logits, dim=1).numpy()


def _by_rows(a: np.ndarray) -> np.ndarray:
    """Rows in a canonical order (the pool may return blocks in any order)."""
    a = np.asarray(a, dtype=np.float64)
    return a[np.lexsort(np.round(a, 3).T[::-1])]


def test_the_pool_scores_every_member_as_the_model_does_by_itself(built):
    tmp, spec, label_map = built["tmp"], built["spec"], built["label_map"]
    table = pq.read_table(tmp / "test" / "p.parquet")
    scores = built["scores"]["test"]
    y = label_map.encode(table.column("label"))
    assert len(scores.y) == table.num_rows
    # rows come back with their own labels; order them as the file to compare with the models
    direct = {
        r.name: _direct_proba(r, table.column("text").to_pylist(), spec) for r in built["refs"]
    }
    for name, p in direct.items():
        got = scores.proba[name]
        assert got.shape == (table.num_rows, 3) and np.allclose(got.sum(axis=1), 1, atol=1e-5)
        assert np.allclose(_by_rows(got), _by_rows(p), atol=1e-4)
    assert sorted(scores.y.tolist()) == sorted(y.tolist())
    # the members learned something: the lexical one ranks the classes well on test
    m1 = scores.proba["m1"]
    assert (m1.argmax(1) == scores.y).mean() > 0.8


def test_the_artifact_holds_members_encoder_manifest_and_round_trips(built):
    art = load_artifact(built["artifact"])
    m = art.manifest
    assert m["format"] == "raybalance-ensemble/1" and m["versions"]["torch"] == torch.__version__
    assert [x["kind"] for x in m["members"]] == ["lexical", "mlp"]
    assert art.weights == built["fit"].weights and art.temperature == built["fit"].temperature
    assert art.thresholds.to_json() == built["thresholds"].to_json()
    assert art.label_map.keys == ["ant", "bee", "cat"]
    assert art.embed is not None and art.embed.model.endswith("encoder")
    root = Path(built["artifact"])
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(m["files"]) == files - {"manifest.json"}
    assert all(f.endswith((".json", ".safetensors", ".txt")) for f in files)
    assert "encoder/model.safetensors" in files and "members/m1/idf.safetensors" in files


def _copy(built, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(built["artifact"], dst)
    return dst


class _Boom:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_a_changed_file_a_planted_pickle_or_an_unlisted_file_is_refused(built, tmp_path):
    marker = tmp_path / "pwned"
    # a changed weight byte
    art = _copy(built, tmp_path)
    weights = art / "members" / "m2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 does not match"):
        load_artifact(str(art))
    shutil.rmtree(art)
    # a pickle planted beside the weights, under the name transformers would load
    art = _copy(built, tmp_path)
    (art / "members" / "m2" / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(ValueError, match="pickles are refused"):
        load_artifact(str(art))
    shutil.rmtree(art)
    # a pickle in place of the safetensors weights (the name is allowed; its hash is not)
    art = _copy(built, tmp_path)
    (art / "members" / "m1" / "model.safetensors").write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(ValueError, match="sha256 does not match"):
        load_artifact(str(art))
    shutil.rmtree(art)
    # an extra JSON file the manifest does not list, and a missing one
    art = _copy(built, tmp_path)
    (art / "members" / "m1" / "extra.json").write_text("{}")
    os.remove(art / "thresholds.json")
    with pytest.raises(ValueError, match="does not match its manifest"):
        verify_artifact(str(art))
    assert not marker.exists()
    # a manifest of another format, or none
    art2 = tmp_path / "art2"
    shutil.copytree(built["artifact"], art2)
    manifest = json.loads((art2 / "manifest.json").read_text())
    (art2 / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(ValueError, match="is not 'raybalance-ensemble/1'"):
        load_artifact(str(art2))
    with pytest.raises(ValueError, match="has no manifest.json"):
        load_artifact(str(tmp_path))


def test_manifest_paths_outside_the_artifact_are_refused(built, tmp_path):
    """The manifest names the member and encoder folders; a rewritten manifest must not make
    the loader read weights or tokenizers from outside the verified files."""
    outside = tmp_path / "outside"
    shutil.copytree(Path(built["artifact"]) / "members" / "m1", outside)
    cases = [
        ("members", 0, "dir", "../outside", r"members\[0\]\.dir='../outside' points outside"),
        ("members", 0, "dir", str(outside), r"members\[0\]\.dir=.* must be a folder inside"),
        ("members", 1, "dir", "members/m9", r"members\[1\]\.dir='members/m9' is not a folder"),
        ("embed", None, "model", "/etc", r"embed\.model='/etc' must be a folder inside"),
        ("embed", None, "model", "encoder/../..", r"embed\.model=.* points outside"),
    ]
    for section, index, key, value, match in cases:
        art = tmp_path / "art"
        shutil.rmtree(art, ignore_errors=True)
        shutil.copytree(built["artifact"], art)
        manifest = json.loads((art / "manifest.json").read_text())
        entry = manifest[section] if index is None else manifest[section][index]
        entry[key] = value
        (art / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=match):
            load_artifact(str(art))
    # a link inside the artifact that leads out is refused the same way
    art = tmp_path / "art"
    shutil.rmtree(art)
    shutil.copytree(built["artifact"], art)
    shutil.rmtree(art / "members" / "m1")
    os.symlink(outside, art / "members" / "m1")
    with pytest.raises(ValueError, match="points outside|does not match its manifest"):
        load_artifact(str(art))


def test_writing_refuses_members_with_pickled_files_and_leaves_no_half_artifact(built, tmp_path):
    refs = built["refs"]
    bad = tmp_path / "bad_member"
    shutil.copytree(refs[0].dir, bad)
    (bad / "optimizer.pt").write_bytes(b"\x80\x04N.")
    ref = model_ref(built["spec"].data, "m1", str(bad))
    out = tmp_path / "ensemble"
    with pytest.raises(ValueError, match="may not carry"):
        write_artifact(
            built["spec"].data,
            [ref],
            Combination([1.0], 1.0, 0.0, 0.0),
            built["thresholds"],
            str(out),
            built["label_map"],
        )
    assert not out.exists() and not any(p.name.startswith(".ensemble") for p in tmp_path.iterdir())


def test_an_mlp_member_reads_the_feature_columns_of_a_feature_run(built):
    spec = load_spec(None, ["data.features=[a, b]", "model.kind=mlp"])
    ref = model_ref(spec.data, "m9", built["refs"][1].dir)
    assert (ref.kind, ref.inputs) == ("mlp", "features")
    assert model_ref(built["spec"].data, "m9", built["refs"][1].dir).inputs == "embedding"
    with pytest.raises(ValueError, match="pass the embed spec"):
        write_artifact(
            built["spec"].data,
            built["refs"],
            Combination([0.5, 0.5], 1.0, 0.0, 0.0),
            built["thresholds"],
            str(built["tmp"] / "no-encoder"),
            built["label_map"],
        )
    assert not (built["tmp"] / "no-encoder").exists()
