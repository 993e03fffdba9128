"""Statistics, exact stratified splits, embeddings and resampling into the run directory.

python -m jobs.prepare --config jobs/configs/trec50.yaml [--set split.seed=1] [--address ...]
raybalance prepare jobs/configs/trec50.yaml
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from engine.prepare import prepare
from jobs.common import (
    add_spec_args,
    check_before_ray,
    console,
    init_ray,
    prog,
    run_main,
    spec_from_args,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("prepare", "jobs.prepare"), description=__doc__.split("\n")[0]
    )
    add_spec_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace another run's artifacts")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    spec = spec_from_args(args)
    check_before_ray(spec)
    init_ray(args.address)
    result = prepare(spec, overwrite=args.overwrite)
    stats, splits = result.stats, result.splits.counts
    table = Table(
        title=f"{spec.name}: {stats.rows} rows, {len(stats.counts)} classes, "
        f"imbalance ratio {stats.imbalance_ratio:.3g}"
    )
    resampled = result.resampled
    columns = ["class", "rows", "train", "val", "test"]
    if resampled is not None:
        columns.append(f"train after {resampled.method}")
    for col in columns:
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=col == "class")
    order = sorted(range(len(stats.counts)), key=lambda i: -stats.counts[i])
    for i in order:
        key = stats.label_map.keys[i]
        row = [key, str(stats.counts[i]), *(str(splits[s][key]) for s in splits)]
        if resampled is not None:
            row.append(str(resampled.after[key]))
        table.add_row(*row)
    console.print(table)
    for name, path in result.artifacts.items():
        console.print(f"{name:>10}: {path}")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
