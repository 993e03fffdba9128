"""SMOTE speed: ``engine.smote.smote`` against imbalanced-learn's ``SMOTE`` on one minority class.

    .venv/bin/python benchmarks/bench_smote.py [--sizes 1e5,1e6] [--dims 64] [--k 5]
        [--timeout 600] [--max-rows 100k] [--run-hopeless] [--results benchmarks/RESULTS.md]

The data, per size n (``--sizes``, minority rows): a minority class of n rows and a majority
class of 2n rows, ``--dims`` float32 features drawn from N(0, 1) (majority: N(0.5, 1)), seeded.
Both sides make n synthetic rows (the minority is raised to the majority's 2n rows):

- engine: ``engine.smote.smote(X_minority, n_new=n, k, np.random.default_rng(0))`` — exact
  neighbours (no partitioning), as ``resample`` runs it for a class of up to
  ``resample.knn_max_rows`` (default 100k) rows;
- engine, ``max_rows``: the same with ``keys=splitmix64(row number)`` and
  ``max_rows=--max-rows`` (100k) — the class is cut into ceil(n / max_rows) key groups and
  neighbours are searched within a group (``resample``'s memory budget; neighbours are then
  approximate), run at sizes above ``--max-rows`` only;
- imbalanced-learn: ``SMOTE(k_neighbors=k, random_state=0).fit_resample(X, y)`` on the stacked
  majority + minority arrays (its default ``sampling_strategy='auto'`` gives n new rows).

Each run is a fresh child process (the same threads and BLAS as a plain Python process: both
sides use scikit-learn's ``NearestNeighbors``, brute force on 64 dims, on every core); the data
is generated there before the clock starts, and only the call above is timed. A child that runs
past ``--timeout`` seconds is stopped and reported as "> timeout". kNN is quadratic in n: when
the run at the previous size predicts (time x (n / n_prev)^2) more than 3 x ``--timeout``, the
run is skipped and the estimate reported instead, unless ``--run-hopeless``.

Checks (PASS/FAIL; any FAIL exits 1): the engine made exactly n rows of ``--dims`` float32
features, every synthetic row lies on its segment (``X[seed] + step * (X[neighbor] -
X[seed])``, first 1,000 rows) and, for 50 seeds, the neighbour is among the seed's k nearest
rows (of its key group with ``max_rows``) by brute force; imbalanced-learn's output has 2n rows
of each class. Goal (MET/MISSED; does not change the exit status): the engine at least as fast as
imbalanced-learn at every size. Peak memory is the child's ``ru_maxrss`` (it includes the data).

``--results FILE`` writes the machine, command, date and table into FILE under
``## SMOTE (bench_smote.py)`` / ``### <dims> dims, k=<k>``, keeping every other section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, parse_rows, update_section

SECTION = "## SMOTE (bench_smote.py)"
SEGMENT_ROWS = 1000  # synthetic rows checked to lie on their segment
KNN_SEEDS = 50  # seeds whose neighbour is checked against a brute-force kNN
HOPELESS = 3.0  # skip a run predicted to take more than this many timeouts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [parse_rows(x) for x in s.split(",") if x.strip()],
        default=[10**5, 10**6],
        help="minority rows, comma-separated (default 1e5,1e6)",
    )
    p.add_argument("--dims", type=int, default=64, help="features per row")
    p.add_argument("--k", type=int, default=5, help="k_neighbors")
    p.add_argument("--seed", type=int, default=0, help="seed of the data")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument(
        "--max-rows",
        type=parse_rows,
        default=parse_rows("100k"),
        help="the engine's partitioned run (kNN within key groups of about this many rows)",
    )
    p.add_argument("--skip-imblearn", action="store_true", help="engine runs only")
    p.add_argument(
        "--run-hopeless", action="store_true", help="run even when predicted to time out"
    )
    p.add_argument("--results", type=Path, default=None, help="Markdown file to update")
    p.add_argument("--child", choices=["engine", "engine-part", "imblearn"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dims < 1 or args.k < 1:
        p.error("--dims and --k must be >= 1")
    return args


# --------------------------------------------------------------------------------------------
# the child: one timed run


def make_data(n: int, d: int, seed: int, majority: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The minority (n, d) and, if asked, the majority (2n, d): the same minority either way."""
    rng = np.random.default_rng([seed, n, d])
    minority = rng.standard_normal((n, d), dtype=np.float32)
    if not majority:
        return minority, None
    return minority, rng.standard_normal((2 * n, d), dtype=np.float32) + np.float32(0.5)


