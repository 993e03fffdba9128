"""Data preparation throughput: the engine's stats pass, exact split and random resampling,
against plain pyarrow, single-process references, Ray Data, imbalanced-learn and Spark, all on
the same Parquet files.

    .venv/bin/python benchmarks/bench_prep.py [--rows 20M] [--files N] [--dir DIR] [--seed 0]
        [--no-prep] [--no-resample] [--methods under,over,combined] [--skip-ray-split]
        [--skip-reference] [--skip-imblearn] [--imblearn-rows N] [--skip-spark]
        [--skip-row-hash] [--skip-repeat] [--results benchmarks/RESULTS.md] [--compare-results F]

The data: ``--rows`` rows (20M, 100M, 1e6, ...) of long-tailed labels — 10 classes, class k with
probability proportional to 100^(-k/9), so the largest class is 100x the smallest — in
``--files`` Parquet files (default: one per million rows) written in row groups of 1M rows, with
columns ``id`` (int64, unique: 0..rows-1), ``label`` (int64) and ``x0..x3`` (float32). The
files are generated in chunks (memory stays low) under ``--dir`` (default
``benchmarks/_data/prep-<rows>``) and reused when ``_meta.json`` there records the same rows,
files, row groups and seed.

The steps, timed once each after one warm-up read of every file (the OS cache is warm for all
of them; nothing is dropped) and warm-up Ray tasks (the worker processes exist and have imported
the engine); each step starts when every Ray CPU is free again. The engine and the references run
first and Ray Data last (its shuffle actors linger after a run); imbalanced-learn and Spark run
after Ray has shut down, so nothing competes with them. Statistics and splits (``--no-prep``
leaves them out):

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

Resampling (``--no-resample`` leaves it out; ``--methods`` picks among the three), each method
taking the whole file set to the targets ``engine.strategy.resolve_targets`` gives for its
strategy (``RESAMPLE`` below: undersample ``{"power": 0.5}``, oversample ``{"power": 0.58}``,
which takes 20M rows to 29.8M, combined ``{"max_ratio": 10}``):

- (r) reference, one process: pyarrow reads every file, numpy chooses the rows of each class
  (undersample: ``rng.choice`` without replacement; oversample: every row ``t // n`` times plus
  ``rng.choice`` of ``t % n`` rows without replacement — exact counts), the chosen row indices
  are shuffled and the rows taken and written, 1M at a time, into one Parquet file with
  pyarrow's default writer settings. Timed: read + sample + write;
- (g) ``engine.resample.resample`` (random_under / random_over / combined), identity from the
  ``id`` column (``data.id=id``); for the undersample also from the hash of the whole row
  (``--skip-row-hash`` leaves it out). It writes four traceability columns more than the
  others (sample_id, source_id, copy_index, synthetic);
- (h) imbalanced-learn ``RandomUnderSampler`` / ``RandomOverSampler`` (``random_state=0``,
  ``sampling_strategy`` = a dict of the same targets, the classes that change only; combined =
  the undersampler then the oversampler) on in-memory arrays X (x0..x3, float32) and y (label,
  int64): ``fit_resample`` only is timed, no I/O; loading X and y from the files is a separate
  row. ``--imblearn-rows N`` uses the first N rows only (targets resolved on their counts);
- (s) Spark on ``local[<num-cpus>]`` (``spark.driver.memory`` ``--spark-memory``, 4g;
  ``spark.sql.shuffle.partitions`` 2 x CPUs; the session is started and warmed up before the
  timed region): ``spark.read.parquet(dir)``, undersample ``df.stat.sampleBy("label", fractions,
  seed)``, oversample and combined a union of per-class ``filter(label == c)`` +
  ``sample(withReplacement=t > n, fraction=t / n, seed)`` (``sampleBy`` samples without
  replacement only, so it cannot oversample), written with ``write.parquet``; the rows are not
  shuffled. Spark's counts are approximate: the table gives the total absolute error against
  the exact targets and the largest relative error of a class. ``--skip-spark`` leaves it out;
  a failure is recorded in the table, not raised.

For each step: wall seconds, rows/s, speed relative to its reference (t_ref / t_step: stats steps
against (a), split steps against (d), resampling steps against (r) of the same method), and the
resident memory (RSS) summed over this process and every process it started (the Ray GCS,
raylet, workers; Spark's JVM), sampled every 0.2 s: the baseline before the step and the peak
during it. RSS counts pages shared between processes (libraries, the object store) once per
process, so the sum overstates the physical total; compare peak - base.

Checks (PASS/FAIL lines; any FAIL exits 1): every statistics step finds the same class counts;
each engine split is exact (per-class counts in ``_manifest.json`` and in the written files equal
``split_counts`` of the class counts, and the written rows add up to the input); the engine's
id-based split puts exactly the same ``id``s in train, val and test as the reference (d). For
resampling: the input ids are 0..rows-1; the per-class rows in the files the engine and the
reference wrote equal the targets; every written row is an input row with its own label, and
every input row of class c is written ``t_c // n_c`` or ``t_c // n_c + 1`` times (so an
undersample is a subset without duplicates, an oversample a superset); imbalanced-learn's
counts equal the targets; the engine's id-based undersample written twice is the same (rows
sorted by ``sample_id``; ``--skip-repeat`` leaves it out). Goals (MET/MISSED lines; they do not
change the exit status): the engine at >= 1.0x the reference (r) and faster than Spark, and the
engine's peak RSS within 1.3x of its peak at a smaller row count stored in ``--results``.

``--results FILE`` writes the machine, command, date, data and tables into FILE under
``## Data preparation (bench_prep.py)``: statistics and splits under ``### <rows> rows``,
resampling under ``### <rows> rows: resampling``, each replacing an older run of the same
subsection and keeping every other section.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import os
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
from common import machine, parse_rows, rows_label, update_section

from engine.config import DataSpec, ResampleSpec, SplitSpec
from engine.data import LabelMap, label_kind, read_schema, resolve_columns, resolve_source
from engine.split import MANIFEST, SPLITS, row_keys, split_counts
from engine.strategy import describe, resolve_targets

CLASSES = 10
IMBALANCE = 100.0
FEATURES = ["x0", "x1", "x2", "x3"]
GENERATOR = 1  # bump when the generated data changes, so old files are not reused
SECTION = "## Data preparation (bench_prep.py)"
SPLIT_SPEC = SplitSpec(val=0.1, test=0.2, seed=0)
ORDER = ("a", "b1", "b2", "e", "d", "c1", "c2", "f")  # in the table
KEY_CHUNK = 1 << 21  # rows per row_keys call in the reference (bounds its temporaries)
RESAMPLE_HEADING = "resampling"  # subsection "### <rows> rows: resampling"
API_HEADING = "Dataset API"  # subsection "### <rows> rows: Dataset API"
API_METHOD = "combined"  # the resampling the Dataset API steps run
# method -> (engine method, strategy kind, sampling_strategy). Oversampling with power 0.58 takes
# the 20M-row data to 29,770,883 rows (the size the goal's pyarrow figure was measured at).
RESAMPLE: dict[str, tuple[str, str, Any]] = {
    "under": ("random_under", "under", {"power": 0.5}),
    "over": ("random_over", "over", {"power": 0.58}),
    "combined": ("combined", "combined", {"max_ratio": 10}),
}
RESAMPLE_SEED = 0
TAKE_CHUNK = 1 << 20  # rows per take + write in the reference resampler
RESAMPLE_VARIANTS = ("r", "g", "g2", "h", "s")  # table order within a method
MEMORY_GOAL = 1.3  # peak RSS at more rows within this factor of the peak at fewer rows


# --------------------------------------------------------------------------------------------
# arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=parse_rows, default=parse_rows("20M"), help="e.g. 20M, 1e6")
    p.add_argument("--files", type=int, default=None, help="default: one per million rows")
    p.add_argument("--row-group", type=parse_rows, default=parse_rows("1M"), help="rows")
    p.add_argument("--dir", type=Path, default=None, help="default: benchmarks/_data/prep-<rows>")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    p.add_argument("--skip-ray-split", action="store_true", help="leave out step (f)")
    p.add_argument(
        "--prep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the statistics and split steps (a)-(f)",
    )
    p.add_argument(
        "--resample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the resampling steps (r), (g), (h), (s)",
    )
    p.add_argument(
        "--methods",
        default=",".join(RESAMPLE),
        help=f"resampling methods to run, comma-separated, of {','.join(RESAMPLE)}",
    )
    p.add_argument("--skip-reference", action="store_true", help="leave out (r), pyarrow")
    p.add_argument("--skip-imblearn", action="store_true", help="leave out (h)")
    p.add_argument(
        "--imblearn-rows",
        type=parse_rows,
        default=None,
        help="imbalanced-learn on the first N rows only (default: all)",
    )
    p.add_argument("--skip-spark", action="store_true", help="leave out (s), Spark")
    p.add_argument(
        "--dataset-api",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the Dataset API steps (k)-(q), in their own subsection",
    )
    p.add_argument("--spark-memory", default="4g", help="spark.driver.memory")
    p.add_argument("--skip-row-hash", action="store_true", help="no engine undersample by row hash")
    p.add_argument(
        "--skip-repeat", action="store_true", help="no second engine undersample (determinism)"
    )
    p.add_argument("--results", type=Path, default=None, help="Markdown file to update")
    p.add_argument(
        "--compare-results",
        type=Path,
        default=None,
        help="results file holding the smaller runs to compare memory with (default: --results)",
    )
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in RESAMPLE]
    if unknown or not args.methods:
        p.error(f"--methods {unknown or args.methods}: choose among {','.join(RESAMPLE)}")
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
    out_rows: int | None = None  # resampling: rows written


def timed(step: Step, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once, recording wall time and memory in ``step``; errors are recorded."""
    import ray

    if ray.is_initialized():
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
# resampling steps


