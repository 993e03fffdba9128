"""The Ray Tune search over the imbalance knobs: one ``engine.train.fit`` run per trial.

    raybalance tune jobs/configs/digits_lt100.yaml --set tune.num_samples=16 \\
        --set tune.scheduler=tpe

Search space. ``tune.search_space`` maps dotted keys ``<section>.<field>`` (sections ``loss``,
``sampler``, ``train``, ``model``, ``resample``; plus the derived knob ``loss.weight_power``) to
one of::

    {choice: [v1, v2, ...]}     one of the values, uniformly at random
    {grid: [v1, v2, ...]}       every value (Tune's grid_search: each of tune.num_samples
                                repeats the whole grid); not with scheduler tpe
    {uniform: [lo, hi]}         a float in [lo, hi]
    {loguniform: [lo, hi]}      a float in [lo, hi], uniform in log space (0 < lo)
    {randint: [lo, hi]}         an integer in [lo, hi) (hi excluded, as in Tune and numpy)
    any other value             that value in every trial (a dict is a value unless it has
                                exactly one key and that key is one of the forms above)
    null                        drop that knob from the default space (the spec's value is used)

A section may also be nested (``{loss: {gamma: {uniform: [0, 3]}}}``), which is what
``--set tune.search_space.loss.gamma='{uniform: [0, 3]}'`` builds. Keys and values are checked
at load: an unknown key fails naming it, and every choice / grid value and both ends of a range
are checked as that field's value. ``train.epochs`` (the early-stopping budget),
``train.num_workers``, ``train.use_gpu``, ``train.cpus_per_worker`` (they size the trials) and
``train.metric`` (set from ``tune.metric``) are not searchable.

The default space (``default_search_space``), extended or overridden by ``tune.search_space``:
``loss.name`` in {ce, weighted_ce, focal, logit_adjusted, balanced_softmax, ldam};
``loss.weight_power`` p in [0, 1]: class weights w_c ∝ n_c^-p from the counts the trial trains
on, scaled so that the mean weight per row is 1 (p=1 is the ``inverse`` scheme, p=0.5
``inverse_sqrt``), set as explicit ``loss.weights`` for ``weighted_ce`` and as focal's alpha;
``loss.gamma`` in [0, 3]; ``loss.tau`` in [0.5, 2]; ``sampler.kind`` in {none, balanced};
``sampler.power`` q in [0, 1]; ``train.lr`` log-uniform in [lr/10, 10·lr] around the spec's
(its kind's default when null);
and, when the run has a ``resample.method``, ``resample.sampling_strategy`` among the spec's own,
``{power: 0.5}`` and ``{max_ratio: r}`` (r ≈ the square root of the train split's imbalance
ratio). A trial whose resample section differs from the run's resamples the plain train split
into its own folder and trains on that.

Conditional knobs are sampled in every trial and ignored where they mean nothing: ``gamma``
only for focal (and class_balanced over focal), ``tau`` only for logit_adjusted,
``weight_power`` only for weighted_ce and focal, ``sampler.power`` only for balanced batches
(``ACTIVE``). The results table leaves an ignored knob empty.

Schedulers (``tune.scheduler``): ``asha`` = random search + ASHA (``training_iteration`` = epochs,
grace period ``tune.grace_period`` epochs — raise it when some model kinds or losses start
slowly —, max_t = ``train.epochs + 1``: ASHA kills a trial that reaches max_t, and one
past the last epoch lets a good trial end by itself and export; bad trials stop early);
``fifo`` = random search, every trial runs all its epochs; ``tpe`` = Optuna's TPE
(``OptunaSearch``) + ASHA. ``tune.seed`` seeds the sampling. Trials are ranked by
``tune.metric`` (``val_macro_f1``, ``val_balanced_accuracy``, ``val_macro_pr_auc``,
``val_minority_recall`` — the rarest training class's recall at the best cut whose val
precision reaches ``train.precision_floor`` — or ``val_loss``, minimized); each trial keeps its
best epoch by that metric.
A trial that fails is retried ``tune.max_failures`` times; after that it is recorded as an error
and the others go on.

``tune.kind_share: time`` replaces the grid over ``model.kind`` by ``engine.share.KindShare``:
each new trial takes the kind that has used the least wall time so far (the other knobs drawn
at random), so kinds whose trials take seconds get many trials; ``num_samples`` times the kinds
caps the trials, ``tune.time_budget_s`` is the main control.

Concurrency (``trial_resources``): a trial holds 0.01 CPU and starts a ``TorchTrainer`` of
``train.num_workers`` workers; one CPU is kept free for the trials' own Ray Data and resampling
tasks, and the rest is shared so that every running trial's trainer fits at once (Train gives up
when a worker group cannot start within 60 s). ``tune.max_concurrent_trials`` overrides the
count (the workers' share shrinks to fit). Tune ends trials by killing them; Ray Train frees a
killed trainer's placement group from a detached cleaner that needs the Ray dashboard (the
state API) and must find the cluster (``RAY_ADDRESS``, see ``jobs.tune``), else the CPUs of
every early-stopped trial stay held and later trials never start.

Storage and resume. ``RUN_DIR/tune/``: ``ray/tune/`` (Tune's experiment), ``search.json`` (the
spec and the resolved space), ``trials/<trial_id>/`` (each trial's ``fit`` output: ``best/``,
``metrics.json``, its Ray Train run, its resampled split, ``attempts.jsonl`` — one line per
start), and ``results.parquet`` / ``results.csv`` written at the end (one row per trial: id,
status, attempts, the knobs, the best epoch's val metrics, epochs run, ``best_dir``, error).
Rerunning an interrupted search with the same spec restores it (``Tuner.restore``): finished
trials are not run again, unfinished ones are, an errored one gets one more attempt (Tune
keeps its failure count: its retries were spent), and a trial's own Train run resumes
from its last checkpoint; a trial whose ``fit`` had finished but that Tune had not yet recorded
reports its saved metrics instead of training again. Tune copies its experiment state to
storage every ``SYNC_PERIOD_S`` (its default, 300 s, would forget minutes of finished trials).
A finished search is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from engine import rundir
from engine.config import (  # noqa: F401 - the grammar, re-exported
    EXACT_KINDS,
    FORMS,
    LOSS_NAMES,
    NOT_SEARCHABLE,
    VAL_METRICS,
    WEIGHT_POWER,
    Dist,
    JobSpec,
    ResampleSpec,
    SpecError,
    TrainSpec,
    TuneSpec,
    _is_scalar,
    build_section,
    learning_rate,
    parse_dist,
    parse_search_space,
    search_space_error,
    spec_record,
)
from engine.config import SEARCH_SECTIONS as SECTIONS
from engine.logs import verbose
from engine.rundir import RunDir
from engine.session import error_line

log = logging.getLogger("raybalance")

TUNE_DIR = rundir.TUNE
TRIALS = "trials"  # RUN_DIR/tune/trials/<trial id>/: each trial's fit output
TUNE_KEEPS = 2  # checkpoints Tune keeps per trial in its storage (the latest ones)
KEPT_CHECKPOINTS = f"{TRIALS}/*/checkpoints/*"  # (under tune/) what each trial's session kept
SEARCH_RECORD = "search.json"  # the spec and space a search was made from
RESULTS_CSV = "results.csv"  # beside rundir.RESULTS
SUMMARY = "summary.json"  # trials planned and run, the time budget
EXPERIMENT = "tune"  # RunConfig(name=...): the experiment is RUN_DIR/tune/ray/tune
METRICS = VAL_METRICS
SYNC_PERIOD_S = 5  # Tune saves its experiment state at most every 10 s anyway
TRIAL_CPU = 0.01  # the trial function only drives a TorchTrainer (0 is refused by Tune)
LIGHT_TRIAL_CPU = 0.5  # a one-worker trial of a small model (MLP head, lexical) packs this close
LOSSES = tuple(n for n in LOSS_NAMES if n != "class_balanced")  # searched by default


def default_search_space(spec: JobSpec, counts: np.ndarray | None = None) -> dict[str, Dist]:
    """The default knobs, derived from the spec (and the train split's class counts)."""
    lr = learning_rate(spec)
    space = {
        "loss.name": Dist("choice", LOSSES),
        WEIGHT_POWER: Dist("uniform", (0.0, 1.0)),
        "loss.gamma": Dist("uniform", (0.0, 3.0)),
        "loss.tau": Dist("uniform", (0.5, 2.0)),
        "sampler.kind": Dist("choice", ("none", "balanced")),
        "sampler.power": Dist("uniform", (0.0, 1.0)),
        "train.lr": Dist("loguniform", (lr / 10, lr * 10)),
    }
    if spec.resample.method != "none" and not callable(spec.resample.sampling_strategy):
        options: list[Any] = [spec.resample.sampling_strategy, {"power": 0.5}]
        if counts is not None and len(counts) and counts.min() > 0:
            ratio = float(counts.max() / counts.min())
            if ratio > 4:
                options.append({"max_ratio": round(math.sqrt(ratio), 1)})
        unique = []
        for o in options:
            if o not in unique:
                unique.append(o)
        space["resample.sampling_strategy"] = Dist("choice", tuple(unique))
    return space


def usable_kinds(spec: JobSpec) -> tuple[str, ...]:
    """The model kinds that can read this run's data: ``lexical`` and ``transformer`` need
    ``data.text`` and rows with text (no SMOTE-family resampling); ``mlp`` needs
    ``data.features`` or embedded text (the run's own model an MLP, or SMOTE-family
    resampling)."""
    from engine.config import SMOTE_METHODS, needs_embedding

    kinds = []
    if spec.data.features or needs_embedding(spec):
        kinds += ["mlp", "gbdt"]
    if spec.data.text and spec.resample.method not in SMOTE_METHODS:  # synthetic rows: no text
        kinds += ["lexical", "transformer"]
    if kinds:
        kinds.append("linear")  # on the features (or embeddings), else on the text's n-grams
    return tuple(kinds)


def _adapt_kinds(spec: JobSpec, space: dict[str, Dist]) -> dict[str, Dist]:
    """Drop the ``model.kind`` choices that cannot read the data (a config searching mlp and
    lexical models then also runs on feature columns without text)."""
    d = space.get("model.kind")
    if d is None or d.form not in ("choice", "grid", "fixed"):
        return space
    ok = usable_kinds(spec)
    kept = tuple(v for v in d.args if v in ok)
    if not kept:
        raise search_space_error(
            "model.kind",
            f"none of {list(d.args)} can read this data (usable here: {list(ok)}; lexical and "
            "transformer need data.text, mlp needs data.features or embedded text)",
        )
    if len(kept) < len(d.args):
        log.warning(
            "tune: model.kind %s dropped from the search: it cannot read this data (usable: %s)",
            [v for v in d.args if v not in ok],
            list(ok),
        )
    space = dict(space)
    space["model.kind"] = Dist(d.form, kept)
    return space


def resolve_search_space(spec: JobSpec, counts: np.ndarray | None = None) -> dict[str, Dist]:
    """The defaults updated with ``spec.tune.search_space`` (a null value drops a knob);
    ``model.kind`` choices that cannot read the data are dropped (``usable_kinds``)."""
    space: dict[str, Dist | None] = dict(default_search_space(spec, counts))
    space.update(parse_search_space(spec.tune.search_space, tpe=spec.tune.scheduler == "tpe"))
    return _adapt_kinds(spec, {k: d for k, d in space.items() if d is not None})


def _weights_active(v: Mapping[str, Any]) -> bool:
    return v["loss.name"] in ("weighted_ce", "focal") or v["model.kind"] in EXACT_KINDS


def _not_linear(rule: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda v: v["model.kind"] not in EXACT_KINDS and rule(v)


# knob -> when it changes the trial, given the trial's values (spec values + sampled knobs)
ACTIVE: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "loss.gamma": lambda v: (
        v["loss.name"] == "focal"
        or (v["loss.name"] == "class_balanced" and v["loss.base"] == "focal")
    ),
    "loss.tau": lambda v: v["loss.name"] == "logit_adjusted",
    "loss.beta": lambda v: v["loss.name"] in ("class_balanced", "ldam"),
    "loss.base": lambda v: v["loss.name"] == "class_balanced",
    "loss.max_margin": lambda v: v["loss.name"] == "ldam",
    "loss.scale": lambda v: v["loss.name"] == "ldam",
    "loss.drw_epoch": lambda v: v["loss.name"] == "ldam",
    "loss.weights": _weights_active,
    WEIGHT_POWER: _weights_active,
    "sampler.power": lambda v: v["sampler.kind"] == "balanced",
    "sampler.buffer_rows": lambda v: v["sampler.mode"] == "stream",
    "model.C": lambda v: v["model.kind"] == "linear",
    "model.solver": lambda v: v["model.kind"] == "linear",
}
# a linear or gbdt fit is one solve: the loss (but its class weights), the sampler and the
# schedule do not change it
for _key in ("loss.name", "sampler.kind", "train.lr", "train.batch_size", "train.weight_decay"):
    ACTIVE[_key] = _not_linear(ACTIVE.get(_key, lambda v: True))
for _key in ("loss.gamma", "loss.tau", "sampler.power"):
    ACTIVE[_key] = _not_linear(ACTIVE[_key])


def trial_values(spec: JobSpec, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Every searchable key's value in a trial: the spec's, replaced by the sampled knobs."""
    values = {
        f"{section}.{f.name}": getattr(getattr(spec, section), f.name)
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    values[WEIGHT_POWER] = None
    values.update(knobs)
    return values


def is_active(key: str, values: Mapping[str, Any]) -> bool:
    """Whether the knob ``key`` changes a trial with these ``values`` (see ``ACTIVE``)."""
    rule = ACTIVE.get(key)
    return True if rule is None else bool(rule(values))


def power_weights(counts: np.ndarray, p: float) -> np.ndarray:
    """w_c ∝ n_c^-p, scaled so that the mean weight per row is 1 (classes with no rows: 0)."""
    n = np.asarray(counts, dtype=np.float64)
    w = np.where(n > 0, np.power(np.maximum(n, 1), -float(p)), 0.0)
    return w * n.sum() / (w * n).sum()


def apply_knobs(spec: JobSpec, knobs: Mapping[str, Any], counts: np.ndarray, keys: list[str]):
    """The trial's spec: the spec with the sampled knobs set (sections rebuilt and re-checked).

    ``counts`` are the rows per class the trial trains on (``keys`` their labels): the
    ``loss.weight_power`` knob becomes explicit ``loss.weights`` computed from them.
    """
    values = trial_values(spec, knobs)
    changes: dict[str, dict[str, Any]] = {}
    for key, value in knobs.items():
        if key == WEIGHT_POWER:
            continue
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = value
    if WEIGHT_POWER in knobs and is_active(WEIGHT_POWER, values):
        w = power_weights(counts, knobs[WEIGHT_POWER])
        changes.setdefault("loss", {})["weights"] = dict(zip(keys, w.tolist()))
    elif values["loss.name"] == "weighted_ce" and values["loss.weights"] is None:
        changes.setdefault("loss", {})["weights"] = "inverse"  # weighted_ce needs weights
    out = spec
    for section, change in changes.items():
        current = asdict(getattr(spec, section))
        try:
            new = build_section(SECTIONS[section], {**current, **change})
        except SpecError as e:
            raise ValueError(f"trial knobs {dict(knobs)}: {section}.{e.key}: {e.reason}") from None
        out = replace(out, **{section: new})
    return out


# --------------------------------------------------------------------------------------------
# Tune domains (JSON-encoding choices Optuna cannot hold)


def _encoded(d: Dist) -> bool:
    """Values Tune would read as nested spaces and Optuna cannot hold travel as JSON text."""
    return d.form in ("choice", "grid", "fixed") and not all(_is_scalar(v) for v in d.args)


def to_param_space(space: Mapping[str, Dist]) -> dict[str, Any]:
    """Tune's ``param_space`` for ``space``; non-scalar values become JSON strings."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.items():
        args = [json.dumps(v) for v in d.args] if _encoded(d) else list(d.args)
        if d.form == "fixed":
            out[key] = args[0]
        elif d.form == "choice":
            out[key] = tune.choice(args)
        elif d.form == "grid":
            out[key] = tune.grid_search(args)
        elif d.form == "uniform":
            out[key] = tune.uniform(*args)
        elif d.form == "loguniform":
            out[key] = tune.loguniform(*args)
        elif d.form == "randint":
            out[key] = tune.randint(*args)
        else:  # pragma: no cover - parse_dist only makes the forms above
            raise AssertionError(d.form)
    return out


def decode_knobs(config: Mapping[str, Any], space: Mapping[str, Dist]) -> dict[str, Any]:
    """A trial's Tune config -> the knobs' values (JSON-encoded choices decoded)."""
    knobs = {}
    for key, d in space.items():
        v = config[key]
        knobs[key] = json.loads(v) if _encoded(d) and isinstance(v, str) else v
    return knobs


def grid_size(space: Mapping[str, Dist]) -> int:
    return math.prod(len(d.args) for d in space.values() if d is not None and d.form == "grid")


# --------------------------------------------------------------------------------------------
# how many trials at once


@dataclass(frozen=True)
class TrialResources:
    max_concurrent: int
    cpus_per_worker: float


def trial_resources(
    cluster: Mapping[str, float],
    train: TrainSpec,
    *,
    streaming: bool,
    trials: int,
    limit: int | None = None,
    light: bool = False,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> TrialResources:
    """How many trials run at once and the CPUs of each trial's Train workers.

    ``nodes``: each node's resources; a worker's CPUs never exceed what one node can give it
    (``engine.train.worker_cpu_cap``: with GPUs, the CPUs per GPU of a GPU node), since a
    worker that fits on no node waits forever, and GPU workers beyond the cluster's GPUs are
    refused.

    ``light``: one-worker trials of small models (an MLP head, the lexical model) that need
    less than a CPU each: they are packed ``LIGHT_TRIAL_CPU`` apart instead of 1 CPU apart.

    One CPU is kept for Ray Data and resampling tasks (on a 1-CPU cluster, half of it when the
    workers stream). The rest holds every running trial: its 0.01-CPU trial actor and
    ``num_workers`` workers at ``train.cpus_per_worker`` (default: 1 CPU each, shrunk to fit
    ``limit`` trials when ``tune.max_concurrent_trials`` asks for more than that; never below
    0.05). With ``use_gpu`` a trial needs ``num_workers`` GPUs.

    Raises:
        ValueError: when the trials cannot all fit: an explicit ``limit`` with an explicit
            ``cpus_per_worker`` or with too few GPUs, or a share below 0.05 CPU (trainers
            would wait for resources that are never freed and time out).
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    nw = train.num_workers
    reserve = 1.0 if cpus >= 2 else (cpus / 2 if streaming else 0.0)
    usable = max(cpus - reserve, 0.0)
    eps = 1e-9
    if train.cpus_per_worker is not None:
        fit = int((usable + eps) // (nw * train.cpus_per_worker + TRIAL_CPU))
    else:  # 1 CPU per worker (light trials: less), less the trial actors' share
        per = LIGHT_TRIAL_CPU if light and nw == 1 and not train.use_gpu else 1.0
        fit = int((usable + eps) // (nw * per))
    n = max(1, fit)
    if train.use_gpu:
        n = min(n, max(1, int((gpus + eps) // nw)))
    n = min(n, max(1, trials))
    if limit is not None:
        if train.cpus_per_worker is not None and limit > max(fit, 1):
            raise ValueError(
                f"tune.max_concurrent_trials={limit} trials of {nw} worker(s) at "
                f"train.cpus_per_worker={train.cpus_per_worker} need "
                f"{limit * (nw * train.cpus_per_worker + TRIAL_CPU):g} CPUs, the cluster has "
                f"{cpus:g} ({reserve:g} kept for data tasks); lower one of them, or set "
                "train.cpus_per_worker=null to derive it"
            )
        if train.use_gpu and limit * nw > gpus + eps:
            raise ValueError(
                f"tune.max_concurrent_trials={limit} trials of {nw} GPU worker(s) need "
                f"{limit * nw} GPUs, the cluster has {gpus:g}"
            )
        n = min(limit, max(1, trials))
    if train.cpus_per_worker is not None:
        return TrialResources(n, float(train.cpus_per_worker))
    share = (usable - n * TRIAL_CPU) / (n * nw) if usable > 0 else 0.0
    if nodes is not None:
        from engine.train import check_gpu_workers, worker_cpu_cap

        check_gpu_workers(nodes, train)
        cap = worker_cpu_cap(nodes, train.use_gpu)
        share = min(share, cap if cap is not None else 1.0)
    share = math.floor(share * 100) / 100  # round down: the sum must fit
    if share < 0.05:
        raise ValueError(
            f"{n} trial(s) of {nw} worker(s) leave {share:g} CPU per worker on a cluster of "
            f"{cpus:g} CPUs ({reserve:g} kept for data tasks); lower tune.max_concurrent_trials "
            "or train.num_workers"
        )
    return TrialResources(n, float(min(share, 8.0)))


def trial_request(train: TrainSpec, res: TrialResources) -> dict[str, float]:
    """What Tune reserves for a trial: a one-worker trial trains in its own process and holds
    its worker's CPUs (and GPU); a larger one only drives a ``TorchTrainer``, whose workers
    hold theirs."""
    if train.num_workers != 1:
        return {"cpu": TRIAL_CPU}
    return {"cpu": res.cpus_per_worker, **({"gpu": 1} if train.use_gpu else {})}


# --------------------------------------------------------------------------------------------
# one trial


def _trial_train_data(spec: JobSpec, resample_spec: ResampleSpec, out: str, keys: list[str]):
    """(Source, counts) of the train split resampled with the trial's own resample section,
    into ``out/resampled`` (reused when a complete one is there: a retried trial)."""
    from engine.config import model_data
    from engine.data import (
        call_with_task_cpus,
        data_task_cpus,
        read_schema,
        resolve_columns,
        resolve_source,
    )
    from engine.resample import resample

    run = RunDir(spec.run_dir)
    plain = resolve_source(run.model_split("train"))
    counts = run.require_splits()["counts"]["train"]
    if resample_spec.method == "none":
        return plain, np.array([counts[k] for k in keys])
    mine = RunDir(out)  # the trial's folder holds its own resampled/ as a run folder does
    if mine.resampled_counts(keys) is None:
        import ray

        schema = read_schema(plain)
        cols = resolve_columns(schema, model_data(spec), where=plain.files[0])
        # Tune's trial placement group (0.01 CPU) captures the trial's child tasks; a task
        # scheduled outside it lets the resampling tasks use the cluster's CPUs (as much of
        # one each as the trial's own data tasks).
        task = ray.remote(num_cpus=0)(call_with_task_cpus).options(scheduling_strategy="DEFAULT")
        ray.get(
            task.remote(
                data_task_cpus(),
                resample,
                plain,
                cols,
                run.label_map(),
                counts,
                resample_spec,
                mine.resampled,
                schema,
                stats_spec=spec.stats,
                stats_extra={"source": plain.path},
            )
        )
    return resolve_source(mine.resampled_train), mine.resampled_counts(keys)


def _append_attempt(out: str, knobs: Mapping[str, Any]) -> None:
    with open(os.path.join(out, "attempts.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.time(), "pid": os.getpid(), "knobs": knobs}) + "\n")


def run_trial(config: dict[str, Any], *, job: dict[str, Any], space: dict[str, Any]) -> None:
    """A Tune trial: the job's spec with this trial's knobs, trained into
    ``RUN_DIR/tune/trials/<trial_id>/``. One worker trains in the trial's own process
    (``fit_in_process``, no worker group to start); more workers train under a ``TorchTrainer``
    (a ``LightGBMTrainer`` for gbdt; ``fit``) whose reports reach Tune through
    ``TuneReportCallback``. ``job`` is ``asdict(spec)`` (``train.cpus_per_worker`` derived by
    ``trial_resources``, ``train.metric`` = ``tune.metric``), ``space`` the resolved space as
    {key: [form, args]}."""
    import ray.data
    from ray import tune

    from engine.data import fractional_tasks
    from engine.io import join
    from engine.remote import local_folder, push_enclosing

    # one progress bar per Ray Data execution of every trial drowns Tune's own progress
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = build_section(JobSpec, job)
    dists = {k: Dist(form, tuple(args)) for k, (form, args) in space.items()}
    knobs = decode_knobs(config, dists)
    trial_id = tune.get_context().get_trial_id()
    run = RunDir(spec.run_dir)
    # in a bucket, the trial writes a mirror of its folder on this node: pushed after each
    # attempt's record, each kept checkpoint (LocalSession) and when the trial ends
    with local_folder(join(run.tune, TRIALS, trial_id)) as out:
        os.makedirs(out, exist_ok=True)
        _append_attempt(out, knobs)
        push_enclosing(out)
        # the trials hold parts of the nodes' CPUs: the data tasks a trial starts (its reads,
        # resampling, document frequencies) ask for a fraction of one, or none might start
        with fractional_tasks():
            _trial(spec, knobs, run, out)


def _trial(spec: JobSpec, knobs: dict[str, Any], run: RunDir, out: str) -> None:
    """One attempt of a trial with ``knobs`` into its local folder ``out``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from engine.train import fit, fit_in_process, train_source, trained_spec

    done = os.path.join(out, rundir.METRICS)
    if os.path.exists(done):
        # fit finished but Tune never recorded it (the search was interrupted): report again
        with open(done) as f:
            for row in json.load(f):
                tune.report({k: v for k, v in row.items() if k != "val_recall"})
        return

    keys = run.label_map().keys
    resample_spec = build_section(
        ResampleSpec,
        {
            **asdict(spec.resample),
            **{k.partition(".")[2]: v for k, v in knobs.items() if k.startswith("resample.")},
        },
    )
    train_data = None
    if resample_spec != spec.resample:
        train_data = _trial_train_data(spec, resample_spec, out, keys)
        counts = train_data[1]
    else:
        counts = train_source(run, keys)[1]
    trial = apply_knobs(spec, knobs, counts, keys)
    # the run's splits were prepared with spec.resample: fit checks that section
    trial = replace(trial, resample=spec.resample)
    trial = trained_spec(trial)  # linear: one process; gbdt: CPU workers
    if trial.train.num_workers == 1:
        fit_in_process(trial, out_dir=out, train_data=train_data)
    else:
        fit(trial, out_dir=out, callbacks=[TuneReportCallback()], train_data=train_data)


# --------------------------------------------------------------------------------------------
# the search


@dataclass(frozen=True)
class TuneResult:
    results_path: str
    table: Any  # pandas.DataFrame, best trial first
    best: dict[str, Any] | None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # tune/summary.json


def _mode(metric: str) -> str:
    return "min" if metric == "val_loss" else "max"


def _search_record(spec: JobSpec, space: Mapping[str, Dist]) -> dict[str, Any]:
    """What must match for an interrupted search to be restored."""
    d = spec_record(spec)
    rec = {s: d[s] for s in ("data", "stats", "split", "resample", "embed", *SECTIONS, "tune")}
    rec["space"] = {k: [dd.form, list(dd.args)] for k, dd in space.items()}
    return json.loads(json.dumps(rec, default=repr))


def _export_best(
    trial_dir: str,
    rows: list[dict[str, Any]],
    metric: str,
    manifest: Callable[[str], None] = lambda folder: None,
) -> str | None:
    """``trial_dir/best``: fit's export, or (a trial stopped early) its best checkpoint's model
    (a Train checkpoint in ``rows``, or one an in-process trial kept in its folder)."""
    from engine.remote import durable, enclosing, fetch
    from engine.session import kept_checkpoints

    best = os.path.join(trial_dir, "best")
    if os.path.isdir(best):
        return best
    sign = -1 if _mode(metric) == "min" else 1
    found = kept_checkpoints(trial_dir)
    if not found and enclosing(trial_dir) is not None:  # a run's mirror leaves them in the bucket
        with contextlib.suppress(FileNotFoundError):
            found = kept_checkpoints(trial_dir, fetch(f"{durable(trial_dir)}/checkpoints"))
    kept = [{**m, "checkpoint_path": p} for p, m in found]
    ranked = sorted(
        (r for r in [*rows, *kept] if r.get("checkpoint_path") and _finite(r.get(metric))),
        key=lambda r: -sign * r[metric],
    )
    for r in ranked:
        src = os.path.join(str(r["checkpoint_path"]), "model")
        if os.path.isdir(src):
            tmp = best + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            manifest(tmp)
            os.replace(tmp, best)
            return best
    return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def results_table(grid, spec: JobSpec, space: Mapping[str, Dist], trials_dir: str):
    """One row per trial of a Tune ``ResultGrid``, best first (errors last)."""
    import pandas as pd

    from engine.remote import durable
    from engine.train import complete_model_folder

    metric = spec.tune.metric
    rows = []
    for result in grid:
        trial_id = result.metrics.get("trial_id")
        knobs = decode_knobs(result.config, space)
        values = trial_values(spec, knobs)
        trial_dir = os.path.join(trials_dir, trial_id)
        history: list[dict[str, Any]] = []
        finished = os.path.join(trial_dir, rundir.METRICS)
        df = result.metrics_dataframe
        if os.path.exists(finished):  # fit's own history: whole even across restarts
            with open(finished) as f:
                history = json.load(f)
        elif df is not None and len(df) and "epoch" in df.columns:
            df = df[df["epoch"].notna()].drop_duplicates("epoch", keep="last")
            history = df.sort_values("epoch").to_dict("records")
        kind = str(values.get("model.kind", spec.model.kind)).strip('"')
        path = values.get("model.path", spec.model.path)
        trial = replace(spec, model=replace(spec.model, kind=kind, path=path))
        best_dir = (
            _export_best(trial_dir, history, metric, lambda f, t=trial: complete_model_folder(f, t))
            if history
            else None
        )
        scored = [r for r in history if _finite(r.get(metric))]
        best_row = (
            (min if _mode(metric) == "min" else max)(scored, key=lambda r: r[metric])
            if scored
            else {}
        )
        attempts_file = os.path.join(trial_dir, "attempts.jsonl")
        attempts = 0
        if os.path.exists(attempts_file):
            with open(attempts_file) as f:
                attempts = sum(1 for _ in f)
        if result.error is not None:
            status = "error"
        elif len(history) >= spec.train.epochs or os.path.exists(finished):
            status = "completed"  # (a linear fit is one solve: one row, then its export)
        else:
            status = "stopped"
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, "attempts": attempts}
        for key, d in space.items():
            v = knobs[key]
            if _encoded(d) or not _is_scalar(v):
                v = json.dumps(v, sort_keys=True)  # a column of JSON text, like Tune's config
            row[key] = v if is_active(key, values) else None
        for m in METRICS:
            row[m] = best_row.get(m)
        row["best_epoch"] = int(best_row["epoch"]) + 1 if best_row else None
        row["epochs"] = len(history)
        row["best_dir"] = durable(best_dir) if best_dir else None  # as every node reaches it
        row["error"] = error_line(result.error)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not len(table):
        return table
    for key in space:  # a knob column of mixed types is stored as JSON text
        col = table[key]
        kinds = {type(v) for v in col if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[key] = [None if v is None else json.dumps(v) for v in col]
    order = table[metric].astype(float)
    table = table.assign(
        _e=table["status"] == "error", _k=order if _mode(metric) == "min" else -order
    )
    table = table.sort_values(["_e", "_k", "trial_id"], na_position="last")
    return table.drop(columns=["_e", "_k"]).reset_index(drop=True)


def _write_results(table, tune_dir: str) -> str:
    import pyarrow as pa

    from engine.io import write_atomic, write_parquet_atomic

    path = os.path.join(tune_dir, rundir.RESULTS)
    csv_text = table.to_csv(index=False).encode()

    def write_csv(fs, tmp):
        with fs.open_output_stream(tmp) as f:
            f.write(csv_text)

    write_atomic(os.path.join(tune_dir, RESULTS_CSV), write_csv)
    write_parquet_atomic(path, pa.Table.from_pandas(table, preserve_index=False))
    return path


def _state_api_probe() -> str | None:
    from ray.util.state import list_nodes

    try:
        list_nodes(limit=1, timeout=10)
    except Exception as e:  # what Train's PlacementGroupCleaner would hit
        return f"{type(e).__name__}: {e}"
    return None


def check_trainer_cleanup() -> None:
    """Fail early where Ray Train could not free the placement group of a trial Tune kills.

    Train's detached ``PlacementGroupCleaner`` watches each trainer through the state API from
    a worker; without the dashboard, or when the worker cannot tell this cluster from another
    Ray on the machine, it fails and every early-stopped trial keeps its CPUs: the next trials
    wait forever. The same call is tried here, from a worker.
    """
    import ray

    probe = ray.remote(num_cpus=0)(_state_api_probe).options(scheduling_strategy="DEFAULT")
    error = ray.get(probe.remote())
    if error is not None:
        raise ValueError(
            "Tune trials that run Ray Train need Ray's state API in the workers (Train frees a "
            "stopped trial's CPUs through it), and it failed there: "
            f"{error.splitlines()[0]}. Start Ray with the dashboard (include_dashboard=True) "
            "and give the workers RAY_ADDRESS (runtime_env env_vars) when other Ray instances "
            "run on this machine; `raybalance tune` does both for its embedded Ray."
        )


def trial_progress(total: int, metric: str):
    """A Tune callback on the driver: a progress event per finished trial (finished of
    ``total``, the best ``metric`` so far)."""
    from ray.tune import Callback

    from engine.progress import progress_event

    sign = -1.0 if _mode(metric) == "min" else 1.0

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.best: float | None = None
            self.ended = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            v = result.get(metric)
            if _finite(v) and (self.best is None or sign * v > sign * self.best):
                self.best = float(v)

        def _ended(self) -> None:
            self.ended += 1
            best = "-" if self.best is None else f"{self.best:.4f}"
            progress_event("tune", self.ended, max(total, self.ended), f"best {metric} {best}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._ended()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._ended()

    return TrialProgress()


def new_tuner(
    trainable: Any,
    t: TuneSpec,
    epochs: int,
    space: Mapping[str, Dist],
    max_concurrent: int,
    storage: str,
    started_at: float | None = None,
):
    """The ``Tuner`` of a new search: ``t.scheduler``'s searcher and scheduler over ``space``,
    at most ``max_concurrent`` trials at once, its experiment in ``storage/tune``; no trial
    starts once ``t.time_budget_s`` has passed since ``started_at`` (default: now)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import SearchGenerator

    from engine.budget import BudgetedSearch

    scheduler = (
        FIFOScheduler()
        if t.scheduler == "fifo"
        # max_t one past the last epoch: ASHA stops (kills) a trial that reaches max_t, and a
        # trial that ends by itself lets fit export its best model and metrics
        else ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs + 1,
            grace_period=min(t.grace_period, epochs),
        )
    )
    searcher, param_space = _searcher(t, space, max_concurrent)
    planned = t.num_samples * grid_size(space)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=_mode(t.metric),
            # a search generator's num_samples counts trials; the grid's repeats the grid
            num_samples=planned if isinstance(searcher, SearchGenerator) else t.num_samples,
            scheduler=scheduler,
            search_alg=BudgetedSearch(
                searcher, t.time_budget_s, time.time() if started_at is None else started_at
            ),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            # a restored trial resumes from its latest checkpoint and a stopped one is exported
            # from what its own session kept: Tune need not keep every epoch's (a lexical
            # model's is hundreds of MB)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=TUNE_KEEPS),
            # the experiment state (which trials finished) is staged in Ray's session dir and
            # copied to storage_path every sync_period (default 300 s): a resume after a crash
            # only knows what was copied
            sync_config=tune.SyncConfig(sync_period=SYNC_PERIOD_S),
            verbose=1 if verbose() else 0,  # Tune's tables only with --verbose
            callbacks=[trial_progress(planned, t.metric)],
        ),
    )


def _searcher(t: TuneSpec, space: Mapping[str, Dist], max_concurrent: int):
    """(search algorithm, Tune's param_space) for ``t``: Optuna's TPE, the kinds' time share
    (``engine.share``, which draws every knob itself) or Tune's grid and random draws."""
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if t.scheduler == "tpe":
        from ray.tune.search.optuna import OptunaSearch

        optuna = ConcurrencyLimiter(OptunaSearch(seed=t.seed), max_concurrent)
        return SearchGenerator(optuna), to_param_space(space)
    if t.kind_share == "time":
        from engine.share import KindShare

        share = KindShare(space, seed=t.seed, encoded=lambda key: _encoded(space[key]))
        return SearchGenerator(ConcurrencyLimiter(share, max_concurrent)), {}
    # a SearchGenerator ignores TuneConfig.max_concurrent_trials: limit it here
    grid = BasicVariantGenerator(random_state=t.seed, max_concurrent=max_concurrent)
    return grid, to_param_space(space)


def _search_inputs(spec: JobSpec) -> tuple[JobSpec, dict[str, int], dict[str, Dist]]:
    """``spec`` as a search runs it (local run_dir, absolute model path), the train split's
    class counts and the resolved search space.

    Raises:
        ValueError: an unknown ``tune.metric`` or no prepared splits.
    """
    from engine.io import is_uri
    from engine.train import train_source

    if spec.tune.metric not in METRICS:
        raise ValueError(f"tune.metric={spec.tune.metric!r}: use one of {list(METRICS)}")
    run_dir = spec.run_dir if is_uri(spec.run_dir) else os.path.abspath(spec.run_dir)
    model = spec.model
    if os.path.isdir(model.path) and not os.path.isabs(model.path):
        model = replace(model, path=os.path.abspath(model.path))  # trials run in their own cwd
    spec = replace(spec, run_dir=run_dir, model=model)
    run = RunDir(run_dir)
    run.require_splits()
    counts = train_source(run, run.label_map().keys)[1]
    return spec, counts, resolve_search_space(spec, counts)


def finished_search_matches(spec: JobSpec) -> bool:
    """Whether ``RUN_DIR/tune`` holds a finished search (``results.parquet``) made from this
    very spec and search space — by ``raybalance tune`` or by an earlier pipeline run."""
    from engine.io import join, read_json

    spec, _, space = _search_inputs(spec)
    run = RunDir(spec.run_dir)
    record = join(run.tune, SEARCH_RECORD)
    if not (run.exists(rundir.TUNE, rundir.RESULTS) and run.exists(rundir.TUNE, SEARCH_RECORD)):
        return False
    return read_json(record) == _search_record(spec, space)


def _light(spec: JobSpec, space: Mapping[str, Dist]) -> bool:
    """Whether every trial trains a small model (an MLP head or the lexical model)."""
    d = space.get("model.kind")
    kinds = d.args if d is not None else (spec.model.kind,)
    return set(kinds) <= {"mlp", "lexical", "linear", "gbdt"}


def _clear_finished(tune_dir: str, overwrite: bool) -> None:
    """Refuse a finished search without ``overwrite``; with it, clear the folder."""
    from engine.io import join
    from engine.remote import clear, durable, remove

    if os.path.exists(os.path.join(tune_dir, rundir.RESULTS)):
        if not overwrite:
            raise ValueError(
                f"{durable(tune_dir)} holds a finished search; pass --overwrite to search again"
            )
    elif not overwrite:
        return
    clear(tune_dir)
    for what in ("ray", TRIALS):  # Tune's storage, and the trials' checkpoints a mirror left
        remove(join(durable(tune_dir), what))


def _check_restorable(tune_dir: str, experiment: str, record: dict[str, Any]) -> bool:
    """Whether an interrupted search of this very spec and space can be resumed (another's is
    refused); when none can, clear what a search that never saved its state left."""
    from ray import tune

    from engine.io import join, read_json, write_json_atomic
    from engine.remote import durable, remove

    record_path = join(tune_dir, SEARCH_RECORD)
    if tune.Tuner.can_restore(experiment):
        if not os.path.exists(record_path) or read_json(record_path) != record:
            raise ValueError(
                f"{durable(tune_dir)} holds an interrupted search made with another spec; pass "
                "--overwrite to start a new search"
            )
        return True
    remove(experiment)
    shutil.rmtree(join(tune_dir, TRIALS), ignore_errors=True)
    remove(join(durable(tune_dir), TRIALS))  # (in the bucket, for a mirror)
    write_json_atomic(record_path, record)
    return False


def search(spec: JobSpec, *, overwrite: bool = False) -> TuneResult:
    """Run (or resume) the Tune search of ``spec.tune`` over the run's prepared splits.

    Writes ``RUN_DIR/tune/`` (see the module docstring) and returns the results table.

    Needs a Ray whose workers reach the state API (``check_trainer_cleanup``): the dashboard
    on, and ``RAY_ADDRESS`` in the workers when other Ray instances share the machine.

    Raises:
        ValueError: no prepared splits, a finished search without ``overwrite``, an
            interrupted search made with another spec, trials that cannot all fit on the
            cluster, or workers without the state API.
    """
    from engine.remote import local_folder

    t = spec.tune
    spec, _, space = _search_inputs(spec)
    run = RunDir(spec.run_dir)
    lazy = (KEPT_CHECKPOINTS,)  # in a bucket: fetched only to export a trial stopped early
    with run.lock("raybalance tune"), local_folder(run.tune, lazy) as tune_dir:
        return _search(spec, t, space, overwrite, tune_dir)


def _search(
    spec: JobSpec, t: TuneSpec, space: dict[str, Dist], overwrite: bool, tune_dir: str
) -> TuneResult:
    """The search into the local ``tune_dir`` (a mirror when the run is in a bucket: the
    trials write their folders and Tune its state into the bucket, from any node)."""
    import pandas as pd
    import ray
    from ray import tune

    from engine.io import join
    from engine.remote import durable, sync_enclosing

    _clear_finished(tune_dir, overwrite)
    check_trainer_cleanup()
    modes = space["sampler.mode"].args if "sampler.mode" in space else (spec.sampler.mode,)
    from engine.train import live_nodes

    res = trial_resources(
        ray.cluster_resources(),
        spec.train,
        nodes=live_nodes(),
        streaming="stream" in modes,
        trials=t.num_samples * grid_size(space),
        limit=t.max_concurrent_trials,
        light=_light(spec, space),
    )
    train = replace(spec.train, cpus_per_worker=res.cpus_per_worker, metric=t.metric)
    job = asdict(replace(spec, train=train, run_dir=durable(spec.run_dir)))
    storage = join(durable(tune_dir), "ray")
    experiment = join(storage, EXPERIMENT)
    restore = _check_restorable(tune_dir, experiment, _search_record(spec, space))
    os.makedirs(join(tune_dir, TRIALS), exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, job=job, space={k: [d.form, list(d.args)] for k, d in space.items()}
        ),
        trial_request(spec.train, res),
    )
    log.info(
        "tune: %d trial(s), %d at once, %g CPU per Train worker, scheduler %s, metric %s",
        t.num_samples * grid_size(space),
        res.max_concurrent,
        res.cpus_per_worker,
        t.scheduler,
        t.metric,
    )
    if restore:
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        tuner = new_tuner(trainable, t, spec.train.epochs, space, res.max_concurrent, storage)
    sync_enclosing(tune_dir)  # the search record up, before trials read it
    grid = tuner.fit()
    sync_enclosing(tune_dir)  # the trials' folders down
    table = results_table(grid, spec, space, join(tune_dir, TRIALS))
    path = _write_results(table, tune_dir)
    kinds = list(table["model.kind"]) if "model.kind" in table else []
    summary = _write_summary(t, t.num_samples * grid_size(space), len(table), tune_dir, kinds)
    ok = table[table["status"] != "error"] if len(table) else table
    best = ok.iloc[0].to_dict() if len(ok) and pd.notna(ok.iloc[0][t.metric]) else None
    return TuneResult(path, table, best, summary)


def _write_summary(
    t: TuneSpec, planned: int, ran: int, tune_dir: str, kinds: Sequence[Any] = ()
) -> dict[str, Any]:
    """``tune/summary.json``: trials planned and run (per model kind, from the results' kind
    of each trial), and whether the time budget stopped the search from starting the rest."""
    from engine.io import join, write_json_atomic

    spent = t.time_budget_s is not None and ran < planned
    per_kind = dict(Counter(str(k).strip('"') for k in kinds))
    summary = {
        "trials_planned": planned,
        "trials_run": ran,
        "trials_per_kind": per_kind,
        "kind_share": t.kind_share,
        "time_budget_s": t.time_budget_s,
        "budget_spent": spent,
        "note": (
            f"the search's time budget (tune.time_budget_s={t.time_budget_s:g}) was spent after "
            f"{ran} of {planned} trials; {planned - ran} were not started"
            if spent
            else None
        ),
    }
    if spent:
        log.warning("tune: %s", summary["note"])
    write_json_atomic(join(tune_dir, SUMMARY), summary)
    return summary
