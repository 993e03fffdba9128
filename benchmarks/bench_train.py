"""Training throughput: the engine's Ray Train loop against a plain PyTorch loop on the same
model, batch size and data, and the per-batch cost of the balanced samplers.

    .venv/bin/python benchmarks/bench_train.py --model mlp [--epochs 20] [--workers 1,2]
        [--batch-size 32] [--train-rows N] [--sampler none|balanced|stream] [--loss ce]
        [--num-cpus 2] [--gpu] [--dir DIR] [--skip-samplers] [--skip-train]
        [--sampler-rows 1M] [--sampler-batch 64] [--results benchmarks/RESULTS.md]
    .venv/bin/python benchmarks/bench_train.py --model tiny --skip-samplers     # --max-length 32
    .venv/bin/python benchmarks/bench_train.py --model minilm --train-rows 640 --skip-samplers

Models (``--model``): ``mlp`` — an MLP head (hidden [256]) over the 64 pixel features of
``digits_lt10``; ``tiny`` — the 2-layer random-init BERT of ``model.path=tiny`` on ``trec6`` text,
max_length 32; ``minilm`` — the real all-MiniLM-L6-v2 on ``trec6``, max_length 64 (slow on a CPU:
limit the work with ``--train-rows``). Batch 32 unless ``--batch-size``. The dataset is built
with ``engine.datasets.make_dataset`` under ``--dir`` (default ``benchmarks/_data/train-<model>``);
``--train-rows N`` first keeps a per-class proportional subset of it (at least 10 rows per class,
seeded) sized so that the train split holds about N rows. ``engine.prepare.prepare`` then writes
the run directory (split val 0.1, test 0.2, seed 0).

**(1) Plain loop.** One process (this one), the train split already in memory as tensors (the
engine's own Ray Data stage makes them: tokens or the feature matrix, labels as class indices;
on ``--gpu`` the tensors are put on the GPU once), the same model (``engine.models.build_model``,
same seed), the loss from ``engine.losses.build_loss`` with the engine's arguments, AdamW with the
spec's lr and weight decay, the same LR schedule and gradient clipping, the same batch size, a
fresh ``torch.randperm`` order per epoch and the same number of steps per epoch as the engine
(``ceil(train rows / batch)``). ``torch.set_num_threads`` is set to the thread count a Ray Train
worker of the 1-worker engine run really gets: a probe ``TorchTrainer`` with the engine's own
``ScalingConfig`` (``resources_per_worker={"CPU": engine.train._cpus_per_worker(...)}``) reports
``torch.get_num_threads()`` and ``OMP_NUM_THREADS`` from inside its worker (Ray sets
OMP_NUM_THREADS to floor(the worker's CPUs), at least 1, unless it is already set). On ``--gpu``
the forward pass runs under bf16 autocast and the loss on float32 logits, as in the engine.

**(2) Engine loop.** ``engine.train.fit(spec)`` on the prepared run directory with
``train.num_workers`` = each of ``--workers`` (default 1 and 2; on ``--gpu``, counts above the
GPUs Ray sees are skipped), reading the ``samples_per_s`` the engine reports per epoch from
``RUN_DIR/train/metrics.json`` (measured on rank 0 over the training steps of the epoch, times the
world size; evaluation and checkpoints are outside it).

Both loops are timed per epoch over the training steps only (the engine's timer starts before
the first batch is drawn, so the sampler and the batch transfer count; the plain loop's timer
also covers its ``randperm``). Epoch 1 holds the warm-up steps (first allocations, lazy inits) in
both loops and is reported on its own; the steady state is epochs 2..N in both, aggregated as
total samples / total seconds (equal epochs: the harmonic mean of the per-epoch rates). The
overhead is (plain − engine) / plain at 1 worker; the goal is ≤ 5 %. The table also gives each
run's whole wall time (for the engine: the ``fit`` call with its Ray Data stage, worker start,
per-epoch evaluation and checkpoints; for the plain loop: model build and training), and the
first and last epoch's train loss of each (the loops do the same math, so they should be close).

**(3) Sampler cost** (``--skip-samplers`` leaves it out): ``--sampler-rows`` labels (default 1M)
of 10 classes, class k with probability ∝ 100^(−k/9), batch ``--sampler-batch`` (64). For the
map path, the time to produce batches of indices the way a ``DataLoader`` draws them
(``BatchSampler(sampler, B)`` over the sampler) with ``engine.sampling.BalancedDistributedSampler``
(power 0) and with torch's ``DistributedSampler(shuffle=True)``, rank 0 of world 1 and 2, over 2
epochs: build time, time to the first batch and µs per batch (whole epochs). For the stream path,
``engine.sampling.StreamBalancer`` re-batching numpy dict batches (``label`` int64 and a
``features`` float32 (B, 16) matrix, the input in batches of B as ``iter_batches`` gives them;
rank 0 of world 2 reads every other input batch) for one epoch. The carry schedule cache of
``engine.sampling`` is cleared before each measurement, so each pays for its schedule as a fresh
worker process does.

``--results FILE`` writes the machine, command, date, load average and the table into FILE under
``## Training throughput (bench_train.py)``: a subsection per model, data, batch and device
(``### mlp — digits_lt10, batch 32, cpu``; a ``--sampler`` other than none is named too) and one
for the samplers (``### Sampler cost per batch``). A rerun replaces its own subsections and keeps
every other one and every other section (an atomic write).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from common import machine, parse_rows, update_section  # noqa: E402

SECTION = "## Training throughput (bench_train.py)"
SAMPLER_HEADING = "### Sampler cost per batch"
SPLIT = {"val": 0.1, "test": 0.2, "seed": 0}
MIN_ROWS_PER_CLASS = 10  # a subset keeps at least this many rows of every class


@dataclass(frozen=True)
class ModelChoice:
    dataset: str
    overrides: tuple[str, ...]
    epochs: int
    lr: float
    max_length: int | None = None  # transformers only
    what: str = ""


MODELS: dict[str, ModelChoice] = {
    "mlp": ModelChoice(
        "digits_lt10",
        ("model.kind=mlp", "model.hidden=[256]", "data.features=features"),
        epochs=20,
        lr=0.003,
        what="MLP head, hidden [256], over the 64 pixel features",
    ),
    "tiny": ModelChoice(
        "trec6",
        ("model.kind=transformer", "model.path=tiny", "data.text=text"),
        epochs=3,
        lr=1e-3,
        max_length=32,
        what="tiny random-init BERT (2 layers, hidden 32)",
    ),
    "minilm": ModelChoice(
        "trec6",
        ("model.kind=transformer", "model.path=minilm", "data.text=text"),
        epochs=2,
        lr=1e-4,
        max_length=64,
        what="all-MiniLM-L6-v2 (6 layers, hidden 384)",
    ),
}
SAMPLERS = {
    "none": ("sampler.kind=none",),
    "balanced": ("sampler.kind=balanced", "sampler.mode=map", "sampler.power=0.0"),
    "stream": ("sampler.kind=balanced", "sampler.mode=stream", "sampler.power=0.0"),
}


# --------------------------------------------------------------------------------------------
# arguments


def parse_workers(text: str) -> list[int]:
    try:
        out = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: use e.g. 1,2") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: worker counts must be >= 1")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--batch-size", type=int, default=32, help="per worker (and the plain loop)")
    p.add_argument("--max-length", type=int, default=None, help="tokens (tiny 32, minilm 64)")
    p.add_argument("--epochs", type=int, default=None, help="default: mlp 20, tiny 3, minilm 2")
    p.add_argument("--train-rows", type=parse_rows, default=None, help="subset: ~N train rows")
    p.add_argument("--workers", type=parse_workers, default=[1, 2], help="engine runs, e.g. 1,2")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="none", help="engine sampler")
    p.add_argument("--loss", default="ce", help="loss.name (engine.losses.LOSSES)")
    p.add_argument("--lr", type=float, default=None, help="default per model")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--gpu", action="store_true", help="train.use_gpu=true; plain loop on cuda")
    p.add_argument("--dir", type=Path, default=None, help="default benchmarks/_data/train-<model>")
    p.add_argument("--skip-train", action="store_true", help="only the sampler measurements")
    p.add_argument("--skip-samplers", action="store_true", help="leave out the sampler cost")
    p.add_argument("--sampler-rows", type=parse_rows, default=parse_rows("1M"))
    p.add_argument("--sampler-batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=None, help="Markdown file to update")
    args = p.parse_args(argv)
    choice = MODELS[args.model]
    if args.epochs is None:
        args.epochs = choice.epochs
    if args.lr is None:
        args.lr = choice.lr
    if args.max_length is None:
        args.max_length = choice.max_length
    elif choice.max_length is None:
        p.error("--max-length applies to the transformer models (tiny, minilm), not mlp")
    if args.epochs < 1 or args.batch_size < 1 or args.sampler_batch < 1:
        p.error("--epochs, --batch-size and --sampler-batch must be >= 1")
    if args.skip_train and args.skip_samplers:
        p.error("--skip-train and --skip-samplers leave nothing to measure")
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu: torch sees no CUDA device here")
    if args.dir is None:
        args.dir = Path(__file__).resolve().parent / "_data" / f"train-{args.model}"
    args.dir = args.dir.resolve()
    return args


# --------------------------------------------------------------------------------------------
# data and spec


def subset_table(table: pa.Table, train_rows: int, train_frac: float, seed: int) -> pa.Table:
    """A per-class proportional subset whose train split holds about ``train_rows`` rows."""
    labels = table["label"].to_numpy(zero_copy_only=False)
    values, inverse = np.unique(labels, return_inverse=True)
    want = train_rows / train_frac / len(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(values)):
        rows = np.flatnonzero(inverse == c)
        k = min(len(rows), max(MIN_ROWS_PER_CLASS, round(len(rows) * want)))
        keep.append(rng.choice(rows, size=k, replace=False))
    idx = np.sort(np.concatenate(keep))
    return table.take(pa.array(idx))


def make_spec(args: argparse.Namespace, data_dir: Path, run_dir: Path):
    from engine.config import load_spec

    choice = MODELS[args.model]
    overrides = [
        f"name=bench-train-{args.model}",
        f"run_dir={run_dir}",
        f"data.path={data_dir}",
        "data.label=label",
        *choice.overrides,
        *SAMPLERS[args.sampler],
        f"split.val={SPLIT['val']}",
        f"split.test={SPLIT['test']}",
        f"split.seed={SPLIT['seed']}",
        f"loss.name={args.loss}",
        f"train.batch_size={args.batch_size}",
        f"train.epochs={args.epochs}",
        f"train.lr={args.lr}",
        f"train.seed={args.seed}",
        f"train.use_gpu={'true' if args.gpu else 'false'}",
        "train.num_workers=1",
    ]
    if args.max_length is not None:
        overrides.append(f"model.max_length={args.max_length}")
    return load_spec(None, overrides)


def with_workers(spec, workers: int):
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, num_workers=workers))


def build_data(args: argparse.Namespace) -> tuple[Path, str]:
    """The dataset (a subset when --train-rows) as ``DIR/source[-subset]/data.parquet``."""
    from engine.datasets import make_dataset

    name = MODELS[args.model].dataset
    full = args.dir / "source"
    info = make_dataset(name, full, seed=args.seed)
    if args.train_rows is None:
        return full, f"{name}: {info.rows:,} rows, {info.num_classes} classes"
    table = pq.read_table(info.path)
    train_frac = 1.0 - SPLIT["val"] - SPLIT["test"]
    sub = subset_table(table, args.train_rows, train_frac, args.seed)
    out = args.dir / "source-subset"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".data.parquet.tmp"
    pq.write_table(sub, tmp)
    os.replace(tmp, out / "data.parquet")
    return out, (
        f"{name}: a seeded per-class subset of {sub.num_rows:,} of its {info.rows:,} rows "
        f"(--train-rows {args.train_rows:,}; >= {MIN_ROWS_PER_CLASS} rows per class kept), "
        f"{info.num_classes} classes"
    )


@dataclass
class TrainData:
    arrays: dict[str, np.ndarray]
    counts: np.ndarray
    label_map: Any
    input_dim: int | None
    loss_weights: list[float] | None
    rows: dict[str, int]


def load_train_data(spec) -> TrainData:
    """The train split as the engine's ``fit`` turns it into model inputs (its Ray Data stage)."""
    from engine.data import read_dataset, read_schema, resolve_columns
    from engine.rundir import RunDir
    from engine.train import _class_weights, materialize, preprocess, train_source

    run = RunDir(os.path.abspath(spec.run_dir))
    manifest = run.require_splits()
    label_map = run.label_map()
    source, counts = train_source(run, label_map.keys)
    cols = resolve_columns(read_schema(source), spec.data, where=source.files[0])
    arrays = materialize(preprocess(read_dataset(source), cols, spec.model, label_map))
    input_dim = int(arrays["features"].shape[1]) if spec.model.kind == "mlp" else None
    weights = _class_weights(spec.loss, spec.stats, counts, label_map.keys)
    return TrainData(arrays, counts, label_map, input_dim, weights, dict(manifest["rows"]))


