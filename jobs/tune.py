"""Search the imbalance knobs with Ray Tune (runs `prepare` first when the run has no splits).

python -m jobs.tune --config jobs/configs/digits_lt100.yaml [--set tune.num_samples=16]
raybalance tune jobs/configs/digits_lt100.yaml --set tune.scheduler=tpe

Rerunning the same command after an interruption resumes the search.
"""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from engine.logs import ray_init_options
from engine.prepare import prepare
from engine.rundir import RunDir
from engine.tune import METRICS, search
from jobs.common import (
    ROUTE,
    add_spec_args,
    check_before_ray,
    console,
    init_ray,
    prog,
    ray_started,
    run_main,
    spec_from_args,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("tune", "jobs.tune"), description=__doc__.split("\n")[0])
    add_spec_args(p)
    p.add_argument("--overwrite", action="store_true", help="search again over a finished search")
    return p


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray_for_tune(address: str | None) -> None:
    """As ``init_ray``; an embedded Ray keeps its dashboard (on 127.0.0.1) and tells its
    workers its own address.

    Ray Train V2 removes a trainer's placement group from a detached ``PlacementGroupCleaner``
    that watches the trainer through the state API (the dashboard). Tune ends trials — early
    stops included — by killing them, so that cleaner is what frees their CPUs. It finds the
    cluster by ``RAY_ADDRESS`` or by scanning the machine's processes, which fails when
    another Ray runs on the machine; without it the next trials wait for CPUs forever.
    """
    import os

    import ray

    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):
        init_ray(address)
        return
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read when the embedded Ray starts
    gcs = f"{ray.util.get_node_ip_address()}:{port}"
    ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": {"RAY_ADDRESS": gcs}},
        **ray_init_options(ROUTE["route"]),
    )
    ray_started("started an embedded local Ray")


def _fmt(v) -> str:
    if v is None or v != v:  # None or NaN
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    spec = spec_from_args(args)
    check_before_ray(spec, reads_data=False)
    init_ray_for_tune(args.address)
    if RunDir(spec.run_dir).split_manifest() is None:
        console.print(f"no complete splits in {spec.run_dir}: running prepare first")
        prepare(spec)
    result = search(spec, overwrite=args.overwrite)
    table = result.table
    metric = spec.tune.metric
    knobs = [c for c in table.columns if "." in c]
    view = Table(
        title=f"{spec.name}: {len(table)} trial(s), scheduler {spec.tune.scheduler}, "
        f"ranked by {metric}"
    )
    columns = ["trial_id", "status", *knobs, metric, "epochs"]
    columns += [m for m in METRICS if m != metric and m != "val_loss"]
    for col in columns:
        view.add_column(col.removeprefix("val_"), justify="left" if col == "trial_id" else "right")
    for _, row in table.iterrows():
        view.add_row(*(_fmt(row[c]) for c in columns))
    console.print(view)
    for _, row in table[table["status"] == "error"].iterrows():
        console.print(f"[red]{row['trial_id']} failed:[/] {row['error']}", markup=True)
    if result.best is not None:
        console.print(f"      best: {result.best['best_dir']} ({metric} {result.best[metric]:.4f})")
    if result.summary.get("note"):
        console.print(f"      note: {result.summary['note']}")
    console.print(f"   results: {result.results_path}")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
