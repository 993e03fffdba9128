"""`raybalance prepare` with resampling end to end on real data and real Ray: stats -> split ->
(embed) -> resample, only the train split resampled, stats of the result beside the originals."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from engine.strategy import resolve_targets
from jobs import cli
from tests._procs import kill_when

pytestmark = pytest.mark.usefixtures("ray_local")

RANDOM = [
    ("random_under", "auto", "under"),
    ("random_over", "auto", "over"),
    ("combined", "{max_ratio: 3}", "combined"),
    ("smote", "auto", "over"),
    ("borderline1", "0.5", "over"),
    ("borderline2", "{power: 0.3}", "over"),
    ("adasyn", "auto", "over"),
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


def test_text_is_embedded_then_smote_then_an_mlp_trains(trec50, tmp_path, capsys):
    """TREC-50 text -> embeddings (tiny random encoder here; MiniLM by default) -> SMOTE on the
    embedding column -> an MLP head trains on the resampled train split and embedded val."""
    run = tmp_path / "run"
    sets = [
        f"data.path={trec50}",
        "data.text=text",
        f"run_dir={run}",
        "embed.model=tiny",
        "model.kind=mlp",
        "resample.method=smote",
        "resample.sampling_strategy={power: 0.5}",
        "resample.k_neighbors=3",
    ]
    args = ["prepare"] + [x for s in sets for x in ("--set", s)]
    assert cli.main(args) == 0
    capsys.readouterr()
    emb = pads.dataset(str(run / "embedded" / "val")).to_table()
    assert emb.schema.field("embedding").type.list_size == 32 and emb.num_rows == 539
    out = pads.dataset(str(run / "resampled" / "train")).to_table()
    after = json.loads((run / "resampled" / "stats.json").read_text())["counts"]
    assert dict(Counter(out["label"].to_pylist())) == after and out.num_rows > 3773
    syn = out.filter(out["synthetic"])
    assert syn.num_rows == out.num_rows - 3773 and syn["text"].null_count == syn.num_rows
    assert syn["embedding"].null_count == 0

    # another strategy: the embeddings are reused, only the resampling is redone
    marker = run / "embedded" / "_complete.json"
    stamp = marker.stat().st_mtime_ns
    assert cli.main(args + ["--set", "resample.sampling_strategy={power: 0.8}"]) == 0
    assert marker.stat().st_mtime_ns == stamp
    assert cli.main(args) == 0

    train = ["train", *args[1:], "--set", "train.epochs=1", "--set", "train.num_workers=1"]
    assert cli.main(train + ["--set", "model.hidden=[16]"]) == 0
    metrics = json.loads((run / "train" / "metrics.json").read_text())
    assert len(metrics) == 1 and 0 <= metrics[0]["val_macro_f1"] <= 1


def test_rerun_reuses_complete_steps(page_blocks, tmp_path, caplog):
    run = tmp_path / "run"
    sets = ["resample.method=random_over", "resample.sampling_strategy={power: 0.5}"]
    assert _prepare(page_blocks, run, *sets) == 0
    first = json.loads((run / "splits" / "_manifest.json").read_text())["run"]
    resampled = (run / "resampled" / "_resample.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="raybalance"):
        assert _prepare(page_blocks, run, *sets) == 0
    assert "stats and splits" in caplog.text
    assert "resampled train split is up to date" in caplog.text
    assert json.loads((run / "splits" / "_manifest.json").read_text())["run"] == first
    assert (run / "resampled" / "_resample.json").stat().st_mtime_ns == resampled
    # a new strategy only redoes the resampling (and needs no --overwrite)
    feats = ",".join(_features(page_blocks))
    args = ["prepare", "--set", f"data.path={page_blocks}", "--set", "data.label=label"]
    args += ["--set", f"data.features=[{feats}]", "--set", f"run_dir={run}"]
    args += ["--set", "resample.method=random_over", "--set", "resample.sampling_strategy=auto"]
    assert cli.main(args) == 0
    assert json.loads((run / "splits" / "_manifest.json").read_text())["run"] == first
    after = json.loads((run / "resampled" / "stats.json").read_text())["counts"]
    assert len(set(after.values())) == 1  # 'auto' balances the two classes
    # touching the input redoes everything
    f = next(p for p in page_blocks.iterdir() if p.suffix == ".parquet")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000_000))
    assert _prepare(page_blocks, run, *sets) == 0
    assert json.loads((run / "splits" / "_manifest.json").read_text())["run"] != first


def test_lexical_with_smote_is_refused_before_any_work(trec50, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["prepare", "--set", f"data.path={trec50}", "--set", "data.text=text"]
    args += ["--set", f"run_dir={run}", "--set", "model.kind=lexical"]
    assert cli.main(args + ["--set", "resample.method=smote"]) == 2
    err = capsys.readouterr().err
    assert "model.kind=lexical" in err and "random_over" in err
    assert not run.exists()


@pytest.mark.parametrize("files", [3, 9])  # fewer files than tasks (row groups), or more
def test_a_truncated_parquet_file_is_named_before_anything_is_prepared(tmp_path, capsys, files):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(files):
        n = 200
        table = pa.table({"x": rng.random(n), "y": rng.random(n), "label": rng.integers(0, 3, n)})
        pq.write_table(table, data / f"part-{i}.parquet")
    bad = data / "part-1.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    run = tmp_path / "run"
    code = cli.main(
        [
            "prepare",
            "--set",
            f"data.path={data}",
            "--set",
            "data.features=[x, y]",
            "--set",
            f"run_dir={run}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read {bad} as parquet" in err
    assert not (run / "splits").exists() and not (run / "stats.json").exists()


@pytest.mark.integration
def test_prepare_completes_on_data_three_times_the_object_store(ray_local, tmp_path):
    """The session's Ray has a 256 MiB object store; the input is about 3x that in Arrow
    memory. Statistics and splits stream over the files, so prepare completes, exactly."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.config import load_spec
    from engine.prepare import prepare

    store = ray_local.cluster_resources()["object_store_memory"]
    data = tmp_path / "big"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows, nbytes, i = 0, 0, 0
    while nbytes < 3 * store:
        n = 2_000_000
        label = (rng.random(n) < 0.02).astype(np.int8)  # 2 % positives
        table = pa.table(
            {
                "id": np.arange(rows, rows + n, dtype=np.int64),
                "x": rng.random(n),
                "y": rng.random(n),
                "label": label,
            }
        )
        pq.write_table(table, data / f"part-{i:03d}.parquet", row_group_size=500_000)
        rows, nbytes, i = rows + n, nbytes + table.nbytes, i + 1
    spec = load_spec(
        None,
        [
            f"data.path={data}",
            "data.features=[x, y]",
            "data.id=id",
            f"run_dir={tmp_path / 'run'}",
            "split.val=0.1",
            "split.test=0.1",
        ],
    )
    try:
        result = prepare(spec)
        manifest = json.loads((tmp_path / "run" / "splits" / "_manifest.json").read_text())
        assert sum(manifest["rows"].values()) == rows and nbytes >= 3 * store
        counts = manifest["counts"]
        assert sum(counts["test"].values()) == pytest.approx(0.1 * rows, abs=2)
        assert list(result.stats.counts) == [
            sum(counts[s][k] for s in ("train", "val", "test")) for k in result.stats.label_map.keys
        ]
    finally:  # about 1.2 GB of Parquet: not left for pytest's kept temp dirs
        import shutil

        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


