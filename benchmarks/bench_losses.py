"""Quality of the long-tail losses, with and without balanced batches, on real data.

    .venv/bin/python benchmarks/bench_losses.py --dataset digits_lt100 --seeds 0 1 \
        --results benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_losses.py --dataset trec50 --epochs 1 --max-length 24 \
        --results benchmarks/RESULTS.md

For every loss of ``engine.losses.LOSSES`` (ldam with deferred re-weighting) and for the sampler
off / balanced (p_c ∝ n_c^0.5 — halfway between natural and uniform), it trains with
``engine.train.fit`` on the same prepared splits (same split seed, same training seeds), scores
the exported best-on-val model on the test split, and reports test macro-F1, balanced accuracy
and tail-class recall (the third of the classes with the fewest training rows), averaged over
``--seeds``. ``digits_lt100``: an MLP head on the 64 pixel features; ``trec50``: the offline
all-MiniLM-L6-v2 fine-tuned end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOSS_ARGS = {
    "ce": [],
    "weighted_ce": ["loss.weights=inverse"],
    "focal": ["loss.gamma=2.0", "loss.weights=inverse_sqrt"],
    "class_balanced": ["loss.beta=0.999"],
    "logit_adjusted": ["loss.tau=1.0"],
    "balanced_softmax": [],
    "ldam": [],
}
SAMPLERS = {
    "none": ["sampler.kind=none"],
    "balanced": ["sampler.kind=balanced", "sampler.power=0.5"],
}

DATASETS = {
    "digits_lt100": [
        "model.kind=mlp",
        "model.hidden=[128]",
        "data.features=features",
        "data.text=null",
        "train.lr=0.003",
        "train.batch_size=32",
        "split.val=0.15",
        "split.test=0.25",
    ],
    "trec50": [
        "model.kind=transformer",
        "model.path=minilm",
        "data.text=text",
        "train.lr=0.0002",
        "train.batch_size=32",
        "split.val=0.1",
        "split.test=0.2",
    ],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None, help="default: 40 (mlp), 2 (trec50)")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--losses", nargs="+", default=list(LOSS_ARGS))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--workdir", default=None)
    p.add_argument("--results", default=None)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from engine.config import load_spec
    from engine.datasets import make_dataset
    from engine.evaluate import evaluate_split
    from engine.prepare import prepare
    from engine.train import fit

    epochs = args.epochs or (40 if args.dataset == "digits_lt100" else 2)
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"rbq-{args.dataset}-"))
    info = make_dataset(args.dataset, str(work / "data"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    base = [
        f"data.path={info.path}",
        "data.label=label",
        f"train.epochs={epochs}",
        f"model.max_length={args.max_length}",
        "train.num_workers=1",
        *DATASETS[args.dataset],
    ]
    prepared = work / "prepared"
    prepare(load_spec(None, base + [f"run_dir={prepared}", "name=q"]))
    rows = []
    t_all = time.time()
    for loss in args.losses:
        for sampler in args.samplers:
            scores = []
            for seed in args.seeds:
                run = work / f"{loss}-{sampler}-{seed}"
                shutil.copytree(prepared, run)
                extra = [f"loss.name={loss}", *LOSS_ARGS[loss], *SAMPLERS[sampler]]
                spec = load_spec(
                    None, base + extra + [f"run_dir={run}", "name=q", f"train.seed={seed}"]
                )
                t0 = time.time()
                result = fit(spec)
                m = evaluate_split(spec, result.best_dir, "test")
                scores.append(
                    (m["macro_f1"], m["balanced_accuracy"], m["tail_recall"], time.time() - t0)
                )
                print(
                    f"{loss:>16} {sampler:>8} seed {seed}: test macro-F1 {m['macro_f1']:.4f} "
                    f"bal-acc {m['balanced_accuracy']:.4f} tail recall {m['tail_recall']:.4f} "
                    f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
                shutil.rmtree(run / "train" / "ray", ignore_errors=True)
            s = np.array(scores)
            rows.append(
                (loss, sampler, *s[:, :3].mean(axis=0), s[:, :3].std(axis=0)[0], s[:, 3].mean())
            )
    table = [
        "| loss | sampler | test macro-F1 | ± (seeds) | balanced acc. | tail recall | s/run |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for loss, sampler, f1, bacc, tail, sd, secs in rows:
        table.append(
            f"| {loss} | {sampler} | {f1:.4f} | {sd:.4f} | {bacc:.4f} | {tail:.4f} | {secs:.0f} |"
        )
    train_counts = json.loads((prepared / "splits" / "_manifest.json").read_text())["counts"]
    header = [
        f"### {args.dataset}",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"Python {platform.python_version()}; run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{time.time() - t_all:.0f} s in all",
        f"- Command: `python benchmarks/bench_losses.py {' '.join(sys.argv[1:])}`",
        f"- Data: {info.rows} rows, {info.num_classes} classes, imbalance ratio "
        f"{info.imbalance_ratio:.3g}; splits train/val/test "
        f"{sum(train_counts['train'].values())}/{sum(train_counts['val'].values())}/"
        f"{sum(train_counts['test'].values())} (split seed 0); epochs {epochs}; training seeds "
        f"{args.seeds}; 1 worker; best-on-val checkpoint (val macro-F1) scored on test",
        "",
        *table,
        "",
    ]
    text = "\n".join(header)
    print(text)
    if args.results:
        write_section(Path(args.results), args.dataset, text)
    return 0


def write_section(path: Path, dataset: str, text: str) -> None:
    """Put ``text`` under '## Quality by loss and sampler (bench_losses.py)' / '### dataset'."""
    head = "## Quality by loss and sampler (bench_losses.py)"
    intro = (
        "Test-set quality of each loss with the sampler off and balanced (p_c ∝ n_c^0.5), "
        "same splits and seeds. Tail recall: mean recall over the third of the classes with "
        "the fewest training rows."
    )
    from bench_quality import replace_section  # the same section/subsection splice

    old = path.read_text() if path.exists() else "# Benchmark results\n"
    new = replace_section(old, head, intro, dataset, text)
    from engine.io import write_bytes_atomic

    write_bytes_atomic(path, new.encode())


if __name__ == "__main__":
    sys.exit(main())