def resample_targets(method: str, counts: dict[Any, int]) -> dict[Any, int]:
    """Target rows per label value for ``method`` (see ``RESAMPLE``), from label value -> rows."""
    _, kind, strategy = RESAMPLE[method]
    labels = sorted(counts)
    got = resolve_targets(strategy, {str(k): counts[k] for k in labels}, kind)
    return {k: got[str(k)] for k in labels}


def reference_resample(files: list[str], targets: dict[Any, int], seed: int, out: str) -> int:
    """Exact random resampling in one process: read, choose per class with numpy, shuffle, write.

    Class c with n rows and target t: every row ``t // n`` times, plus ``t % n`` rows drawn
    without replacement. Returns the number of rows written.
    """
    table = pads.dataset(files, format="parquet").to_table()
    labels = table["label"].to_numpy()
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for lab, t in targets.items():
        idx = np.flatnonzero(labels == lab)
        base, rest = divmod(t, len(idx))
        chosen += [idx] * base
        if rest:
            chosen.append(rng.choice(idx, rest, replace=False))
    del labels
    take = np.concatenate(chosen)
    del chosen
    rng.shuffle(take)
    with pq.ParquetWriter(out, table.schema) as w:
        for off in range(0, len(take), TAKE_CHUNK):
            w.write_table(table.take(take[off : off + TAKE_CHUNK]))
    return len(take)


def engine_resample(source, cols, lm: LabelMap, counts_by_key, schema, method: str, out: str):
    from engine.resample import resample

    engine_method, _, strategy = RESAMPLE[method]
    spec = ResampleSpec(method=engine_method, sampling_strategy=strategy, seed=RESAMPLE_SEED)
    return resample(source, cols, lm, counts_by_key, spec, out, schema)