# --------------------------------------------------------------------------------------------
# the worker's threads


def probe_worker(spec, storage: Path) -> dict[str, Any]:
    """What a Ray Train worker of ``spec``'s ScalingConfig gets: CPUs, OMP_NUM_THREADS, torch
    threads — from inside a worker started exactly as ``engine.train.fit`` starts its own."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from engine.train import _cpus_per_worker

    cpus = _cpus_per_worker(spec.train, spec.sampler.mode == "stream")
    out = storage / "probe.json"

    def loop(config: dict) -> None:
        import json
        import os

        import ray.train
        import torch

        omp = os.environ.get("OMP_NUM_THREADS")
        got = {"torch_threads": torch.get_num_threads(), "omp": int(omp) if omp else -1}
        if ray.train.get_context().get_world_rank() == 0:
            with open(config["out"], "w") as f:  # one node: the driver reads it
                json.dump(got, f)
        ray.train.report(got)

    trainer = TorchTrainer(
        loop,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(name="probe", storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    m = json.loads(out.read_text())
    return {"cpus": cpus, "torch_threads": int(m["torch_threads"]), "omp": int(m["omp"])}


def ray_omp_threads(cpus: float) -> int:
    """Ray's rule (``ray._private.utils.set_omp_num_threads_if_unset``)."""
    return max(math.floor(cpus), 1)


