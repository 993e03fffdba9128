"""The per-worker training loop's pieces, run in this process on a hand-built ``_Loop`` (the
whole loop runs on real Ray Train in test_train.py): loaders, one epoch, gradient accumulation,
validation, and a checkpoint that restores the exact state."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.config import LossSpec, ModelSpec, SamplerSpec, TrainSpec
from engine.data import LabelMap
from engine.models import build_model
from engine.train import (
    _add_optimizer,
    _checkpoint_dir,
    _Loop,
    _map_loader,
    _restore,
    _train_epoch,
    _validate,
    loss_from_spec,
)

K, D, N = 3, 8, 120


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=N, p=[0.7, 0.2, 0.1])
    x = rng.normal(size=(N, D)).astype(np.float32) + 2.0 * np.eye(K, D, dtype=np.float32)[y]
    return {"features": x, "label": y.astype(np.int64)}


def _loop(seed: int = 0, **train) -> _Loop:
    torch.manual_seed(seed)
    spec = TrainSpec(epochs=3, batch_size=16, lr=0.01, seed=seed, **train)
    label_map = LabelMap.from_values("y", "int", list(range(K)))
    model = build_model(ModelSpec(kind="mlp", hidden=[16]), label_map, input_dim=D)
    counts = np.bincount(_data()["label"], minlength=K)
    loss = loss_from_spec(LossSpec(name="ce"), counts.tolist(), None, spec.epochs)
    return _Loop(
        train=spec,
        label_map=label_map,
        counts=counts,
        device=torch.device("cpu"),
        rank=0,
        world=1,
        model=model,
        core=model,
        loss_fn=loss,
        params=[p for p in model.parameters() if p.requires_grad],
    )


@pytest.mark.parametrize("kind", ["none", "balanced"])
def test_the_map_loader_covers_an_epoch_and_balances_when_asked(kind):
    data = _data()
    loop = _loop()
    loader = _map_loader(data, SamplerSpec(kind=kind), loop)
    labels = np.concatenate([np.asarray(b["label"]) for b in loader])
    assert len(labels) >= N - 16 and len(labels) <= N + 16
    share = np.bincount(labels, minlength=K) / len(labels)
    if kind == "balanced":
        assert share.min() > 0.2  # every class near a third
    else:
        assert share[2] < 0.2  # the natural mix


def test_an_epoch_steps_the_optimizer_once_per_grad_accum_batches_and_calls_the_hook():
    data = _data()
    loop = _loop(grad_accum=3)
    loader = _map_loader(data, SamplerSpec(kind="none"), loop)
    _add_optimizer(loop, len(loader))
    seen: list[tuple[int, int, int]] = []
    row = _train_epoch(loop, 0, loader, lambda e, s, r: seen.append((e, s, r)))
    assert row["steps"] == len(loader) == len(seen) and seen[0] == (0, 0, 0)
    # ceil(steps / grad_accum) optimizer steps: the last, partial group steps too
    assert loop.scheduler.last_epoch == -(-len(loader) // 3)
    assert np.isfinite(row["train_loss"]) and row["samples_per_s"] > 0


def test_training_lowers_the_loss_and_validation_fills_the_row():
    data = _data()
    loop = _loop()
    loader = _map_loader(data, SamplerSpec(kind="none"), loop)
    _add_optimizer(loop, len(loader))
    rows = [_train_epoch(loop, e, loader) for e in range(3)]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    _validate(loop, _data(1), rows[-1])
    assert rows[-1]["val_macro_f1"] > 0.6 and set(rows[-1]["val_recall"]) == {"0", "1", "2"}


def test_a_checkpoint_restores_model_optimizer_schedule_and_history(tmp_path):
    from ray.train import Checkpoint

    data = _data()
    loop = _loop()
    loader = _map_loader(data, SamplerSpec(kind="none"), loop)
    _add_optimizer(loop, len(loader))
    history = [_train_epoch(loop, 0, loader)]
    folder = _checkpoint_dir(loop, history)
    again = _loop(seed=1)  # other initial weights
    _add_optimizer(again, len(loader))
    assert _restore(again, Checkpoint.from_directory(folder)) == history
    for a, b in zip(loop.core.state_dict().values(), again.core.state_dict().values()):
        assert torch.equal(a, b)
    assert again.scheduler.state_dict() == loop.scheduler.state_dict()
    # the next steps from the restored state are those of the original: the second batch's
    # loss follows an optimizer step that uses the restored AdamW moments
    # (the same dropout masks: the torch RNG is not part of a checkpoint)
    batches = list(itertools.islice(iter(loader), 2))
    torch.manual_seed(5)
    next_a = _train_epoch(loop, 1, batches)
    torch.manual_seed(5)
    next_b = _train_epoch(again, 1, batches)
    assert next_a["train_loss"] == pytest.approx(next_b["train_loss"], rel=1e-6)
    assert next_a["lr"] == next_b["lr"]


def test_map_batches_are_the_samplers_rows_gathered_as_tensors_and_reshuffled_each_epoch():
    data = _data()
    data["row"] = np.arange(N, dtype=np.int64)
    loop = _loop()
    loader = _map_loader(data, SamplerSpec(kind="none"), loop)
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-N // 16)
        assert all(isinstance(b["features"], torch.Tensor) for b in batches)
        assert batches[0]["label"].dtype == torch.int64
        rows = torch.cat([b["row"] for b in batches]).numpy()
        assert sorted(rows) == list(range(N))  # every row once, one world
        for b in batches:  # each row's columns travel together
            r = b["row"].numpy()
            assert np.array_equal(b["features"].numpy(), data["features"][r])
            assert np.array_equal(b["label"].numpy(), data["label"][r])
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])
    loader.set_epoch(0)
    assert np.array_equal(torch.cat([b["row"] for b in loader]).numpy(), epochs[0])