def load_xy(files: list[str], rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """X (n, 4) float32 from x0..x3 and y (n,) int64 from label; the first ``rows`` rows."""
    ds = pads.dataset(files, format="parquet")
    columns = ["label", *FEATURES]
    table = ds.head(rows, columns=columns) if rows else ds.to_table(columns=columns)
    X = np.empty((table.num_rows, len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        X[:, j] = table[name].to_numpy()
    y = np.array(table["label"].to_numpy(), dtype=np.int64)  # a writable copy
    return X, y


def imblearn_resample(
    X: np.ndarray, y: np.ndarray, counts: dict[Any, int], targets: dict[Any, int]
) -> tuple[np.ndarray, np.ndarray]:
    """imbalanced-learn's random samplers to ``targets``: the classes to cut with
    ``RandomUnderSampler``, then the classes to raise with ``RandomOverSampler``."""
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    under = {k: t for k, t in targets.items() if t < counts[k]}
    over = {k: t for k, t in targets.items() if t > counts[k]}
    if under:
        X, y = RandomUnderSampler(sampling_strategy=under, random_state=0).fit_resample(X, y)
    if over:
        X, y = RandomOverSampler(sampling_strategy=over, random_state=0).fit_resample(X, y)
    return X, y


def spark_session(cpus: int, memory: str):
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cpus}]")
        .appName("bench_prep")
        .config("spark.driver.memory", memory)
        .config("spark.sql.shuffle.partitions", str(2 * cpus))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_resample(
    spark, data_dir: str, method: str, counts: dict[Any, int], targets: dict[Any, int], out: str
) -> None:
    """Spark's approximate resampling: ``sampleBy`` (undersample) or a union of per-class
    ``sample`` calls (with replacement where a class grows), written as Parquet."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(data_dir)
    if method == "under":
        fractions = {int(k): t / counts[k] for k, t in targets.items()}
        result = df.stat.sampleBy("label", fractions, RESAMPLE_SEED)
    else:
        parts = []
        for k, t in targets.items():
            part = df.filter(F.col("label") == int(k))
            n = counts[k]
            if t != n:
                part = part.sample(withReplacement=t > n, fraction=t / n, seed=RESAMPLE_SEED + k)
            parts.append(part)
        result = functools.reduce(lambda a, b: a.unionAll(b), parts)
    result.write.mode("overwrite").parquet(out)


def count_error(got: dict[Any, int], targets: dict[Any, int]) -> tuple[int, float]:
    """Sum of |got - target| over the classes, and the largest |got - target| / target."""
    diffs = {k: abs(got.get(k, 0) - t) for k, t in targets.items()}
    rel = max((d / targets[k] for k, d in diffs.items() if targets[k]), default=0.0)
    return sum(diffs.values()), rel


def input_labels(files: list[str], rows: int, checks: Checks) -> np.ndarray | None:
    """The label of every input row, indexed by id (int8); None unless ids are 0..rows-1."""
    t = pads.dataset(files, format="parquet").to_table(columns=["id", "label"])
    ids = t["id"].to_numpy()
    ok = len(ids) == rows and int(ids.min()) == 0 and int(ids.max()) == rows - 1
    if ok:
        seen = np.zeros(rows, dtype=bool)
        seen[ids] = True
        ok = bool(seen.all())
    if not checks(ok, f"input ids are 0..{rows - 1:,}, each once (the per-row checks need it)"):
        return None
    label_of = np.empty(rows, dtype=np.int8)
    label_of[ids] = t["label"].to_numpy()
    return label_of


def check_resampled(
    checks: Checks,
    path: str,
    what: str,
    counts: dict[Any, int],
    targets: dict[Any, int],
    label_of: np.ndarray | None,
) -> int:
    """Exact counts and per-row copies of a written resample; returns the rows written."""
    t = pads.dataset(path, format="parquet").to_table(columns=["id", "label"])
    written = t.num_rows
    got = pyarrow_counts_of(t["label"])
    checks(
        got == {k: v for k, v in targets.items() if v},
        f"{what}: per-class rows in the written files == targets ({written:,} rows)",
    )
    if label_of is None:
        return written
    ids, labels = t["id"].to_numpy(), t["label"].to_numpy()
    del t
    rows = len(label_of)
    ok = written == 0 or (int(ids.min()) >= 0 and int(ids.max()) < rows)
    checks(
        ok and np.array_equal(label_of[ids], labels),
        f"{what}: every written row is an input row, with its label",
    )
    if not ok:
        return written
    size = max(max(counts), int(label_of.max())) + 1
    base, top = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    for k, n in counts.items():
        base[k] = targets[k] // n
        top[k] = base[k] + (targets[k] % n > 0)
    copies = np.bincount(ids, minlength=rows)
    del ids, labels
    lo_ok = bool((copies >= base[label_of]).all())
    hi_ok = bool((copies <= top[label_of]).all())
    cut = any(targets[k] < n for k, n in counts.items())
    raised = any(targets[k] > n for k, n in counts.items())
    shape = {
        (True, False): "a subset without duplicates",
        (False, True): "a superset: every input row present",
    }.get((cut, raised), "cut classes without duplicates, raised classes complete")
    checks(
        lo_ok and hi_ok,
        f"{what}: every input row of class c written t_c // n_c or t_c // n_c + 1 times ({shape})",
    )
    return written


def canonical(path: str) -> pa.Table:
    return pq.read_table(path, columns=["sample_id", "id", "label"]).sort_by("sample_id")


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


def resample_order(key: str) -> tuple[int, int]:
    method, variant = key.split("-", 1)
    if method not in RESAMPLE:
        return len(RESAMPLE), 0
    return list(RESAMPLE).index(method), RESAMPLE_VARIANTS.index(variant)


def resample_table_markdown(steps: list[Step]) -> str:
    by_key = {s.key: s for s in steps}
    head = (
        "| step | seconds | rows out | rows in/s | speed vs (r) | vs Spark (s) | RSS base GiB "
        "| RSS peak GiB | notes |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|---|"
    )
    lines = [head]

    def versus(s: Step, other: Step | None) -> str:
        """Rows/s over the other step's rows/s (= t_other / t_s on the same rows)."""
        if other is None or other.error or s.error or not s.seconds or not other.seconds:
            return "—"
        return f"{(s.rows / s.seconds) / (other.rows / other.seconds):.2f}×"

    for s in sorted(steps, key=lambda s: resample_order(s.key)):
        notes = list(s.notes)
        method, variant = s.key.split("-", 1)
        out = f"{s.out_rows:,}" if s.out_rows is not None else "—"
        if s.error:
            notes.insert(0, f"FAILED: {s.error}")
            secs, rate, ratio, spark = f"({s.seconds:.2f})", "—", "—", "—"
        else:
            secs = f"{s.seconds:.2f}"
            rate = f"{s.rows / s.seconds:,.0f}" if s.seconds > 0 else "—"
            if variant == "r":
                ratio = "1.00× (ref)"
            elif s.ref:
                ratio = versus(s, by_key.get(s.ref))
            else:
                ratio = "—"
            spark = versus(s, by_key.get(f"{method}-s")) if variant in ("g", "g2") else ""
        note = "; ".join(notes).replace("|", "\\|")
        lines.append(
            f"| {s.name} | {secs} | {out} | {rate} | {ratio} | {spark} | {gib(s.base)} "
            f"| {gib(s.peak)} | {note} |"
        )
    return "\n".join(lines)


def stored_resample_memory(
    path: Path | None, rows: int
) -> dict[int, dict[str, tuple[float, float]]]:
    """From a results file: per row count below ``rows``, step name -> (RSS base, RSS peak) in
    GiB, read from its ``### <n> rows: resampling`` table."""
    if path is None or not path.exists():
        return {}
    found: dict[int, dict[str, tuple[float, float]]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = re.match(rf"^### ([\d,]+) rows: {RESAMPLE_HEADING}\s*$", line)
        if m:
            current = int(m.group(1).replace(",", ""))
            found[current] = {}
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("| ("):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            try:
                found[current][cells[0]] = (float(cells[6]), float(cells[7]))
            except (IndexError, ValueError):
                pass  # a failed step (n/a)
    return {n: v for n, v in found.items() if n < rows and v}


def resample_goals(steps: list[Step], stored: dict[int, dict[str, tuple[float, float]]], rows: int):
    """MET/MISSED lines for the goals (they do not change the exit status)."""
    by_key = {s.key: s for s in steps}
    lines: list[str] = []

    def line(ok: bool, text: str) -> None:
        lines.append(f"{'MET' if ok else 'MISSED'}: {text}")

    for method in RESAMPLE:
        for variant in ("g", "g2"):
            g = by_key.get(f"{method}-{variant}")
            if g is None or g.error:
                continue
            r, s = by_key.get(f"{method}-r"), by_key.get(f"{method}-s")
            if r is not None and not r.error:
                x = r.seconds / g.seconds
                line(x >= 1.0, f"{g.name}: {x:.3f}× the pyarrow reference (goal ≥ 1.0×)")
            if s is not None and not s.error:
                x = s.seconds / g.seconds
                line(x > 1.0, f"{g.name}: {x:.3f}× Spark (goal > 1.0×)")
            for n, table in sorted(stored.items()):
                if g.name not in table or not g.peak:
                    continue
                base, peak = table[g.name]
                now_base, now_peak = g.base / 2**30, g.peak / 2**30
                x = now_peak / peak
                line(
                    x <= MEMORY_GOAL,
                    f"{g.name}: peak RSS {now_peak:.2f} GiB at {rows:,} rows vs {peak:.2f} GiB at "
                    f"{n:,} rows: {x:.2f}× (goal ≤ {MEMORY_GOAL}×); peak − base "
                    f"{now_peak - now_base:.2f} vs {peak - base:.2f} GiB",
                )
    return lines


def host() -> str:
    import ray

    return machine({"ray": ray.__version__, "pyarrow": pa.__version__, "numpy": np.__version__})


def section_intro() -> str:
    return (
        f"{SECTION}\n\n"
        "The engine's statistics pass, exact stratified split and exact random resampling (Ray "
        "tasks over Parquet fragments) against plain pyarrow, single-process pyarrow + numpy "
        "references, Ray Data's own operators, imbalanced-learn and Spark, on the same "
        "long-tailed files (10 classes, p_k ∝ 100^(−k/9)). Speed vs ref = t_ref / t_step (> 1: "
        "faster than the reference); stats steps are compared with (a), split steps with (d), "
        "resampling steps with (r) of the same method. RSS is summed over the driver and every "
        "process it started (Ray GCS, raylet, workers, Spark's JVM), sampled every 0.2 s; shared "
        "pages count once per process, so compare peak with base. See "
        "`benchmarks/bench_prep.py` for what each step runs.\n"
    )


def section_body(lines: list[str], table: str, checks: Checks) -> str:
    """A results subsection: the header lines, the table, the checks."""
    return "\n".join([*lines, "", table, "", "Checks:", "", *[f"- {c}" for c in checks.lines]])


def update_results(path: Path, heading: str, body: str) -> None:
    """Put ``body`` under ``heading`` (``### <rows> rows...``) in the section."""

    def order(h: str) -> tuple[int, str]:
        m = re.match(r"### ([\d,]+) rows", h)
        return (int(m.group(1).replace(",", "")) if m else sys.maxsize, h)

    update_section(path, SECTION, section_intro(), heading, body, order)


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

    from engine.stats import compute_stats

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    @ray.remote(num_cpus=1)
    def _warm_worker() -> int:
        import engine.resample  # noqa: F401  (the engine's tasks import these in the worker)
        import engine.split  # noqa: F401
        import engine.stats  # noqa: F401

        time.sleep(0.5)  # hold the CPU, so that the tasks spread over every worker
        return os.getpid()

    ray.get([_warm_worker.remote() for _ in range(2 * args.num_cpus)])
    print(
        f"warm-up: every file read once ({warm:.1f} s, OS cache warm for all steps; nothing "
        f"dropped); Ray workers started and the engine imported in them by warm-up tasks",
        flush=True,
    )

    checks, rchecks, achecks = Checks(), Checks(), Checks()
    steps: list[Step] = []
    rsteps: list[Step] = []
    asteps: list[Step] = []
    source = resolve_source(str(args.dir))
    schema = read_schema(source)
    spec_label = DataSpec(path=str(args.dir), label="label")
    cols_id = resolve_columns(schema, DataSpec(path=str(args.dir), label="label", id="id"))
    cols_hash = resolve_columns(schema, spec_label)
    counts: dict[str, dict[Any, int]] = {}
    rinfo: dict[str, Any] = {}

    # The engine and the references run first; Ray Data's steps last, as their shuffle actors
    # take a while to go away and would disturb whatever ran next; imbalanced-learn and Spark
    # after Ray has shut down, so that nothing competes with them.
    work = Path(tempfile.mkdtemp(prefix=".bench-prep-", dir=args.dir.parent))
    try:
        try:
            if args.prep:
                res = prep_steps(
                    args, files, source, cols_id, cols_hash, work, steps, checks, counts
                )
                if res is False:
                    return 1
                class_counts = counts["a"]
            else:
                class_counts = pyarrow_counts(files)
                res = compute_stats(source, spec_label)
                print(
                    "class counts: "
                    + ", ".join(f"{k}: {v:,}" for k, v in sorted(class_counts.items()))
                )
            if args.resample:
                rinfo = resample_ray_steps(
                    args, files, source, schema, cols_id, cols_hash, res, class_counts, work,
                    rsteps, rchecks,
                )  # fmt: skip
            if args.prep:
                ray_data_steps(args, files, rows, steps, counts)
            if args.dataset_api:
                dataset_api_steps(args, files, source, schema, cols_id, res, class_counts, work,
                                  asteps, achecks)  # fmt: skip
        finally:
            ray.shutdown()
        if args.resample:
            resample_local_steps(args, files, class_counts, work, rsteps, rchecks, rinfo)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cmd = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(argv)
    head = [
        f"- Machine: {host()}",
        f"- Command: `{cmd}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Data: {rows:,} rows in {len(files)} Parquet file{'s' * (len(files) > 1)}, "
        f"row groups of "
        f"{args.row_group:,} rows, {on_disk / 2**20:,.0f} MiB; columns id (int64), "
        f"label (int64), x0..x3 (float32); seed {args.seed}; class counts "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(class_counts.items())),
    ]
    cache = (
        "- Cache: every file read once before the first step (warm OS cache for all "
        "steps, nothing dropped); Ray workers warmed up by no-op tasks; each step run "
        "once, starting when every Ray CPU is free"
    )
    load_line = (
        f"- Load average (1 min) at the start and the end: {load[0]:.2f}, "
        f"{os.getloadavg()[0]:.2f} (a busy machine slows every step)"
    )
    failed = False
    if args.prep:
        for key, c in counts.items():
            if key != "a":
                checks(c == class_counts, f"class counts of step {key} == pyarrow's (a)")
        steps.sort(key=lambda s: ORDER.index(s.key))
        table = table_markdown(steps)
        print()
        print(table)
        print()
        failed |= checks.failed or any(s.error for s in steps if s.key != "f")
        if args.results:
            ray_line = (
                f"- Ray: `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`, "
                "`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=2`; split spec val=0.1, test=0.2, seed=0"
            )
            body = section_body([*head, ray_line, cache, load_line], table, checks)
            update_results(args.results, f"### {rows:,} rows", body)
            print(f"wrote {args.results} ({rows:,} rows)")
    if args.resample:
        table = resample_table_markdown(rsteps)
        stored = stored_resample_memory(args.compare_results or args.results, rows)
        goals = resample_goals(rsteps, stored, rows)
        print()
        print(table)
        print()
        if not stored:
            print("memory: no resampling table at fewer rows in the results file to compare with")
        for line in goals:
            print(line)
        failed |= rchecks.failed or any(
            s.error for s in rsteps if s.key.split("-")[1] in ("r", "g", "g2")
        )
        if args.results:
            body = "\n".join(
                [
                    *head,
                    *rinfo.get("lines", []),
                    cache + "; imbalanced-learn and Spark run after Ray has shut down",
                    load_line,
                    "",
                    table,
                    "",
                    "Goals (the engine's id-based runs and row-hash run; MISSED is reported, "
                    "not hidden):",
                    "",
                    *[f"- {line}" for line in goals],
                    *(
                        []
                        if stored
                        else [
                            "- memory: no resampling table at fewer rows in the results file to "
                            "compare with"
                        ]
                    ),
                    "",
                    "Checks:",
                    "",
                    *[f"- {line}" for line in rchecks.lines],
                ]
            )
            update_results(args.results, f"### {rows:,} rows: {RESAMPLE_HEADING}", body)
            print(f"wrote {args.results} ({rows:,} rows: {RESAMPLE_HEADING})")
    if args.dataset_api:
        table = table_markdown(asteps)
        print()
        print(table)
        print()
        failed |= achecks.failed or any(s.error for s in asteps if s.key in ("k1", "l", "m"))
        if args.results:
            ray_line = (
                f"- Ray: `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`; split "
                f"val=0.1, test=0.2, seed=0; resampling {RESAMPLE[API_METHOD][0]} "
                f"{json.dumps(RESAMPLE[API_METHOD][2])}, seed {RESAMPLE_SEED}; identity = id"
            )
            body = section_body([*head, ray_line, cache, load_line], table, achecks)
            update_results(args.results, f"### {rows:,} rows: {API_HEADING}", body)
            print(f"wrote {args.results} ({rows:,} rows: {API_HEADING})")
    return 1 if failed else 0


def prep_steps(args, files, source, cols_id, cols_hash, work: Path, steps, checks, counts):
    """Steps (a)-(d): statistics and splits. Returns the engine's statistics result (None if
    it failed), or False when the reference (a) failed."""
    from engine.split import split
    from engine.stats import compute_stats

    rows = args.rows
    spec_label = DataSpec(path=str(args.dir), label="label")
    spec_feats = DataSpec(path=str(args.dir), label="label", features=FEATURES)
    a = Step("a", "(a) pyarrow: label column + value_counts", None, rows)
    steps.append(a)
    counts["a"] = timed(a, lambda: pyarrow_counts(files))
    if a.error:
        print(f"the reference step failed: {a.error}", file=sys.stderr)
        return False
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
                    f"engine id split == reference (d): same {len(ref_ids[name]):,} ids in {name}",
                )
        shutil.rmtree(out, ignore_errors=True)
    return res


