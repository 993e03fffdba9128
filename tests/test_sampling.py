"""Balanced per-worker batches: the mix and its rounding, the map sampler, the stream balancer,
and both paths on a real 2-worker Ray Train run (what each worker actually received).

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_sampling.py
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from engine.sampling import (
    BalancedDistributedSampler,
    StreamBalancer,
    balanced_loader,
    batch_class_counts,
    target_mix,
)

COUNTS = (2000, 400, 80, 12)  # long tail, 2492 rows


def long_tail(counts=COUNTS, seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffled rows with a unique ``id``, a ``label`` and a feature whose value encodes the id."""
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]
    ids = np.arange(len(labels), dtype=np.int64)
    return {"id": ids, "label": labels.astype(np.int64), "x": ids * 0.5}


def chunks(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(arrays["id"])
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def class_counts_of(labels, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


# --------------------------------------------------------------------------------------------
# the mix and the per-batch counts


def test_target_mix_for_powers_zero_half_one():
    counts = [2000, 400, 80, 12, 0]
    np.testing.assert_allclose(target_mix(counts, 0.0), [0.25, 0.25, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(target_mix(counts, 1.0), np.array(counts) / 2492)
    root = np.sqrt(np.array(counts, dtype=float))
    np.testing.assert_allclose(target_mix(counts, 0.5), root / root.sum())
    assert target_mix(counts, 0.5)[-1] == 0.0
    for bad_counts, power in (([1, -1], 0.0), ([0, 0], 0.0), ([3, 1], 1.5), ([3, 1], -0.1)):
        with pytest.raises(ValueError):
            target_mix(bad_counts, power)


@pytest.mark.parametrize(
    "mix, batch_size",
    [
        (target_mix(COUNTS, 0.0), 30),
        (target_mix(COUNTS, 0.5), 32),
        (target_mix(COUNTS, 1.0), 17),
        (target_mix([7, 5, 3, 2, 2, 1, 1], 0.3), 10),
        (target_mix([1, 1, 1], 0.0), 1),
    ],
)
def test_batch_class_counts_round_each_batch_and_converge(mix, batch_size):
    steps = 3000
    m = np.stack([batch_class_counts(mix, batch_size, t) for t in range(steps)])
    ideal = mix * batch_size
    assert (m.sum(axis=1) == batch_size).all()
    assert (np.abs(m - ideal) < 1).all()  # largest-remainder: floor or floor + 1
    # the carried remainder keeps every prefix within ~1 row of the ideal (bounded, not growing)
    prefix_error = np.abs(np.cumsum(m, axis=0) - np.outer(np.arange(1, steps + 1), ideal))
    assert prefix_error.max() < 1.5
    assert (np.abs(m.mean(axis=0) - ideal) <= len(mix) / steps).all()


def test_batch_class_counts_rotate_and_are_a_pure_function_of_the_step():
    mix = target_mix(COUNTS, 0.0)
    assert batch_class_counts(mix, 30, 0).tolist() == [8, 8, 7, 7]
    assert batch_class_counts(mix, 30, 1).tolist() == [7, 7, 8, 8]
    assert batch_class_counts(mix, 32, 5).tolist() == [8, 8, 8, 8]
    mix = target_mix([5, 3, 2], 0.4)
    sequential = [batch_class_counts(mix, 11, t).tolist() for t in range(3000)]
    shuffled = np.random.default_rng(0).permutation(3000)[:500]
    assert all(batch_class_counts(mix, 11, int(t)).tolist() == sequential[t] for t in shuffled)
    with pytest.raises(ValueError, match="sum to 1"):
        batch_class_counts(np.array([0.5, 0.2]), 10, 0)
    with pytest.raises(ValueError, match="batch_size"):
        batch_class_counts(mix, 0, 0)
    with pytest.raises(ValueError, match="step"):
        batch_class_counts(mix, 10, -1)


# --------------------------------------------------------------------------------------------
# map path


def split_batches(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def test_sampler_has_no_2_pow_24_row_limit():
    n = 1 << 25
    labels = np.zeros(n, dtype=np.int8)
    labels[1::3] = 1
    labels[::1000] = 2
    b, w = 4096, 2
    samplers = [
        BalancedDistributedSampler(labels, b, num_replicas=w, rank=r, power=0.5, seed=3)
        for r in range(w)
    ]
    assert samplers[0].steps_per_epoch == n // (w * b)
    assert len(samplers[0]) == len(samplers[1]) == n // w
    mix = samplers[0].mix
    drawn = []
    for s in samplers:
        batches = split_batches(list(itertools.islice(iter(s), 3 * b)), b)
        for step, batch in enumerate(batches):
            got = class_counts_of(labels[batch], 3)
            assert got == batch_class_counts(mix, b, step).tolist()
        drawn.append(np.concatenate(batches))
    everything = np.concatenate(drawn)
    assert everything.max() < n and everything.max() >= 1 << 24  # rows past 2^24 are drawn
    assert len(np.intersect1d(drawn[0], drawn[1])) == 0  # ranks are disjoint
    assert len(np.unique(drawn[0])) == len(drawn[0])


def run_sampler_epoch(labels, b, w, epoch, **kwargs) -> list[list[int]]:
    out = []
    for r in range(w):
        s = BalancedDistributedSampler(labels, b, num_replicas=w, rank=r, **kwargs)
        s.set_epoch(epoch)
        indices = list(s)
        assert len(indices) == len(s) == s.steps_per_epoch * b
        out.append(indices)
    return out


def check_map_epoch(labels, per_rank, b, epoch, mix):
    """Every batch has the exact counts; classes that have enough rows are disjoint across ranks
    and never repeat; the others use every row before any row twice (multiplicity k or k + 1)."""
    c = len(mix)
    steps = len(per_rank[0]) // b
    assert all(len(idx) == steps * b for idx in per_rank)  # equal steps on every rank
    for idx in per_rank:
        for s, batch in enumerate(split_batches(idx, b)):
            assert (
                class_counts_of(labels[batch], c)
                == batch_class_counts(mix, b, epoch * steps + s).tolist()
            ), (epoch, s)
    counts = np.bincount(labels, minlength=c)
    union = np.concatenate(per_rank)
    recycled = []
    for k in range(c):
        rows = union[labels[union] == k]
        times = np.bincount(rows, minlength=len(labels))[labels == k]
        q, rem = divmod(len(rows), counts[k])
        assert sorted(set(times.tolist())) == sorted({q, q + 1} if rem else {q}), k
        assert (times == q + 1).sum() == rem
        if len(rows) <= counts[k]:
            per = [set(np.asarray(i)[labels[i] == k].tolist()) for i in per_rank]
            assert not per[0] & per[1]
        else:
            recycled.append(k)
    return recycled


def test_sampler_epoch_exact_counts_disjoint_ranks_and_recycles_only_what_must():
    labels = long_tail()["label"]
    b, w, power = 32, 2, 0.5
    mix = target_mix(COUNTS, power)
    for epoch in (0, 1):
        per_rank = run_sampler_epoch(labels, b, w, epoch, power=power, seed=11)
        recycled = check_map_epoch(labels, per_rank, b, epoch, mix)
        assert recycled == [1, 2, 3]  # class 0 has 2000 rows for ~1447 draws; the rest recycle


def test_sampler_is_deterministic_for_seed_and_epoch():
    labels = long_tail()["label"]
    a = run_sampler_epoch(labels, 32, 2, 0, power=0.0, seed=5)
    assert run_sampler_epoch(labels, 32, 2, 0, power=0.0, seed=5) == a
    assert run_sampler_epoch(labels, 32, 2, 1, power=0.0, seed=5) != a
    assert run_sampler_epoch(labels, 32, 2, 0, power=0.0, seed=6) != a
    s = BalancedDistributedSampler(labels, 32, num_replicas=2, rank=1, seed=5)
    assert list(s) == list(s) == a[1]  # iterating does not advance anything
    short = BalancedDistributedSampler(labels, 32, num_replicas=2, rank=0, num_samples=1000)
    assert short.steps_per_epoch == 16 and len(short) == 512 == len(list(short))


def test_sampler_rejects_bad_labels_and_ranks():
    with pytest.raises(ValueError, match=">= 0"):
        BalancedDistributedSampler([0, 1, -1], 2, num_replicas=1, rank=0)
    with pytest.raises(TypeError, match="integer"):
        BalancedDistributedSampler([0.0, 1.0], 2, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="rank"):
        BalancedDistributedSampler([0, 1], 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        BalancedDistributedSampler([0, 1], 0, num_replicas=1, rank=0)


def test_balanced_loader_outside_ray_train_is_one_worker():
    arrays = long_tail()
    ds = TensorDataset(torch.as_tensor(arrays["id"]), torch.as_tensor(arrays["label"]))
    loader = balanced_loader(ds, arrays["label"], 32, power=1.0, seed=2)
    assert isinstance(loader.sampler, BalancedDistributedSampler)
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (1, 0)
    mix = target_mix(COUNTS, 1.0)
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == math.ceil(2492 / 32)
    for s, (ids, ys) in enumerate(batches):
        assert (torch.as_tensor(arrays["label"])[ids] == ys).all()
        assert class_counts_of(ys, 4) == batch_class_counts(mix, 32, 2 * len(loader) + s).tolist()
    with pytest.raises(TypeError, match="shuffle"):
        balanced_loader(ds, arrays["label"], 32, shuffle=True)
    with pytest.raises(ValueError, match="rows"):
        balanced_loader(ds, arrays["label"][:-1], 32)


# --------------------------------------------------------------------------------------------
# stream path, in process


def shard_of(arrays, rank: int, world: int) -> dict[str, np.ndarray]:
    n = len(arrays["id"])
    lo, hi = rank * n // world, (rank + 1) * n // world
    return {k: v[lo:hi] for k, v in arrays.items()}


def check_stream_batches(batches, b, mix, epoch, steps):
    assert len(batches) == steps
    for s, batch in enumerate(batches):
        assert len(batch["id"]) == b
        assert set(batch) == {"id", "label", "x"}
        np.testing.assert_array_equal(batch["x"], batch["id"] * 0.5)  # rows stay whole
        expected = batch_class_counts(mix, b, epoch * steps + s).tolist()
        assert class_counts_of(batch["label"], len(mix)) == expected, (epoch, s)


def first_reuse_only_after_all_fresh(batches, shard, k: int) -> bool:
    """No row of class ``k`` is emitted twice before every row of it in the shard was emitted."""
    fresh = set(shard["id"][shard["label"] == k].tolist())
    seen: set[int] = set()
    for batch in batches:
        ids = batch["id"][batch["label"] == k].tolist()
        reused = len(set(ids)) < len(ids) or bool(seen & set(ids))
        seen |= set(ids)
        if reused and not fresh <= seen:
            return False
    return True


def test_stream_exact_counts_and_no_reuse_while_fresh_rows_exist():
    arrays = long_tail()
    b, w = 30, 2
    mix = target_mix(COUNTS, 0.0)
    for rank in range(w):
        shard = shard_of(arrays, rank, w)
        bal = StreamBalancer(COUNTS, b, power=0.0, seed=1, rank=rank, world_size=w)
        assert bal.steps_per_epoch == math.ceil(2492 / (w * b)) == 42
        for epoch in (0, 1):
            batches = list(bal.epoch(epoch, chunks(shard, 64)))
            check_stream_batches(batches, b, mix, epoch, bal.steps_per_epoch)
            for k in range(4):
                assert first_reuse_only_after_all_fresh(batches, shard, k), (rank, epoch, k)
            st = bal.last_stats
            assert sum(st["read"]) == len(shard["id"]) and st["missing"] == []
            assert st["recycled"][0] == 0  # 1000 rows of class 0 for 315 draws
            emitted = np.sum([class_counts_of(x["label"], 4) for x in batches], axis=0)
            assert (np.add(st["fresh"], st["recycled"]) == emitted).all()
            ids0 = np.concatenate([x["id"][x["label"] == 0] for x in batches])
            assert len(set(ids0.tolist())) == len(ids0)


def every_class_first(shard: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The shard with one row of each class moved to the front (no search for a class)."""
    first = [int(np.flatnonzero(shard["label"] == k)[0]) for k in range(4)]
    order = np.concatenate([first, np.setdiff1d(np.arange(len(shard["id"])), first)])
    return {k: v[order] for k, v in shard.items()}


@pytest.mark.parametrize("front", [False, True])
def test_stream_buffers_stay_bounded_and_the_shard_is_read_evenly(front):
    shard = shard_of(long_tail(), 0, 2)
    shard = every_class_first(shard) if front else shard
    b = 30
    bal = StreamBalancer(COUNTS, b, power=0.0, seed=4, rank=0, world_size=2, buffer_rows=16)
    reads = []

    def stream():
        for chunk in chunks(shard, 50):
            reads.append(len(chunk["id"]))
            yield chunk

    batches = []
    for batch in bal.epoch(0, stream()):
        batches.append(batch)
        if len(batches) == bal.steps_per_epoch // 2:
            assert 0.35 < sum(reads) / len(shard["id"]) < 0.75  # paced, not read all up front
    check_stream_batches(batches, b, bal.mix, 0, bal.steps_per_epoch)
    assert 0 < bal.peak_buffer_rows <= 16 and 0 < bal.peak_reservoir_rows <= 16
    st = bal.last_stats
    assert sum(reads) == len(shard["id"]) == sum(st["read"])
    assert (np.array(st["fresh"]) + st["dropped"] + st["unused"] == st["read"]).all()
    assert st["dropped"][0] > 0  # class 0 is undersampled, its surplus dropped along the way
    if front:  # nothing to search for: pace alone keeps 16 rows of class 0 enough
        ids0 = np.concatenate([x["id"][x["label"] == 0] for x in batches])
        assert len(set(ids0.tolist())) == len(ids0) and st["recycled"][0] == 0
    else:  # the search for the first class-3 row ran ahead of pace; class 0 paid for it
        assert st["recycled"][0] > 0


def test_stream_emits_exactly_steps_per_epoch_for_short_and_long_streams():
    arrays = long_tail()
    shard = shard_of(arrays, 1, 2)
    long = StreamBalancer(COUNTS, 30, rank=1, world_size=2, steps_per_epoch=100)
    batches = list(long.epoch(0, chunks(shard, 100)))
    check_stream_batches(batches, 30, long.mix, 0, 100)
    assert long.last_stats["exhausted_at"] is not None and sum(long.last_stats["recycled"]) > 0
    consumed = []
    short = StreamBalancer(COUNTS, 30, rank=1, world_size=2, steps_per_epoch=5)
    batches = list(short.epoch(3, (consumed.append(1) or c for c in chunks(shard, 100))))
    check_stream_batches(batches, 30, short.mix, 3, 5)
    assert len(consumed) == len(chunks(shard, 100))  # the rest of the shard is drained


def test_stream_missing_class_renormalizes_with_a_warning(caplog):
    arrays = long_tail()
    keep = arrays["label"] != 3
    shard = {k: v[keep][:1200] for k, v in arrays.items()}
    bal = StreamBalancer(COUNTS, 30, power=0.0, seed=0, rank=1, world_size=2)
    with caplog.at_level(logging.WARNING, logger="engine.sampling"):
        batches = list(bal.epoch(0, chunks(shard, 100)))
    renorm = np.where(np.arange(4) == 3, 0.0, bal.mix)
    renorm = renorm / renorm.sum()
    check_stream_batches(batches, 30, renorm, 0, bal.steps_per_epoch)
    assert bal.last_stats["missing"] == [3]
    assert bal.last_stats["mix"] == renorm.tolist()
    assert [r for r in caplog.records if "class(es) 3" in r.getMessage()]


def test_stream_reads_on_until_an_unseen_class_appears():
    arrays = long_tail()
    order = np.argsort(arrays["label"] == 3, kind="stable")  # every class-3 row at the very end
    shard = {k: v[order] for k, v in arrays.items()}
    bal = StreamBalancer(COUNTS, 30, power=0.0, seed=0, buffer_rows=64)
    batches = list(bal.epoch(0, chunks(shard, 100)))
    check_stream_batches(batches, 30, bal.mix, 0, bal.steps_per_epoch)
    assert (batches[0]["label"] == 3).sum() >= 7 and bal.last_stats["missing"] == []
    assert set(batches[0]["id"][batches[0]["label"] == 3].tolist()) <= set(
        shard["id"][shard["label"] == 3].tolist()
    )


def test_stream_is_deterministic_for_seed_epoch_rank():
    shard = shard_of(long_tail(), 0, 2)

    def run(epoch=0, rank=0, seed=9):
        bal = StreamBalancer(COUNTS, 30, power=0.5, seed=seed, rank=rank, world_size=2)
        return [x["id"].tolist() for x in bal.epoch(epoch, chunks(shard, 64))]

    assert run() == run()
    assert run(epoch=1) != run()
    assert run(rank=1) != run()
    assert run(seed=10) != run()


def test_stream_keeps_rows_whole_for_string_and_vector_columns():
    arrays = long_tail()
    n = len(arrays["id"])
    arrays["note"] = np.array(["r" * (1 + i % 7) + str(i) for i in range(n)])  # widths vary
    arrays["vec"] = np.stack([arrays["id"], -arrays["id"]], axis=1).astype(np.float32)
    bal = StreamBalancer(COUNTS, 30, power=0.0, seed=3, buffer_rows=8)
    batches = list(bal.epoch(0, chunks(arrays, 40)))
    assert len(batches) == bal.steps_per_epoch and sum(bal.last_stats["recycled"]) > 0
    for x in batches:
        ids = x["id"]
        assert x["note"].tolist() == [str(v) for v in arrays["note"][ids]]
        np.testing.assert_array_equal(x["vec"], arrays["vec"][ids])
        np.testing.assert_array_equal(x["label"], arrays["label"][ids])


def test_stream_rejects_bad_input():
    bal = StreamBalancer([5, 5], 4)
    with pytest.raises(ValueError, match="outside"):
        list(bal.epoch(0, [{"label": np.array([0, 2])}]))
    with pytest.raises(ValueError, match="no label column"):
        list(bal.epoch(0, [{"y": np.array([0, 1])}]))
    with pytest.raises(ValueError, match="no rows of any class"):
        list(bal.epoch(0, []))
    with pytest.raises(ValueError, match="rank"):
        StreamBalancer([5, 5], 4, rank=2, world_size=2)


# --------------------------------------------------------------------------------------------
# real Ray Train, 2 workers: what each worker received

EPOCHS, MAP_B, MAP_POWER, STREAM_B, SEED = 2, 32, 0.5, 30, 7


@pytest.fixture(scope="module")
def ray_run(ray_local, tmp_path_factory):
    """One 2-worker TorchTrainer run doing both paths; returns (rows, [rank0, rank1] outputs)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Defined here, not at module level: the workers cannot import this test module (pytest puts
    # tests/ on the driver's path only), and cloudpickle sends a nested function by value.
    def _train_fn(config: dict) -> None:
        """Per worker: a balanced map loader through prepare_data_loader and a StreamBalancer over
        the worker's dataset shard; write every batch's ids and labels to ``rank<r>.json``."""
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        labels = np.asarray(config["labels"], dtype=np.int64)
        ds = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
        loader = balanced_loader(ds, labels, MAP_B, power=MAP_POWER, seed=SEED)
        sampler = loader.sampler
        prepared = ray.train.torch.prepare_data_loader(loader)  # as the engine calls it
        out = {
            "rank": rank,
            "world": world,
            "kept": prepared.sampler is sampler,
            "sampler_type": type(prepared.sampler).__name__,
            "loader_len": len(prepared),
            "map": [],
            "stream": [],
            "stats": [],
        }
        for epoch in range(EPOCHS):
            prepared.sampler.set_epoch(epoch)
            out["map"].append([[i.tolist(), y.tolist()] for i, y in prepared])
        balancer = StreamBalancer(
            config["counts"], STREAM_B, seed=SEED, rank=rank, world_size=world, buffer_rows=256
        )
        shard = ray.train.get_dataset_shard("train")
        for epoch in range(EPOCHS):
            it = shard.iter_batches(batch_size=STREAM_B, batch_format="numpy")
            batches = balancer.epoch(epoch, it)
            out["stream"].append([[x["id"].tolist(), x["label"].tolist()] for x in batches])
            out["stats"].append(balancer.last_stats)
        Path(config["out_dir"], f"rank{rank}.json").write_text(json.dumps(out))

    arrays = long_tail()
    # 8 blocks, each a stratified slice, so every block-wise shard holds every class
    blocks = []
    for i in range(8):
        idx = np.concatenate([np.flatnonzero(arrays["label"] == k)[i::8] for k in range(4)])
        idx = np.sort(idx)
        blocks.append(pa.table({k: v[idx] for k, v in arrays.items()}))
    ds = ray.data.from_arrow(blocks)
    out_dir = tmp_path_factory.mktemp("sampling_ray")
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={
            "labels": arrays["label"].tolist(),
            "counts": list(COUNTS),
            "out_dir": str(out_dir),
        },
        scaling_config=ScalingConfig(
            num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}
        ),
        run_config=RunConfig(storage_path=str(out_dir / "storage"), name="sampling"),
        datasets={"train": ds},
    )
    trainer.fit()
    outs = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    return arrays, outs


@pytest.mark.slow
def test_ray_train_map_sampler_survives_prepare_data_loader(ray_run):
    arrays, outs = ray_run
    labels = arrays["label"]
    steps = math.ceil(len(labels) / (2 * MAP_B))
    mix = target_mix(COUNTS, MAP_POWER)
    for r, out in enumerate(outs):
        assert (out["rank"], out["world"]) == (r, 2)
        assert out["kept"] and out["sampler_type"] == "BalancedDistributedSampler"
        assert out["loader_len"] == steps
    for epoch in range(EPOCHS):
        per_rank = []
        for r, out in enumerate(outs):
            batches = out["map"][epoch]
            assert len(batches) == steps  # equal step counts on both ranks
            for ids, ys in batches:
                assert labels[ids].tolist() == ys
            idx = [i for ids, _ in batches for i in ids]
            # exactly what the sampler built here with the same arguments yields
            s = BalancedDistributedSampler(
                labels, MAP_B, num_replicas=2, rank=r, power=MAP_POWER, seed=SEED
            )
            s.set_epoch(epoch)
            assert idx == list(s)
            per_rank.append(idx)
        assert check_map_epoch(labels, per_rank, MAP_B, epoch, mix) == [1, 2, 3]
    assert outs[0]["map"][0] != outs[0]["map"][1]


@pytest.mark.slow
def test_ray_train_stream_balancer_on_dataset_shards(ray_run):
    arrays, outs = ray_run
    steps = math.ceil(len(arrays["id"]) / (2 * STREAM_B))
    mix = target_mix(COUNTS, 0.0)
    for epoch in range(EPOCHS):
        ids_by_rank = []
        for out in outs:
            assert out["stats"][epoch]["missing"] == []
            assert out["stats"][epoch]["steps"] == steps
            batches = out["stream"][epoch]
            assert len(batches) == steps  # equal step counts on both ranks
            for s, (ids, ys) in enumerate(batches):
                assert arrays["label"][ids].tolist() == ys
                expected = batch_class_counts(mix, STREAM_B, epoch * steps + s).tolist()
                assert class_counts_of(ys, 4) == expected, (epoch, s)
            ids = np.array([i for b_ids, _ in batches for i in b_ids])
            ids0 = ids[arrays["label"][ids] == 0]
            assert len(np.unique(ids0)) == len(ids0)  # plenty of class 0: no row twice
            st = out["stats"][epoch]
            assert st["recycled"][0] == 0 and st["dropped"][0] > 0
            # classes short of rows recycle, but lose no row: each is emitted fresh or was
            # still waiting in its buffer when the epoch ended
            assert all(st["recycled"][k] > 0 and st["dropped"][k] == 0 for k in (1, 2, 3))
            assert sum(st["read"]) == len(arrays["id"]) // 2
            ids_by_rank.append(set(ids.tolist()))
        assert not ids_by_rank[0] & ids_by_rank[1]  # the workers' rows are disjoint
        union = ids_by_rank[0] | ids_by_rank[1]
        unused = sum(out["stats"][epoch]["unused"][k] for out in outs for k in (1, 2, 3))
        short_rows = set(np.flatnonzero(arrays["label"] != 0).tolist())
        assert len(short_rows - union) <= unused
