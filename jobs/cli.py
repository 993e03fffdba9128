"""The ``raybalance`` command: one subcommand per job.

raybalance stats DATA --label COL
raybalance prepare [CONFIG] [--set KEY=VALUE]... [--address ADDR]
raybalance tune [CONFIG] [--set KEY=VALUE]... [--address ADDR] [--overwrite]
raybalance run [CONFIG] [--set KEY=VALUE]... [--address ADDR] [--overwrite]
raybalance predict ARTIFACT DATA --out OUT [--keep COL]... [--overwrite]
raybalance sign ARTIFACT
raybalance datasets make NAME --out DIR
"""

from __future__ import annotations

import importlib
import sys

from engine import __version__
from jobs.common import VIA_CLI, run_main

COMMANDS = {
    "stats": ("jobs.stats", "class statistics of a dataset"),
    "prepare": ("jobs.prepare", "statistics + exact stratified splits into the run directory"),
    "train": ("jobs.train", "fine-tune on Ray Train (prepare first when needed)"),
    "tune": ("jobs.tune", "search the imbalance knobs with Ray Tune (resumes when interrupted)"),
    "run": ("jobs.pipeline", "the whole pipeline: prepare, baseline, tune, ensemble, report"),
    "predict": ("jobs.predict", "predict a dataset with an ensemble artifact (Ray Data)"),
    "sign": ("jobs.sign", "sign an artifact with the key in $RAYBALANCE_ARTIFACT_KEY_FILE"),
    "datasets": ("jobs.datasets", "write a real imbalanced dataset as Parquet"),
}


def usage() -> str:
    lines = [f"raybalance {__version__}", "", "usage: raybalance COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "raybalance COMMAND --help shows a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"raybalance: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    VIA_CLI["on"] = True
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