def ray_split_step(key: str, tag: str, ref: str, files, rows: int, steps) -> Step:
    """Ray Data's own stratified split, timed; ``out_rows``: the rows it returned."""
    f = Step(key, f"{tag} Ray Data train_test_split(0.2, stratify)", ref, rows)
    steps.append(f)
    got = timed(f, lambda: ray_data_split(files))
    f.notes.append("2-way, int(n·0.2) per class in block order, not exact")
    if got is not None:
        f.notes.append(f"train {got[0]:,} + test {got[1]:,}")
        f.out_rows = got[0] + got[1]
    return f


def ray_data_steps(args, files, rows, steps, counts) -> None:
    """Steps (e) and (f): Ray Data's own operators, last (their actors linger)."""
    e = Step("e", "(e) Ray Data read_parquet(label).groupby.count", "a", rows)
    steps.append(e)
    got = timed(e, lambda: ray_data_counts(files))
    if got is not None:
        counts["e"] = got
    if not args.skip_ray_split:
        f = ray_split_step("f", "(f)", "d", files, rows, steps)
        if f.out_rows is not None and f.out_rows != rows:
            f.notes.append(f"rows lost: {rows - f.out_rows:,}")


def _write_parts(parts: dict[str, Any], out: Path) -> None:
    """Each lazy Dataset of ``parts`` executed and written as Parquet under ``out/<name>``."""
    for name, ds in parts.items():
        ds.write_parquet(str(out / name))


