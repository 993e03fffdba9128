"""The demo pipeline's wall time per stage: `raybalance run jobs/configs/demo.yaml` (only the
data keys changed) on a text set and on a feature set, with the test macro-F1 it reaches.

    python benchmarks/bench_pipeline.py --set trec50 --results benchmarks/RESULTS.md
    python benchmarks/bench_pipeline.py --set digits_lt100 --code /other/checkout --label before

``--set`` trec50 runs the demo as it ships; digits_lt100 (64 pixel features) runs it with
``data.features=[features] data.text=null model.kind=mlp``, as the demo's header says for
numeric features. Each run is a fresh process with its own embedded Ray (start-up included),
the data made first by `raybalance datasets make` (not timed). Stage seconds are the lines the
command prints (`<stage>: done in N s`); total is the command's wall time; test macro-F1 is the
ensemble's on the test split (``RUN_DIR/report/metrics.json``). `--code` runs another checkout
of the engine with this machine's packages, for before/after rows in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import machine, ray_version, section_rows, update_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Demo pipeline per stage (bench_pipeline.py)"
INTRO = (
    f"{SECTION}\n\n"
    "`raybalance run jobs/configs/demo.yaml` with only the data keys changed, one fresh process "
    "per row (Ray's start included in total). Stage seconds as the command prints them. See "
    "`benchmarks/bench_pipeline.py`.\n"
)
STAGES = ("prepare", "baseline", "tune", "ensemble", "report")
SETS = {
    "trec50": (),
    "digits_lt100": ("data.features=[features]", "data.text=null", "model.kind=mlp"),
}


def run_demo(code: Path, data: Path, run: Path, overrides: tuple[str, ...]) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = str(code)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.cli", "run", "jobs/configs/demo.yaml"]
    for s in (f"data.path={data}", f"run_dir={run}", *overrides):
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.perf_counter() - t0, proc.stdout + proc.stderr


def stage_seconds(log: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"(\w+): done in (\d+) s", log)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="dataset", choices=sorted(SETS), default="trec50")
    p.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--results", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        data = work / args.dataset
        subprocess.run(
            [sys.executable, "-m", "jobs.cli", "datasets", "make", args.dataset, "--out", data],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        load = os.getloadavg()[0]
        wall, log = run_demo(args.code.resolve(), data, work / "run", SETS[args.dataset])
        metrics = json.loads((work / "run" / "report" / "metrics.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    secs = stage_seconds(log)
    f1 = metrics["test"]["ensemble"]["macro_f1"]
    cells = " | ".join(f"{secs[s]:.0f}" if s in secs else "—" for s in STAGES)
    row = f"| {args.label} | {cells} | {wall:.0f} | {f1:.4f} | {load:.2f} |"
    print(row)
    if args.results:
        heading = f"### {args.dataset}"
        old = args.results.read_text() if args.results.exists() else ""
        kept = section_rows(old, SECTION, heading)
        body = "\n".join(
            [
                f"- Machine: {machine({'ray': ray_version()})}",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                "- Command: `python benchmarks/bench_pipeline.py --set "
                f"{args.dataset} [--code DIR --label L] --results benchmarks/RESULTS.md`",
                "",
                "| code | prepare s | baseline s | tune s | ensemble s | report s | total s | "
                "test macro-F1 (ensemble) | load (1 min) |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
                *[r for r in kept if r.split("|")[1].strip() != args.label],
                row,
            ]
        )
        update_section(args.results, SECTION, INTRO, heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
