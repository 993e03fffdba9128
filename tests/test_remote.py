"""Run folders in object storage (engine.remote) against a local S3 server."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from engine import remote
from engine.io import read_json, write_json_atomic
from engine.rundir import RunDir


def _bucket_files(uri: str) -> dict[str, bytes]:
    fs, root = pafs.FileSystem.from_uri(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(root) + 1 :]] = f.read()
    return out


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_a_mirror_pushes_changes_and_removals_and_keeps_data_and_hidden_files_out(bucket):
    uri = f"{bucket}/runs/a"
    write_json_atomic(f"{uri}/splits/train/_manifest.json", {"rows": 1})  # data: bucket only
    write_json_atomic(f"{uri}/run.json", {"name": "a"})
    m = remote.open_mirror(uri)
    assert os.path.exists(os.path.join(m.path, "run.json"))
    assert not os.path.exists(os.path.join(m.path, "splits"))  # never mirrored
    _write(os.path.join(m.path, "train", "best", "model.safetensors"), "w1")
    _write(os.path.join(m.path, "train", "metrics.json"), "[]")
    _write(os.path.join(m.path, "train", ".metrics.json.tmp-1"), "half")  # a writer's temp
    _write(os.path.join(m.path, ".raybalance.lock"), "{}")
    _write(os.path.join(m.path, "tune", "ray", "state.json"), "{}")  # Ray's own: bucket only
    pushed = m.push()
    assert pushed == ["train/best/model.safetensors", "train/metrics.json"]  # record last
    assert m.push() == []  # nothing changed since
    files = _bucket_files(uri)
    assert set(files) == {
        "splits/train/_manifest.json",
        "run.json",
        "train/best/model.safetensors",
        "train/metrics.json",
    }
    os.remove(os.path.join(m.path, "train", "metrics.json"))
    m.push()
    assert "train/metrics.json" not in _bucket_files(uri)
    assert "splits/train/_manifest.json" in _bucket_files(uri)  # not the mirror's to remove


def test_a_pull_brings_what_another_machine_wrote_even_at_the_same_size(bucket):
    uri = f"{bucket}/runs/b"
    write_json_atomic(f"{uri}/tune/trials/t1/metrics.json", {"v": 1})
    m = remote.open_mirror(uri)
    local = os.path.join(m.path, "tune", "trials", "t1", "metrics.json")
    assert read_json(local) == {"v": 1}
    time.sleep(1.1)  # (object times have whole seconds)
    write_json_atomic(f"{uri}/tune/trials/t1/metrics.json", {"v": 2})  # same size
    write_json_atomic(f"{uri}/tune/trials/t2/metrics.json", {"v": 3})
    copied = m.pull()
    assert sorted(copied) == ["tune/trials/t1/metrics.json", "tune/trials/t2/metrics.json"]
    assert read_json(local) == {"v": 2}
    assert remote.open_mirror(uri).pull() == []  # a new process pulls nothing unchanged
    fs, root = pafs.FileSystem.from_uri(f"{uri}/tune/trials/t2")
    fs.delete_dir(root)
    m.pull()
    assert not os.path.exists(os.path.join(m.path, "tune", "trials", "t2"))


def test_lazy_files_stay_in_the_bucket_until_fetched(bucket):
    uri = f"{bucket}/runs/lazy"
    write_json_atomic(f"{uri}/tune/trials/t1/metrics.json", [])
    write_json_atomic(f"{uri}/tune/trials/t1/checkpoints/epoch-00001/history.json", [{"e": 1}])
    lazy = ("tune/trials/*/checkpoints/*",)
    m = remote.open_mirror(uri, lazy=lazy)
    assert os.path.exists(os.path.join(m.path, "tune/trials/t1/metrics.json"))
    assert not os.path.exists(os.path.join(m.path, "tune/trials/t1/checkpoints"))
    _write(os.path.join(m.path, "report", "metrics.json"), "{}")
    m.push()  # what the mirror never pulled is not removed from the bucket
    assert "tune/trials/t1/checkpoints/epoch-00001/history.json" in _bucket_files(uri)
    again = remote.enclosing(os.path.join(m.path, "tune", "trials", "t1"))
    assert again is not None and again.lazy == lazy and again.pull() == []
    got = remote.fetch(f"{uri}/tune/trials/t1/checkpoints")
    assert read_json(os.path.join(got, "epoch-00001", "history.json")) == [{"e": 1}]


def test_what_the_block_pushed_itself_is_not_copied_again_when_it_ends(bucket):
    uri = f"{bucket}/runs/twice"
    fs, root = pafs.FileSystem.from_uri(uri)
    with remote.mirrored(uri) as m:
        _write(os.path.join(m.path, "tune", "trials", "t", "attempts.jsonl"), "{}\n")
        remote.push_enclosing(os.path.join(m.path, "tune", "trials", "t"))  # as a trial does
        first = fs.get_file_info(f"{root}/tune/trials/t/attempts.jsonl").mtime_ns
        time.sleep(1.1)  # (object times have whole seconds)
    assert fs.get_file_info(f"{root}/tune/trials/t/attempts.jsonl").mtime_ns == first


def test_a_failed_block_still_pushes_what_it_finished_and_raises_its_own_error(bucket):
    uri = f"{bucket}/runs/c"
    with pytest.raises(RuntimeError, match="stage failed"):
        with remote.mirrored(uri) as m:
            _write(os.path.join(m.path, "baseline", "metrics.json"), "[]")
            raise RuntimeError("stage failed")
    assert "baseline/metrics.json" in _bucket_files(uri)


def test_paths_in_a_mirror_are_durable_as_bucket_paths_and_data_folders_resolve_there(bucket):
    uri = f"{bucket}/runs/d"
    write_json_atomic(f"{uri}/splits/_manifest.json", {"counts": {}})
    with remote.local_folder(uri) as local:
        assert remote.durable(local) == uri
        assert remote.durable(os.path.join(local, "tune", "trials", "x")) == f"{uri}/tune/trials/x"
        run = RunDir(local)
        assert run.data_root == uri
        assert run.split("train") == f"{uri}/splits/train"
        assert run.train == os.path.join(local, "train")
        assert run.exists("splits", "_manifest.json")
    assert remote.durable("/tmp/some/where") == "/tmp/some/where"
    assert RunDir("/tmp/plain").data_root == "/tmp/plain"


def test_fetch_copies_a_folder_once_per_state_and_names_an_empty_one(bucket):
    uri = f"{bucket}/models/m1"
    write_json_atomic(f"{uri}/config.json", {"model_type": "raybalance-mlp"})
    first = remote.fetch(uri)
    assert read_json(os.path.join(first, "config.json")) == {"model_type": "raybalance-mlp"}
    assert os.listdir(first) == ["config.json"]  # nothing but the folder's files
    assert remote.fetch(uri) == first
    time.sleep(1.1)
    write_json_atomic(f"{uri}/config.json", {"model_type": "raybalance-gbdt"})
    second = remote.fetch(uri)
    assert second != first and read_json(os.path.join(second, "config.json"))["model_type"] == (
        "raybalance-gbdt"
    )
    with pytest.raises(FileNotFoundError, match="holds no files"):
        remote.fetch(f"{bucket}/models/none")
    assert remote.fetch("/a/local/path") == "/a/local/path"


@pytest.mark.slow
@pytest.mark.integration
def test_train_and_predict_with_everything_in_a_bucket(bucket, tmp_path):
    """`raybalance train` on an s3:// run_dir (prepare runs first), a second train refused
    naming the bucket folder, and `raybalance predict` from the exported model folder in the
    bucket to an output there; the local mirror is a cache the bucket can rebuild."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow.parquet as pq

    from engine.datasets import make_dataset
    from engine.models import load_model
    from tests.conftest import job_env

    root = Path(__file__).parent.parent
    data = tmp_path / "digits"
    make_dataset("digits_lt100", str(data))
    run = f"{bucket}/runs/digits"
    sets = [f"data.path={data}", f"run_dir={run}", "model.hidden=[16]", "train.epochs=2"]

    def job(*args: str, key: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "jobs.cli", *args]
        with job_env(tmp_path / "home") as env:
            if key is not None:
                env["RAYBALANCE_ARTIFACT_KEY_FILE"] = str(key)
            env["TMPDIR"] = str(tmp_path / "node-tmp")  # this "machine's" mirrors
            os.makedirs(env["TMPDIR"], exist_ok=True)
            return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)

    train = ["train", "jobs/configs/digits_lt100.yaml"] + [a for s in sets for a in ("--set", s)]
    proc = job(*train)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = set(_bucket_files(run))
    assert {"run.json", "splits/_manifest.json", "train/metrics.json"} <= files
    assert {"train/best/manifest.json", "train/best/model.safetensors"} <= files
    assert any(f.startswith("logs/train-") for f in files)
    assert not any("checkpoints/" in f for f in files)  # a finished run's scratch is gone
    assert f"{run}/train/metrics.json" in proc.stdout
    model, label_map = load_model(remote.fetch(f"{run}/train/best"))
    assert len(label_map) == 10

    # the mirror is a cache: without it, the bucket alone says the run is finished
    for p in (tmp_path / "node-tmp" / "raybalance" / "runs").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    proc = job(*train)
    assert proc.returncode == 2 and f"{run}/train holds a finished training run" in proc.stderr

    out = f"{bucket}/predictions"
    proc = job("predict", f"{run}/train/best", f"{run}/splits/test", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fs, path = pafs.FileSystem.from_uri(out)
    got = pq.read_table(path, filesystem=fs)
    test_rows = read_json(f"{run}/splits/_manifest.json")["rows"]["test"]
    assert got.num_rows == test_rows
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in label_map.keys], axis=1)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert read_json(f"{out}/_predict.json")["artifact"] == f"{run}/train/best"

    # with a key set, the unsigned folder in the bucket is refused (named as in the bucket)
    # until `raybalance sign` signs it there
    key = tmp_path / "key"
    key.write_text("k" * 32)
    predict = ["predict", f"{run}/train/best", f"{run}/splits/test", "--out", out, "--overwrite"]
    proc = job(*predict, key=key)
    assert proc.returncode == 2 and f"{run}/train/best is not signed" in proc.stderr
    proc = job("sign", f"{run}/train/best", key=key)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train/best/signature.json" in _bucket_files(run)
    proc = job(*predict, key=key)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_folder_loaded_from_a_bucket_is_checked_against_the_verified_hashes(bucket):
    """Where a scoring actor loads a member or the encoder from a bucket, each file must still
    have the sha256 the driver verified; a file changed (or gone) since is refused by name."""
    import hashlib

    from engine.io import write_bytes_atomic
    from engine.scoring import loadable

    uri = f"{bucket}/art/members/m1"
    write_bytes_atomic(f"{uri}/model.safetensors", b"weights")
    good = {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    got = Path(loadable(uri, good)) / "model.safetensors"
    assert got.read_bytes() == b"weights"
    with pytest.raises(ValueError, match=rf"{uri}/model.safetensors does not match"):
        loadable(uri, {"model.safetensors": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(ValueError, match=rf"{uri}/config.json does not match"):
        loadable(uri, {**good, "config.json": "0" * 64})
    assert loadable("/a/local/model", None) == "/a/local/model"  # nothing to fetch or check