def _ids_by_part(out: Path, names) -> dict[str, np.ndarray]:
    return {n: np.sort(pq.read_table(out / n, columns=["id"])["id"].to_numpy()) for n in names}


def ray_data_resample(files: list[str], targets: dict[Any, int], out: str) -> int:
    """What Ray Data offers for per-class resampling: one filter + ``random_sample`` per class
    (fraction t/n; it samples without replacement, so a class cannot grow: kept whole)."""
    import ray

    ds = ray.data.read_parquet(files)
    counts = ray_data_counts(files)
    parts = []
    for lab, t in targets.items():
        one = ds.filter(expr=f"label == {lab}")
        frac = t / counts[lab]
        parts.append(one.random_sample(frac, seed=RESAMPLE_SEED) if frac < 1 else one)
    merged = parts[0].union(*parts[1:])
    merged.write_parquet(out)
    return pads.dataset(out).count_rows()


def _check_api_split(step, out: Path, class_counts, file_ids, checks, how: str) -> None:
    """A Dataset API split's exactness and its rows against the file path's; removes ``out``."""
    if not step.error:
        ids = _ids_by_part(out, SPLITS)
        for s, name in enumerate(SPLITS):
            t = pq.read_table(out / name, columns=["label"])
            want = {
                lab: c[s]
                for lab, n in class_counts.items()
                if (c := split_counts(n, SPLIT_SPEC.val, SPLIT_SPEC.test))[s]
            }
            checks(pyarrow_counts_of(t["label"]) == want, f"Dataset API{how} {name}: exact counts")
            if file_ids is not None:
                checks(
                    np.array_equal(ids[name], file_ids[name]),
                    f"Dataset API{how} {name}: the same {len(ids[name]):,} ids as the file path",
                )
    shutil.rmtree(out, ignore_errors=True)


