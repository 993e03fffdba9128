"""The one-command pipeline: prepare → baseline → tune → ensemble + thresholds → report.

python -m jobs.pipeline --config jobs/configs/demo.yaml [--set KEY=VALUE]... [--overwrite]
raybalance run jobs/configs/demo.yaml

Each stage whose complete artifact exists (made from the same spec) is skipped, so rerunning
the same command after a crash continues where it stopped. Prints the summary table (plain CE
baseline vs best tuned model vs ensemble + thresholds, on test) and where the report is.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.table import Table

from engine.pipeline import run_pipeline
from engine.report import summary_rows
from jobs.common import (
    add_spec_args,
    check_before_ray,
    console,
    err,
    prog,
    run_main,
    spec_from_args,
)
from jobs.tune import init_ray_for_tune


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("run", "jobs.pipeline"), description=__doc__.split("\n")[0]
    )
    add_spec_args(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo stages whose artifacts were made with another spec (else the run stops)",
    )
    return p


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def summary_table(metrics: dict, title: str) -> Table:
    view = Table(title=title)
    for col in ("model", "macro-F1", "balanced acc", "tail recall"):
        view.add_column(col, justify="left" if col == "model" else "right")
    for row in summary_rows(metrics):
        name = metrics["test"][row["model"]].get("title") or row["model"]
        view.add_row(
            name, _fmt(row["macro_f1"]), _fmt(row["balanced_accuracy"]), _fmt(row["tail_recall"])
        )
    return view


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    spec = spec_from_args(args)
    check_before_ray(spec)
    init_ray_for_tune(args.address)
    started: dict[str, float] = {}

    def on_stage(stage: str, event: str) -> None:
        if event == "start":
            started[stage] = time.perf_counter()
            err.print(f"[bold]▶ {stage}[/]", markup=True)
        elif event == "skip":
            err.print(f"  {stage}: complete artifact found, skipped")
        else:
            err.print(f"  {stage}: done in {time.perf_counter() - started[stage]:.0f} s")

    t0 = time.perf_counter()
    result = run_pipeline(spec, overwrite=args.overwrite, on_stage=on_stage)
    m = result.metrics
    console.print(
        summary_table(
            m,
            f"{spec.name}: test split ({m['test']['ensemble']['rows']} rows), "
            f"tail = {len(m['tail'])} class(es) with the fewest training rows",
        )
    )
    ens = m.get("ensemble", {})
    members = ", ".join(_member(x) for x in ens.get("members", []))
    comb = ens.get("combiner") or {}
    how = (
        f"stacked (out of fold {comb['oof_stack']:.3f} vs the mean's {comb['oof_mean']:.3f})"
        if comb.get("kind") == "stack"
        else f"temperature {ens.get('temperature', 1.0):.2f}"
    )
    console.print(f"  ensemble: {members}; {how}")
    for note in m.get("notes", []):
        console.print(f"[yellow]  note:[/] {note}", markup=True)
    console.print(f"    report: {result.report}")
    console.print(
        f"  artifact: {result.run_dir}/ensemble (raybalance predict ARTIFACT DATA --out OUT)"
    )
    console.print(f"      time: {time.perf_counter() - t0:.0f} s")


def _member(m: dict) -> str:
    """``m1 linear (+0.031 val)``: a member, its kind and what the ensemble loses without it
    (on val, or out of fold when cross-fitted)."""
    added = m.get("contribution") or {}
    split = "oof" if "oof" in added else "val"
    v = added.get(split)
    return f"{m['name']} {m['kind']}" + (f" ({v:+.3f} {split})" if v is not None else "")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
