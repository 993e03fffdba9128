"""Signed artifacts: with $RAYBALANCE_ARTIFACT_KEY_FILE set, only a folder whose manifest is
signed with that key is used — a manifest rewritten with matching hashes, an unsigned folder or
another key's signature are refused before anything is read; `raybalance sign` signs a verified
folder; predict uses a signed artifact on real Ray."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from engine.artifact import (
    KEY_ENV,
    MANIFEST,
    SIGNATURE,
    artifact_key,
    sha256_file,
    sign_manifest,
    verify_artifact,
)
from engine.predict import predict
from jobs import cli


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv(KEY_ENV, str(path))
    return path


def _copy(built, tmp_path, name="art"):
    art = tmp_path / name
    shutil.copytree(built["artifact"], art)
    return art


def _rewrite_thresholds(art):
    """Change a file and its hash in the manifest together: what file hashes alone miss."""
    th = json.loads((art / "thresholds.json").read_text())
    (art / "thresholds.json").write_text(json.dumps({**th, "kind": "argmax"}))
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["files"]["thresholds.json"] = sha256_file(str(art / "thresholds.json"))
    (art / MANIFEST).write_text(json.dumps(manifest))


def test_a_rewritten_manifest_passes_the_hashes_but_not_the_signature(
    ensemble_artifact, tmp_path, key_file
):
    art = _copy(ensemble_artifact, tmp_path)
    with pytest.raises(ValueError, match=f"is not signed, and {KEY_ENV} is set"):
        verify_artifact(str(art))
    assert sign_manifest(str(art)) and (art / SIGNATURE).exists()
    assert verify_artifact(str(art))["format"] == "raybalance-ensemble/1"
    _rewrite_thresholds(art)
    with pytest.raises(ValueError, match="does not match signature.json under the key"):
        verify_artifact(str(art))
    assert verify_artifact(str(art), signed=False)  # the hashes alone accept it
    other = tmp_path / "other-key"
    other.write_text("ffffffffffffffffffffffffffffffff")
    sign_manifest(str(art), other.read_bytes())
    with pytest.raises(ValueError, match="or another key signed it"):
        verify_artifact(str(art))


def test_a_short_or_unreadable_key_is_refused_naming_the_file(tmp_path, monkeypatch):
    short = tmp_path / "short"
    short.write_text("abc")
    monkeypatch.setenv(KEY_ENV, str(short))
    with pytest.raises(ValueError, match=f"{KEY_ENV}={short}: the key has 3 byte"):
        artifact_key()
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="cannot read the key"):
        artifact_key()
    monkeypatch.delenv(KEY_ENV)
    assert artifact_key() is None


def test_the_sign_command_signs_a_verified_folder_and_predict_uses_it(
    ensemble_artifact, tmp_path, key_file, capsys
):
    built = ensemble_artifact
    art = _copy(built, tmp_path)
    tampered = _copy(built, tmp_path, "tampered")
    (tampered / "thresholds.json").write_text("{}")
    assert cli.main(["sign", str(tampered)]) == 2  # a changed file is never signed
    assert "sha256 does not match" in capsys.readouterr().err
    assert not (tampered / SIGNATURE).exists()
    assert cli.main(["sign", str(art)]) == 0
    assert "signed" in capsys.readouterr().out

    table = pq.read_table(built["tmp"] / "test" / "p.parquet").drop_columns(["label"])
    data = tmp_path / "raw"
    data.mkdir()
    pq.write_table(table.slice(0, 20), data / "a.parquet")
    result = predict(str(art), str(data), str(tmp_path / "pred"))  # on real Ray
    assert result.rows == 20 == pq.read_table(tmp_path / "pred").num_rows
    _rewrite_thresholds(art)
    assert cli.main(["predict", str(art), str(data), "--out", str(tmp_path / "p2")]) == 2
    assert "does not match signature.json" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


def test_artifacts_and_model_folders_are_signed_when_written_with_a_key(tmp_path, key_file):
    from engine.artifact import write_model_manifest
    from engine.config import DataSpec

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_model_manifest(str(folder), DataSpec(path="x", label="y", features="f"), None)
    assert (folder / SIGNATURE).exists()
    verify_artifact(str(folder), "raybalance-model/1")
    (folder / "config.json").write_text('{"a": 1}')  # rewritten, manifest re-made: re-signed
    write_model_manifest(str(folder), DataSpec(path="x", label="y", features="f"), None)
    verify_artifact(str(folder), "raybalance-model/1")


def test_a_stacker_that_does_not_fit_the_members_or_classes_is_refused():
    from engine.artifact import _check_stacker

    ok = {"groups": [[0, 1], [2, 3]], "coef": [[0.0] * 6] * 3, "intercept": [0.0] * 3}
    _check_stacker("art", ok, members=4, classes=3)
    _check_stacker("art", None, members=4, classes=3)
    bad = [
        {**ok, "groups": [[0, 1], [2, 4]]},  # a member index past the members
        {**ok, "groups": [[0, 1], []]},
        {**ok, "coef": [[0.0] * 6] * 2},  # two classes' rows for three classes
        {**ok, "coef": [[0.0] * 3] * 3},
        {**ok, "intercept": [0.0] * 2},
        [1, 2],
    ]
    for stacker in bad:
        with pytest.raises(ValueError, match="art: the manifest's stacker does not fit"):
            _check_stacker("art", stacker, members=4, classes=3)
