"""Write a real public imbalanced dataset (shipped inside an installed package) as Parquet.

raybalance datasets make trec50 --out data/trec50
raybalance datasets list
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from engine.datasets import list_datasets, make_dataset
from jobs.common import add_address, console, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raybalance datasets", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make", help="write one dataset as DIR/data.parquet")
    make.add_argument("name", help="dataset name (see `raybalance datasets list`)")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="seed of subsampled sets")
    add_address(make)
    listing = sub.add_parser("list", help="the datasets that can be made")
    add_address(listing)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.action == "list":
        table = Table(title="datasets")
        table.add_column("name")
        table.add_column("description")
        for name, desc in list_datasets():
            table.add_row(name, desc)
        console.print(table)
        return
    info = make_dataset(args.name, args.out, seed=args.seed)
    inputs = f"text={info.text!r}" if info.text else f"features={info.features!r}"
    console.print(
        f"{info.name}: {info.rows} rows, {info.num_classes} classes, imbalance ratio "
        f"{info.imbalance_ratio:.4g}; label={info.label!r}, {inputs}\n    data: {info.path}"
    )


if __name__ == "__main__":
    sys.exit(run_main(main, None))
