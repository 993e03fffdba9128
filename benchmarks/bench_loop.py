"""The training loop's own overhead: the engine's step (``engine.train._train_epoch`` over
``TensorBatches``, the map-mode batches) against a plain PyTorch loop, their epochs interleaved
in one process so that both see the same machine load.

    python benchmarks/bench_loop.py [--model mlp|lexical] [--epochs 60] [--rows 499] \
        --results benchmarks/RESULTS.md

Both train the same model (``mlp``: an MLP head, hidden [256], over 64 features; ``lexical``: the
linear n-gram bag, 2^18 buckets, 32 terms a row, with its sparse gradients and lazy AdamW; 10
classes; batch 32; the same initial weights), loss (``ce`` from ``engine.losses``), optimizer
(``engine.train._add_optimizer``: AdamW, or LazyAdamW for the bag), linear warm-up/decay
schedule and gradient clipping at 1.0 (``engine.lexical.clip_grad_norm``, which takes sparse
gradients), on the same random rows held as tensors; the plain loop gathers a fresh
``torch.randperm`` order each epoch. Epochs alternate engine, plain, engine, ...
``torch.set_num_threads(2)``. Epoch 1 of each is left out; the table gives the median and the
harmonic mean (total samples / total seconds) of the samples/s of the others, and their ratio.
This is the comparison of the loops; `bench_train.py` runs whole `fit` calls, whose separate
runs swing by ±30 % with the machine's load on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import machine, update_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import LossSpec, ModelSpec, SamplerSpec, TrainSpec  # noqa: E402
from engine.data import LabelMap  # noqa: E402
from engine.models import build_model, logits_of  # noqa: E402
from engine.train import (  # noqa: E402
    _add_optimizer,
    _Loop,
    _map_loader,
    _train_epoch,
    loss_from_spec,
)

SECTION = "## Training loop overhead (bench_loop.py)"
INTRO = (
    f"{SECTION}\n\nThe engine's training step against a plain PyTorch loop, epochs interleaved "
    "in one process. See `benchmarks/bench_loop.py`.\n"
)
D, K, B = 64, 10, 32
BUCKETS, TERMS = 2**18, 32


def _loop(kind: str, y: np.ndarray, epochs: int) -> _Loop:
    torch.manual_seed(0)
    label_map = LabelMap.from_values("y", "int", list(range(K)))
    if kind == "mlp":
        spec = ModelSpec(kind="mlp", hidden=[256])
        model = build_model(spec, label_map, input_dim=D)
    else:
        spec = ModelSpec(kind="lexical", hidden=[], n_features=BUCKETS, max_terms=TERMS)
        model = build_model(spec, label_map)
    counts = np.bincount(y, minlength=K)
    train = TrainSpec(epochs=epochs, batch_size=B, lr=0.003, seed=0)
    loss = loss_from_spec(LossSpec(name="ce"), counts.tolist(), None, epochs)
    return _Loop(
        train=train,
        label_map=label_map,
        counts=counts,
        device=torch.device("cpu"),
        rank=0,
        world=1,
        model=model,
        core=model,
        loss_fn=loss,
        params=[p for p in model.parameters() if p.requires_grad],
        model_kind=kind,
    )


def _rows(kind: str, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, rows).astype(np.int64)
    if kind == "mlp":
        return {"features": rng.normal(size=(rows, D)).astype(np.float32), "label": y}
    idx = rng.integers(0, BUCKETS, size=(rows, TERMS)).astype(np.int32)
    return {"lex_idx": idx, "lex_val": rng.random((rows, TERMS)).astype(np.float32), "label": y}


def _plain_epoch(loop: _Loop, data: dict[str, torch.Tensor]) -> float:
    from engine.lexical import clip_grad_norm

    t0 = time.perf_counter()
    loop.model.train()
    y = data["label"]
    for idx in torch.randperm(len(y)).split(B):
        batch = {k: v[idx] for k, v in data.items()}
        loss = loop.loss_fn(logits_of(loop.model, batch), batch["label"])
        loss.backward()
        clip_grad_norm(loop.params, 1.0)
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
    return len(y) / (time.perf_counter() - t0)


def measure(kind: str, rows: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = _rows(kind, rows)
    engine, plain = _loop(kind, arrays["label"], epochs), _loop(kind, arrays["label"], epochs)
    loader = _map_loader(arrays, SamplerSpec(kind="none"), engine)
    _add_optimizer(engine, len(loader))
    _add_optimizer(plain, len(loader))
    tensors = {
        k: torch.as_tensor(v).long()
        if k != "lex_val" and v.dtype.kind == "i"
        else torch.as_tensor(v)
        for k, v in arrays.items()
    }
    rates_e, rates_p = [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        rates_e.append(_train_epoch(engine, epoch, loader)["samples_per_s"])
        rates_p.append(_plain_epoch(plain, tensors))
    return np.asarray(rates_e[1:]), np.asarray(rates_p[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "lexical"), default="mlp")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--rows", type=int, default=499)
    p.add_argument("--results", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    import os

    load = os.getloadavg()[0]
    eng, pla = measure(args.model, args.rows, args.epochs)
    harm = [len(r) / np.sum(1 / r) for r in (eng, pla)]
    med = [float(np.median(r)) for r in (eng, pla)]
    table = "\n".join(
        [
            "| loop | median samples/s | harmonic mean samples/s |",
            "|---|--:|--:|",
            f"| plain PyTorch | {med[1]:,.0f} | {harm[1]:,.0f} |",
            f"| engine `_train_epoch` over `TensorBatches` | {med[0]:,.0f} | {harm[0]:,.0f} |",
            f"| engine / plain | {med[0] / med[1]:.3f}× | {harm[0] / harm[1]:.3f}× |",
        ]
    )
    print(table)
    if args.results:
        body = "\n".join(
            [
                f"- Machine: {machine({'torch': torch.__version__})}",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load (1 min) {load:.2f}",
                f"- Command: `python benchmarks/bench_loop.py --model {args.model} --epochs "
                f"{args.epochs} --rows {args.rows} --results benchmarks/RESULTS.md`",
                f"- {args.rows} rows, {K} classes, batch {B}, {args.epochs} epochs of each loop "
                "interleaved (epoch 1 left out)",
                "",
                table,
            ]
        )
        what = "MLP head" if args.model == "mlp" else f"lexical bag (2^18 buckets, {TERMS} terms)"
        heading = f"### {what}, {args.rows} rows, batch {B}, cpu"
        update_section(args.results, SECTION, INTRO, heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
