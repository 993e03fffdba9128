"""Fine-tuning on Ray Train V2 with imbalance-aware losses and balanced per-worker batches.

    raybalance train jobs/configs/trec50_tiny.yaml          # runs prepare first if needed

The driver reads the run's splits, turns them into model inputs with a Ray Data stage
(tokenization, stacking feature columns, or hashed TF-IDF n-grams for ``model.kind=lexical``,
whose document frequencies it first sums over the train split; labels -> class indices), and
starts a ``TorchTrainer``. Each worker builds the model and the loss, draws batches — plain
shuffled, or balanced (``engine.sampling``) either from rows it holds (``sampler.mode=map``) or
from its Ray Data shard (``stream``) — and after every epoch evaluates on val and reports metrics
with a checkpoint (safetensors weights, config, label map, optimizer state, the metrics so far).
Ray keeps the best checkpoints by ``train.metric``; a worker that dies is replaced and training
resumes from the last checkpoint (``train.max_failures``); a relaunch of an interrupted run with
the same run directory resumes it. The best model is exported to ``RUN_DIR/train/best/`` (a
``save_pretrained`` folder for transformers; safetensors + config JSON for the MLP, plus the
vectorizer for the lexical model) and the per-epoch metrics to ``RUN_DIR/train/metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from engine import remote, rundir
from engine.config import (
    EXACT_KINDS,
    LINEAR_C_GRID,
    SMOTE_METHODS,
    DataSpec,
    JobSpec,
    LossSpec,
    ModelSpec,
    SamplerSpec,
    StatsSpec,
    TrainSpec,
    build_section,
    learning_rate,
    model_data,
)
from engine.data import (
    DATA_TASK_CPUS,
    ROW,
    Columns,
    LabelMap,
    read_dataset,
    read_schema,
    resolve_columns,
    resolve_source,
    task_args,
)
from engine.io import join, write_json_atomic
from engine.lexical import (
    LazyAdamW,
    LexicalClassifier,
    LexicalParams,
    clip_grad_norm,
    fit_vectorizer,
)
from engine.metrics import classification_metrics, recall_at_precision
from engine.models import (
    build_model,
    feature_matrix,
    load_tokenizer,
    logits_of,
    save_model,
    standardization,
    tokenize,
)
from engine.rundir import RunDir
from engine.session import (
    LocalSession,
    TrainingFailed,
    error_line,
    last_complete,
    remove_partial,
    scratch_folder,
    write_file_list,
)
from engine.state import load_state, save_state

log = logging.getLogger("raybalance")
RAY_STORAGE, FIT_EXPERIMENT = "ray", "fit"  # Ray Train's storage in a trained folder, and run


# --------------------------------------------------------------------------------------------
# inputs: a Ray Data stage


def _to_inputs(batch, cols: Columns, model: ModelSpec, label_map: LabelMap, vectorizer=None):
    import pyarrow as pa

    labels = label_map.encode(pa.array(batch[cols.label]))
    if model.kind in ("mlp", "gbdt"):
        out = {"features": feature_matrix(batch, list(cols.features), cols.vector)}
    elif model.kind == "lexical":
        idx, val = vectorizer.transform(batch[cols.text])
        out = {"lex_idx": idx.astype(np.int32), "lex_val": val}  # int32: half the memory
    else:
        out = tokenize(batch, cols.text, model.path, model.max_length)
    out["label"] = labels
    if ROW in batch:  # the row's place in its source (an ordered read)
        out[ROW] = np.asarray(batch[ROW])
    return out


def preprocess(
    ds,
    cols: Columns,
    model: ModelSpec,
    label_map: LabelMap,
    vectorizer=None,
    task_cpus: float | None = None,
):
    """Rows -> model inputs as a Ray Data stage (tokenization runs in Ray tasks, not the loop).

    ``vectorizer`` (``engine.lexical.Vectorizer``, lexical only): fitted on the train split.
    ``task_cpus``: the CPUs each of its tasks asks for (default: ``fractional_tasks``'s, else
    Ray Data's one).
    """
    if model.kind in ("mlp", "gbdt") and not (cols.features or cols.vector):
        raise ValueError(
            f"model.kind={model.kind} needs data.features (numeric columns or a list column)"
        )
    if model.kind == "lexical":
        if not cols.text:
            raise ValueError(
                "model.kind=lexical needs data.text (a string column to take n-grams of)"
            )
        if vectorizer is None:
            raise ValueError("model.kind=lexical needs the vectorizer fitted on the train split")
    if model.kind == "transformer" and not cols.text:
        raise ValueError(
            "model.kind=transformer needs data.text; for feature columns set model.kind=mlp"
        )
    return ds.map_batches(
        _to_inputs,
        fn_kwargs={"cols": cols, "model": model, "label_map": label_map, "vectorizer": vectorizer},
        batch_format="numpy",
        batch_size=1024,
        **task_args(task_cpus),
    )


def materialize(ds) -> dict[str, np.ndarray]:
    """A (small) preprocessed dataset as numpy arrays on the driver, in source order when its
    rows carry their places (``ROW``, an ordered read)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts:
        return {}
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if ROW in arrays:
        order = np.argsort(arrays.pop(ROW), kind="stable")
        arrays = {k: v[order] for k, v in arrays.items()}
    return arrays


# --------------------------------------------------------------------------------------------
# the per-worker loop


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as torch tensors on ``device`` (token and label columns as int64); tensors
    already there pass through. To a GPU from pinned memory: only then is the copy
    asynchronous."""
    out = {}
    for k, v in batch.items():
        t = _as_tensor(k, v)
        if device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory().to(device, non_blocking=True)
        out[k] = t.to(device)
    return out


def _class_weights(loss: LossSpec, stats: StatsSpec, counts: np.ndarray, keys: list[str]):
    from engine.stats import class_weights

    if loss.weights is None:
        return None
    if isinstance(loss.weights, str):
        return class_weights(counts, loss.weights, stats.beta).tolist()
    unknown = sorted(set(loss.weights) - set(keys))
    missing = [k for k in keys if k not in loss.weights]
    if unknown or missing:
        raise ValueError(
            f"loss.weights: labels {unknown} are not classes and classes {missing[:10]} have no "
            "weight; give one weight per class or a scheme name"
        )
    return [float(loss.weights[k]) for k in keys]


def loss_from_spec(spec: LossSpec, counts: list[int], weights: list[float] | None, epochs: int):
    """The loss module of ``spec`` for these training counts and resolved class weights."""
    from engine.losses import build_loss

    return build_loss(
        spec.name,
        counts,
        weights=weights,
        gamma=spec.gamma,
        beta=spec.beta,
        tau=spec.tau,
        base=spec.base,
        max_margin=spec.max_margin,
        scale=spec.scale,
        drw_epoch=spec.drw_epoch,
        epochs=epochs,
    )


def _evaluate(
    model,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    device,
    minority: int | None = None,
    floor: float = 0.5,
) -> tuple[dict, float]:
    model.eval()
    probs, losses = [], []
    n = len(arrays["label"])
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = _to_device(
                {k: v[start : start + batch_size] for k, v in arrays.items()}, device
            )
            logits = logits_of(model, batch).float()
            losses.append(
                torch.nn.functional.cross_entropy(logits, batch["label"], reduction="sum")
            )
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    model.train()
    p = np.concatenate(probs)
    m = classification_metrics(arrays["label"], p)
    if minority is not None:  # recall of the rarest training class at a precision floor
        m["minority_recall"] = recall_at_precision(
            arrays["label"] == minority, p[:, minority], floor
        )
    return m, float(torch.stack(losses).sum()) / max(n, 1)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


@dataclass
class _Loop:
    """What one worker trains with: the specs, the model (``core`` without its DDP wrapper),
    the loss, the optimizer and its schedule."""

    train: TrainSpec
    label_map: LabelMap
    counts: np.ndarray
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    core: torch.nn.Module
    loss_fn: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: Any = None
    scheduler: Any = None
    model_kind: str = ""


def _build_loop(config: dict[str, Any], session) -> _Loop:
    """The model (prepared for the session: DDP under Ray Train), its loss and the worker's
    place, from the loop config."""
    import ray

    train = build_section(TrainSpec, config["train"])
    model_spec = build_section(ModelSpec, config["model"])
    label_map = LabelMap.from_json(config["label_map"])
    counts = np.asarray(config["class_counts"], dtype=np.int64)
    device = session.device
    if device.type == "cuda":  # TF32 matmuls where bf16 autocast does not reach
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if model_spec.kind == "lexical" and device.type == "cpu":
        # A lexical step is a few small sparse ops: intra-op threads only add synchronization
        # (measured on 2 busy cores: 64 steps/s with 1 thread, 9 with 2).
        torch.set_num_threads(1)
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    vectorizer = ray.get(config["vectorizer_ref"]) if config.get("vectorizer_ref") else None
    model = build_model(model_spec, label_map, config.get("input_dim"), vectorizer)
    if model_spec.kind == "lexical":
        from engine.lexical import fit_for_ddp

        fit_for_ddp(model, device, session.world)
    if config.get("standardization"):  # before DDP: every replica starts from the same buffers
        model.set_standardization(*config["standardization"])
    model = session.prepare_model(model)
    loss_spec = build_section(LossSpec, config["loss"])
    loss_fn = loss_from_spec(loss_spec, counts.tolist(), config["loss_weights"], train.epochs)
    return _Loop(
        train=train,
        label_map=label_map,
        counts=counts,
        device=device,
        rank=session.rank,
        world=session.world,
        model=model,
        core=getattr(model, "module", model),
        loss_fn=loss_fn.to(device),
        params=[p for p in model.parameters() if p.requires_grad],
        model_kind=model_spec.kind,
    )


class TensorBatches:
    """Map mode's batches: the worker's rows held once as torch tensors (on the device when
    they fit ``DEVICE_BYTES``) and indexed by the sampler's order each epoch, one gather per
    column and step: no per-row fetch, no per-batch numpy-to-torch copy."""

    def __init__(self, arrays: dict[str, np.ndarray], sampler, batch_size: int, device):
        nbytes = sum(v.nbytes for v in arrays.values())
        where = device if device.type == "cpu" or nbytes <= DEVICE_BYTES else torch.device("cpu")
        self.tensors = {k: _as_tensor(k, v).to(where) for k, v in arrays.items()}
        self.sampler, self.batch_size, self.where = sampler, batch_size, where

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order = np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        for idx in torch.from_numpy(order).to(self.where).split(self.batch_size):
            yield {k: t.index_select(0, idx) for k, t in self.tensors.items()}


DEVICE_BYTES = 2 << 30  # map-mode rows up to this size live on the GPU for the whole run
_LONG_COLUMNS = ("input_ids", "attention_mask", "label", "lex_idx")


def _as_tensor(key: str, value) -> torch.Tensor:
    """A batch column as a tensor; a read-only array (Arrow's zero-copy view) is copied, which
    torch would otherwise warn about."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.require(np.asarray(value), requirements="W"))
    return value.long() if key in _LONG_COLUMNS else value


def _map_loader(arrays: dict[str, np.ndarray], sampler: SamplerSpec, loop: _Loop):
    """Map mode: the worker's batches over the materialized rows (balanced, or a
    ``DistributedSampler`` shuffle)."""
    from engine.sampling import BalancedDistributedSampler

    train = loop.train
    if sampler.kind == "balanced":
        order = BalancedDistributedSampler(
            arrays["label"],
            train.worker_batch_size,
            num_replicas=loop.world,
            rank=loop.rank,
            power=sampler.power,
            seed=train.seed,
        )
    else:
        order = torch.utils.data.distributed.DistributedSampler(
            range(len(arrays["label"])),
            num_replicas=loop.world,
            rank=loop.rank,
            shuffle=True,
            seed=train.seed,
        )
    return TensorBatches(arrays, order, train.worker_batch_size, loop.device)


def _stream_balancer(sampler: SamplerSpec, loop: _Loop, steps: int):
    """Stream mode with a balanced sampler: the buffer that draws each batch's class mix."""
    from engine.sampling import StreamBalancer

    if sampler.kind != "balanced":
        return None
    return StreamBalancer(
        loop.counts.tolist(),
        loop.train.worker_batch_size,
        power=sampler.power,
        seed=loop.train.seed,
        rank=loop.rank,
        world_size=loop.world,
        steps_per_epoch=steps,
        buffer_rows=sampler.buffer_rows,
    )


def _epoch_batches(config: dict[str, Any], sampler: SamplerSpec, loop: _Loop, session):
    """(steps per epoch, epoch -> the worker's batches of that epoch)."""
    import ray

    # batches per epoch, equal on every worker (DDP needs equal step counts)
    # train.batch_size is the global batch: each of the world's workers takes its share
    steps = math.ceil(int(loop.counts.sum()) / (loop.world * loop.train.worker_batch_size))
    if sampler.mode == "stream":
        shard = session.dataset_shard("train")
        balancer = _stream_balancer(sampler, loop, steps)

        def stream_epoch(epoch: int):
            it = shard.iter_batches(batch_size=loop.train.worker_batch_size, batch_format="numpy")
            return balancer.epoch(epoch, it) if balancer is not None else it

        return steps, stream_epoch
    loader = _map_loader(ray.get(config["train_ref"]), sampler, loop)

    def map_epoch(epoch: int):
        loader.set_epoch(epoch)
        return loader

    return len(loader), map_epoch


def _add_optimizer(loop: _Loop, steps: int) -> None:
    """AdamW (lazy and sparse for the lexical bag) with linear warmup and decay."""
    train = loop.train
    if isinstance(loop.core, LexicalClassifier):  # its bag has sparse gradients
        loop.optimizer = LazyAdamW(loop.params, lr=train.lr, weight_decay=train.weight_decay)
    else:
        fused = loop.device.type == "cuda"  # one kernel for every parameter
        loop.optimizer = torch.optim.AdamW(
            loop.params, lr=train.lr, weight_decay=train.weight_decay, fused=fused
        )
    total = max(1, train.epochs * math.ceil(steps / train.grad_accum))
    warmup = int(train.warmup_ratio * total)
    loop.scheduler = torch.optim.lr_scheduler.LambdaLR(loop.optimizer, _lr_lambda(warmup, total))


def _restore(loop: _Loop, checkpoint) -> list[dict[str, Any]]:
    """Model, optimizer and schedule from a checkpoint of this loop; returns its history."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as d:
        state = load_state(os.path.join(d, "train_state"))
        loop.core.load_state_dict(load_file(os.path.join(d, "model", "model.safetensors")))
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        with open(os.path.join(d, "history.json")) as f:
            return json.load(f)


def _optimizer_step(loop: _Loop) -> None:
    if loop.train.grad_clip is not None:
        clip_grad_norm(loop.params, loop.train.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)


def _train_epoch(loop: _Loop, epoch: int, batches, step_hook=None) -> dict[str, Any]:
    """One pass over ``batches``; returns the epoch's row (loss, steps, throughput, lr).
    ``step_hook(epoch, step, rank)`` runs before each step (tests inject faults with it)."""
    train, device = loop.train, loop.device
    use_amp = device.type == "cuda"
    loop.loss_fn.set_epoch(epoch)
    loop.model.train()
    t0, seen, n_steps = time.perf_counter(), 0, 0
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    loop.optimizer.zero_grad(set_to_none=True)
    accum = train.grad_accum
    # no autocast context on a CPU, no loss scaling without accumulation: small models take
    # ~1 ms a step, where each extra op shows
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_amp else None
    for step, raw in enumerate(batches):
        if step_hook is not None:
            step_hook(epoch, step, loop.rank)
        batch = _to_device(raw, device)
        if amp is not None:
            with amp:
                logits = logits_of(loop.model, batch)
        else:
            logits = logits_of(loop.model, batch)
        loss = loop.loss_fn(logits.float(), batch["label"])
        syncs = (step + 1) % accum == 0 or loop.world == 1
        with contextlib.nullcontext() if syncs else loop.model.no_sync():  # DDP: one all-reduce
            (loss / accum if accum > 1 else loss).backward()
        if (step + 1) % accum == 0:
            _optimizer_step(loop)
        loss_sum += loss.detach()
        seen += len(batch["label"])
        n_steps += 1
    if n_steps % accum:
        _optimizer_step(loop)
    elapsed = time.perf_counter() - t0
    totals = torch.stack([loss_sum.float(), torch.tensor(float(seen), device=device)])
    if loop.world > 1 and torch.distributed.is_initialized():  # every worker's, not rank 0's
        torch.distributed.all_reduce(totals)
    return {
        "epoch": epoch,
        "train_loss": float(totals[0]) / max(n_steps * loop.world, 1),
        "steps": n_steps,
        "samples_per_step": float(totals[1]) / max(n_steps, 1),  # over all workers
        "samples_per_s": float(totals[1]) / max(elapsed, 1e-9),
        "lr": loop.scheduler.get_last_lr()[0],
        "workers": loop.world,
    }


def _validate(loop: _Loop, val_arrays: dict[str, np.ndarray], row: dict[str, Any]) -> None:
    """The val metrics of the epoch, added to its ``row`` (rank 0)."""
    m, val_loss = _evaluate(
        loop.core,
        val_arrays,
        loop.train.eval_batch_size,
        loop.device,
        minority=int(np.argmin(loop.counts)),
        floor=loop.train.precision_floor,
    )
    keys = loop.label_map.keys
    row.update(
        val_loss=val_loss,
        val_macro_f1=m["macro_f1"],
        val_balanced_accuracy=m["balanced_accuracy"],
        val_macro_pr_auc=m["macro_pr_auc"],
        val_minority_recall=m["minority_recall"],
        val_recall={keys[c]: v["recall"] for c, v in m["per_class"].items()},
    )


def _checkpoint_dir(loop: _Loop, history: list[dict[str, Any]], where: str | None = None) -> str:
    """A temporary folder with the model, the optimizer state and the history (safetensors +
    JSON: a checkpoint holds no pickle)."""
    tmp = scratch_folder(where)
    save_model(loop.core, os.path.join(tmp, "model"), loop.label_map)
    if loop.optimizer is not None:  # (a tree model has none)
        save_state(
            {"optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict()},
            os.path.join(tmp, "train_state"),
        )
    with open(os.path.join(tmp, "history.json"), "w") as f:
        json.dump(history, f)
    write_file_list(tmp)
    return tmp


def _writable(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays from the object store are read-only; torch wants writable ones for its views."""
    return {k: v if v.flags.writeable else v.copy() for k, v in arrays.items()}


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function."""
    from engine.session import TrainSession

    run_loop(config, TrainSession(config.get("checkpoints")))


def _booster_worker_loop(config: dict[str, Any]) -> None:
    """``LightGBMTrainer``'s per-worker function: one data-parallel LightGBM fit."""
    from engine.session import TrainSession

    run_loop(config, TrainSession(config.get("checkpoints"), torch=False))


def run_loop(config: dict[str, Any], session) -> list[dict[str, Any]]:
    """The training loop in ``session`` (``engine.session``): build, restore, then epochs of
    train → validate → checkpoint (rank 0) → report. Returns the history."""
    import ray

    loop = _build_loop(config, session)
    if config.get("exact"):
        run = _run_gbdt if loop.model_kind == "gbdt" else _run_exact
        return run(config, loop, session)
    sampler = build_section(SamplerSpec, config["sampler"])
    steps, batches_of = _epoch_batches(config, sampler, loop, session)
    _add_optimizer(loop, steps)
    val_arrays = _writable(ray.get(config["val_ref"])) if loop.rank == 0 else None
    checkpoint = session.checkpoint()
    history = _restore(loop, checkpoint) if checkpoint is not None else []
    train = loop.train
    for epoch in range(len(history), train.epochs):
        # each epoch's random draws (dropout) from (seed, epoch): a run restored from a
        # checkpoint draws what an uninterrupted one would
        torch.manual_seed(train.seed * 1_000_003 + epoch)
        row = _train_epoch(loop, epoch, batches_of(epoch), config.get("step_hook"))
        history.append(row)
        tmp = None
        if loop.rank == 0:
            _validate(loop, val_arrays, row)
            tmp = _checkpoint_dir(loop, history, getattr(session, "scratch", None))
            session.epoch_done(
                epoch + 1,
                train.epochs,
                f"loss {row['train_loss']:.4f}  {row['samples_per_s']:.0f} samples/s  "
                f"val macro-F1 {row['val_macro_f1']:.4f}  "
                f"balanced acc {row['val_balanced_accuracy']:.4f}",
            )
        _report(session, row, tmp)
    return history


def _run_exact(config: dict[str, Any], loop: _Loop, session) -> list[dict[str, Any]]:
    """The ``linear`` kind: exact logistic-regression solves (``engine.linear``) on the
    materialized train rows — ``model.C``, or each of ``LINEAR_C_GRID`` warm-started with the
    best on val kept —, or past memory (``linear_solver`` sgd) averaged SGD over the streamed
    rows for each C at once; then validation, checkpoint and report as an epoch would."""
    import ray

    from engine.linear import (
        SGD_BATCH,
        SGD_EPOCHS,
        design_matrix,
        fit_path,
        set_linear,
        sgd_path,
        weighted_log_loss,
    )

    val_arrays = _writable(ray.get(config["val_ref"]))
    _add_optimizer(loop, 1)  # untouched: the checkpoint keeps the loop's format
    t0 = time.perf_counter()
    weights, C = config["loss_weights"], config["exact_C"]
    Cs = [C] if C else LINEAR_C_GRID
    sgd = config.get("linear_solver") == "sgd"
    rows = int(loop.counts.sum())
    if sgd:  # the train rows streamed from their Ray Data source, a batch at a time
        ds = session.dataset_shard("train")
        fits = sgd_path(
            lambda: ds.iter_batches(batch_format="numpy", batch_size=SGD_BATCH),
            loop.core, len(loop.counts), Cs, weights, rows, seed=loop.train.seed,
        )  # fmt: skip
    else:
        arrays = ray.get(config["train_ref"])
        x = design_matrix(loop.core, arrays)
        fits = fit_path(x, arrays["label"], len(loop.counts), Cs, weights)
    best = None
    for c, w, b in fits:
        set_linear(loop.core, w, b)
        row = {"epoch": 0, "C": c, "solver": "sgd" if sgd else "lbfgs"}
        _validate(loop, val_arrays, row)
        if best is None or _better(row, best[0], loop.train.metric):
            best = (row, w, b)
    row, w, b = best
    set_linear(loop.core, w, b)
    seconds = time.perf_counter() - t0
    row.update(
        train_loss=(
            float("nan") if sgd else weighted_log_loss(loop.core, x, arrays["label"], weights)
        ),
        steps=SGD_EPOCHS if sgd else 1,
        samples_per_s=rows * (SGD_EPOCHS if sgd else 1) / max(seconds, 1e-9),
        lr=0.0,
    )
    what = f"linear fit ({row['solver']}, C {row['C']:g}) in {seconds:.1f} s"
    return _report_exact(loop, session, row, what)


def _run_gbdt(config: dict[str, Any], loop: _Loop, session) -> list[dict[str, Any]]:
    """The ``gbdt`` kind: one LightGBM fit (``engine.gbdt``), rounds stopped early on val, then
    validation, checkpoint and report as an epoch would. In one process the fit reads the
    materialized train rows; under a ``LightGBMTrainer`` each worker reads its own Ray Data
    shard of them and LightGBM's data-parallel learner sums the workers' histograms over its
    network, so every worker grows the same trees. Every worker holds all of val (early
    stopping then stops them all at the same round); rank 0 validates and checkpoints."""
    import ray

    from engine.gbdt import fit_booster

    params = dict(config.get("gbdt_params") or {})
    if loop.world > 1:
        arrays = materialize(session.dataset_shard("train"))
        params.update(distributed_params(loop.world))
    else:
        arrays = ray.get(config["train_ref"])
    val_arrays = _writable(ray.get(config["val_ref"]))
    t0 = time.perf_counter()
    booster = fit_booster(
        arrays["features"],
        arrays["label"],
        len(loop.counts),
        config["loss_weights"],
        val_arrays["features"],
        val_arrays["label"],
        seed=loop.train.seed,
        rounds=config["gbdt_rounds"],
        params=params,
        stopping=config["gbdt_stopping"],
    )
    loop.core.set_booster(booster.model_to_string())
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {
        "epoch": 0,
        "rounds": int(booster.current_iteration()),
        "workers": loop.world,
        "shard_rows": len(arrays["label"]),  # this worker's (rank 0's) train rows
    }
    if loop.rank == 0:
        _validate(loop, val_arrays, row)
    row.update(
        train_loss=float("nan"),
        steps=row["rounds"],
        samples_per_s=len(arrays["label"]) * loop.world / max(seconds, 1e-9),
        lr=0.0,
    )
    where = f" on {loop.world} workers" if loop.world > 1 else ""
    return _report_exact(
        loop, session, row, f"gbdt fit ({row['rounds']} rounds){where} in {seconds:.1f} s"
    )


def distributed_params(world: int) -> dict[str, Any]:
    """LightGBM's parameters for a ``LightGBMTrainer`` worker: the network Ray Train set up
    (machines, ports), the data-parallel learner, and the rows each worker holds being its own
    part of the data (``pre_partition``)."""
    import ray.train.lightgbm

    network = ray.train.lightgbm.get_network_params()
    if int(network.get("num_machines", 0)) != world:
        raise RuntimeError(
            f"LightGBM's network has {network.get('num_machines')} machines for {world} "
            "workers: a gbdt fit on several workers must run under a LightGBMTrainer"
        )
    return {**network, "tree_learner": "data", "pre_partition": True}


def _report_exact(loop: _Loop, session, row: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """Checkpoint (rank 0) and report (every worker) the one row of an exact fit; returns the
    history."""
    history = [row]
    tmp = None
    if loop.rank == 0:
        tmp = _checkpoint_dir(loop, history, getattr(session, "scratch", None))
        session.epoch_done(
            1,
            1,
            f"{what}  val macro-F1 {row['val_macro_f1']:.4f}  "
            f"balanced acc {row['val_balanced_accuracy']:.4f}",
        )
    _report(session, row, tmp)
    return history


def _report(session, row: dict[str, Any], tmp: str | None) -> None:
    """Report an epoch's row with its checkpoint folder ``tmp``, then remove ``tmp`` (the
    session has its copy), also when the report raises (a stopped trial)."""
    try:
        session.report({k: v for k, v in row.items() if k != "val_recall"}, tmp)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _better(row: dict[str, Any], than: dict[str, Any], metric: str) -> bool:
    a, b = row[metric], than[metric]
    return a < b if metric == "val_loss" else a > b


# --------------------------------------------------------------------------------------------
# the driver


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    best_dir: str
    metrics: list[dict[str, Any]]
    best: dict[str, Any]


def live_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the connected cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def worker_cpu_cap(nodes: Sequence[Mapping[str, float]], use_gpu: bool) -> float | None:
    """The most CPUs one Train worker can be given so that it fits on a node: with GPUs, the
    CPUs per GPU of the GPU node that has the fewest (each of its GPUs may get a worker);
    without, the largest node's CPUs. None when no node qualifies (GPU nodes not up yet)."""
    if use_gpu:
        per = [n.get("CPU", 0.0) / n["GPU"] for n in nodes if n.get("GPU", 0.0) >= 1]
    else:
        per = [n.get("CPU", 0.0) for n in nodes]
    return math.floor(min(per) * 100) / 100 if use_gpu and per else (max(per) if per else None)


def check_gpu_workers(nodes: Sequence[Mapping[str, float]], train: TrainSpec) -> None:
    """Refuse more GPU workers than the cluster's GPUs (Ray Train would wait for them forever).
    A cluster with no GPU node up yet (an autoscaling one) is let through: it may add them."""
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    if train.use_gpu and 0 < gpus < train.num_workers:
        raise ValueError(
            f"train.num_workers={train.num_workers} GPU workers need {train.num_workers} GPUs; "
            f"the cluster has {gpus:g}: lower train.num_workers to {int(gpus)} or add GPU nodes"
        )


def _cpus_per_worker(
    train: TrainSpec, streaming: bool, nodes: Sequence[Mapping[str, float]] | None = None
) -> float:
    """Workers share the cluster's CPUs; when they stream from Ray Data, one CPU is left for
    its read and preprocessing tasks (without it, 2 workers on 2 CPUs deadlock). A worker never
    asks for more than a node can give it (``worker_cpu_cap``), or it would wait forever."""
    if train.cpus_per_worker is not None:
        return train.cpus_per_worker
    nodes = live_nodes() if nodes is None else nodes
    cpus = sum(n.get("CPU", 0.0) for n in nodes) or 1.0
    share = (cpus - (1 if streaming else 0)) / train.num_workers
    cap = worker_cpu_cap(nodes, train.use_gpu)
    share = min(share, 8.0, cap if cap is not None else 1.0)
    return float(max(0.25, share)) if share > 0 else 0.25


def input_data(spec: JobSpec) -> DataSpec:
    """The data spec whose columns training (and evaluation) read: ``model_data(spec)``, except
    that a lexical model (and a linear one on text) reads the text itself, never an embedding
    of it."""
    kind = resolved_model(spec).kind
    if kind != "lexical":
        return model_data(spec)
    if not spec.data.text:
        raise ValueError(
            f"model.kind={spec.model.kind} needs data.text (a string column to take n-grams of) "
            f"or data.features; data.text is {spec.data.text!r} (for numeric feature columns "
            "use model.kind=mlp or linear with data.features)"
        )
    if spec.resample.method in SMOTE_METHODS:
        raise ValueError(
            f"model.kind=lexical cannot train on resample.method={spec.resample.method}: its "
            "synthetic rows are embedding vectors without text; use random_over or combined, or "
            "sampler.kind=balanced / a class-balanced loss"
        )
    return spec.data


def train_source(run: RunDir, keys: list[str]):
    """The resampled train split when a complete one exists, else the plain train split; with
    the class counts of the one chosen."""
    counts = run.resampled_counts(keys)
    if counts is not None:
        return resolve_source(run.resampled_train), counts
    return resolve_source(run.model_split("train")), run.class_counts("train", keys)


def _moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = batch["features"].astype(np.float64)
    return {"n": np.array([len(x)]), "s": x.sum(axis=0)[None], "ss": (x * x).sum(axis=0)[None]}


def feature_standardization(train_ds) -> tuple[list[float], list[float]]:
    """(shift, scale) of the MLP's input features over the preprocessed training rows: one
    streaming pass whose per-batch sums (float64) are added up on the driver."""
    n, total, total_sq = 0, 0.0, 0.0
    moments = train_ds.map_batches(_moments, batch_format="numpy", batch_size=8192, **task_args())
    for b in moments.iter_batches(batch_format="numpy", batch_size=None):
        n += int(b["n"].sum())
        total = total + b["s"].sum(axis=0)
        total_sq = total_sq + b["ss"].sum(axis=0)
    return standardization(n, np.asarray(total), np.asarray(total_sq))


def fit(
    spec: JobSpec,
    *,
    overwrite: bool = False,
    step_hook: Callable[[int, int, int], None] | None = None,
    out_dir: str | None = None,
    callbacks: list[Any] | None = None,
    train_data: tuple[Any, np.ndarray] | None = None,
    storage_filesystem: Any = None,
    val_data: Any = None,
) -> TrainResult:
    """Train ``spec.model`` on the run's splits with Ray Train; export the best model.

    Writes ``out_dir`` (default ``RUN_DIR/train``): ``best/``, ``metrics.json``, ``ray/``.
    ``callbacks`` are added to the trainer's ``RunConfig`` (a Tune trial passes
    ``TuneReportCallback``); ``train_data`` = (Source, class counts) replaces the run's train
    split (a trial with its own resampling), ``val_data`` (a Source) the val split (a
    cross-fitting fold's held-out rows). ``step_hook(epoch, step, rank)`` runs in every
    worker before each step (tests inject faults with it; it is shipped to the workers).
    ``storage_filesystem`` (a ``pyarrow.fs.FileSystem``) is what Ray Train persists the
    checkpoints through (Ray's ``RunConfig(storage_filesystem=)``); default: the local one.

    A checkpoint that fails to persist fails its worker: Train restarts the workers (up to
    ``train.max_failures``) from the last complete checkpoint, and the folder the failed copy
    left is removed when the run ends.
    """
    with _fit_folders(spec, out_dir, overwrite) as (run, out):
        config, datasets = loop_inputs(spec, run, train_data, val_data)
        config["step_hook"] = step_hook
        # where _trainer's workers persist: in the bucket when ``out`` is a mirror of one
        config["checkpoints"] = join(remote.durable(out), RAY_STORAGE, FIT_EXPERIMENT)
        from ray.train import TrainingFailedError

        try:
            trainer = _trainer(spec, out, config, datasets, callbacks, storage_filesystem)
            result = trainer.fit()
        except TrainingFailedError as e:
            raise TrainingFailed(_failure_line(e, spec, out)) from e
        if result.error is not None:
            raise TrainingFailed(_failure_line(result.error, spec, out)) from result.error
        for path in remove_partial(config["checkpoints"]):
            log.warning("train: removed %s, a checkpoint whose copy to storage failed", path)
        best_dir, history, best = export_best(result, spec, out)
    return TrainResult(run.data_root, remote.durable(best_dir), history, best)


def _failure_line(error: BaseException, spec: JobSpec, out: str) -> str:
    """One line: what failed, after how many restarts, and the last good checkpoint of this
    run (its model folder loads with ``engine.models.load_model``)."""
    cause = error_line(error)
    where = "no checkpoint was saved"
    last = _last_checkpoint(out)
    if last is not None:
        where = (
            f"the last good checkpoint (after epoch {last[1]}) is {os.path.join(last[0], 'model')}"
        )
    return (
        f"training failed after {spec.train.max_failures} restart(s) "
        f"(train.max_failures): {cause[:300]}; {where}"
    )


def _last_checkpoint(out: str) -> tuple[str, int] | None:
    """(folder, epochs) of the complete checkpoint with the longest history under ``out/ray``
    (or ``out/checkpoints``, in-process)."""
    import glob

    found = glob.glob(os.path.join(out, "ray", "*", "checkpoint_*"))
    found += glob.glob(os.path.join(out, "checkpoints", "epoch-*"))
    return last_complete(found)


@contextlib.contextmanager
def _fit_folders(
    spec: JobSpec, out_dir: str | None, overwrite: bool
) -> Iterator[tuple[RunDir, str]]:
    """The run folder (checked against ``spec``; read where it is, a bucket included) and the
    output folder as a local one (a URI's mirror, pushed when the block ends), cleared when it
    holds a finished run and ``overwrite``."""
    run = RunDir(spec.run_dir)
    run.check_prepared_with(spec)
    if run.require_splits()["rows"]["val"] == 0:
        raise ValueError(
            "training evaluates on val every epoch: set split.val > 0 and prepare again"
        )
    with remote.local_folder(out_dir or run.train) as out:
        if os.path.exists(join(out, rundir.METRICS)):
            if not overwrite:
                raise ValueError(
                    f"{remote.durable(out)} holds a finished training run; pass --overwrite to "
                    "train again"
                )
            remote.clear(out)
        yield run, out


def fit_in_process(
    spec: JobSpec,
    *,
    overwrite: bool = False,
    out_dir: str | None = None,
    train_data: tuple[Any, np.ndarray] | None = None,
    step_hook: Callable[[int, int, int], None] | None = None,
    tune: bool = True,
    val_data: Any = None,
) -> TrainResult:
    """``fit`` with one worker in this process, without a Ray Train worker group: the same
    loop, seeds, checkpoints and exported files. Inside a Tune trial (``tune``) each epoch is
    reported to Tune with its checkpoint, and a restored trial resumes from it; outside Tune a
    failed attempt is retried from its latest checkpoint up to ``train.max_failures`` times
    (then ``TrainingFailed``)."""
    if spec.train.num_workers != 1:
        raise ValueError(
            f"train.num_workers={spec.train.num_workers}: training in one process takes 1 worker"
        )
    with _fit_folders(spec, out_dir, overwrite) as (run, out):
        history, best_dir, best = _fit_here(spec, run, out, (train_data, val_data), step_hook, tune)
    return TrainResult(run.data_root, remote.durable(best_dir), history, best)


def _fit_here(
    spec: JobSpec,
    run: RunDir,
    out: str,
    data: tuple[tuple[Any, np.ndarray] | None, Any],
    step_hook: Callable[[int, int, int], None] | None,
    tune: bool,
) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """``fit_in_process``'s attempts in the local folder ``out``: (history, best_dir, best).
    ``data``: (train_data, val_data) as ``fit`` takes them."""

    config, datasets = loop_inputs(spec, run, *data)
    config["step_hook"] = step_hook
    use_gpu = spec.train.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    if not tune:  # a fresh run: no checkpoint of an earlier, abandoned one
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    for attempt in range(spec.train.max_failures + 1):
        session = LocalSession(
            out, spec.train.checkpoint_metric, datasets, device, tune=tune, resume=attempt > 0
        )
        try:
            history = run_loop(config, session)
            break
        except Exception as e:
            if tune:
                raise
            if attempt == spec.train.max_failures:
                raise TrainingFailed(_failure_line(e, spec, out)) from e
            log.warning(
                "training attempt %d failed (%s); resuming from its latest checkpoint",
                attempt + 1,
                error_line(e),
            )
    folder, best = session.best()
    best_dir = _export(folder, history, spec, out)
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    return history, best_dir, best


def train_model(
    spec: JobSpec,
    *,
    overwrite: bool = False,
    out_dir: str | None = None,
    train_data: tuple[Any, np.ndarray] | None = None,
    step_hook: Callable[[int, int, int], None] | None = None,
    val_data: Any = None,
) -> TrainResult:
    """Train ``spec``: one CPU worker (and any ``linear`` fit) in this process
    (``fit_in_process``: no worker group to start, seconds sooner), a GPU or several workers on
    Ray Train (``fit``). The same seed gives the same metrics and model either way."""
    kw = dict(
        overwrite=overwrite,
        out_dir=out_dir,
        train_data=train_data,
        step_hook=step_hook,
        val_data=val_data,
    )
    spec = trained_spec(spec)
    if spec.train.num_workers == 1 and not spec.train.use_gpu:
        return fit_in_process(spec, tune=False, **kw)
    return fit(spec, **kw)


def one_process(spec: JobSpec) -> JobSpec:
    """``spec`` trained in one process on the CPU."""
    return replace(spec, train=replace(spec.train, num_workers=1, use_gpu=False))


def trained_spec(spec: JobSpec) -> JobSpec:
    """``spec`` as it trains: a ``linear`` fit is one solve in one process; a ``gbdt`` fit runs
    on CPU workers — one, in process, or ``train.num_workers`` of a ``LightGBMTrainer``,
    data-parallel over the train rows' Ray Data shards."""
    if spec.model.kind == "linear":
        return one_process(spec)
    if spec.model.kind == "gbdt":
        return replace(spec, train=replace(spec.train, use_gpu=False))
    return spec


def sharded(spec: JobSpec) -> bool:
    """Whether each worker reads its own Ray Data shard of the train rows rather than all of
    them from the object store: streaming batches, or a data-parallel gbdt fit."""
    if spec.model.kind == "gbdt":
        return spec.train.num_workers > 1
    return spec.sampler.mode == "stream" and spec.model.kind not in EXACT_KINDS


def loop_inputs(
    spec: JobSpec,
    run: RunDir,
    train_data: tuple[Any, np.ndarray] | None = None,
    val_data: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-worker loop's config (train and val rows materialized in source order and put
    in the object store, outside stream mode) and the trainer's datasets (stream mode)."""
    import ray

    label_map = run.label_map()
    keys = label_map.keys
    source, counts = train_data if train_data else train_source(run, keys)
    cols = resolve_columns(read_schema(source), input_data(spec), where=source.files[0])
    model_spec = resolved_model(spec)
    vectorizer = None
    if model_spec.kind == "lexical":  # idf from the rows it trains on (resampled, if so)
        vectorizer = fit_vectorizer(source, cols.text, LexicalParams.from_spec(model_spec))
    val_source = val_data or resolve_source(run.model_split("val"))
    val_arrays = materialize(
        preprocess(read_dataset(val_source, ordered=True), cols, model_spec, label_map, vectorizer)
    )
    exact = spec.model.kind in EXACT_KINDS
    train_ds, stream, solver = _train_rows(
        spec, source,
        lambda ds, cpus: preprocess(ds, cols, model_spec, label_map, vectorizer, cpus),
        int(np.sum(counts)), val_arrays,
    )  # fmt: skip
    config: dict[str, Any] = {
        "train": asdict(replace(spec.train, lr=learning_rate(spec))),
        "model": asdict(model_spec),
        "loss": asdict(spec.loss),
        "sampler": asdict(spec.sampler),
        "label_map": label_map.to_json(),
        "class_counts": counts.tolist(),
        "loss_weights": _class_weights(spec.loss, spec.stats, counts, keys),
        "input_dim": (
            int(val_arrays["features"].shape[1]) if model_spec.kind in ("mlp", "gbdt") else None
        ),
        "val_ref": ray.put(val_arrays),
        "vectorizer_ref": ray.put(vectorizer) if vectorizer is not None else None,
        "exact": exact,
        "exact_C": spec.model.C,
        "linear_solver": solver,
        "gbdt_rounds": spec.model.rounds,
        "gbdt_stopping": spec.model.stopping,
        "gbdt_params": {
            "num_leaves": spec.model.num_leaves,
            "feature_fraction": spec.model.feature_fraction,
        },
    }
    train_arrays = None if stream else materialize(train_ds)
    if train_arrays is not None:
        config["train_ref"] = ray.put(train_arrays)
    if model_spec.kind == "mlp" and model_spec.standardize:
        if train_arrays is not None:
            x = train_arrays["features"].astype(np.float64)
            config["standardization"] = standardization(len(x), x.sum(0), (x * x).sum(0))
        else:
            config["standardization"] = feature_standardization(train_ds)
    return config, ({"train": train_ds} if stream else {})


def _train_rows(spec: JobSpec, source, prep, rows: int, val_arrays: dict[str, np.ndarray]):
    """(train dataset, streamed, linear solver): the train rows as model inputs (``prep(ds,
    task_cpus)``).

    Materialized rows in source order: the same seed draws the same batches in every run. A
    stream stays unordered, for throughput; an exact fit reads in order — a linear fit by SGD
    streams its passes, a data-parallel gbdt fit splits its rows among the workers."""
    solver = None
    if spec.model.kind == "linear":
        from engine.linear import choose_solver

        solver = choose_solver(spec.model.solver, rows, val_arrays)
    stream = sharded(spec) or solver == "sgd"
    exact = spec.model.kind in EXACT_KINDS
    # the workers hold their CPUs while a stream is read: its tasks ask for a fraction of one
    cpus = DATA_TASK_CPUS if stream else None
    train_ds = prep(read_dataset(source, ordered=not stream or exact, task_cpus=cpus), cpus)
    if stream and spec.model.kind == "gbdt":
        # the shards' reads run here, before the workers hold their CPUs (a read inside the
        # trainer once asked a whole CPU and found none on two 1-CPU nodes whose CPUs each
        # worker half held; its tasks now ask a fraction, as the stream's do); splitting
        # materialized blocks among the workers needs no CPU
        train_ds = train_ds.materialize()
    return train_ds, stream, solver


def resolved_model(spec: JobSpec) -> ModelSpec:
    """The model as built: ``linear`` as an MLP without hidden layers over feature columns (or
    embedded text), else as a lexical model without hidden layers; ``model.standardize`` null
    resolved: on for tabular features, off for embeddings (which come normalized)."""
    model = spec.model
    if model.kind == "linear":
        kind = "mlp" if model_data(spec).features else "lexical"
        model = replace(model, kind=kind, hidden=[], dropout=0.0)
    if model.kind != "mlp" or model.standardize is not None:
        return model
    return replace(model, standardize=spec.data.features is not None)


def _trainer(
    spec: JobSpec, out: str, config: dict[str, Any], datasets, callbacks, storage_filesystem=None
):
    """A ``TorchTrainer`` of ``_worker_loop`` workers, or for ``gbdt`` a ``LightGBMTrainer``
    of ``_booster_worker_loop`` ones (LightGBM's network set up by Ray Train)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    if spec.model.kind == "gbdt":
        from ray.train.lightgbm import LightGBMTrainer as Trainer

        loop = _booster_worker_loop
    else:
        from ray.train.torch import TorchTrainer as Trainer

        loop = _worker_loop
    metric = spec.train.checkpoint_metric
    check_gpu_workers(live_nodes(), spec.train)
    return Trainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker={"CPU": _cpus_per_worker(spec.train, sharded(spec))},
        ),
        run_config=RunConfig(
            name=FIT_EXPERIMENT,
            storage_path=join(remote.durable(out), RAY_STORAGE),
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=metric,
                checkpoint_score_order="min" if metric == "val_loss" else "max",
            ),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
    )


def export_best(result, spec: JobSpec, out: str) -> tuple[str, list[dict], dict[str, Any]]:
    """The best checkpoint of a Ray Train result exported (``_export``); returns (best dir,
    history, best metrics)."""
    metric = spec.train.checkpoint_metric
    best_ckpt, best_metrics = max(
        result.best_checkpoints,
        key=lambda cm: -cm[1][metric] if metric == "val_loss" else cm[1][metric],
    )
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    with best_ckpt.as_directory() as d:
        best_dir = _export(d, history, spec, out)
    return best_dir, history, best_metrics


def complete_model_folder(folder: str, spec: JobSpec) -> None:
    """What a checkpoint's ``model/`` lacks to be used by itself: a transformer's tokenizer
    (without it, loading the folder builds an empty tokenizer and every word is unknown) and
    the model's manifest."""
    if spec.model.kind == "transformer":
        load_tokenizer(spec.model).save_pretrained(folder)
    model_manifest(folder, spec)


def model_manifest(folder: str, spec: JobSpec, trained_as: str | None = None) -> None:
    """The manifest that lets ``raybalance predict`` use the model in ``folder`` by itself."""
    from engine.artifact import write_model_manifest

    write_model_manifest(
        folder,
        spec.data,
        spec.embed if spec.data.features is None else None,
        run_name=spec.name,
        trained_as=trained_as or spec.model.kind,
        max_length=spec.model.max_length,
    )


def _export(checkpoint_dir: str, history: list[dict], spec: JobSpec, out: str) -> str:
    """Copy a checkpoint's model (with its tokenizer) to ``out/best`` and the history to
    ``out/metrics.json`` (last: a finished run); returns the best dir."""
    best_dir = join(out, "best")
    tmp_best = best_dir + ".tmp"
    shutil.rmtree(tmp_best, ignore_errors=True)
    shutil.copytree(os.path.join(checkpoint_dir, "model"), tmp_best)
    complete_model_folder(tmp_best, spec)
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(tmp_best, best_dir)
    write_json_atomic(join(out, rundir.METRICS), history)
    return best_dir
