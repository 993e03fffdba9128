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

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from engine.config import (
    DataSpec,
    JobSpec,
    LossSpec,
    ModelSpec,
    SamplerSpec,
    StatsSpec,
    TrainSpec,
    build_section,
)
from engine.data import (
    ROW,
    Columns,
    LabelMap,
    read_dataset,
    read_schema,
    resolve_columns,
    resolve_source,
)
from engine.io import join, local_dir, read_json
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
)
from engine.prepare import PREPARE_SECTIONS, model_data, split_dir
from engine.resample import SMOTE_METHODS
from engine.split import read_manifest
from engine.state import load_state, save_state

log = logging.getLogger("raybalance")

TRAIN_DIR = "train"


# --------------------------------------------------------------------------------------------
# inputs: a Ray Data stage


def _tokenize(batch: dict[str, np.ndarray], text: str, path: str, max_length: int) -> dict:
    tok = _tokenizer(path)
    enc = tok(
        [str(t) for t in batch[text]],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int8),
    }


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: str):
    """One tokenizer per Ray worker process, loaded on first use."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(ModelSpec(path=path))
    return _TOKENIZERS[path]


def _to_inputs(batch, cols: Columns, model: ModelSpec, label_map: LabelMap, vectorizer=None):
    import pyarrow as pa

    labels = label_map.encode(pa.array(batch[cols.label]))
    if model.kind == "mlp":
        out = {"features": feature_matrix(batch, list(cols.features), cols.vector)}
    elif model.kind == "lexical":
        idx, val = vectorizer.transform(batch[cols.text])
        out = {"lex_idx": idx.astype(np.int32), "lex_val": val}  # int32: half the memory
    else:
        out = _tokenize(batch, cols.text, model.path, model.max_length)
    out["label"] = labels
    if ROW in batch:  # the row's place in its source (an ordered read)
        out[ROW] = np.asarray(batch[ROW])
    return out


def preprocess(ds, cols: Columns, model: ModelSpec, label_map: LabelMap, vectorizer=None):
    """Rows -> model inputs as a Ray Data stage (tokenization runs in Ray tasks, not the loop).

    ``vectorizer`` (``engine.lexical.Vectorizer``, lexical only): fitted on the train split.
    """
    if model.kind == "mlp" and not (cols.features or cols.vector):
        raise ValueError("model.kind=mlp needs data.features (numeric columns or a list column)")
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
    )


def _materialize(ds) -> dict[str, np.ndarray]:
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


class _ArrayDataset(torch.utils.data.Dataset):
    """Rows of a dict of equal-length arrays, fetched a batch at a time (``__getitems__``)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.n = len(arrays["label"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.arrays.items()}

    def __getitems__(self, idx: list[int]):
        ix = np.asarray(idx)
        return {k: v[ix] for k, v in self.arrays.items()}


def _identity(batch):
    return batch


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
        if k in ("input_ids", "attention_mask", "label", "lex_idx"):
            t = t.long()
        out[k] = t.to(device, non_blocking=True)
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


def _worker_loop(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from engine.sampling import StreamBalancer, balanced_loader

    train = build_section(TrainSpec, config["train"])
    model_spec = build_section(ModelSpec, config["model"])
    loss_spec = build_section(LossSpec, config["loss"])
    sampler = build_section(SamplerSpec, config["sampler"])
    label_map = LabelMap.from_json(config["label_map"])
    counts = np.asarray(config["class_counts"], dtype=np.int64)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    if model_spec.kind == "lexical" and device.type == "cpu":
        # A lexical step is a few small sparse ops: intra-op threads only add synchronization
        # (measured on 2 busy cores: 64 steps/s with 1 thread, 9 with 2).
        torch.set_num_threads(1)
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    vectorizer = ray.get(config["vectorizer_ref"]) if config.get("vectorizer_ref") else None
    model = build_model(model_spec, label_map, config.get("input_dim"), vectorizer)
    if config.get("standardization"):  # before DDP: every replica starts from the same buffers
        model.set_standardization(*config["standardization"])
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)
    weights = config["loss_weights"]
    loss_fn = loss_from_spec(loss_spec, counts.tolist(), weights, train.epochs).to(device)

    # batches per epoch, equal on every worker (DDP needs equal step counts)
    n_train = int(counts.sum())
    steps = math.ceil(n_train / (world * train.batch_size))
    stream = sampler.mode == "stream"
    if not stream:
        arrays = ray.get(config["train_ref"])
        dataset = _ArrayDataset(arrays)
        if sampler.kind == "balanced":
            loader = balanced_loader(
                dataset,
                arrays["label"],
                train.batch_size,
                power=sampler.power,
                seed=train.seed,
                collate_fn=_identity,
            )
        else:
            dist = torch.utils.data.distributed.DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=train.seed
            )
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=train.batch_size, sampler=dist, collate_fn=_identity
            )
        steps = len(loader)
    else:
        shard = ray.train.get_dataset_shard("train")
        balancer = (
            StreamBalancer(
                counts.tolist(),
                train.batch_size,
                power=sampler.power,
                seed=train.seed,
                rank=rank,
                world_size=world,
                steps_per_epoch=steps,
                buffer_rows=sampler.buffer_rows,
            )
            if sampler.kind == "balanced"
            else None
        )
    val_arrays = ray.get(config["val_ref"]) if rank == 0 else None

    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(core, LexicalClassifier):  # its bag has sparse gradients
        optimizer = LazyAdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    total = max(1, train.epochs * math.ceil(steps / train.grad_accum))
    warmup = int(train.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        from safetensors.torch import load_file

        with checkpoint.as_directory() as d:
            if os.path.isdir(os.path.join(d, "train_state")):
                state = load_state(os.path.join(d, "train_state"))
            else:  # a checkpoint of an earlier version: tensors only, no code is unpickled
                state = torch.load(os.path.join(d, "train_state.pt"), weights_only=True)
            core.load_state_dict(load_file(os.path.join(d, "model", "model.safetensors")))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            with open(os.path.join(d, "history.json")) as f:
                history = json.load(f)
        start_epoch = len(history)

    use_amp = device.type == "cuda"
    fault = config.get("fault")
    for epoch in range(start_epoch, train.epochs):
        loss_fn.set_epoch(epoch)
        if stream:
            it = shard.iter_batches(batch_size=train.batch_size, batch_format="numpy")
            batches = balancer.epoch(epoch, it) if balancer is not None else it
        else:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            batches = loader
        model.train()
        t0, seen, n_steps = time.perf_counter(), 0, 0
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        optimizer.zero_grad(set_to_none=True)
        for step, raw in enumerate(batches):
            if (
                fault
                and epoch == fault["epoch"]
                and step == fault["step"]
                and rank == fault["rank"]
            ):
                if not os.path.exists(fault["marker"]):
                    with open(fault["marker"], "w") as f:
                        f.write(f"worker {rank} exited at epoch {epoch} step {step}\n")
                    os._exit(1)
            batch = _to_device(raw, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = logits_of(model, batch)
            loss = loss_fn(logits.float(), batch["label"]) / train.grad_accum
            loss.backward()
            if (step + 1) % train.grad_accum == 0:
                if train.grad_clip is not None:
                    clip_grad_norm(params, train.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * train.grad_accum
            seen += len(batch["label"])
            n_steps += 1
        if n_steps % train.grad_accum:
            if train.grad_clip is not None:
                clip_grad_norm(params, train.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / max(n_steps, 1),
            "steps": n_steps,
            "samples_per_s": seen * world / max(elapsed, 1e-9),
            "lr": scheduler.get_last_lr()[0],
        }
        ckpt = None
        if rank == 0:
            m, val_loss = _evaluate(
                core,
                val_arrays,
                train.eval_batch_size,
                device,
                minority=int(np.argmin(counts)),
                floor=train.precision_floor,
            )
            row.update(
                val_loss=val_loss,
                val_macro_f1=m["macro_f1"],
                val_balanced_accuracy=m["balanced_accuracy"],
                val_macro_pr_auc=m["macro_pr_auc"],
                val_minority_recall=m["minority_recall"],
                val_recall={label_map.keys[c]: v["recall"] for c, v in m["per_class"].items()},
            )
            history.append(row)
            tmp = tempfile.mkdtemp(prefix="rb-ckpt-")
            save_model(core, os.path.join(tmp, "model"), label_map)
            save_state(  # safetensors + JSON: the checkpoint holds no pickle
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                os.path.join(tmp, "train_state"),
            )
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump(history, f)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            print(
                f"[raybalance] epoch {epoch + 1}/{train.epochs}  loss {row['train_loss']:.4f}  "
                f"{row['samples_per_s']:.0f} samples/s  val macro-F1 {row['val_macro_f1']:.4f}  "
                f"balanced acc {row['val_balanced_accuracy']:.4f}",
                flush=True,
            )
        else:
            history.append(row)
        report = {k: v for k, v in row.items() if k != "val_recall"}
        ray.train.report(report, checkpoint=ckpt)
        if ckpt is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the driver


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    best_dir: str
    metrics: list[dict[str, Any]]
    best: dict[str, Any]


def _cpus_per_worker(train: TrainSpec, streaming: bool) -> float:
    """Workers share the cluster's CPUs; when they stream from Ray Data, one CPU is left for
    its read and preprocessing tasks (without it, 2 workers on 2 CPUs deadlock)."""
    import ray

    if train.cpus_per_worker is not None:
        return train.cpus_per_worker
    cpus = ray.cluster_resources().get("CPU", 1.0)
    share = (cpus - (1 if streaming else 0)) / train.num_workers
    return float(max(0.25, min(share, 8.0))) if share > 0 else 0.25


def input_data(spec: JobSpec) -> DataSpec:
    """The data spec whose columns training (and evaluation) read: ``model_data(spec)``, except
    that the lexical model always reads the text itself, never an embedding of it."""
    if spec.model.kind != "lexical":
        return model_data(spec)
    if not spec.data.text:
        raise ValueError(
            "model.kind=lexical needs data.text (a string column to take n-grams of); "
            f"data.text is {spec.data.text!r} (for numeric feature columns use model.kind=mlp)"
        )
    if spec.resample.method in SMOTE_METHODS:
        raise ValueError(
            f"model.kind=lexical cannot train on resample.method={spec.resample.method}: its "
            "synthetic rows are embedding vectors without text; use random_over or combined, or "
            "sampler.kind=balanced / a class-balanced loss"
        )
    return spec.data


def train_source(run_dir: str, keys: list[str], manifest: dict[str, Any]):
    """The resampled train split when a complete one exists (its ``stats.json`` is written
    last), else the plain train split; with the class counts of the one chosen."""
    resampled = join(run_dir, "resampled")
    if os.path.exists(join(resampled, "stats.json")):
        counts = read_json(join(resampled, "stats.json"))["counts"]
        return resolve_source(join(resampled, "train")), np.array([counts[k] for k in keys])
    counts = manifest["counts"]["train"]
    return resolve_source(split_dir(run_dir, "train")), np.array([counts[k] for k in keys])


def _moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = batch["features"].astype(np.float64)
    return {"n": np.array([len(x)]), "s": x.sum(axis=0)[None], "ss": (x * x).sum(axis=0)[None]}


def feature_standardization(train_ds) -> tuple[list[float], list[float]]:
    """(shift, scale) of the MLP's input features over the preprocessed training rows: one
    streaming pass whose per-batch sums (float64) are added up on the driver."""
    n, total, total_sq = 0, 0.0, 0.0
    for b in train_ds.map_batches(_moments, batch_format="numpy", batch_size=8192).iter_batches(
        batch_format="numpy", batch_size=None
    ):
        n += int(b["n"].sum())
        total = total + b["s"].sum(axis=0)
        total_sq = total_sq + b["ss"].sum(axis=0)
    return standardization(n, np.asarray(total), np.asarray(total_sq))


def fit(
    spec: JobSpec,
    *,
    overwrite: bool = False,
    fault: dict[str, Any] | None = None,
    out_dir: str | None = None,
    callbacks: list[Any] | None = None,
    train_data: tuple[Any, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``spec.model`` on the run's splits with Ray Train; export the best model.

    Writes ``out_dir`` (default ``RUN_DIR/train``): ``best/``, ``metrics.json``, ``ray/``.
    ``callbacks`` are added to the trainer's ``RunConfig`` (a Tune trial passes
    ``TuneReportCallback``); ``train_data`` = (Source, class counts) replaces the run's train
    split (a trial with its own resampling). ``fault`` (tests only): ``{"epoch", "step", "rank",
    "marker"}`` makes that worker exit once.
    """
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = local_dir(spec.run_dir, "training")
    manifest = read_manifest(join(run_dir, "splits"))
    if manifest is None:
        raise ValueError(f"{run_dir} has no complete splits: run `raybalance prepare` first")
    owner = read_json(join(run_dir, "run.json"))
    stale = [s for s in PREPARE_SECTIONS if owner["spec"].get(s) != asdict(getattr(spec, s))]
    if stale:
        raise ValueError(
            f"the splits in {run_dir} were prepared with another {', '.join(stale)} spec; run "
            "`raybalance prepare --overwrite` with this spec first, or use another run_dir"
        )
    label_map = LabelMap.from_json(read_json(join(run_dir, "label_map.json")))
    out = os.path.abspath(out_dir) if out_dir else join(run_dir, TRAIN_DIR)
    if os.path.exists(join(out, "metrics.json")):
        if not overwrite:
            raise ValueError(
                f"{out} holds a finished training run; pass --overwrite to train again"
            )
        shutil.rmtree(out)

    data: DataSpec = input_data(spec)
    keys = label_map.keys
    source, counts = train_data if train_data else train_source(run_dir, keys, manifest)
    cols = resolve_columns(read_schema(source), data, where=source.files[0])
    if manifest["rows"]["val"] == 0:
        raise ValueError(
            "training evaluates on val every epoch: set split.val > 0 and prepare again"
        )

    vectorizer = None
    if spec.model.kind == "lexical":  # idf from the rows it trains on (resampled, if so)
        vectorizer = fit_vectorizer(source, cols.text, LexicalParams.from_spec(spec.model))
    # Materialized rows in file order: the same seed draws the same batches in every run
    # (Ray Data's read order varies with load). A stream stays unordered, for throughput.
    stream = spec.sampler.mode == "stream"
    train_ds = preprocess(
        read_dataset(source, ordered=not stream), cols, spec.model, label_map, vectorizer
    )
    val_source = resolve_source(split_dir(run_dir, "val"))
    val_ds = preprocess(
        read_dataset(val_source, ordered=True), cols, spec.model, label_map, vectorizer
    )
    val_arrays = _materialize(val_ds)
    input_dim = int(val_arrays["features"].shape[1]) if spec.model.kind == "mlp" else None
    model_spec = spec.model
    if spec.model.kind == "mlp":
        on = spec.model.standardize
        if on is None:  # tabular columns vary in scale; embeddings come normalized
            on = spec.data.features is not None
        model_spec = replace(spec.model, standardize=on)
    config: dict[str, Any] = {
        "train": asdict(spec.train),
        "model": asdict(model_spec),
        "loss": asdict(spec.loss),
        "sampler": asdict(spec.sampler),
        "label_map": label_map.to_json(),
        "class_counts": counts.tolist(),
        "loss_weights": _class_weights(spec.loss, spec.stats, counts, keys),
        "input_dim": input_dim,
        "val_ref": ray.put(val_arrays),
        "vectorizer_ref": ray.put(vectorizer) if vectorizer is not None else None,
        "fault": fault,
    }
    datasets = {}
    train_arrays = None
    if stream:
        datasets["train"] = train_ds
    else:
        train_arrays = _materialize(train_ds)
        config["train_ref"] = ray.put(train_arrays)
    if model_spec.kind == "mlp" and model_spec.standardize:
        if train_arrays is not None:
            x = train_arrays["features"].astype(np.float64)
            config["standardization"] = standardization(len(x), x.sum(0), (x * x).sum(0))
        else:
            config["standardization"] = feature_standardization(train_ds)

    metric = spec.train.metric
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker={
                "CPU": _cpus_per_worker(spec.train, spec.sampler.mode == "stream")
            },
        ),
        run_config=RunConfig(
            name="fit",
            storage_path=join(out, "ray"),
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
    result = trainer.fit()
    if result.error is not None:
        raise result.error

    best_ckpt, best_metrics = max(
        result.best_checkpoints,
        key=lambda cm: -cm[1][metric] if metric == "val_loss" else cm[1][metric],
    )
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    best_dir = join(out, "best")
    tmp_best = best_dir + ".tmp"
    shutil.rmtree(tmp_best, ignore_errors=True)
    with best_ckpt.as_directory() as d:
        shutil.copytree(os.path.join(d, "model"), tmp_best)
    if spec.model.kind == "transformer":
        load_tokenizer(spec.model).save_pretrained(tmp_best)
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(tmp_best, best_dir)
    tmp_metrics = join(out, ".metrics.json.tmp")
    with open(tmp_metrics, "w") as f:
        json.dump(history, f, indent=2)
    os.replace(tmp_metrics, join(out, "metrics.json"))
    return TrainResult(run_dir, best_dir, history, best_metrics)