# --------------------------------------------------------------------------------------------
# (1) the plain loop


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(spec, data: TrainData, threads: int, device: torch.device) -> list[dict[str, Any]]:
    """One process, tensors in memory: the engine's per-step work without the engine."""
    from engine.models import build_model, logits_of
    from engine.train import _lr_lambda, loss_from_spec

    train, loss_spec = spec.train, spec.loss
    torch.set_num_threads(threads)
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    model = build_model(spec.model, data.label_map, data.input_dim).to(device)
    loss_fn = loss_from_spec(loss_spec, data.counts.tolist(), data.loss_weights, train.epochs)
    loss_fn = loss_fn.to(device)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in data.arrays.items():
        t = torch.as_tensor(np.ascontiguousarray(v))
        t = t.long() if k in ("input_ids", "attention_mask", "label") else t
        tensors[k] = t.to(device)
    n = len(tensors["label"])
    b = train.batch_size
    steps = math.ceil(n / b)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    total = max(1, train.epochs * math.ceil(steps / train.grad_accum))
    warmup = int(train.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))
    gen = torch.Generator().manual_seed(train.seed)
    use_amp = device.type == "cuda"
    history = []

    def update() -> None:
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    for epoch in range(train.epochs):
        loss_fn.set_epoch(epoch)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for step in range(steps):
            idx = perm[step * b : (step + 1) * b]
            batch = {k: v[idx] for k, v in tensors.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = logits_of(model, batch)
            loss = loss_fn(logits.float(), batch["label"]) / train.grad_accum
            loss.backward()
            if (step + 1) % train.grad_accum == 0:
                update()
            loss_sum += loss.detach()
            seen += len(idx)
        if steps % train.grad_accum:
            update()
        _sync(device)
        elapsed = time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch,
                "steps": steps,
                "samples": seen,
                "samples_per_s": seen / max(elapsed, 1e-9),
                "train_loss": float(loss_sum) * train.grad_accum / steps,
            }
        )
        print(
            f"    plain epoch {epoch + 1}/{train.epochs}: {steps} steps, "
            f"{history[-1]['samples_per_s']:,.0f} samples/s, loss {history[-1]['train_loss']:.4f}",
            flush=True,
        )
    return history