def dataset_api_steps(
    args, files, source, schema, cols_id, res, class_counts, work: Path, steps, checks
) -> None:
    """Steps (k)-(q): the Dataset API (engine.ray_data) against the file path on the same data,
    and Ray Data's own operators; every Dataset output executed and written as Parquet."""
    import ray

    from engine import ray_data as rb
    from engine.split import split

    rows = args.rows
    k = Step("k1", "(k) file path: engine split, identity = id", None, rows)
    steps.append(k)
    fout = work / "api-file-split"
    timed(
        k,
        lambda: split(
            source, cols_id, res.stats.label_map, res.summary.counts, SPLIT_SPEC, str(fout),
            schema=schema,
        ),
    )  # fmt: skip
    file_ids = _ids_by_part(fout, SPLITS) if not k.error else None
    shutil.rmtree(fout, ignore_errors=True)

    l1 = Step("l", "(l) Dataset API: class_stats(read_parquet)", None, rows)
    steps.append(l1)
    stats = timed(l1, lambda: rb.class_stats(ray.data.read_parquet(files), "label"))
    if stats is not None:
        got = dict(zip(stats.label_map.labels, stats.counts))
        checks(got == class_counts, "Dataset API class_stats counts == pyarrow's")

    m = Step("m", "(m) Dataset API: stratified_split + write_parquet ×3, identity = id", "k1", rows)
    steps.append(m)
    aout = work / "api-split"

    def api_split() -> None:
        parts = rb.stratified_split(
            ray.data.read_parquet(files), "label", val=SPLIT_SPEC.val, test=SPLIT_SPEC.test,
            seed=SPLIT_SPEC.seed, id="id",
        )  # fmt: skip
        _write_parts({"train": parts.train, "val": parts.val, "test": parts.test}, aout)

    timed(m, api_split)
    _check_api_split(m, aout, class_counts, file_ids, checks, "")
    m2 = Step("m2", "(m) the same, materialize=True (keyed once, outputs filter)", "k1", rows)
    steps.append(m2)

    def api_split_materialized() -> None:
        parts = rb.stratified_split(
            ray.data.read_parquet(files), "label", val=SPLIT_SPEC.val, test=SPLIT_SPEC.test,
            seed=SPLIT_SPEC.seed, id="id", materialize=True,
        )  # fmt: skip
        _write_parts({"train": parts.train, "val": parts.val, "test": parts.test}, aout)

    timed(m2, api_split_materialized)
    _check_api_split(m2, aout, class_counts, file_ids, checks, " (materialized)")

    engine_method, _, strategy = RESAMPLE[API_METHOD]
    targets = resample_targets(API_METHOD, class_counts)
    o = Step("o", f"(o) file path: engine {engine_method}, identity = id", None, rows)
    steps.append(o)
    rout = work / "api-file-res"
    by_key = {str(lab): n for lab, n in class_counts.items()}
    timed(
        o,
        lambda: engine_resample(
            source, cols_id, res.stats.label_map, by_key, schema, API_METHOD, str(rout)
        ),
    )
    file_res = None if o.error else np.sort(pq.read_table(rout / "train", columns=["id"])["id"])
    shutil.rmtree(rout, ignore_errors=True)
    p = Step("p", f"(p) Dataset API: resample {engine_method} + write_parquet", "o", rows)
    steps.append(p)
    pout = work / "api-res"

    def api_resample() -> None:
        r = rb.resample(
            ray.data.read_parquet(files), "label", method=engine_method,
            sampling_strategy=strategy, seed=RESAMPLE_SEED, id="id",
        )  # fmt: skip
        _write_parts({"train": r.dataset}, pout)

    timed(p, api_resample)
    if not p.error:
        t = pq.read_table(pout / "train", columns=["id", "label"])
        checks(pyarrow_counts_of(t["label"]) == targets, "Dataset API resample: counts == targets")
        if file_res is not None:
            same = np.array_equal(np.sort(t["id"].to_numpy()), np.asarray(file_res))
            checks(same, f"Dataset API resample: the same {t.num_rows:,} rows as the file path")
        p.out_rows = t.num_rows
    shutil.rmtree(pout, ignore_errors=True)

    if not args.skip_ray_split:
        ray_split_step("q1", "(q)", "k1", files, rows, steps)
    q = Step("q2", "(q) Ray Data per class: filter + random_sample(t/n), union", "o", rows)
    steps.append(q)
    qout = work / "api-ray-res"
    n_out = timed(q, lambda: ray_data_resample(files, targets, str(qout)))
    if n_out is not None:
        err, worst = count_error_rows(str(qout), targets)
        q.notes.append(
            f"{n_out:,} rows vs {sum(targets.values()):,} targeted; Σ|got − target| = {err:,}, "
            f"max per class {worst:.1%}; cannot oversample (no replacement)"
        )
    shutil.rmtree(qout, ignore_errors=True)


