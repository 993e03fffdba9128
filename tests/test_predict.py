"""Batch prediction with an ensemble artifact on Ray Data: the same decisions as the ensemble
computed by hand, input order and columns kept, atomic output, refused artifacts and inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.ensemble import combine, load_artifact
from engine.predict import predict
from engine.thresholds import apply_thresholds


def _raw(built, tmp_path, rows: int | None = None):
    """The test split without labels, in two files (the artifact embeds the text itself)."""
    table = pq.read_table(built["tmp"] / "test" / "p.parquet").drop_columns(["label"])
    if rows is not None:
        table = table.slice(0, rows)
    folder = tmp_path / "raw"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "a.parquet")
    pq.write_table(table.slice(half), folder / "b.parquet")
    return folder, table


def test_predictions_equal_the_ensemble_of_the_members_on_the_same_rows(
    ensemble_artifact, tmp_path
):
    built = ensemble_artifact
    folder, table = _raw(built, tmp_path)
    out = tmp_path / "pred"
    result = predict(built["artifact"], str(folder), str(out), keep=["id"])
    got = pq.read_table(out)
    assert result.rows == table.num_rows == got.num_rows
    assert got.column_names == ["id", "prediction", "proba_ant", "proba_bee", "proba_cat"]
    assert got.column("id").to_pylist() == table.column("id").to_pylist()  # input order
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in ("ant", "bee", "cat")], 1)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    # the same rows scored by the pipeline's own path (score_splits) and combined by hand
    scores = built["scores"]["test"]
    art = load_artifact(built["artifact"])
    expected = combine(
        [scores.proba[r.name] for r in built["refs"]],
        art.weights,
        art.temperature,
        art.member_temperatures,
    )
    labelled = pq.read_table(built["tmp"] / "test" / "p.parquet")
    # score_splits returns rows in any order: compare the rows as sets
    order = np.lexsort(np.round(expected, 4).T[::-1])
    mine = np.lexsort(np.round(proba, 4).T[::-1])
    assert np.allclose(expected[order], proba[mine], atol=1e-4)
    pred = apply_thresholds(proba, art.thresholds)
    assert got.column("prediction").to_pylist() == [art.label_map.labels[i] for i in pred]
    summary = json.loads((out / "_predict.json").read_text())
    assert summary["rows"] == table.num_rows == sum(summary["predicted"].values())
    assert summary["predicted"] == {
        k: int(np.sum(pred == i)) for i, k in enumerate(art.label_map.keys)
    }
    # the ensemble is good on these rows (labels held back from prediction)
    truth = labelled.column("label").to_pylist()
    acc = np.mean([a == b for a, b in zip(got.column("prediction").to_pylist(), truth)])
    assert acc > 0.8
    # an existing output is kept unless overwrite; every input column is kept by default
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        predict(built["artifact"], str(folder), str(out))
    again = predict(built["artifact"], str(folder), str(out), overwrite=True)
    assert again.columns[:2] == ["text", "id"] and pq.read_table(out).num_rows == table.num_rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]


def test_a_tampered_artifact_and_unusable_inputs_are_refused_before_any_output(
    ensemble_artifact, tmp_path
):
    built = ensemble_artifact
    folder, _ = _raw(built, tmp_path, rows=20)
    art = tmp_path / "art"
    shutil.copytree(built["artifact"], art)
    thresholds = json.loads((art / "thresholds.json").read_text())
    (art / "thresholds.json").write_text(json.dumps({**thresholds, "kind": "argmax"}))
    out = tmp_path / "pred"
    with pytest.raises(ValueError, match="sha256 does not match"):
        predict(str(art), str(folder), str(out))
    assert not out.exists()
    notext = tmp_path / "notext"
    notext.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), notext / "x.parquet")
    with pytest.raises(ValueError, match="text column 'text', which is not in the data"):
        predict(built["artifact"], str(notext), str(out))
    with pytest.raises(ValueError, match=r"--keep columns \['nope'\]"):
        predict(built["artifact"], str(folder), str(out), keep=["nope"])
    assert not out.exists()


def test_the_predict_command_prints_counts_and_fails_cleanly(ensemble_artifact, tmp_path, capsys):
    from jobs import cli

    built = ensemble_artifact
    folder, table = _raw(built, tmp_path, rows=30)
    out = tmp_path / "pred"
    assert cli.main(["predict", built["artifact"], str(folder), "--out", str(out)]) == 0
    assert f"predicted {table.num_rows} row(s)" in capsys.readouterr().out
    assert cli.main(["predict", str(tmp_path), str(folder), "--out", str(out)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_nan_infinite_or_null_features_are_refused_with_counts_before_the_models_run(
    ensemble_artifact, tmp_path
):
    """The MLP member reads the data's own embedding column when it has one: its bad values
    are counted per column and nothing is written."""
    built = ensemble_artifact
    folder, table = _raw(built, tmp_path, rows=30)
    vectors = [[0.1, 0.2, 0.3, 0.4] for _ in range(table.num_rows)]
    vectors[3][1] = float("nan")
    vectors[7][0] = float("inf")
    vectors[8] = [float("nan")] * 2 + [0.0, 0.0]
    vectors[9] = None
    bad = table.append_column("embedding", pa.array(vectors, pa.list_(pa.float32())))
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(bad, folder / "a.parquet")
    out = tmp_path / "pred"
    with pytest.raises(
        ValueError, match=r"'embedding': 4 NaN/infinite, 1 null.*nothing was written"
    ):
        predict(built["artifact"], str(folder), str(out))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]


def test_a_trained_model_folder_predicts_by_itself_with_the_same_checks(
    ensemble_artifact, tmp_path, capsys
):
    """``raybalance predict`` on one model (what ``train`` writes to ``train/best``): its
    manifest is checked, the encoder of its embeddings comes from the run's embed spec, and its
    probabilities are the member's own."""
    from engine.artifact import write_model_manifest
    from jobs import cli

    built = ensemble_artifact
    ref = built["refs"][1]  # the MLP over the text's embeddings
    model = tmp_path / "best"
    shutil.copytree(ref.dir, model)
    write_model_manifest(str(model), built["spec"].data, built["spec"].embed, trained_as="mlp")
    folder, table = _raw(built, tmp_path)
    out = tmp_path / "pred"
    assert cli.main(["predict", str(model), str(folder), "--out", str(out)]) == 0
    got = pq.read_table(out)
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in ("ant", "bee", "cat")], 1)
    expected = built["scores"]["test"].proba[ref.name]
    order = np.lexsort(np.round(expected, 4).T[::-1])
    mine = np.lexsort(np.round(proba, 4).T[::-1])
    assert np.allclose(expected[order], proba[mine], atol=1e-4)
    assert got.column("prediction").to_pylist() == [
        ("ant", "bee", "cat")[i] for i in proba.argmax(axis=1)
    ]
    summary = json.loads((out / "_predict.json").read_text())
    assert summary["artifact"] == str(model)
    capsys.readouterr()
    # a changed weight file is refused before anything runs; a missing folder is named
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert cli.main(["predict", str(model), str(folder), "--out", str(tmp_path / "p2")]) == 2
    assert "sha256 does not match" in capsys.readouterr().err
    missing = tmp_path / "nothere"
    assert cli.main(["predict", str(missing), str(folder), "--out", str(tmp_path / "p3")]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()
