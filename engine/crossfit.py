"""Cross-fitting: out-of-fold predictions of the ensemble's candidates over train + val.

    plan = write_folds(run, k=5, seed=0)                  # RUN_DIR/crossfit/folds/f<i>/{train,held}
    fits = fit_folds(spec, run, plan, trials)            # k models per candidate, Ray tasks
    cf = fold_scores(spec, run, plan, fits)               # out-of-fold and test probabilities

Selecting members, weighting and calibrating them and fitting the decision thresholds on one
small val split fits its noise (a tail class has a handful of val rows). With cross-fitting
they are fitted on every labelled row instead: train and val together are cut into ``k``
exactly stratified folds; each candidate (a trial of the search) is trained again ``k`` times
with its own knobs, each time on all folds but one, and scores the fold it did not see. Each
row of train + val is so scored exactly once, by a model that never saw it (the out-of-fold,
OOF, probabilities). On new rows a candidate is the mean of its ``k`` fold models (bagging),
which together have seen every labelled row.

Nothing about a fold model is chosen on the fold it scores: it is trained with what its trial
chose on val — the linear fit's ``C``, the booster's rounds, the network's number of epochs
(its last epoch is kept, ``train.keep: last``). The held-out fold is its "val" only for the
metrics it logs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.config import EXACT_KINDS, JobSpec
from engine.io import filesystem_and_path, join, read_json, write_json_atomic
from engine.progress import progress_event
from engine.rundir import CROSSFIT, METRICS, RunDir

log = logging.getLogger("raybalance")

FOLDS = "folds"
MODELS = "models"
PLAN = "_folds.json"  # the folds' record, written last
FORMAT = 2
# What a fold's task reserves: none (as many run at a time as the cluster has CPUs, each on one
# thread). Any share of a CPU could leave no node a whole CPU for the Ray Data reads inside the
# tasks (two nodes of one CPU, each holding half of it: the reads never start).
FOLD_CPUS = 0


@dataclass(frozen=True)
class FoldPlan:
    """``k`` folds of train + val: ``held[f]`` the positions (train rows first, in the train
    split's file order, then val's) that fold ``f`` holds out, in the order of its files."""

    root: str  # RUN_DIR/crossfit/folds
    k: int
    seed: int
    n_train: int
    n_val: int
    held: list[np.ndarray]
    digest: str = ""  # of what the folds were cut from (``RunDir.prepared_digest``)

    def train_dir(self, f: int) -> str:
        return join(self.root, f"f{f}", "train")

    def held_dir(self, f: int) -> str:
        return join(self.root, f"f{f}", "held")

    @property
    def kept_dir(self) -> str:
        """The rows no fold holds out (classes with one row)."""
        return join(self.root, "kept")

    @property
    def kept(self) -> np.ndarray:
        n = self.n_train + self.n_val
        mask = np.ones(n, dtype=bool)
        for h in self.held:
            mask[h] = False
        return np.flatnonzero(mask)


def assign_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each row's fold in ``0..k-1``, exactly stratified: the rows of every class are dealt
    round-robin in a seeded random order, each class starting where the one before stopped,
    so every fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ rows of class c and the folds' sizes differ by at
    most one row. A class with one row gets fold -1: held out by no fold (every fold trains
    on it; without it, a fold would train without the class)."""
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) < 2:
            fold[rows] = -1
            continue
        rows = rows[rng.permutation(len(rows))]
        fold[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k
    return fold


def _read_ordered_table(folder: str) -> pa.Table:
    """A split's rows in its file order (as ``engine.scoring.score_splits`` scores them)."""
    from engine.data import resolve_source

    source = resolve_source(folder)
    tables = [pq.read_table(f, filesystem=source.filesystem) for f in source.files]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def write_folds(run: RunDir, k: int, seed: int) -> FoldPlan:
    """The folds of the run's train + val model inputs under ``RUN_DIR/crossfit/folds``
    (each fold's training rows and held-out rows as Parquet), reused when a complete set of
    the same ``k`` and ``seed`` is there."""
    root = run.join(CROSSFIT, FOLDS)
    record = join(root, PLAN)
    fs, path = filesystem_and_path(root)
    made_from = run.prepared_digest()  # new splits or embeddings: new folds
    if _plan_matches(record, k, seed, made_from):
        r = read_json(record)
        held = [np.asarray(h, dtype=np.int64) for h in r["held"]]
        return FoldPlan(root, k, seed, r["n_train"], r["n_val"], held, made_from)
    label_map = run.label_map()
    train = _read_ordered_table(run.model_split("train"))
    val = _read_ordered_table(run.model_split("val"))
    rows = pa.concat_tables([train, val.cast(train.schema)])
    y = label_map.encode(rows.column(label_map.column))
    fold = assign_folds(y, k, seed)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    held = []
    for f in range(k):
        held.append(np.flatnonzero(fold == f))
        for name, idx in (("train", np.flatnonzero(fold != f)), ("held", held[-1])):
            fs.create_dir(f"{path}/f{f}/{name}", recursive=True)
            pq.write_table(rows.take(idx), f"{path}/f{f}/{name}/part-0.parquet", filesystem=fs)
    fs.create_dir(f"{path}/kept", recursive=True)
    pq.write_table(
        rows.take(np.flatnonzero(fold < 0)), f"{path}/kept/part-0.parquet", filesystem=fs
    )
    plan = {
        "format": FORMAT,
        "prepared": made_from,
        "k": k,
        "seed": seed,
        "n_train": train.num_rows,
        "n_val": val.num_rows,
        "held": [h.tolist() for h in held],
    }
    write_json_atomic(record, plan)
    return FoldPlan(root, k, seed, train.num_rows, val.num_rows, held, made_from)


def _plan_matches(record: str, k: int, seed: int, made_from: str) -> bool:
    from engine.io import path_exists

    if not path_exists(record):
        return False
    r = read_json(record)
    return (r.get("format"), r.get("k"), r.get("seed"), r.get("prepared")) == (
        FORMAT,
        k,
        seed,
        made_from,
    )


# --------------------------------------------------------------------------------------------
# the fold models


@dataclass(frozen=True)
class Candidate:
    """A trial to cross-fit: its name in the ensemble, its knobs and what it chose on val."""

    name: str
    kind: str
    knobs: dict[str, Any]
    best: dict[str, Any]  # the trial's best epoch's row (epoch, C, rounds)
    source: str = ""  # the trial's exported model folder

    def folder_key(self, plan: FoldPlan) -> str:
        """The name of its fold models' folder: what they are trained from (the trial, its
        knobs and choices, the folds), so that a later ensemble reuses only its own."""
        from engine.io import json_digest

        what = [self.kind, self.knobs, self.best, self.source, plan.digest, plan.k, plan.seed]
        return f"{self.name}-{json_digest(what)[:12]}"


def trial_candidate(
    name: str, kind: str, best_dir: str, metric: str, best_epoch: int | None = None
) -> Candidate:
    """The candidate of the trial whose exported model is ``best_dir`` (``<trial>/best``):
    its last attempt's knobs (``attempts.jsonl``) and its history's best row by ``metric``
    (``metrics.json``), the epoch the search ranked it by — or, for a trial the scheduler
    stopped early (no ``metrics.json``), ``best_epoch`` (1-based, from the results table)."""
    from engine.io import path_exists

    trial = best_dir.rstrip("/").rsplit("/", 1)[0]
    fs, path = filesystem_and_path(join(trial, "attempts.jsonl"))
    with fs.open_input_stream(path) as f:
        lines = [ln for ln in f.read().decode().splitlines() if ln.strip()]
    knobs = json.loads(lines[-1])["knobs"]
    history = join(trial, METRICS)
    if path_exists(history):
        return Candidate(name, kind, knobs, best_row(read_json(history), metric), best_dir)
    if kind in EXACT_KINDS or best_epoch is None:
        raise ValueError(f"{trial}: the trial has no metrics.json to cross-fit it from")
    return Candidate(name, kind, knobs, {"epoch": int(best_epoch) - 1}, best_dir)


def best_row(history: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The first row with the best finite ``metric`` (the least for val_loss)."""
    scored = [dict(r) for r in history if _finite(r.get(metric))]
    if not scored:
        raise ValueError(f"the trial's history has no finite {metric}: nothing to cross-fit")
    sign = -1.0 if metric == "val_loss" else 1.0
    return max(scored, key=lambda r: sign * float(r[metric]))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and bool(np.isfinite(v))


def fold_spec(spec: JobSpec, cand: Candidate, counts: np.ndarray, keys: list[str]) -> JobSpec:
    """The candidate's trial spec (its knobs on ``spec``, class weights from ``counts``, the
    rows its fold trains on) with what the trial chose on val fixed: ``model.C`` (linear),
    ``model.rounds`` (gbdt), ``train.epochs`` with the last epoch kept (the others)."""
    from engine.tune import apply_knobs

    trial = apply_knobs(spec, cand.knobs, counts, keys)
    trial = replace(trial, resample=spec.resample)
    best = cand.best
    if trial.model.kind == "linear":
        return replace(trial, model=replace(trial.model, C=float(best["C"])))
    if trial.model.kind == "gbdt":
        return replace(trial, model=replace(trial.model, rounds=max(1, int(best["rounds"]))))
    epochs = int(best["epoch"]) + 1
    return replace(trial, train=replace(trial.train, epochs=epochs, keep="last"))


def _fit_fold(job: dict[str, Any], cand: Candidate, train_dir: str, held_dir: str, out: str) -> str:
    """A Ray task: the candidate trained on a fold's training rows into ``out``; its best dir."""
    import torch

    from engine.config import build_section
    from engine.data import resolve_source
    from engine.train import train_model

    torch.set_num_threads(1)  # the folds train side by side, one per CPU
    spec = build_section(JobSpec, job)
    run = RunDir(spec.run_dir)
    label_map = run.label_map()
    source = resolve_source(train_dir)
    y = label_map.encode(pa.concat_tables(
        [pq.read_table(f, columns=[label_map.column], filesystem=source.filesystem)
         for f in source.files]
    ).column(label_map.column))  # fmt: skip
    counts = np.bincount(y, minlength=len(label_map))
    trial = fold_spec(spec, cand, counts, label_map.keys)
    result = train_model(
        trial, overwrite=True, out_dir=out, train_data=(source, counts),
        val_data=resolve_source(held_dir),
    )  # fmt: skip
    return result.best_dir


def fit_folds(
    spec: JobSpec, run: RunDir, plan: FoldPlan, cands: Sequence[Candidate]
) -> dict[str, list[str]]:
    """Each candidate trained on each fold's training rows (Ray tasks, as many at a time as the
    cluster has CPUs, each training with one thread and reserving no CPU, so that Ray Data's
    reads inside the tasks always find one); ``{name: [best dir of fold 0, ...]}``. A fold
    model already complete is reused."""
    import ray

    from engine.io import path_exists

    job = _job(spec)
    task = ray.remote(_fit_fold)
    window = max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo, out = [], {c.name: [""] * plan.k for c in cands}
    for c in cands:
        for f in range(plan.k):
            folder = run.join(CROSSFIT, MODELS, c.folder_key(plan), f"f{f}")
            if path_exists(join(folder, METRICS)) and path_exists(join(folder, "best")):
                out[c.name][f] = join(folder, "best")
            else:
                todo.append((c, f, folder))
    pending: dict[Any, tuple[str, int]] = {}
    total, done = len(todo), 0
    if total:
        progress_event("cross-fit", 0, total, f"{len(cands)} candidate(s) x {plan.k} folds")
    while todo or pending:
        while todo and len(pending) < window:
            c, f, folder = todo.pop(0)
            ref = task.options(num_cpus=FOLD_CPUS, max_retries=0).remote(
                job, c, plan.train_dir(f), plan.held_dir(f), folder
            )
            pending[ref] = (c.name, f)
        ready, _ = ray.wait(list(pending), num_returns=1)
        name, f = pending.pop(ready[0])
        out[name][f] = ray.get(ready[0])
        done += 1
        progress_event("cross-fit", done, total, f"{name} fold {f + 1}/{plan.k} trained")
    _drop_stale(run, {c.folder_key(plan) for c in cands})
    return out


def _drop_stale(run: RunDir, keep: set[str]) -> None:
    """Remove the fold models of candidates an earlier ensemble of this run had."""
    import pyarrow.fs as pafs

    fs, root = filesystem_and_path(run.join(CROSSFIT, MODELS))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for info in infos:
        if info.type == pafs.FileType.Directory and info.base_name not in keep:
            fs.delete_dir(info.path)


def _job(spec: JobSpec) -> dict[str, Any]:
    from dataclasses import asdict

    job = asdict(spec)
    job["train"]["num_workers"] = 1  # a fold is one process (the folds run side by side)
    return job


# --------------------------------------------------------------------------------------------
# out-of-fold and test probabilities


@dataclass
class FoldScores:
    """``oof[name]``: (N, K) probabilities of train + val (positions as ``FoldPlan``), each row
    by the fold model that did not see it — except the rows no fold holds out (``held`` False:
    the mean of every fold model, which all trained on them); ``test[name]``: each fold
    model's (N_test, K) probabilities; ``refs[name]``: the fold models."""

    y: np.ndarray
    held: np.ndarray  # (N,) bool: the row was scored out of fold
    oof: dict[str, np.ndarray]
    y_test: np.ndarray
    test: dict[str, list[np.ndarray]]
    refs: dict[str, list[Any]]


def fold_refs(spec: JobSpec, cands: Sequence[Candidate], fits: Mapping[str, list[str]]):
    """``{name: [ModelRef of fold 0, ...]}``, named ``<name>f<i>``."""
    from engine.scoring import model_ref

    return {
        c.name: [
            model_ref(
                spec.data,
                f"{c.name}f{f}",
                d,
                source=f"{c.name} fold {f}",
                trained_as=c.kind,
                max_length=spec.model.max_length,
            )  # fmt: skip
            for f, d in enumerate(fits[c.name])
        ]
        for c in cands
    }


def fold_scores(
    spec: JobSpec, run: RunDir, plan: FoldPlan, refs: Mapping[str, list[Any]], embed=None
) -> FoldScores:
    """Score each fold's held-out rows with that fold's models (out of fold) and the test
    split with every fold model (one Ray Data pass per folder)."""
    from engine.scoring import score_splits

    label_map = run.label_map()
    n, k = plan.n_train + plan.n_val, len(label_map)
    y = np.full(n, -1, dtype=np.int64)
    oof = {name: np.full((n, k), np.nan) for name in refs}
    for f in range(plan.k):
        mine = [r[f] for r in refs.values()]
        got = score_splits(mine, {"held": plan.held_dir(f)}, spec.data, label_map, embed)["held"]
        y[plan.held[f]] = got.y
        for name, r in zip(refs, mine):
            oof[name][plan.held[f]] = got.proba[r.name]
    every = [r for rs in refs.values() for r in rs]
    folders = {"test": run.model_split("test"), "kept": plan.kept_dir}
    got = score_splits(every, folders, spec.data, label_map, embed)
    scored, kept = got["test"], plan.kept
    y[kept] = got["kept"].y
    for name, rs in refs.items():  # in every fold's training rows: the mean of the folds
        oof[name][kept] = np.mean([got["kept"].proba[r.name] for r in rs], axis=0)
    held = np.ones(n, dtype=bool)
    held[kept] = False
    return FoldScores(
        y,
        held,
        oof,
        scored.y,
        {name: [scored.proba[r.name] for r in rs] for name, rs in refs.items()},
        dict(refs),
    )


def row_folds(plan: FoldPlan) -> np.ndarray:
    """(N,) each train + val row's fold (-1: held out by none)."""
    fold = np.full(plan.n_train + plan.n_val, -1, dtype=np.int64)
    for f, h in enumerate(plan.held):
        fold[h] = f
    return fold


def val_rows(plan: FoldPlan) -> np.ndarray:
    """The positions of the val split's rows, in its file order."""
    return plan.n_train + np.arange(plan.n_val)