# --------------------------------------------------------------------------------------------
# (2) the engine


def engine_run(spec, in_process: bool = False) -> list[dict[str, Any]]:
    from engine.train import fit, fit_in_process

    if in_process:
        result = fit_in_process(spec, overwrite=True, tune=False)
    else:
        result = fit(spec, overwrite=True)
    path = Path(result.run_dir, "train", "metrics.json")
    return json.loads(path.read_text())


def settle(cpus: float, timeout: float = 60.0) -> None:
    """Wait until every Ray CPU is free again (Ray Data's actors exit a while after a run)."""
    import ray

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if ray.available_resources().get("CPU", 0) >= cpus:
            return
        time.sleep(0.5)


@dataclass
class Run:
    name: str
    workers: int
    threads: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = math.nan
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int | None:
        return self.history[0]["steps"] if self.history else None

    def first(self) -> float:
        return self.history[0]["samples_per_s"] if self.history else math.nan

    def steady_epochs(self) -> list[dict[str, Any]]:
        return self.history[1:] if len(self.history) > 1 else self.history

    def steady(self) -> float:
        """Total samples / total seconds over epochs 2..N: equal epochs, so the harmonic mean."""
        rates = [r["samples_per_s"] for r in self.steady_epochs()]
        if not rates or min(rates) <= 0:
            return math.nan
        return len(rates) / sum(1.0 / r for r in rates)

    def spread(self) -> str:
        rates = [r["samples_per_s"] for r in self.steady_epochs()]
        if len(rates) < 2:
            return ""
        return (
            f"epochs 2..{len(self.history)}: min {min(rates):,.0f}, median "
            f"{float(np.median(rates)):,.0f}, max {max(rates):,.0f}"
        )


