"""The Ray Data API on real Ray: stats, exact splits, k-folds and resampling of a Dataset give
exactly the counts and the same rows as the file path on the same data, whatever the blocks;
a resampled Dataset feeds a 2-worker TorchTrainer through get_dataset_shard."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import ray_data as rb
from engine.config import DataSpec, ResampleSpec, SplitSpec, StatsSpec
from engine.data import LabelMap, read_schema, resolve_columns, resolve_source
from engine.resample import resample as file_resample
from engine.split import split as file_split
from engine.split import split_counts
from engine.stats import class_stats as file_class_stats

N = 3000
PROBS = [0.72, 0.15, 0.08, 0.04, 0.01]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "x": rng.normal(size=N),
            "k": rng.integers(0, 50, N),
            "label": rng.choice(np.array(["a", "b", "c", "d", "e"]), size=N, p=PROBS),
        }
    )


@pytest.fixture(scope="module")
def files(frame, tmp_path_factory):
    """The same rows as Parquet: three files, small row groups."""
    out = tmp_path_factory.mktemp("rd") / "data"
    out.mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, part in enumerate(np.array_split(np.arange(N), 3)):
        pq.write_table(table.take(part), out / f"p{i}.parquet", row_group_size=250)
    return out


def _blocks(df: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    return [df.iloc[i] for i in np.array_split(np.arange(len(df)), n)]


def _layouts(ray, frame, files):
    """The same rows as Datasets of different blocks and row orders."""
    shuffled = frame.sample(frac=1.0, random_state=1)
    return {
        "one block": ray.data.from_pandas(frame),
        "seven shuffled blocks": ray.data.from_pandas(_blocks(shuffled, 7)),
        "parquet": ray.data.read_parquet(str(files)),
        "repartitioned": ray.data.read_parquet(str(files)).repartition(5),
    }


def _rows(df: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, df[["x", "k", "label"]].itertuples(index=False)))


def _file_split(files, tmp, seed):
    source = resolve_source(str(files))
    schema = read_schema(source)
    cols = resolve_columns(schema, DataSpec(label="label"))
    counts = Counter(pq.read_table(files).column("label").to_pylist())
    lm = LabelMap.from_values("label", "string", list(counts))
    file_split(source, cols, lm, counts, SplitSpec(0.1, 0.2, seed), str(tmp), schema)
    return {s: pq.read_table(tmp / s).to_pandas() for s in ("train", "val", "test")}, lm


def test_class_stats_of_a_dataset_equal_the_file_paths(ray_local, frame):
    stats = rb.class_stats(ray_local.data.from_pandas(_blocks(frame, 4)), "label")
    counts = frame["label"].value_counts().to_dict()
    lm = LabelMap.from_values("label", "string", list(counts))
    expected = file_class_stats(lm, counts, StatsSpec())
    assert stats.counts == expected.counts and stats.label_map == lm
    assert stats.weights == expected.weights
    assert stats.imbalance_ratio == max(counts.values()) / min(counts.values())


def test_the_split_of_a_dataset_is_the_file_paths_whatever_the_blocks(
    ray_local, frame, files, tmp_path
):
    expected, lm = _file_split(files, tmp_path / "splits", seed=3)
    for name, ds in _layouts(ray_local, frame, files).items():
        parts = rb.stratified_split(ds, "label", val=0.1, test=0.2, seed=3)
        assert parts.label_map == lm
        got = {s: getattr(parts, s).to_pandas() for s in ("train", "val", "test")}
        for s in ("train", "val", "test"):
            assert _rows(got[s]) == _rows(expected[s]), (name, s)  # the same rows
            assert got[s]["label"].value_counts().to_dict() == {
                k: v for k, v in parts.counts[s].items() if v
            }
        for label, n in frame["label"].value_counts().items():  # exact per-class counts
            want = split_counts(int(n), 0.1, 0.2)
            assert tuple(parts.counts[s][label] for s in ("train", "val", "test")) == want
        assert sorted(sum((_rows(g) for g in got.values()), [])) == _rows(frame)  # a partition
    other = rb.stratified_split(ray_local.data.from_pandas(frame), "label", seed=4)
    assert _rows(other.val.to_pandas()) != _rows(expected["val"])  # the seed matters


def test_materialized_outputs_hold_the_same_rows_as_lazy_ones(ray_local, frame, files):
    ds = ray_local.data.read_parquet(str(files))
    lazy = rb.stratified_split(ds, "label", seed=3)
    kept = rb.stratified_split(ds, "label", seed=3, materialize=True)
    for s in ("train", "val", "test"):
        got = getattr(kept, s).to_pandas()
        assert list(got.columns) == ["x", "k", "label"]  # no tag column left
        assert _rows(got) == _rows(getattr(lazy, s).to_pandas())
    folds = rb.stratified_kfold(ds, "label", k=2, materialize=True)
    plain = rb.stratified_kfold(ds, "label", k=2)
    vals = [v.to_pandas() for _, v in folds.folds]
    assert [_rows(v) for v in vals] == [_rows(v.to_pandas()) for _, v in plain.folds]
    assert _rows(folds.folds[0][0].to_pandas()) == _rows(vals[1])  # fold 0's train: fold 1


def test_a_split_by_an_id_column_keeps_rows_with_their_ids(ray_local, frame):
    df = frame.assign(id=np.arange(N))
    a = rb.stratified_split(ray_local.data.from_pandas(df), "label", id="id", seed=0)
    b = rb.stratified_split(
        ray_local.data.from_pandas(_blocks(df.sample(frac=1.0, random_state=2), 3)),
        "label",
        id="id",
        seed=0,
    )
    assert sorted(a.test.to_pandas()["id"]) == sorted(b.test.to_pandas()["id"])


def test_stratified_kfold_partitions_every_class_within_one_row(ray_local, frame):
    k = 4
    kf = rb.stratified_kfold(ray_local.data.from_pandas(_blocks(frame, 3)), "label", k=k)
    vals = [v.to_pandas() for _, v in kf.folds]
    assert sorted(sum((_rows(v) for v in vals), [])) == _rows(frame)  # every row in one fold
    for label, n in frame["label"].value_counts().items():
        per_fold = [c[label] for c in kf.counts]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1
        assert [int((v["label"] == label).sum()) for v in vals] == per_fold
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    train0 = kf.folds[0][0].to_pandas()
    assert sorted(_rows(train0) + _rows(vals[0])) == _rows(frame)
    with pytest.raises(ValueError, match="k >= 2"):
        rb.stratified_kfold(ray_local.data.from_pandas(frame), "label", k=1)


@pytest.mark.parametrize(
    "method, strategy",
    [("random_over", "auto"), ("random_under", "majority"), ("combined", {"max_ratio": 4})],
)
def test_resampling_a_dataset_gives_the_file_paths_rows_whatever_the_blocks(
    ray_local, frame, files, tmp_path, method, strategy
):
    source = resolve_source(str(files))
    schema = read_schema(source)
    cols = resolve_columns(schema, DataSpec(label="label"))
    counts = Counter(frame["label"])
    lm = LabelMap.from_values("label", "string", list(counts))
    spec = ResampleSpec(method=method, sampling_strategy=strategy, seed=5)
    out = tmp_path / "res"
    file_resample(source, cols, lm, {str(k): v for k, v in counts.items()}, spec, str(out), schema)
    expected = pq.read_table(out / "train").to_pandas()
    keep = ["x", "k", "label", "sample_id", "source_id", "copy_index"]
    for name, ds in _layouts(ray_local, frame, files).items():
        r = rb.resample(ds, "label", method=method, sampling_strategy=strategy, seed=5)
        got = r.dataset.to_pandas()
        assert sorted(map(tuple, got[keep].values.tolist())) == sorted(
            map(tuple, expected[keep].values.tolist())
        ), name
        assert got["label"].value_counts().to_dict() == {k: v for k, v in r.after.items() if v}
        assert r.before == {k: int(v) for k, v in counts.items()}
        assert not got["synthetic"].any()


def test_bad_inputs_are_refused_naming_what_to_change(ray_local, frame):
    ds = ray_local.data.from_pandas(frame)
    with pytest.raises(ValueError, match="data.label 'nope' is not a column"):
        rb.class_stats(ds, "nope")
    blank = frame.assign(label=frame["label"].where(frame.index % 100 != 0, ""))
    with pytest.raises(ValueError, match=r"30 row\(s\) of the Dataset have no label"):
        rb.stratified_split(ray_local.data.from_pandas(blank), "label")
    parts = rb.stratified_split(ray_local.data.from_pandas(blank), "label", drop_null_labels=True)
    assert sum(sum(c.values()) for c in parts.counts.values()) == N - 30
    with pytest.raises(ValueError, match="SMOTE family runs in the file path"):
        rb.resample(ds, "label", method="smote")
    with pytest.raises(ValueError, match="leaves class"):
        rb.resample(ds, "label", method="random_under", sampling_strategy={"e": 0})
    floats = frame.assign(
        label=frame["label"].map({"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": 4.0})
    )
    stats = rb.class_stats(ray_local.data.from_pandas(floats), "label")
    assert stats.label_map.labels == (0, 1, 2, 3, 4)  # whole floats read as ints
    with pytest.raises(ValueError, match="whole"):
        rb.class_stats(ray_local.data.from_pandas(floats.assign(label=0.5)), "label")


def _shard_loop():
    """The per-worker loop (nested, so that it is shipped to the workers by value): counts the
    classes of its shard and writes them to ``config["out"]/rank<r>.json``."""

    def loop(config):
        import json
        import os
        from collections import Counter

        import ray.train

        shard = ray.train.get_dataset_shard("train")
        seen = Counter()
        for batch in shard.iter_batches(batch_size=64, batch_format="pandas"):
            seen.update(batch["label"].tolist())
            assert {"sample_id", "source_id", "copy_index", "feat"} <= set(batch.columns)
        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
            json.dump(dict(seen), f)
        ray.train.report({"rows": sum(seen.values())})

    return loop


@pytest.mark.slow
def test_a_resampled_dataset_feeds_a_two_worker_torch_trainer(ray_local, frame, tmp_path):
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    parts = rb.stratified_split(ray_local.data.from_pandas(frame), "label", seed=0)
    res = rb.resample(parts.train, "label", method="random_over", sampling_strategy="auto")
    train = res.dataset.map_batches(lambda b: b.assign(feat=b["x"] * 2), batch_format="pandas")
    out = tmp_path / "seen"
    out.mkdir()
    trainer = TorchTrainer(
        _shard_loop(),
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": train},
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="shards"),
    )
    assert trainer.fit().error is None
    shards = [Counter(json.loads((out / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert all(sum(s.values()) > 0 for s in shards)  # both workers read rows
    top = max(parts.counts["train"].values())
    assert res.after == dict.fromkeys(res.after, top)  # 'auto': every class up to the largest
    # the shards hold the targets, less what Ray Train's equal split (streaming_split(equal=True))
    # drops to give both workers as many rows: fewer than num_workers rows
    got, want = shards[0] + shards[1], Counter(res.after)
    total = sum(want.values())
    assert sum(got.values()) == total - total % 2
    assert all(0 <= want[k] - got[k] <= 1 for k in want), (got, want)
