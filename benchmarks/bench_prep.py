"""Data preparation throughput: the engine's stats pass and exact split, against plain pyarrow,
a single-process reference split and Ray Data's own operators, all on the same Parquet files.

    .venv/bin/python benchmarks/bench_prep.py [--rows 20M] [--files N] [--dir DIR] [--seed 0]
        [--skip-ray-split] [--results benchmarks/RESULTS.md]

The data: ``--rows`` rows (20M, 100M, 1e6, ...) of long-tailed labels — 10 classes, class k with
probability proportional to 100^(-k/9), so the largest class is 100x the smallest — in
``--files`` Parquet files (default: one per million rows) written in row groups of 1M rows, with
columns ``id`` (int64, unique), ``label`` (int64) and ``x0..x3`` (float32). The files are
generated in chunks (memory stays low) under ``--dir`` (default ``benchmarks/_data/prep-<rows>``)
and reused when ``_meta.json`` there records the same rows, files, row groups and seed.

The steps, timed once each after one warm-up read of every file (the OS cache is warm for all
of them; nothing is dropped) and warm-up Ray tasks (the worker processes exist and have imported
the engine); each step starts when every Ray CPU is free again. The engine and the references run
first and Ray Data last (its shuffle actors linger after a run). In the table:

- (a) pyarrow: ``dataset(files).to_table(columns=["label"])`` + ``value_counts`` — the physical
  reference for statistics;
- (b) ``engine.stats.compute_stats`` reading the label only, and again validating the four
  feature columns (NaN/inf) as well;
- (e) Ray Data ``read_parquet(columns=["label"]).groupby("label").count()``, materialized;
- (d) a single-process pyarrow + numpy exact split using the engine's own ``row_keys`` and
  ``split_counts`` (identity from the ``id`` column): read everything, argsort the keys of each
  class, write three Parquet files — the reference for splits;
- (c) ``engine.split.split`` with identity from the ``id`` column, and from a hash of the row;
- (f) Ray Data ``train_test_split(test_size=0.2, stratify="label")``, materialized (a two-way,
  non-exact split; ``--skip-ray-split`` leaves it out; a failure is recorded, not raised).

For each step: wall seconds, rows/s, speed relative to its reference (t_ref / t_step: stats steps
against (a), split steps against (d)), and the resident memory (RSS) summed over this process and
every process it started (the Ray GCS, raylet, workers), sampled every 0.2 s: the baseline before
the step and the peak during it. RSS counts pages shared between processes (libraries, the
object store) once per process, so the sum overstates the physical total; compare peak - base.

Checks (PASS/FAIL lines; any FAIL exits 1): every statistics step finds the same class counts;
each engine split is exact (per-class counts in ``_manifest.json`` and in the written files equal
``split_counts`` of the class counts, and the written rows add up to the input); the engine's
id-based split puts exactly the same ``id``s in train, val and test as the reference (d).

``--results FILE`` writes the machine, command, date, data and table into FILE under
``## Data preparation (bench_prep.py)`` / ``### <rows> rows``, replacing an older run at the same
row count and keeping every other section.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from engine.config import DataSpec, SplitSpec
from engine.data import LabelMap, label_kind, read_schema, resolve_columns, resolve_source
from engine.io import write_bytes_atomic
from engine.split import MANIFEST, SPLITS, row_keys, split_counts

CLASSES = 10
IMBALANCE = 100.0
FEATURES = ["x0", "x1", "x2", "x3"]
GENERATOR = 1  # bump when the generated data changes, so old files are not reused
SECTION = "## Data preparation (bench_prep.py)"
SPLIT_SPEC = SplitSpec(val=0.1, test=0.2, seed=0)
ORDER = ("a", "b1", "b2", "e", "d", "c1", "c2", "f")  # in the table
KEY_CHUNK = 1 << 21  # rows per row_keys call in the reference (bounds its temporaries)


# --------------------------------------------------------------------------------------------
# arguments


def parse_rows(text: str) -> int:
    """'20M', '100m', '1e6', '500k', '3_000_000' -> an int > 0."""
    s = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(s[-1:], 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {text!r}: use e.g. 20M, 1e6 or 500k") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"--rows {text!r} must be a whole number of rows >= 1")
    return int(value)


def rows_label(rows: int) -> str:
    for unit, mult in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if rows % mult == 0:
            return f"{rows // mult}{unit}"
    return str(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=parse_rows, default=parse_rows("20M"), help="e.g. 20M, 1e6")
    p.add_argument("--files", type=int, default=None, help="default: one per million rows")
    p.add_argument("--row-group", type=parse_rows, default=parse_rows("1M"), help="rows")
    p.add_argument("--dir", type=Path, default=None, help="default: benchmarks/_data/prep-<rows>")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--skip-ray-split", action="store_true", help="leave out step (f)")
    p.add_argument("--results", type=Path, default=None, help="Markdown file to update")
    args = p.parse_args(argv)
    if args.files is None:
        args.files = max(1, round(args.rows / 1_000_000))
    if not 1 <= args.files <= args.rows:
        p.error(f"--files {args.files} must be between 1 and --rows ({args.rows})")
    if args.dir is None:
        args.dir = Path(__file__).resolve().parent / "_data" / f"prep-{rows_label(args.rows)}"
    args.dir = args.dir.resolve()
    return args


# --------------------------------------------------------------------------------------------
# data


def class_probs() -> np.ndarray:
    p = IMBALANCE ** (-np.arange(CLASSES) / (CLASSES - 1))
    return p / p.sum()


def _chunk(seed: int, file_no: int, chunk_no: int, first_id: int, n: int) -> pa.Table:
    rng = np.random.default_rng([seed, file_no, chunk_no])
    cdf = np.cumsum(class_probs())
    label = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), CLASSES - 1)
    cols: dict[str, Any] = {
        "id": np.arange(first_id, first_id + n, dtype=np.int64),
        "label": label.astype(np.int64),
    }
    for j, name in enumerate(FEATURES):
        x = rng.standard_normal(n, dtype=np.float32)
        cols[name] = x + np.float32(0.25 * (j + 1)) * label.astype(np.float32)
    return pa.table(cols)


def _meta_wanted(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "rows": args.rows,
        "files": args.files,
        "row_group": args.row_group,
        "seed": args.seed,
        "classes": CLASSES,
        "imbalance": IMBALANCE,
    }


def ensure_data(args: argparse.Namespace) -> tuple[list[str], str]:
    """The Parquet files under ``args.dir`` (generated unless ``_meta.json`` matches)."""
    d: Path = args.dir
    meta_path = d / "_meta.json"
    wanted = _meta_wanted(args)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        sizes = meta.get("sizes", {})
        same = {k: meta.get(k) for k in wanted} == wanted
        if same and sizes and all((d / f).is_file() and (d / f).stat().st_size == s
                                  for f, s in sizes.items()):  # fmt: skip
            return [str(d / f) for f in sorted(sizes)], "reused"
    d.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    for old in d.glob("part-*.parquet"):
        old.unlink()
    t0 = time.perf_counter()
    sizes: dict[str, int] = {}
    per_file = [args.rows // args.files + (i < args.rows % args.files) for i in range(args.files)]
    first_id = 0
    for i, n in enumerate(per_file):
        name = f"part-{i:05d}.parquet"
        tmp = d / f".{name}.tmp"
        schema = _chunk(0, 0, 0, 0, 0).schema
        with pq.ParquetWriter(tmp, schema) as w:
            for j, off in enumerate(range(0, n, args.row_group)):
                m = min(args.row_group, n - off)
                w.write_table(_chunk(args.seed, i, j, first_id + off, m), args.row_group)
        tmp.rename(d / name)
        sizes[name] = (d / name).stat().st_size
        first_id += n
    meta = {**wanted, "sizes": sizes, "columns": ["id", "label", *FEATURES]}
    tmp = d / "._meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(meta_path)
    return [str(d / f) for f in sorted(sizes)], f"generated in {time.perf_counter() - t0:.1f} s"


def warm_cache(files: list[str]) -> float:
    """Read every file once (whole bytes, then the label column), so every step sees a warm
    OS cache."""
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    pads.dataset(files, format="parquet").to_table(columns=["label"])
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# measuring


class PeakMemory:
    """RSS summed over this process and all its descendants (Ray's GCS, raylet, workers),
    sampled in a thread. Descendants, not every process named ray: the machine may be shared."""

    def __init__(self, interval: float = 0.2):
        try:
            import psutil  # ray vendors it (ray/thirdparty_files), importable after `import ray`
        except ImportError:
            psutil = None
        self.psutil = psutil
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def total(self) -> int:
        if self.psutil is None:
            return 0
        me = self.psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = self.total()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.total())


@dataclass
class Step:
    key: str  # "a", "b1", ...
    name: str
    ref: str | None  # key of the reference step
    rows: int
    seconds: float = math.nan
    base: int = 0
    peak: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def timed(step: Step, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once, recording wall time and memory in ``step``; errors are recorded."""
    import ray

    settle(int(ray.cluster_resources().get("CPU", 1)))
    gc.collect()
    pa.default_memory_pool().release_unused()
    print(f"... {step.name}", flush=True)
    value = None
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # recorded in the table; the run goes on
            first = (str(e).strip().splitlines() or [""])[0]
            step.error = f"{type(e).__name__}: {first[:300]}"
        step.seconds = time.perf_counter() - t0
    step.base, step.peak = mem.base, mem.peak
    return value


def settle(cpus: int, timeout: float = 60.0) -> None:
    """Wait until every CPU is free again (Ray Data's actors exit a while after a run)."""
    import ray

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if ray.available_resources().get("CPU", 0) >= cpus:
            return
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# the steps


def pyarrow_counts(files: list[str]) -> dict[Any, int]:
    table = pads.dataset(files, format="parquet").to_table(columns=["label"])
    return pyarrow_counts_of(table["label"])


def ray_data_counts(files: list[str]) -> dict[Any, int]:
    import ray

    ds = ray.data.read_parquet(files).select_columns(["label"])  # pushed down into the read
    ds = ds.groupby("label").count().materialize()
    return {r["label"]: r["count()"] for r in ds.take_all()}


def ray_data_split(files: list[str]) -> tuple[int, int]:
    import ray

    train, test = ray.data.read_parquet(files).train_test_split(test_size=0.2, stratify="label")
    return train.materialize().count(), test.materialize().count()


def reference_split(files: list[str], cols, out_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact split in one process: the engine's keys, a per-class argsort, three files.

    Returns the split index of every row (0 train, 1 val, 2 test) and the ``id`` column.
    """
    table = pads.dataset(files, format="parquet").to_table()
    n = table.num_rows
    keys = np.empty(n, dtype=np.uint64)
    for off in range(0, n, KEY_CHUNK):
        keys[off : off + KEY_CHUNK] = row_keys(table.slice(off, KEY_CHUNK), cols, SPLIT_SPEC.seed)
    labels = table[cols.label]
    lm = LabelMap.from_values(cols.label, label_kind(labels.type), pc.unique(labels).to_pylist())
    cls = lm.encode(labels)
    which = np.empty(n, dtype=np.int8)
    for c in range(len(lm)):
        idx = np.flatnonzero(cls == c)
        idx = idx[np.argsort(keys[idx])]  # keys are a bijection of distinct ids: no ties
        n_train, n_val, _ = split_counts(len(idx), SPLIT_SPEC.val, SPLIT_SPEC.test)
        which[idx[:n_train]] = 0
        which[idx[n_train : n_train + n_val]] = 1
        which[idx[n_train + n_val :]] = 2
    for s, name in enumerate(SPLITS):
        pq.write_table(table.filter(pa.array(which == s)), f"{out_dir}/{name}.parquet")
    return which, table["id"].to_numpy()


# --------------------------------------------------------------------------------------------
# checks


class Checks:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        line = f"{'PASS' if ok else 'FAIL'}: {what}"
        print(line, flush=True)
        self.lines.append(line)
        return ok

    @property
    def failed(self) -> bool:
        return any(line.startswith("FAIL") for line in self.lines)


def check_split(
    checks: Checks, out_dir: str, what: str, counts: dict[Any, int], rows: int
) -> dict[str, np.ndarray]:
    """Exactness of one engine split; returns the sorted ids of each split."""
    manifest = json.loads(Path(out_dir, MANIFEST).read_text())
    want = {lab: split_counts(n, SPLIT_SPEC.val, SPLIT_SPEC.test) for lab, n in counts.items()}
    ids: dict[str, np.ndarray] = {}
    man_ok, files_ok, total = True, True, 0
    for s, name in enumerate(SPLITS):
        expected = {lab: c[s] for lab, c in want.items() if c[s]}
        man = {k: v for k, v in manifest["counts"][name].items() if v}
        man_ok &= man == {str(lab): c for lab, c in expected.items()}
        t = pq.read_table(Path(out_dir, name), columns=["id", "label"])
        total += t.num_rows
        files_ok &= pyarrow_counts_of(t["label"]) == expected
        ids[name] = np.sort(t["id"].to_numpy())
    checks(man_ok, f"{what}: _manifest.json per-class counts == split_counts of the class counts")
    checks(files_ok, f"{what}: per-class rows in the written files == split_counts")
    checks(total == rows, f"{what}: written rows {total:,} == input rows {rows:,}")
    return ids


def pyarrow_counts_of(col: pa.ChunkedArray) -> dict[Any, int]:
    vc = pc.value_counts(col)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


# --------------------------------------------------------------------------------------------
# reporting


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}" if n else "n/a"


def table_markdown(steps: list[Step]) -> str:
    by_key = {s.key: s for s in steps}
    head = (
        "| step | seconds | rows/s | speed vs ref | RSS base GiB | RSS peak GiB | notes |\n"
        "|---|--:|--:|--:|--:|--:|---|"
    )
    lines = [head]
    for s in steps:
        notes = list(s.notes)
        if s.error:
            notes.insert(0, f"FAILED: {s.error}")
            secs, rate, ratio = f"({s.seconds:.2f})", "—", "—"
        else:
            secs = f"{s.seconds:.2f}"
            rate = f"{s.rows / s.seconds:,.0f}" if s.seconds > 0 else "—"
            ref = by_key.get(s.ref) if s.ref else None
            if s.ref is None:
                ratio = "1.00× (ref)"
            elif ref is None or ref.error or not s.seconds:
                ratio = "—"
            else:
                ratio = f"{ref.seconds / s.seconds:.2f}×"
        note = "; ".join(notes).replace("|", "\\|")
        lines.append(
            f"| {s.name} | {secs} | {rate} | {ratio} | {gib(s.base)} | {gib(s.peak)} | {note} |"
        )
    return "\n".join(lines)


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    mem = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", mem, re.M)
    import ray

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = f"{int(total.group(1)) / 2**20:.1f} GiB RAM" if total else "RAM unknown"
    cpu = model.group(1).strip() if model else platform.processor() or "CPU model unknown"
    return (
        f"{cpus} CPUs (nproc), {ram}, {cpu}; Python {platform.python_version()}, "
        f"ray {ray.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}"
    )


def section_intro() -> str:
    return (
        f"{SECTION}\n\n"
        "The engine's statistics pass and exact stratified split (Ray tasks over Parquet "
        "fragments) against plain pyarrow, a single-process pyarrow + numpy exact split and Ray "
        "Data's own operators, on the same long-tailed files (10 classes, p_k ∝ 100^(−k/9)). "
        "Speed vs ref = t_ref / t_step (> 1: faster than the reference); stats steps are compared "
        "with (a), split steps with (d). RSS is summed over the driver and every process it "
        "started (Ray GCS, raylet, workers), sampled every 0.2 s; shared pages count once per "
        "process, so compare peak with base. See `benchmarks/bench_prep.py` for what each step "
        "runs.\n"
    )


def update_results(path: Path, rows: int, body: str) -> None:
    """Put ``body`` under ``### <rows> rows`` in the section, keeping everything else."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        before, after, subs = lines, [], {}
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(r"^#{1,2} ", lines[i])),
            len(lines),
        )
        before, after = lines[:start], lines[end:]
        subs, current = {}, None
        for line in lines[start + 1 : end]:
            if line.startswith("### "):
                current = line
                subs[current] = []
            elif current is not None:
                subs[current].append(line)
        subs = {h: "\n".join(b).strip() for h, b in subs.items()}
    heading = f"### {rows:,} rows"
    subs[heading] = body.strip()

    def order(h: str) -> tuple[int, str]:
        m = re.match(r"### ([\d,]+) rows", h)
        return (int(m.group(1).replace(",", "")) if m else sys.maxsize, h)

    parts = ["\n".join(before).rstrip(), section_intro().rstrip()]
    parts += [f"{h}\n\n{subs[h]}" for h in sorted(subs, key=order)]
    if after:
        parts.append("\n".join(after).strip())
    out = "\n\n".join(p for p in parts if p) + "\n"
    write_bytes_atomic(path, out.encode())