def count_error_rows(out: str, targets: dict[Any, int]) -> tuple[int, float]:
    return count_error(
        pyarrow_counts_of(pads.dataset(out).to_table(columns=["label"])["label"]), targets
    )


def resample_ray_steps(
    args, files, source, schema, cols_id, cols_hash, res, class_counts, work: Path, rsteps, checks
) -> dict[str, Any]:
    """Steps (r) and (g) for every method: the one-process reference and the engine."""
    rows = args.rows
    lines = [
        f"- Ray: `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`; "
        f"`ResampleSpec(seed={RESAMPLE_SEED})`; the reference uses `default_rng({RESAMPLE_SEED})`",
    ]
    label_path = work / "labels.npy"
    label_of = input_labels(files, rows, checks)
    if label_of is not None:
        np.save(label_path, label_of)
        del label_of

    def labels() -> np.ndarray | None:
        return np.load(label_path) if label_path.exists() else None

    lm = res.stats.label_map if res is not None else None
    counts_by_key = dict(zip(lm.keys, res.stats.counts)) if res is not None else None
    for method in args.methods:
        engine_method, kind, strategy = RESAMPLE[method]
        targets = resample_targets(method, class_counts)
        total = sum(targets.values())
        lines.append(
            f"- {method}: `{engine_method}`, `sampling_strategy={json.dumps(strategy)}` "
            f"({describe(strategy)}, kind {kind}): {rows:,} → {total:,} rows; targets "
            + ", ".join(f"{k}: {v:,}" for k, v in targets.items())
        )
        print(lines[-1][2:], flush=True)
        if not args.skip_reference:
            r = Step(
                f"{method}-r", f"(r) reference {method}: 1 process, pyarrow + numpy", None, rows
            )
            rsteps.append(r)
            out = str(work / f"ref-{method}.parquet")
            n_out = timed(
                r, lambda out=out, t=targets: reference_resample(files, t, RESAMPLE_SEED, out)
            )
            if n_out is None:
                checks(False, f"{r.name}: {r.error}")
            else:
                r.out_rows = n_out
                check_resampled(checks, out, r.name, class_counts, targets, labels())
            Path(out).unlink(missing_ok=True)
        variants = [("g", "id", cols_id)]
        if method == "under" and not args.skip_row_hash:
            variants.append(("g2", "row hash", cols_hash))
        for variant, ident, cols in variants:
            g = Step(
                f"{method}-{variant}",
                f"(g) engine {engine_method}, identity = {ident}",
                f"{method}-r",
                rows,
            )
            rsteps.append(g)
            if res is None:
                g.error = "no label map: the engine's stats pass failed"
                continue
            out = str(work / f"engine-{method}-{variant}")
            result = timed(
                g,
                lambda cols=cols, out=out, method=method: engine_resample(
                    source, cols, lm, counts_by_key, schema, method, out
                ),
            )
            if result is None:
                checks(False, f"{g.name}: {g.error}")
                continue
            checks(
                result.after == {str(k): v for k, v in targets.items()},
                f"{g.name}: the engine's targets == resolve_targets of the class counts",
            )
            g.notes.append(f"{result.pending_rows:,} rows resolved on the driver")
            g.out_rows = check_resampled(
                checks, result.path, g.name, class_counts, targets, labels()
            )
            if variant == "g" and method == "under" and not args.skip_repeat:
                again = Step(f"{method}-again", f"{g.name}, second run", None, rows)
                out2 = str(work / f"engine-{method}-again")
                second = timed(
                    again,
                    lambda out2=out2, method=method: engine_resample(
                        source, cols_id, lm, counts_by_key, schema, method, out2
                    ),
                )
                if second is None:
                    checks(False, f"{again.name}: {again.error}")
                else:
                    g.notes.append(f"second run {again.seconds:.2f} s")
                    checks(
                        canonical(result.path).equals(canonical(second.path)),
                        f"{g.name}: a second run writes the same rows (sorted by sample_id)",
                    )
                shutil.rmtree(out2, ignore_errors=True)
            g.notes.append("+4 traceability columns")
            shutil.rmtree(out, ignore_errors=True)
    return {"lines": lines}


