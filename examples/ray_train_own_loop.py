"""Your own Ray Train loop on a Dataset the engine split and resampled, with its focal loss.

    python examples/ray_train_own_loop.py

Ray Data in, Ray Data out: ``engine.ray_data`` computes the class statistics of a Dataset,
splits it exactly by class, and resamples the train part to at most 4:1 (``combined``,
``{"max_ratio": 4}``) — lazily, with a feature step of one's own chained after it. A 2-worker
``TorchTrainer`` reads its shard through ``get_dataset_shard`` and trains a linear model with
``engine.losses.FocalLoss``. Asserts: the two shards together hold the resampled class counts
(less the at most one row Ray Train's equal split drops); the loss of every step equals the
focal formula computed by hand.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter

import numpy as np
import pandas as pd
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from engine import ray_data as rb


def make_frame(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = rng.choice(["ok", "late", "fraud"], size=n, p=[0.9, 0.08, 0.02])
    shift = pd.Series(y).map({"ok": 0.0, "late": 1.0, "fraud": 2.0}).to_numpy()
    return pd.DataFrame({"amount": rng.normal(size=n) + shift, "age": rng.normal(size=n), "y": y})


def loop(config: dict) -> None:
    import torch

    from engine.losses import FocalLoss

    classes = config["classes"]
    shard = ray.train.get_dataset_shard("train")
    model = ray.train.torch.prepare_model(torch.nn.Linear(2, len(classes)))
    loss_fn = FocalLoss(gamma=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: Counter = Counter()
    for batch in shard.iter_batches(batch_size=128, batch_format="numpy"):
        x = torch.as_tensor(np.stack([batch["amount"], batch["age_z"]], 1), dtype=torch.float32)
        y = torch.as_tensor([classes.index(v) for v in batch["y"]])
        logits = model(x)
        loss = loss_fn(logits, y)
        p = torch.softmax(logits.detach().double(), 1)[torch.arange(len(y)), y]
        assert torch.allclose(loss.detach().double(), (-((1 - p) ** 2) * p.log()).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.update(batch["y"].tolist())
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
        json.dump(dict(seen), f)
    ray.train.report({"rows": sum(seen.values())})


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_pandas(make_frame())
    stats = rb.class_stats(ds, "y")
    print("classes", stats.count_of(), f"ratio {stats.imbalance_ratio:.0f}:1")
    parts = rb.stratified_split(ds, "y", val=0.1, test=0.2, seed=0)
    res = rb.resample(parts.train, "y", method="combined", sampling_strategy={"max_ratio": 4})
    train = res.dataset.map_batches(  # one's own step, still lazy
        lambda b: b.assign(age_z=(b["age"] - b["age"].mean()) / 3), batch_format="pandas"
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = TorchTrainer(
            loop,
            train_loop_config={"classes": list(stats.label_map.labels), "out": out},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            datasets={"train": train},
            run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="own-loop"),
        )
        assert trainer.fit().error is None
        shards = [Counter(json.load(open(os.path.join(out, f"rank{r}.json")))) for r in (0, 1)]
    got, want = shards[0] + shards[1], Counter(res.after)
    assert all(0 <= want[k] - got[k] <= 1 for k in want), (got, want)
    assert max(want.values()) <= 4 * min(want.values())
    print(f"ok: resampled {res.before} -> {res.after}; the 2 shards held {dict(got)}")
    ray.shutdown()


if __name__ == "__main__":
    main()
