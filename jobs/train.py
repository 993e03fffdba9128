"""Fine-tune a classifier on Ray Train (runs `prepare` first when the run has no splits).

python -m jobs.train --config jobs/configs/digits_lt100.yaml [--set loss.name=focal]
raybalance train jobs/configs/trec50.yaml --set train.num_workers=2
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from engine import rundir
from engine.io import join
from engine.prepare import prepare
from engine.rundir import RunDir
from engine.train import train_model
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
        prog=prog("train", "jobs.train"), description=__doc__.split("\n")[0]
    )
    add_spec_args(p)
    p.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    spec = spec_from_args(args)
    check_before_ray(spec, reads_data=False)
    init_ray(args.address)
    if RunDir(spec.run_dir).split_manifest() is None:
        console.print(f"no complete splits in {spec.run_dir}: running prepare first")
        prepare(spec)
    result = train_model(spec, overwrite=args.overwrite)
    table = Table(
        title=f"{spec.name}: {spec.model.kind} / loss {spec.loss.name} / "
        f"sampler {spec.sampler.kind}"
    )
    for col in ("epoch", "train_loss", "val_macro_f1", "val_balanced_accuracy", "samples/s"):
        table.add_column(col, justify="right")
    for row in result.metrics:
        table.add_row(
            str(row["epoch"] + 1),
            f"{row['train_loss']:.4f}",
            f"{row['val_macro_f1']:.4f}",
            f"{row['val_balanced_accuracy']:.4f}",
            f"{row['samples_per_s']:.0f}",
        )
    console.print(table)
    console.print(
        f"      best: {result.best_dir} ({spec.train.metric} {result.best[spec.train.metric]:.4f})"
    )
    console.print(f"   metrics: {join(RunDir(result.run_dir).train, rundir.METRICS)}")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