# --------------------------------------------------------------------------------------------
# (3) sampler cost


def long_tail_labels(rows: int, seed: int) -> np.ndarray:
    p = 100.0 ** (-np.arange(10) / 9)
    rng = np.random.default_rng(seed)
    return rng.choice(10, size=rows, p=p / p.sum()).astype(np.int64)


@dataclass
class SamplerRow:
    name: str
    world: int
    build_s: float
    first_s: float
    batches: int  # per epoch
    per_batch_s: float
    ref: str | None = None  # the name of the reference row at the same world
    notes: list[str] = field(default_factory=list)


def _clear_schedules() -> None:
    import engine.sampling as sampling

    with sampling._SCHEDULES_LOCK:
        sampling._SCHEDULES.clear()


def time_index_sampler(make, batch: int, epochs: int) -> tuple[float, float, int, float]:
    """(build s, worst time to first batch s, batches per epoch, s per batch over all epochs)."""
    from torch.utils.data import BatchSampler

    _clear_schedules()
    t0 = time.perf_counter()
    sampler = make()
    build = time.perf_counter() - t0
    first, total, count = 0.0, 0.0, 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        it = iter(BatchSampler(sampler, batch, drop_last=False))
        next(it)
        first = max(first, time.perf_counter() - t0)
        n = 1
        for _ in it:
            n += 1
        total += time.perf_counter() - t0
        count += n
    return build, first, count // epochs, total / count


def sampler_bench(rows: int, batch: int, seed: int) -> tuple[list[SamplerRow], str]:
    from torch.utils.data.distributed import DistributedSampler

    from engine.sampling import BalancedDistributedSampler, StreamBalancer

    labels = long_tail_labels(rows, seed)
    counts = np.bincount(labels, minlength=10)
    desc = (
        f"{rows:,} labels, 10 classes, class k ∝ 100^(−k/9) (counts "
        + ", ".join(f"{c:,}" for c in counts)
        + f"), batch {batch}, seed {seed}"
    )
    out: list[SamplerRow] = []
    epochs = 2
    for world in (1, 2):
        print(f"... samplers, world {world}", flush=True)
        ref = f"torch DistributedSampler(shuffle=True), world {world}"
        b, f, n, per = time_index_sampler(
            lambda world=world: DistributedSampler(
                labels, num_replicas=world, rank=0, shuffle=True, seed=seed
            ),
            batch,
            epochs,
        )
        out.append(SamplerRow(ref, world, b, f, n, per, None, [f"{epochs} epochs"]))
        b, f, n, per = time_index_sampler(
            lambda world=world: BalancedDistributedSampler(
                labels, batch, num_replicas=world, rank=0, power=0.0, seed=seed
            ),
            batch,
            epochs,
        )
        out.append(
            SamplerRow(
                f"engine BalancedDistributedSampler(power=0), world {world}",
                world,
                b,
                f,
                n,
                per,
                ref,
                [f"{epochs} epochs"],
            )
        )

    feats = np.random.default_rng(seed + 1).standard_normal((rows, 16), dtype=np.float32)
    blocks = [
        {"label": labels[i : i + batch], "features": feats[i : i + batch]}
        for i in range(0, rows, batch)
    ]
    for world in (1, 2):
        print(f"... StreamBalancer, world {world}", flush=True)
        shard = blocks[0::world]
        _clear_schedules()
        t0 = time.perf_counter()
        bal = StreamBalancer(counts.tolist(), batch, power=0.0, seed=seed, rank=0, world_size=world)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        it = bal.epoch(0, iter(shard))
        next(it)
        first = time.perf_counter() - t0
        n = 1
        for _ in it:
            n += 1
        per = (time.perf_counter() - t0) / n
        st = bal.last_stats or {}
        read = max(1, sum(st.get("read", [0])))
        emitted = n * batch
        notes = [
            "1 epoch; input: numpy dict batches of "
            f"{batch} rows (label + 16 float32 features), {len(shard):,} of them",
            f"recycled {sum(st.get('recycled', [0])) / emitted:.1%} of the rows emitted, "
            f"dropped {sum(st.get('dropped', [0])) / read:.1%} of the rows read",
        ]
        out.append(
            SamplerRow(
                f"engine StreamBalancer(power=0), world {world}",
                world,
                build,
                first,
                n,
                per,
                f"torch DistributedSampler(shuffle=True), world {world}",
                notes,
            )
        )
    return out, desc