# --------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    files, how = ensure_data(args)
    rows = args.rows
    on_disk = sum(os.path.getsize(f) for f in files)
    print(
        f"data: {rows:,} rows in {len(files)} file{'s' * (len(files) > 1)} "
        f"(row groups of {args.row_group:,}), "
        f"{on_disk / 2**20:,.0f} MiB in {args.dir} ({how})",
        flush=True,
    )
    warm = warm_cache(files)

    # Set before Ray is imported (the driver and the workers it starts read it).
    os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = "2"
    import ray

    from engine.split import split
    from engine.stats import compute_stats

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    @ray.remote(num_cpus=1)
    def _warm_worker() -> int:
        import engine.split  # noqa: F401  (the engine's tasks import these in the worker)
        import engine.stats  # noqa: F401

        time.sleep(0.5)  # hold the CPU, so that the tasks spread over every worker
        return os.getpid()

    ray.get([_warm_worker.remote() for _ in range(2 * args.num_cpus)])
    print(
        f"warm-up: every file read once ({warm:.1f} s, OS cache warm for all steps; nothing "
        f"dropped); Ray workers started and the engine imported in them by warm-up tasks",
        flush=True,
    )

    checks = Checks()
    steps: list[Step] = []
    source = resolve_source(str(args.dir))
    schema = read_schema(source)
    spec_label = DataSpec(path=str(args.dir), label="label")
    spec_feats = DataSpec(path=str(args.dir), label="label", features=FEATURES)
    cols_id = resolve_columns(schema, DataSpec(path=str(args.dir), label="label", id="id"))
    cols_hash = resolve_columns(schema, spec_label)
    counts: dict[str, dict[Any, int]] = {}

    # The engine and the references run first; Ray Data's steps last, as their shuffle actors
    # take a while to go away and would disturb whatever ran next.
    a = Step("a", "(a) pyarrow: label column + value_counts", None, rows)
    steps.append(a)
    counts["a"] = timed(a, lambda: pyarrow_counts(files))
    if a.error:
        print(f"the reference step failed: {a.error}", file=sys.stderr)
        return 1
    class_counts = counts["a"]
    checks(sum(class_counts.values()) == rows, f"pyarrow counted {rows:,} rows")
    print("class counts: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(class_counts.items())))
    b1 = Step("b1", "(b) engine compute_stats, label only", "a", rows)
    steps.append(b1)
    res = timed(b1, lambda: compute_stats(source, spec_label))
    if res is not None:
        counts["b1"] = dict(res.summary.counts)
    b2 = Step("b2", "(b) engine compute_stats, label + 4 features validated", "a", rows)
    steps.append(b2)
    res2 = timed(b2, lambda: compute_stats(source, spec_feats))
    if res2 is not None:
        counts["b2"] = dict(res2.summary.counts)

    work = Path(tempfile.mkdtemp(prefix=".bench-prep-", dir=args.dir.parent))
    try:
        d = Step("d", "(d) reference: 1 process, pyarrow + numpy argsort, id", None, rows)
        steps.append(d)
        (work / "ref").mkdir()
        ref = timed(d, lambda: reference_split(files, cols_id, str(work / "ref")))
        ref_ids = None
        if ref is not None:
            which, id_col = ref
            ref_ids = {name: np.sort(id_col[which == s]) for s, name in enumerate(SPLITS)}
            del which, id_col, ref
        shutil.rmtree(work / "ref", ignore_errors=True)

        for key, what, cols in (
            ("c1", "(c) engine split, identity = id column", cols_id),
            ("c2", "(c) engine split, identity = hash of the row", cols_hash),
        ):
            step = Step(key, what, "d", rows)
            steps.append(step)
            if res is None:
                step.error = f"no class counts: the engine's stats pass failed ({b1.error})"
                continue
            out = str(work / f"split-{key}")
            result = timed(
                step,
                lambda cols=cols, out=out: split(
                    source,
                    cols,
                    res.stats.label_map,
                    res.summary.counts,
                    SPLIT_SPEC,
                    out,
                    schema=res.schema,
                ),
            )
            if result is None:
                checks(False, f"{what}: {step.error}")
                continue
            step.notes.append(f"{result.pending_rows:,} rows resolved on the driver")
            ids = check_split(checks, out, what, class_counts, rows)
            if key == "c1" and ref_ids is not None:
                for name in SPLITS:
                    checks(
                        np.array_equal(ids[name], ref_ids[name]),
                        f"engine id split == reference (d): same {len(ref_ids[name]):,} ids in "
                        f"{name}",
                    )
            shutil.rmtree(out, ignore_errors=True)
        ref_ids = None

        e = Step("e", "(e) Ray Data read_parquet(label).groupby.count", "a", rows)
        steps.append(e)
        got = timed(e, lambda: ray_data_counts(files))
        if got is not None:
            counts["e"] = got
        if not args.skip_ray_split:
            f = Step("f", "(f) Ray Data train_test_split(0.2, stratify)", "d", rows)
            steps.append(f)
            got = timed(f, lambda: ray_data_split(files))
            f.notes.append("2-way, int(n·0.2) per class in block order, not exact")
            if got is not None:
                n_train, n_test = got
                f.notes.append(f"train {n_train:,} + test {n_test:,}")
                if n_train + n_test != rows:
                    f.notes.append(f"rows lost: {rows - n_train - n_test:,}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    for key, c in counts.items():
        if key != "a":
            checks(c == class_counts, f"class counts of step {key} == pyarrow's (a)")
    steps.sort(key=lambda s: ORDER.index(s.key))

    table = table_markdown(steps)
    print()
    print(table)
    print()
    if args.results:
        cmd = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(argv)
        body = "\n".join(
            [
                f"- Machine: {machine()}",
                f"- Command: `{cmd}`",
                f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- Data: {rows:,} rows in {len(files)} Parquet file{'s' * (len(files) > 1)}, "
                f"row groups of "
                f"{args.row_group:,} rows, {on_disk / 2**20:,.0f} MiB; columns id (int64), "
                f"label (int64), x0..x3 (float32); seed {args.seed}; class counts "
                + ", ".join(f"{k}: {v:,}" for k, v in sorted(class_counts.items())),
                f"- Ray: `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`, "
                "`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=2`; split spec val=0.1, test=0.2, seed=0",
                "- Cache: every file read once before the first step (warm OS cache for all "
                "steps, nothing dropped); Ray workers warmed up by no-op tasks; each step run "
                "once, starting when every Ray CPU is free",
                f"- Load average (1 min) at the start and the end: {load[0]:.2f}, "
                f"{os.getloadavg()[0]:.2f} (a busy machine slows every step)",
                "",
                table,
                "",
                "Checks:",
                "",
                *[f"- {line}" for line in checks.lines],
            ]
        )
        update_results(args.results, rows, body)
        print(f"wrote {args.results}")
    return 1 if checks.failed or any(s.error for s in steps if s.key != "f") else 0


if __name__ == "__main__":
    sys.exit(main())
