"""Batch prediction with an ensemble artifact (Ray Data; written atomically).

python -m jobs.predict runs/demo/ensemble data/new.parquet --out runs/demo/predictions
raybalance predict ARTIFACT DATA --out OUT [--keep COL]... [--overwrite]

The artifact's files are checked against the sha256 hashes in its manifest before anything is
loaded; a changed file, an unlisted file or a file that is not safetensors / JSON is refused.
"""

from __future__ import annotations

import argparse
import sys

from engine.predict import check_inputs, predict
from jobs.common import add_address, console, init_ray, prog, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("predict", "jobs.predict"), description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "artifact",
        help="ensemble artifact folder (RUN_DIR/ensemble), or one trained model "
        "(RUN_DIR/train/best, RUN_DIR/tune/trials/ID/best)",
    )
    p.add_argument("data", help="Parquet / CSV / JSONL file or folder to predict")
    p.add_argument("--out", required=True, help="output folder (Parquet)")
    p.add_argument(
        "--keep",
        action="append",
        default=None,
        metavar="COL",
        help="input column to copy to the output (repeatable; default: all)",
    )
    p.add_argument("--format", default="auto", choices=["auto", "parquet", "csv", "jsonl"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_address(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    check_inputs(args.artifact, args.data, args.format)
    init_ray(args.address)
    r = predict(
        args.artifact,
        args.data,
        args.out,
        format=args.format,
        keep=args.keep,
        overwrite=args.overwrite,
    )
    top = sorted(r.predicted.items(), key=lambda kv: -kv[1])[:10]
    console.print(f"predicted {r.rows} row(s) → {r.path}")
    console.print("  most predicted: " + ", ".join(f"{k} {n}" for k, n in top))


if __name__ == "__main__":
    sys.exit(run_main(main, None))
