"""What every job shares: the spec arguments, connecting to Ray, and printing results."""

from __future__ import annotations

import argparse
import logging
import os

from rich.console import Console

from engine.config import JobSpec, SpecError, load_spec

# Output that goes to a file or a job log is not cut to 80 columns.
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console = Console(highlight=False, soft_wrap=True, width=200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use (default: $RAY_ADDRESS, else an embedded local Ray)",
    )


def add_spec_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG (positional or --config, optional) and repeatable --set KEY=VALUE."""
    parser.add_argument("config", nargs="?", default=None, help="job YAML (optional)")
    parser.add_argument("--config", dest="config_opt", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, the value parsed as YAML (e.g. --set split.seed=3)",
    )
    add_address(parser)


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    if args.config and args.config_opt and args.config != args.config_opt:
        raise SpecError("", f"two configs given: {args.config} and --config {args.config_opt}")
    return load_spec(args.config or args.config_opt, args.overrides)


def check_before_ray(spec: JobSpec, *, reads_data: bool = True) -> None:
    """The checks that need no cluster, before Ray starts: the spec's cross-section rules and,
    when the command reads the input (``reads_data``: prepare, run, or train/tune without
    prepared splits), that ``data.path`` holds data files."""
    from engine.data import resolve_source
    from engine.prepare import check_prepare_spec
    from engine.rundir import RunDir

    if reads_data or RunDir(spec.run_dir).split_manifest() is None:
        check_prepare_spec(spec)
        resolve_source(spec.data.path, spec.data.format)


def init_ray(address: str | None) -> None:
    """Connect to ``address`` / $RAY_ADDRESS, or start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        where = f"connected to the Ray cluster at {address}"
    else:
        ray.init(logging_level=logging.WARNING, include_dashboard=False)
        where = "started an embedded local Ray"
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cpus = ray.cluster_resources().get("CPU", 0)
    err.print(f"raybalance: {where} ({nodes} node(s), {cpus:g} CPUs)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("raybalance").setLevel(logging.INFO)


def run_main(fn, argv: list[str] | None) -> int:
    """Run a job's main; user errors print one clear line and exit 2 (with the traceback too
    when ``RAYBALANCE_TRACEBACK=1``)."""
    import os

    from engine.session import TrainingFailed

    setup_logging()
    try:
        fn(argv)
    except (SpecError, ValueError, TypeError, FileNotFoundError, ImportError, TrainingFailed) as e:
        if os.environ.get("RAYBALANCE_TRACEBACK") == "1":
            err.print_exception()
        err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
        return 2
    return 0
