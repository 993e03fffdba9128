"""The GPU path, checked in one short run (``benchmarks/gpu_smoke.sh`` on a GPU machine).

    python benchmarks/gpu_smoke.py --out OUT.json                 # on a GPU (the default)
    python benchmarks/gpu_smoke.py --device cpu --quick --out X   # its non-CUDA parts (a test)

1. every loss, forward and backward under bf16 autocast, finite;
2. ``fit(use_gpu=True)`` of an MLP head and a MiniLM-sized transformer on real TREC-50, against
   a plain PyTorch loop over the same model and batches on the same device: samples/s of both
   and, for the transformer, the model FLOPs utilization (6 · parameters · tokens per sample);
3. the scoring pool (Ray Data actors) on the device, equal to the model's own forward;
4. a stopped trial's export (a checkpoint's ``model/`` made whole by
   ``engine.train.complete_model_folder``) scores the same as the fitted model.
Each check prints one line and lands in the JSON written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def check_losses(device: torch.device) -> dict:
    from engine.config import LOSS_NAMES
    from engine.losses import build_loss

    counts = [900, 90, 9]
    rng = torch.Generator().manual_seed(0)
    out = {}
    for name in LOSS_NAMES:
        loss_fn = build_loss(name, counts, weights=[1.0, 3.0, 10.0], epochs=4).to(device)
        loss_fn.set_epoch(3)
        logits = torch.randn(64, 3, generator=rng).to(device).requires_grad_()
        y = torch.randint(0, 3, (64,), generator=rng).to(device)
        amp = device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            value = loss_fn((logits @ torch.eye(3, device=device)).float(), y)
        value.backward()
        ok = bool(torch.isfinite(value)) and bool(torch.isfinite(logits.grad).all())
        out[name] = {"loss": float(value), "finite": ok}
    assert all(v["finite"] for v in out.values()), out
    return out


def _spec(data: Path, run: Path, device: torch.device, quick: bool, *extra: str):
    from engine.config import load_spec

    sets = [
        f"data.path={data}",
        f"run_dir={run}",
        "data.label=label",
        "data.text=text",
        "split.val=0.15",
        "split.test=0.2",
        f"train.use_gpu={str(device.type == 'cuda').lower()}",
        "train.num_workers=1",
        f"train.epochs={1 if quick else 2}",
        "embed.model=tiny" if quick else "embed.model=minilm",
        *extra,
    ]
    return load_spec(None, sets)


def plain_loop(model, batches: list[dict], device: torch.device, steps: int) -> float:
    """Samples/s of a bare AdamW loop (bf16 autocast on CUDA) over ``batches``."""
    from engine.models import logits_of

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
    seen, t0 = 0, None
    for i in range(steps + 3):
        if i == 3:  # warm up first
            _sync(device)
            t0, seen = time.perf_counter(), 0
        b = moved[i % len(moved)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = logits_of(model, b)
        loss = loss_fn(logits.float(), b["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(b["label"])
    _sync(device)
    return seen / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _token_batches(spec, texts: list[str], labels: np.ndarray, size: int) -> list[dict]:
    from engine.models import load_tokenizer

    tok = load_tokenizer(spec.model)
    out = []
    for s in range(0, min(len(texts), size * 8), size):
        enc = tok(texts[s : s + size], truncation=True, max_length=spec.model.max_length,
                  padding="max_length", return_tensors="pt")  # fmt: skip
        out.append({**dict(enc), "label": torch.as_tensor(labels[s : s + size])})
    return out


def check_fit(kind: str, data: Path, tmp: Path, device: torch.device, quick: bool) -> dict:
    """``fit`` of one model kind on the device, and the plain loop on the same model."""
    import pyarrow.parquet as pq

    from engine.models import build_model, load_model
    from engine.prepare import prepare
    from engine.train import fit

    extra = ["model.kind=mlp", "model.hidden=[256]", "train.batch_size=256", "train.lr=0.003"]
    if kind == "transformer":
        path = "tiny" if quick else "minilm"
        extra = ["model.kind=transformer", f"model.path={path}", "model.max_length=64",
                 "train.batch_size=64", "train.lr=5e-5"]  # fmt: skip
    spec = _spec(data, tmp / kind, device, quick, *extra)
    prepare(spec)
    t0 = time.perf_counter()
    result = fit(spec)
    seconds = time.perf_counter() - t0
    engine_sps = float(np.median([r["samples_per_s"] for r in result.metrics]))
    model, label_map = load_model(result.best_dir)
    row = {"fit_s": round(seconds, 1), "engine_samples_per_s": round(engine_sps, 1),
           "val_macro_f1": result.best["val_macro_f1"], "best_dir": result.best_dir}  # fmt: skip
    if kind == "transformer":
        table = pq.read_table(Path(spec.run_dir) / "splits" / "train")
        labels = label_map.encode(table.column("label"))
        batches = _token_batches(spec, table.column("text").to_pylist(), labels, 64)
        fresh = build_model(spec.model, label_map)
        plain = plain_loop(fresh, batches, device, steps=20 if quick else 200)
        params = sum(p.numel() for p in fresh.parameters())
        flops = 6 * params * spec.model.max_length
        peak = next((v for k, v in PEAK_BF16.items() if k in _device_name(device)), None)
        row.update(plain_samples_per_s=round(plain, 1), params=params,
                   engine_vs_plain=round(engine_sps / plain, 3))  # fmt: skip
        if peak:
            row["mfu_engine"] = round(engine_sps * flops / peak, 4)
            row["mfu_plain"] = round(plain * flops / peak, 4)
    return row


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def check_scoring_and_export(fitted: dict, data: Path, tmp: Path, device, quick: bool) -> dict:
    """The scoring pool's probabilities of the fitted transformer on test, and those of a
    stopped trial's export of it (its checkpoint's ``model/`` made whole), agree."""
    from engine.models import load_model
    from engine.scoring import model_ref, score_splits
    from engine.train import complete_model_folder

    path = "tiny" if quick else "minilm"
    spec = _spec(data, tmp / "transformer", device, quick, "model.kind=transformer",
                 f"model.path={path}", "model.max_length=64")  # fmt: skip
    best = fitted["best_dir"]
    stopped = tmp / "stopped" / "best"
    stopped.parent.mkdir(parents=True)
    shutil.copytree(best, stopped, ignore=shutil.ignore_patterns("tokenizer*", "vocab*",
                    "special_tokens*", "manifest.json"))  # fmt: skip  # as a checkpoint has it
    complete_model_folder(str(stopped), spec)
    _, label_map = load_model(best)
    refs = [
        model_ref(spec.data, name, folder, max_length=spec.model.max_length)
        for name, folder in (("fit", best), ("stopped", str(stopped)))
    ]
    test = str(Path(spec.run_dir) / "splits" / "test")
    scores = score_splits(refs, {"test": test}, spec.data, label_map)["test"]
    gap = float(np.abs(scores.proba["fit"] - scores.proba["stopped"]).max())
    assert gap < 1e-3, gap
    return {"rows": int(len(scores.y)), "max_abs_diff": gap}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny models, one epoch (the CPU test)")
    p.add_argument("--data", default=None, help="TREC-50 Parquet folder (default: made here)")
    p.add_argument("--out", required=True, help="where the JSON of every figure goes")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for the non-CUDA parts")
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    report = {"device": _device_name(device), "torch": torch.__version__, "ray": ray.__version__}
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp_name:
        tmp = Path(tmp_name)
        data = Path(args.data) if args.data else _trec50(tmp / "trec50", args.quick)
        steps = [("losses", lambda: check_losses(device))]
        for kind in ("mlp", "transformer"):
            steps.append(
                (f"fit_{kind}", lambda k=kind: check_fit(k, data, tmp, device, args.quick))
            )
        steps.append(("scoring_and_export", lambda: check_scoring_and_export(
            report["fit_transformer"], data, tmp, device, args.quick)))  # fmt: skip
        for name, step in steps:
            t0 = time.perf_counter()
            report[name] = step()
            print(f"{name}: ok in {time.perf_counter() - t0:.1f} s", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "losses"}, indent=2, default=str))
    return 0


def _trec50(folder: Path, quick: bool) -> Path:
    from engine.datasets import make_dataset

    make_dataset("trec50", str(folder))
    if quick:  # a slice keeps the CPU test short
        import pyarrow.parquet as pq

        path = next(folder.glob("*.parquet"))
        pq.write_table(pq.read_table(path).slice(0, 1200), path)
    return folder


if __name__ == "__main__":
    sys.exit(main())
