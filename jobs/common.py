"""What every job shares: the spec arguments, connecting to Ray, and printing results."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console
from rich.markup import escape

from engine.config import JobSpec, SpecError, load_spec
from engine.logs import (
    LogRoute,
    after_ray_init,
    capture_stderr,
    keep_logs,
    ray_init_options,
    route_logs,
    unroute,
)
from engine.progress import PROGRESS_LOGGER, ProgressHandler
from engine.rundir import RunDir

# Output that goes to a file or a job log is not cut to 80 columns.
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console = Console(highlight=False, soft_wrap=True, width=200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# where this command's log file is kept when it succeeds (``spec_from_args`` or the job sets it)
LOG_HOME: dict[str, str | None] = {"dir": None}
ROUTE: dict[str, LogRoute | None] = {"route": None}  # this command's, set by setup_logging
VIA_CLI = {"on": False}  # set by ``raybalance``: usage lines say "raybalance CMD"


def prog(command: str, module: str) -> str:
    """The program name in usage lines: ``raybalance CMD`` or ``python -m jobs.X``."""
    return f"raybalance {command}" if VIA_CLI["on"] else f"python -m {module}"


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use (default: $RAY_ADDRESS, else an embedded local Ray)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's, its workers' and the libraries' logs (always in RUN_DIR/logs/)",
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
    spec = load_spec(args.config or args.config_opt, args.overrides)
    LOG_HOME["dir"] = spec.run_dir
    return spec


def check_before_ray(spec: JobSpec, *, reads_data: bool = True) -> None:
    """The checks that need no cluster, before Ray starts: the spec's cross-section rules and,
    when the command reads the input (``reads_data``: prepare, run, or train/tune without
    prepared splits), the input's files, columns, label type and rows (``check_input``)."""
    from engine.prepare import check_input

    if reads_data or RunDir(spec.run_dir).split_manifest() is None:
        check_input(spec)


def init_ray(address: str | None) -> None:
    """Connect to ``address`` / $RAY_ADDRESS, or start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = ray_init_options(ROUTE["route"])
    if address:
        ray.init(address=address, **options)
        where = f"connected to the Ray cluster at {address}"
    else:
        ray.init(include_dashboard=False, **options)
        where = "started an embedded local Ray"
    ray_started(where)


def ray_started(where: str) -> None:
    """Re-route the loggers Ray just set up; one line on where the work runs."""
    import ray

    if ROUTE["route"] is not None:
        after_ray_init(ROUTE["route"])
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cpus = ray.cluster_resources().get("CPU", 0)
    err.print(f"raybalance: {where} ({nodes} node(s), {cpus:g} CPUs)")


def setup_logging(verbose: bool) -> LogRoute:
    """Logs to a file (``engine.logs``); on the terminal our warnings and the progress."""
    route = route_logs(verbose)
    if not verbose:
        err.file = capture_stderr(route) or err.file  # fd 2 -> the log; ours to the terminal
    ours = logging.getLogger("raybalance")
    ours.setLevel(logging.INFO)
    for h in [h for h in ours.handlers if isinstance(h, _OurConsole)]:
        ours.removeHandler(h)
    ours.addHandler(_OurConsole(logging.INFO if verbose else logging.WARNING))
    shown = logging.getLogger(PROGRESS_LOGGER)
    for h in [h for h in shown.handlers if isinstance(h, ProgressHandler)]:
        shown.removeHandler(h)
    shown.addHandler(ProgressHandler(err))
    ROUTE["route"] = route
    return route


class _OurConsole(logging.Handler):
    """The ``raybalance`` logger on the terminal: ``warning: …`` (progress events excluded)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "progress", None) is not None:
            return
        tag = {logging.WARNING: "[yellow]warning:[/] ", logging.ERROR: "[red]error:[/] "}
        err.print(tag.get(record.levelno, "  ") + escape(record.getMessage()), markup=True)


def run_main(fn, argv: list[str] | None) -> int:
    """Run a job's main; user errors print one clear line and exit 2 (with the traceback too
    when ``RAYBALANCE_TRACEBACK=1``). Logs go to a file, kept in ``RUN_DIR/logs/`` when the
    command succeeds; a failed command names where its log is."""
    from engine.session import TrainingFailed

    args = list(sys.argv[1:] if argv is None else argv)
    route = setup_logging("--verbose" in args)
    try:
        fn(argv)
    except (SpecError, ValueError, TypeError, FileNotFoundError, ImportError, TrainingFailed) as e:
        if os.environ.get("RAYBALANCE_TRACEBACK") == "1":
            err.print_exception()
        err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, soft_wrap=True)
        _ended(route)
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            err.print(f"  log: {route.path}")
        return 2
    except BaseException:
        _ended(route)  # standard error is the terminal again: the traceback shows there
        err.print(f"  log: {route.path}")
        raise
    _ended(route)
    home = LOG_HOME["dir"]
    keep_logs(route, RunDir(home).logs if home else None, _command(fn))
    return 0


def _command(fn) -> str:
    """The job's name for its log file: ``pipeline`` for ``jobs.pipeline``, also when it runs
    as ``python -m jobs.pipeline`` (its module is then ``__main__``)."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = getattr(spec, "name", None) or module
    return module.rpartition(".")[2]


def _ended(route: LogRoute) -> None:
    logging.getLogger(PROGRESS_LOGGER).handlers.clear()
    unroute(route)
    err.file = None  # rich: back to whatever sys.stderr is