@pytest.mark.integration
def test_prepare_killed_while_writing_the_splits_leaves_no_half_splits_and_a_rerun_is_exact(
    tmp_path, ray_env
):
    """SIGKILL the whole `raybalance prepare` process group while the split files are being
    written; the splits folder is not there (no half of it), and a rerun writes every input
    row exactly once and removes the dead writer's temporary folder."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    n_files, per_file = 4, 600_000
    for i in range(n_files):
        cols = {f"x{j}": rng.random(per_file) for j in range(6)}
        cols["label"] = rng.choice(4, per_file, p=[0.85, 0.1, 0.04, 0.01])
        cols["id"] = np.arange(i * per_file, (i + 1) * per_file)
        pq.write_table(pa.table(cols), data / f"part-{i}.parquet", row_group_size=100_000)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jobs.cli", "prepare", "--set", f"data.path={data}"]
    cmd += ["--set", "data.features=[x0, x1, x2, x3, x4, x5]", "--set", "data.id=id"]
    cmd += ["--set", f"run_dir={run}"]
    root = Path(__file__).parent.parent
    kill_when(
        cmd,
        root,
        ray_env,
        tmp_path / "first.log",
        lambda: bool(list(run.glob(".splits.tmp-*/*/*.parquet"))),
        what="writing the split files",
        poll=0.02,
    )
    assert not (run / "splits").exists()  # no half splits under the real name
    assert list(run.glob(".splits.tmp-*"))  # what the dead writer left, aside

    proc = subprocess.run(cmd, cwd=root, env=ray_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(run.glob(".splits.tmp-*"))
    ids = np.concatenate(
        [
            pq.read_table(f, columns=["id"]).column(0).to_numpy()
            for f in sorted((run / "splits").rglob("*.parquet"))
        ]
    )
    assert len(ids) == n_files * per_file and len(np.unique(ids)) == len(ids)  # exactly once
    manifest = json.loads((run / "splits" / "_manifest.json").read_text())
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == n_files * per_file
