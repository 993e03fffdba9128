"""Class statistics of a dataset, printed as a table (and written with --out).

raybalance stats data/trec50 --label label [--out runs/trec50-stats]
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from engine import rundir
from engine.config import DataSpec, StatsSpec
from engine.data import resolve_source
from engine.io import join, write_json_atomic
from engine.stats import compute_stats, plot_class_distribution
from jobs.common import add_address, console, init_ray, prog, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("stats", "jobs.stats"), description=__doc__.split("\n")[0]
    )
    p.add_argument("data", help="file, folder, glob or URI of Parquet / CSV / JSONL")
    p.add_argument("--label", required=True, help="the label column")
    p.add_argument("--text", default=None, help="a text column to check for nulls")
    p.add_argument("--features", nargs="+", default=None, help="feature columns to check")
    p.add_argument("--format", default="auto", choices=["auto", "parquet", "csv", "jsonl"])
    p.add_argument("--beta", type=float, default=0.999, help="beta of effective_number weights")
    p.add_argument("--drop-null-labels", action="store_true", help="count and skip null labels")
    p.add_argument("--out", default=None, help="folder for stats.json and the plot")
    add_address(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    features = args.features[0] if args.features and len(args.features) == 1 else args.features
    data = DataSpec(
        path=args.data,
        format=args.format,
        label=args.label,
        text=args.text,
        features=features,
        drop_null_labels=args.drop_null_labels,
    )
    source = resolve_source(data.path, data.format)
    init_ray(args.address)
    result = compute_stats(source, data, StatsSpec(beta=args.beta))
    stats = result.stats
    schemes = list(stats.weights)
    table = Table(
        title=f"{source.path}: {stats.rows} rows, {len(stats.counts)} classes, "
        f"imbalance ratio {stats.imbalance_ratio:.4g}"
    )
    for col in ("class", "rows", "share", *schemes):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=col == "class")
    for i in sorted(range(len(stats.counts)), key=lambda i: -stats.counts[i]):
        weights = (f"{stats.weights[s][i]:.4g}" for s in schemes)
        share = f"{stats.counts[i] / stats.rows:.2%}"
        table.add_row(stats.label_map.keys[i], str(stats.counts[i]), share, *weights)
    console.print(table)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if args.out:
        path = write_json_atomic(join(args.out, rundir.STATS), stats.to_json(source=source.path))
        plot = plot_class_distribution({"all": stats.count_of()}, join(args.out, rundir.PLOT))
        console.print(f"     stats: {path}\n      plot: {plot}")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