def sampler_table(rows: list[SamplerRow]) -> str:
    by_name = {r.name: r for r in rows}
    lines = [
        "| sampler | world (rank 0 timed) | build ms | first batch ms | batches/epoch | "
        "µs/batch | vs DistributedSampler | notes |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        ref = by_name.get(r.ref) if r.ref else None
        ratio = "1.00× (ref)" if r.ref is None else "—"
        if ref is not None and r.per_batch_s > 0:
            ratio = f"{r.per_batch_s / ref.per_batch_s:.2f}×"
        note = "; ".join(r.notes).replace("|", "\\|")
        lines.append(
            f"| {r.name} | {r.world} | {r.build_s * 1e3:,.1f} | {r.first_s * 1e3:,.2f} | "
            f"{r.batches:,} | {r.per_batch_s * 1e6:,.1f} | {ratio} | {note} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# reporting


def fmt_rate(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def train_table(runs: list[Run], plain: Run | None) -> str:
    lines = [
        "| loop | workers × torch threads | steps/epoch (per worker) | epochs | "
        "epoch 1 samples/s (warm-up) | steady samples/s (epochs 2..N) | vs plain | "
        "wall s (whole run) | notes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    base = plain.steady() if plain is not None and not plain.error else math.nan
    for r in runs:
        notes = list(r.notes)
        if r.error:
            notes.insert(0, f"FAILED: {r.error}")
        spread = r.spread()
        if spread:
            notes.append(spread)
        if len(r.history) == 1:
            notes.append("1 epoch only: steady = epoch 1")
        if r.history:
            losses = [row["train_loss"] for row in r.history]
            notes.append(f"train loss epoch 1 {losses[0]:.4f}, last {losses[-1]:.4f}")
        s = r.steady()
        if r is plain:
            ratio = "1.00× (ref)"
        elif math.isfinite(s) and math.isfinite(base) and base > 0:
            ratio = f"{s / base:.2f}×"
        else:
            ratio = "—"
        note = "; ".join(notes).replace("|", "\\|")
        wall = f"{r.wall_s:,.1f}" if math.isfinite(r.wall_s) else "—"
        lines.append(
            f"| {r.name} | {r.workers} × {r.threads} | {r.steps if r.steps else '—'} | "
            f"{len(r.history)} | {fmt_rate(r.first())} | {fmt_rate(s)} | {ratio} | {wall} | "
            f"{note} |"
        )
    return "\n".join(lines)


def host(device: torch.device) -> str:
    import ray

    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU"
    versions = {"torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__}
    return machine(versions, gpu)


def section_intro() -> str:
    return (
        f"{SECTION}\n\n"
        "The engine's training loop (`engine.train.fit`: Ray Train V2 `TorchTrainer`, the "
        "samples/s each epoch reports in `RUN_DIR/train/metrics.json`) against a plain "
        "single-process PyTorch loop on the same model, loss, optimizer, batch size and train "
        "split (already in memory as tensors), with `torch.set_num_threads` equal to the threads "
        "a Ray Train worker of the 1-worker run gets (probed inside a worker). Both are timed "
        "per epoch over the training steps only (evaluation and checkpoints excluded); epoch 1 "
        "holds the warm-up steps and is shown apart; steady = epochs 2..N in both loops, total "
        "samples / total seconds. Overhead = (plain − engine) / plain at 1 worker (goal ≤ 5 %). "
        "The sampler subsection times batches of indices (map path) and re-batched numpy batches "
        "(stream path). See `benchmarks/bench_train.py` for what each row runs.\n"
    )


def update_results(path: Path, heading: str, body: str) -> None:
    """Put ``body`` under ``heading`` (a ``### `` line) in the section, keeping everything else."""

    def order(h: str) -> tuple[int, str]:
        if h == SAMPLER_HEADING:
            return (len(MODELS), h)
        m = re.match(r"### (\w+)", h)
        names = list(MODELS)
        return (names.index(m.group(1)) if m and m.group(1) in names else len(MODELS) - 1, h)

    update_section(path, SECTION, section_intro(), heading, body, order)


# --------------------------------------------------------------------------------------------
# main


def run_training(args: argparse.Namespace, device: torch.device) -> tuple[str, str, bool]:
    """(heading, body, ok) of the training subsection."""
    import ray

    from engine.models import build_model
    from engine.prepare import prepare
    from engine.train import _cpus_per_worker

    args.dir.mkdir(parents=True, exist_ok=True)
    data_dir, data_desc = build_data(args)
    run_dir = args.dir / "run"
    spec = make_spec(args, data_dir, run_dir)
    print(f"prepare: {data_desc} -> {run_dir}", flush=True)
    prepare(spec, overwrite=True)
    data = load_train_data(spec)
    n_train = len(data.arrays["label"])
    print(f"train split: {n_train:,} rows ({data.rows})", flush=True)

    settle(args.num_cpus)
    probe_dir = Path(tempfile.mkdtemp(prefix=".probe-", dir=args.dir))
    try:
        probe = probe_worker(spec, probe_dir)
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    threads = probe["torch_threads"]
    expect = ray_omp_threads(probe["cpus"])
    omp = "unset" if probe["omp"] < 0 else str(probe["omp"])
    thread_line = (
        f"a 1-worker engine run's Ray Train worker gets {probe['cpus']:g} CPU "
        f"(`engine.train._cpus_per_worker` on {ray.cluster_resources().get('CPU', 0):g} Ray "
        f"CPUs), OMP_NUM_THREADS={omp} and torch.get_num_threads()={threads} (probed inside a "
        f"worker; Ray's rule floor(CPUs) >= 1 gives {expect}); the plain loop runs with "
        f"`torch.set_num_threads({threads})`"
    )
    print(thread_line, flush=True)
    if threads != expect:
        print(f"note: the worker's torch threads ({threads}) differ from Ray's rule ({expect})")

    runs: list[Run] = []
    settle(args.num_cpus)
    print(f"... (1) plain loop, {threads} thread(s), {device.type}", flush=True)
    plain = Run("plain PyTorch loop, 1 process", 1, threads)
    runs.append(plain)
    t0 = time.perf_counter()
    try:
        plain.history = plain_loop(spec, data, threads, device)
    except Exception as e:  # recorded in the table
        plain.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    plain.wall_s = time.perf_counter() - t0
    plain.notes.append(
        "tensors on the GPU" if device.type == "cuda" else "tensors in this process's memory"
    )

    gpus = ray.cluster_resources().get("GPU", 0)
    plan = [(1, True)] if 1 in args.workers and not args.gpu else []
    for w, in_process in plan + [(w, False) for w in args.workers]:
        spec_w = with_workers(spec, w)
        cpus = _cpus_per_worker(spec_w.train, spec_w.sampler.mode == "stream")
        what = "`fit_in_process` (this process)" if in_process else "`fit`"
        run = Run(f"engine {what}, {args.sampler} sampler, {w} worker{'s' * (w > 1)}", w, 0)
        run.threads = ray_omp_threads(cpus) if w != 1 else threads
        run.threads = torch.get_num_threads() if in_process else run.threads
        run.notes.append("no worker group" if in_process else f"{cpus:g} CPU per worker")
        runs.append(run)
        if args.gpu and w > gpus:
            run.error = f"skipped: {w} workers need {w} GPUs, Ray sees {gpus:g}"
            continue
        settle(args.num_cpus)
        print(f"... (2) engine, {w} worker(s)", flush=True)
        t0 = time.perf_counter()
        try:
            run.history = engine_run(spec_w, in_process)
        except Exception as e:  # recorded in the table
            run.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        run.wall_s = time.perf_counter() - t0
        for row in run.history:
            print(
                f"    engine epoch {row['epoch'] + 1}: {row['steps']} steps, "
                f"{row['samples_per_s']:,.0f} samples/s",
                flush=True,
            )

    table = train_table(runs, plain)
    one = next((r for r in runs if r.workers == 1 and r is not plain and r.history), None)
    # the first 1-worker engine row: in this process when it ran (as `raybalance train` and a
    # one-worker Tune trial train), else Ray Train's
    ok = not any(r.error and not r.error.startswith("skipped") for r in runs)
    if one is not None and plain.history:
        over = (plain.steady() - one.steady()) / plain.steady()
        verdict = "met" if over <= 0.05 else "NOT met"
        overhead = (
            f"Overhead at 1 worker, steady state: (plain − engine) / plain = "
            f"({fmt_rate(plain.steady())} − {fmt_rate(one.steady())}) / "
            f"{fmt_rate(plain.steady())} = {over:.1%} (goal ≤ 5 %: {verdict})"
        )
    else:
        overhead = "Overhead at 1 worker: not measured (a run failed or was skipped)"
    print()
    print(table)
    print()
    print(overhead)
    print()

    m, tr = spec.model, spec.train
    n_params = sum(p.numel() for p in build_model(m, data.label_map, data.input_dim).parameters())
    choice = MODELS[args.model]
    seq = f", max_length {m.max_length}" if m.kind == "transformer" else ""
    sampler = "" if args.sampler == "none" else f", {args.sampler} sampler"
    heading = (
        f"### {args.model} — {choice.dataset}, batch {tr.batch_size}{seq}, "
        f"{'cuda (bf16 autocast)' if device.type == 'cuda' else 'cpu'}{sampler}"
    )
    cmd = shlex.join(["python", *sys.argv])
    body = "\n".join(
        [
            f"- Machine: {host(device)}",
            f"- Command: `{cmd}`",
            f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Model: {choice.what}; {n_params:,} parameters; loss `{spec.loss.name}`, AdamW "
            f"(lr {tr.lr:g}, weight decay {tr.weight_decay:g}), linear warm-up/decay, grad clip "
            f"{tr.grad_clip}; engine sampler `{args.sampler}`",
            f"- Data: {data_desc}; split val {SPLIT['val']}, test {SPLIT['test']} -> train "
            f"{n_train:,} rows; {tr.epochs} epochs of {math.ceil(n_train / tr.batch_size)} steps "
            "(1 worker)",
            f"- Threads: {thread_line}",
            "- Timing: per epoch over the training steps only, in both loops; epoch 1 (warm-up "
            "steps) shown apart and excluded from steady state in both; steady = epochs 2..N, "
            "total samples / total seconds. Wall s: the whole `fit` call (its Ray Data stage, "
            "worker start, per-epoch evaluation and checkpoints included) and the whole plain "
            "loop (model build included)",
            f"- Ray: `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`",
            f"- Load average (1 min) at the start and the end: {args.load_start:.2f}, "
            f"{os.getloadavg()[0]:.2f} (a busy machine slows every row)",
            "",
            table,
            "",
            overhead,
        ]
    )
    return heading, body, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_start = os.getloadavg()[0]
    device = torch.device("cuda" if args.gpu else "cpu")
    sections: list[tuple[str, str]] = []
    ok = True

    if not args.skip_samplers:
        print(f"... (3) sampler cost: {args.sampler_rows:,} labels, batch {args.sampler_batch}")
        rows, desc = sampler_bench(args.sampler_rows, args.sampler_batch, args.seed)
        table = sampler_table(rows)
        print()
        print(table)
        print()
        body = "\n".join(
            [
                f"- Machine: {host(device)}",
                f"- Command: `{shlex.join(['python', *sys.argv])}`",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- Labels: {desc}",
                "- Map path: batches of indices as a DataLoader draws them "
                "(`BatchSampler(sampler, B)`), whole epochs; stream path: `StreamBalancer.epoch` "
                "over numpy dict batches already in memory (Ray Data's own cost not included); "
                "the carry-schedule cache is cleared before each row",
                f"- Load average (1 min) at the start and the end: {args.load_start:.2f}, "
                f"{os.getloadavg()[0]:.2f} (a busy machine slows every row)",
                "",
                table,
            ]
        )
        sections.append((SAMPLER_HEADING, body))

    if not args.skip_train:
        import ray

        ray.init(
            num_cpus=args.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            heading, body, ok = run_training(args, device)
            sections.insert(0, (heading, body))
        finally:
            ray.shutdown()

    if args.results:
        for heading, body in sections:
            update_results(args.results, heading, body)
        print(f"wrote {args.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
