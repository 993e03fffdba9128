"""Search overhead: the wall time of a `raybalance tune` search (prepare included) and the
per-trial overhead (a trial's wall time less the time in its training steps), median over the
trials.

    python benchmarks/bench_search.py --results benchmarks/RESULTS.md
    python benchmarks/bench_search.py --code /path/to/other/checkout --label before ...
    python benchmarks/bench_search.py --kind lexical --trials 8 --results benchmarks/RESULTS.md

The search (``--kind``): ``mlp`` — digits_lt100 (made by `raybalance datasets make`), the MLP
head on its 64 features; ``lexical`` — trec50 text, the n-gram model; ``tiny`` — trec50 text,
the 2-layer random-init BERT (``model.path=tiny``, max_length 32). 2 epochs, batch 32, 1 worker
per trial, `tune.num_samples` 12, the config's search space. `--code` runs another checkout of
the engine (its folder first on PYTHONPATH) with this machine's packages, for before/after rows
on the same machine in the same session.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import machine, ray_version, section_rows, update_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Search overhead (bench_search.py)"
INTRO = (
    f"{SECTION}\n\n"
    "Wall time of `raybalance tune` on digits_lt100 (prepare included; 12 trials of 2 epochs, "
    "the MLP head, 1 worker per trial) and the per-trial overhead: a trial's wall time "
    "(Tune's `time_total_s` at its last report) less the seconds in its training steps "
    "(steps × batch / samples per second of each epoch), median over the trials. Each row is "
    "one run, in a fresh process with its own embedded Ray. See `benchmarks/bench_search.py`.\n"
)


def trial_times(run: Path, batch: int) -> tuple[list[float], list[float]]:
    walls, steps = [], []
    for path in glob.glob(str(run / "tune/ray/tune/*/result.json")):
        rows = [json.loads(line) for line in open(path) if line.strip()]
        if not rows:
            continue
        walls.append(float(rows[-1]["time_total_s"]))
        steps.append(
            sum(r["steps"] * batch / r["samples_per_s"] for r in rows if r.get("samples_per_s"))
        )
    return walls, steps


KINDS = {  # kind: (dataset, config, overrides, heading's words)
    "mlp": ("digits_lt100", "digits_lt100.yaml", (), "digits_lt100, {t} trials × {e} epochs, MLP"),
    "lexical": (
        "trec50",
        "trec50.yaml",
        ("model.kind=lexical",),
        "trec50, {t} trials × {e} epochs, lexical n-grams",
    ),
    "tiny": (
        "trec50",
        "trec50.yaml",
        ("model.path=tiny", "model.max_length=32", "train.lr=0.001"),
        "trec50, {t} trials × {e} epochs, tiny BERT",
    ),
}


def run_search(code: Path, data: Path, run: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)}
    env.pop("RAY_ADDRESS", None)
    _, config, overrides, _ = KINDS[args.kind]
    cmd = [sys.executable, "-m", "jobs.cli", "tune", f"jobs/configs/{config}"]
    for s in (
        f"data.path={data}",
        f"run_dir={run}",
        f"tune.num_samples={args.trials}",
        f"train.epochs={args.epochs}",
        "train.num_workers=1",
        "train.batch_size=32",
        *overrides,
    ):
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--kind", choices=sorted(KINDS), default="mlp")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--results", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        dataset = KINDS[args.kind][0]
        data = work / dataset
        subprocess.run(
            [sys.executable, "-m", "jobs.cli", "datasets", "make", dataset, "--out", data],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        load = os.getloadavg()[0]
        wall = run_search(args.code.resolve(), data, work / "run", args)
        walls, steps = trial_times(work / "run", batch=32)
    finally:
        keep = work / "run" / "tune" / "results.parquet"
        best = None
        if keep.exists():
            import pandas as pd

            best = float(pd.read_parquet(keep)["val_macro_f1"].max())
        shutil.rmtree(work, ignore_errors=True)
    over = [w - s for w, s in zip(walls, steps)]
    row = (
        f"| {args.label} | {wall:.1f} | {len(walls)} | {statistics.median(walls):.1f} | "
        f"{statistics.median(steps):.2f} | {statistics.median(over):.1f} | {best:.4f} | "
        f"{load:.2f} |"
    )
    print(row)
    if args.results:
        words = KINDS[args.kind][3].format(t=args.trials, e=args.epochs)
        heading = f"### {words}, 1 worker"
        old = args.results.read_text() if args.results.exists() else ""
        rows = section_rows(old, SECTION, heading)
        body = "\n".join(
            [
                f"- Machine: {machine({'ray': ray_version()})}",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                "- Command: `python benchmarks/bench_search.py [--code DIR --label L] --results "
                "benchmarks/RESULTS.md`",
                "",
                "| code | search s (prepare included) | trials | median trial wall s | "
                "median training-step s | median overhead s | best val macro-F1 | load (1 min) |",
                "|---|--:|--:|--:|--:|--:|--:|--:|",
                *[r for r in rows if r.split("|")[1].strip() != args.label],
                row,
            ]
        )
        update_section(args.results, SECTION, INTRO, heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