def resample_local_steps(args, files, class_counts, work: Path, rsteps, checks, info) -> None:
    """Steps (h) and (s), after Ray has shut down: imbalanced-learn in memory, then Spark."""
    rows = args.rows
    lines = info.setdefault("lines", [])
    if not args.skip_imblearn:
        import imblearn

        n_x = min(rows, args.imblearn_rows) if args.imblearn_rows else rows
        load = Step("load-h", "(h) imbalanced-learn: load X, y from the files", None, n_x)
        rsteps.append(load)
        xy = timed(load, lambda: load_xy(files, n_x if n_x < rows else None))
        X = y = None
        if xy is not None:
            X, y = xy
            del xy
            load.out_rows = len(y)
            load.notes.append("X (n, 4) float32, y int64; not part of the (h) times")
            labs, cnt = np.unique(y, return_counts=True)
            hcounts = dict(zip(labs.tolist(), cnt.tolist()))
        lines.append(
            f"- imbalanced-learn {imblearn.__version__}: `RandomUnderSampler` / "
            "`RandomOverSampler(sampling_strategy=<dict of the targets>, random_state=0)`, "
            f"on {n_x:,} rows{' (all)' if n_x == rows else ' (the first ones)'}; "
            "fit_resample timed, no I/O"
        )
        for method in args.methods:
            h = Step(
                f"{method}-h", f"(h) imbalanced-learn {method}: fit_resample", f"{method}-r", n_x
            )
            rsteps.append(h)
            if X is None:
                h.error = f"loading X, y failed ({load.error})"
                continue
            targets = resample_targets(method, hcounts)
            got = timed(h, lambda t=targets: imblearn_resample(X, y, hcounts, t))
            h.notes.append("in memory, no read or write")
            if n_x < rows:
                h.notes.append(f"first {n_x:,} rows; speed by rows/s")
            if got is None:
                continue
            h.out_rows = len(got[1])
            labs, cnt = np.unique(got[1], return_counts=True)
            del got
            checks(
                dict(zip(labs.tolist(), cnt.tolist())) == {k: v for k, v in targets.items() if v},
                f"{h.name}: per-class rows == targets",
            )
        del X, y
    if not args.skip_spark:
        spark, error, t0 = None, None, time.perf_counter()
        try:
            import pyspark

            spark = spark_session(args.num_cpus, args.spark_memory)
            # Warm-up outside the timed steps: the JVM loads and compiles the read, sample and
            # write paths once, on a tiny sample of every file.
            (
                spark.read.parquet(str(args.dir))
                .sample(fraction=1e-4, seed=1)
                .write.mode("overwrite")
                .parquet(str(work / "spark-warm-up"))
            )
            shutil.rmtree(work / "spark-warm-up", ignore_errors=True)
            lines.append(
                f"- Spark {pyspark.__version__}: `local[{args.num_cpus}]`, "
                f"`spark.driver.memory={args.spark_memory}`, "
                f"`spark.sql.shuffle.partitions={2 * args.num_cpus}`; session started and warmed "
                f"up (a 0.01 % sample of the input written) in {time.perf_counter() - t0:.1f} s, "
                "outside the timed steps; `sampleBy` samples without replacement only, so "
                "oversampling is a union of per-class `sample(withReplacement=True)`"
            )
        except Exception as e:  # recorded in the table; the run goes on
            first = (str(e).strip().splitlines() or [""])[0]
            error = f"starting Spark: {type(e).__name__}: {first[:300]}"
            lines.append(f"- Spark: {error}")
        for method in args.methods:
            targets = resample_targets(method, class_counts)
            how = "stat.sampleBy" if method == "under" else "per-class sample + union"
            s = Step(f"{method}-s", f"(s) Spark {method}: {how}, write", f"{method}-r", rows)
            rsteps.append(s)
            if spark is None:
                s.error = error
                continue
            out = str(work / f"spark-{method}")
            timed(
                s,
                lambda out=out, t=targets, method=method: spark_resample(
                    spark, str(args.dir), method, class_counts, t, out
                ),
            )
            if s.error is None:
                got = pyarrow_counts_of(
                    pads.dataset(out, format="parquet").to_table(columns=["label"])["label"]
                )
                total = sum(targets.values())
                s.out_rows = sum(got.values())
                abs_err, rel = count_error(got, targets)
                s.notes.append(
                    f"count error vs targets: Σ|got − target| = {abs_err:,} "
                    f"({abs_err / max(total, 1):.3%} of {total:,}), max per class {rel:.2%}"
                )
                s.notes.append("not shuffled")
            shutil.rmtree(out, ignore_errors=True)
        if spark is not None:
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