def rss_now() -> int:
    text = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    m = re.search(r"^VmRSS:\s*(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def check_engine(out, X: np.ndarray, n_new: int, k: int, groups: np.ndarray | None) -> list:
    """(ok, text) pairs for one engine result."""
    checks = []
    checks.append(
        (
            out.X.shape == (n_new, X.shape[1]) and out.X.dtype == np.float32,
            f"engine made {out.X.shape[0]:,} x {out.X.shape[1]} {out.X.dtype} rows "
            f"(asked {n_new:,} x {X.shape[1]} float32)",
        )
    )
    m = min(SEGMENT_ROWS, len(out.X))
    s, nb, step = out.seed[:m], out.neighbor[:m], out.step[:m]
    want = X[s] + step[:, None] * (X[nb] - X[s])
    checks.append(
        (
            bool(np.allclose(out.X[:m], want, atol=1e-5)) and not out.other.any(),
            f"the first {m:,} synthetic rows lie on X[seed] + step * (X[neighbor] - X[seed])",
        )
    )
    rng = np.random.default_rng(1)
    picks = rng.choice(len(out.X), size=min(KNN_SEEDS, len(out.X)), replace=False)
    ok = True
    X64 = X.astype(np.float64)
    for i in picks:
        seed, neighbor = int(out.seed[i]), int(out.neighbor[i])
        cand = np.arange(len(X)) if groups is None else np.flatnonzero(groups == groups[seed])
        cand = cand[cand != seed]
        d2 = ((X64[cand] - X64[seed]) ** 2).sum(axis=1)
        kth = np.partition(d2, min(k, len(d2)) - 1)[min(k, len(d2)) - 1]
        mine = ((X64[neighbor] - X64[seed]) ** 2).sum()
        ok &= neighbor != seed and mine <= kth * (1 + 1e-5) + 1e-9
    where = "its key group" if groups is not None else "the class"
    checks.append(
        (bool(ok), f"for {len(picks)} seeds, the neighbour is among the {k} nearest of {where}")
    )
    return checks


def child(args: argparse.Namespace) -> None:
    n, d, k = args.n, args.dims, args.k
    minority, majority = make_data(n, d, args.seed, majority=args.child == "imblearn")
    result: dict[str, Any] = {"n": n, "kind": args.child}
    if args.child == "imblearn":
        from imblearn.over_sampling import SMOTE

        X = np.concatenate([majority, minority])
        y = np.r_[np.zeros(2 * n, dtype=np.int64), np.ones(n, dtype=np.int64)]
        del majority
        sampler = SMOTE(k_neighbors=k, random_state=0)
        result["base"] = rss_now()
        t0 = time.perf_counter()
        Xr, yr = sampler.fit_resample(X, y)
        result["seconds"] = time.perf_counter() - t0
        counts = np.bincount(yr, minlength=2).tolist()
        result["out"] = len(yr) - len(y)
        result["checks"] = [
            (counts == [2 * n, 2 * n], f"imbalanced-learn's output has {counts} rows per class")
        ]
        del Xr, yr
    else:
        from engine.hashing import splitmix64
        from engine.smote import smote

        kw: dict[str, Any] = {}
        groups = None
        if args.child == "engine-part":
            keys = splitmix64(np.arange(n, dtype=np.uint64))
            kw = {"keys": keys, "max_rows": args.max_rows}
            parts = math.ceil(n / args.max_rows)
            groups = (keys % np.uint64(parts)).astype(np.int64)
        result["base"] = rss_now()
        t0 = time.perf_counter()
        out = smote(minority, n, k, np.random.default_rng(0), **kw)
        result["seconds"] = time.perf_counter() - t0
        result["out"] = len(out.X)
        result["warnings"] = out.warnings
        result["checks"] = check_engine(out, minority, n, k, groups)
    result["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# the parent


@dataclass
class Run:
    kind: str  # engine, engine-part, imblearn
    n: int
    seconds: float | None = None
    base: int = 0
    peak: int = 0
    out: int | None = None
    status: str = "ok"  # ok, timeout, skipped, failed
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[bool, str]] = field(default_factory=list)


def run_child(args: argparse.Namespace, kind: str, n: int) -> Run:
    run = Run(kind, n)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--n", str(n)]
    cmd += ["--dims", str(args.dims), "--k", str(args.k), "--seed", str(args.seed)]
    cmd += ["--max-rows", str(args.max_rows)]
    print(f"... {label(kind, args)} on {n:,} minority rows", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        run.status = "timeout"
        run.notes.append(f"stopped after {args.timeout:.0f} s (including the data generation)")
        return run
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        run.status = "failed"
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        run.notes.append(f"exit {proc.returncode}: {tail[:300]}")
        return run
    got = json.loads(line[len("RESULT ") :])
    run.seconds, run.base, run.peak, run.out = got["seconds"], got["base"], got["peak"], got["out"]
    run.checks = [(bool(ok), text) for ok, text in got["checks"]]
    if got.get("warnings"):
        run.notes.append("warnings: " + "; ".join(got["warnings"])[:300])
    print(f"    {run.seconds:.2f} s (child {time.perf_counter() - t0:.1f} s)", flush=True)
    return run


def label(kind: str, args: argparse.Namespace) -> str:
    return {
        "engine": "engine smote (exact kNN)",
        "engine-part": f"engine smote, max_rows={args.max_rows:,} (kNN within key groups)",
        "imblearn": f"imbalanced-learn SMOTE(k_neighbors={args.k}).fit_resample",
    }[kind]


def predicted(previous: dict[str, Run], kind: str, n: int) -> float | None:
    """Seconds predicted from the largest smaller size measured (kNN is quadratic in n)."""
    prev = previous.get(kind)
    if prev is None or prev.seconds is None:
        return None
    return prev.seconds * (n / prev.n) ** 2


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}" if n else "n/a"


def table_markdown(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        "| minority rows | new rows | step | seconds | speed vs imbalanced-learn | RSS base GiB "
        "| RSS peak GiB | notes |",
        "|--:|--:|---|--:|--:|--:|--:|---|",
    ]
    by = {(r.kind, r.n): r for r in runs}
    for r in runs:
        imb = by.get(("imblearn", r.n))
        if r.status != "ok":
            secs = {"timeout": f"> {args.timeout:.0f}", "skipped": "—", "failed": "—"}[r.status]
            ratio = "—"
        else:
            secs = f"{r.seconds:.2f}"
            if r.kind == "imblearn":
                ratio = "1.00× (ref)"
            elif imb is not None and imb.status == "ok":
                ratio = f"{imb.seconds / r.seconds:.2f}×"
            elif imb is not None and imb.status == "timeout":
                ratio = f"> {args.timeout / r.seconds:.2f}×"
            else:
                ratio = "—"
        out = f"{r.out:,}" if r.out is not None else "—"
        note = "; ".join([r.status.upper()] * (r.status != "ok") + r.notes).replace("|", "\\|")
        lines.append(
            f"| {r.n:,} | {out} | {label(r.kind, args)} | {secs} | {ratio} | {gib(r.base)} "
            f"| {gib(r.peak)} | {note} |"
        )
    return "\n".join(lines)


def goals(runs: list[Run], args: argparse.Namespace) -> list[str]:
    by = {(r.kind, r.n): r for r in runs}
    out = []
    for n in args.sizes:
        e, i = by.get(("engine", n)), by.get(("imblearn", n))
        if e is None or i is None:
            continue
        if e.status == "ok" and i.status == "ok":
            x = i.seconds / e.seconds
            out.append(
                f"{'MET' if x >= 1 else 'MISSED'}: {n:,} rows: engine {e.seconds:.1f} s vs "
                f"imbalanced-learn {i.seconds:.1f} s, {x:.2f}× (goal ≥ 1.0×)"
            )
        elif e.status == "ok" and i.status == "timeout":
            out.append(
                f"MET: {n:,} rows: engine {e.seconds:.1f} s, imbalanced-learn "
                f"> {args.timeout:.0f} s"
            )
        else:
            what = {
                "engine": f"engine {e.status}"
                + (f" ({e.notes[0]})" if e.notes and e.status == "skipped" else ""),
                "imblearn": f"imbalanced-learn {i.status}"
                + (f" ({i.notes[0]})" if i.notes and i.status == "skipped" else ""),
            }
            out.append(
                f"NOT MEASURED: {n:,} rows: {what['engine']}; {what['imblearn']} (goal: engine "
                "≥ 1.0× imbalanced-learn)"
            )
    return out


def host() -> str:
    import imblearn
    import sklearn

    versions = {"numpy": np.__version__, "scikit-learn": sklearn.__version__}
    return machine({**versions, "imbalanced-learn": imblearn.__version__})


def update_results(path: Path, heading: str, body: str) -> None:
    """Put ``body`` under ``heading`` in the section, keeping everything else."""
    intro = (
        f"{SECTION}\n\n"
        "`engine.smote.smote` against imbalanced-learn's `SMOTE.fit_resample` on one minority "
        "class of n rows (and a majority of 2n rows), both making n synthetic rows; each run in "
        "a fresh process, only the call timed. Speed = t_imblearn / t_engine. See "
        "`benchmarks/bench_smote.py`.\n"
    )
    update_section(path, SECTION, intro, heading, body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    load = os.getloadavg()
    runs: list[Run] = []
    measured: dict[str, Run] = {}  # kind -> the largest size measured so far
    for n in sorted(args.sizes):
        kinds = ["engine"]
        if n > args.max_rows:
            kinds.append("engine-part")
        if not args.skip_imblearn:
            kinds.append("imblearn")
        for kind in kinds:
            guess = predicted(measured, kind, n)
            if guess is not None and guess > HOPELESS * args.timeout and not args.run_hopeless:
                run = Run(kind, n, status="skipped")
                run.notes.append(
                    f"predicted {guess:,.0f} s (~{guess / 60:,.0f} min) from "
                    f"{measured[kind].seconds:.1f} s at {measured[kind].n:,} rows × "
                    f"({n:,}/{measured[kind].n:,})² — kNN is quadratic; over {HOPELESS:.0f} × "
                    f"--timeout {args.timeout:.0f} s"
                )
                print(f"... {label(kind, args)} on {n:,} rows: skipped, {run.notes[-1]}")
            else:
                run = run_child(args, kind, n)
                if run.status == "ok":
                    measured[kind] = run
            runs.append(run)
    checks = [(ok, f"{label(r.kind, args)}, {r.n:,} rows: {t}") for r in runs for ok, t in r.checks]
    table = table_markdown(runs, args)
    goal_lines = goals(runs, args)
    print()
    print(table)
    print()
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    for line in goal_lines:
        print(line)
    failed = any(not ok for ok, _ in checks) or any(r.status == "failed" for r in runs)
    if args.results:
        cmd = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(argv)
        body = "\n".join(
            [
                f"- Machine: {host()}",
                f"- Command: `{cmd}`",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- Data: minority n rows × {args.dims} float32 features ~ N(0, 1), majority 2n "
                f"rows ~ N(0.5, 1), seed {args.seed}; n new rows (the minority raised to 2n); "
                f"k_neighbors={args.k}; each run in a fresh process, limit {args.timeout:.0f} s",
                f"- Load average (1 min) at the start and the end: {load[0]:.2f}, "
                f"{os.getloadavg()[0]:.2f} (a busy machine slows every step)",
                "",
                table,
                "",
                "Goals:",
                "",
                *[f"- {line}" for line in goal_lines],
                "",
                "Checks:",
                "",
                *[f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks],
            ]
        )
        update_results(args.results, f"### {args.dims} dims, k={args.k}", body)
        print(f"wrote {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
