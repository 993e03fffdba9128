"""The whole pipeline in one call: prepare → baseline → tune → ensemble + thresholds → report.

    raybalance run jobs/configs/demo.yaml [--set KEY=VALUE]... [--overwrite]
    result = run_pipeline(spec)            # RUN_DIR/report/metrics.json, report.html
    for row in summary_rows(result.metrics): ...

Stages and their complete artifacts (a stage whose artifact exists and was made from the same
spec is skipped, so a rerun after a crash continues where it stopped):

- ``prepare``   stats, exact splits, embeddings, resampling (``engine.prepare``; it skips its
  own up-to-date steps).
- ``baseline``  plain cross-entropy, natural batches, the plain train split (no resampling),
  the spec's model and training settings → ``RUN_DIR/baseline/`` (``metrics.json`` last).
- ``tune``      the search (``engine.tune.search``; an interrupted one resumes) →
  ``RUN_DIR/tune/results.parquet``.
- ``ensemble``  the ``ensemble.top_k`` best trials scored on val and test by one Ray Data pass
  per split (the baseline with them), combined and temperature-scaled on val, thresholds
  fitted on val → the artifact ``RUN_DIR/ensemble/`` (``engine.ensemble``) and every model's
  probabilities ``RUN_DIR/scores.safetensors``.
- ``report``    baseline (argmax) vs best single tuned model (argmax) vs ensemble + thresholds
  on test → ``RUN_DIR/report/`` (``metrics.json``: ``test.{baseline, best_single, ensemble}``).

``RUN_DIR/pipeline.json`` records a digest per finished stage: the spec sections it depends on
and the digest of the stage before it. A stage whose digest changed is redone — the derived
stages (ensemble, report) on their own; the trained ones (baseline, tune) only with
``overwrite``, otherwise the run stops naming the stage and what changed. A search finished by
``raybalance tune`` on the same spec and space (``engine.tune.finished_search_matches``) is
taken as the tune stage.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine import artifact, remote, report, rundir
from engine.config import (
    STAGE_SECTIONS,
    JobSpec,
    LossSpec,
    SamplerSpec,
    needs_embedding,
    spec_record,
)
from engine.io import (
    is_uri,
    json_digest,
    path_exists,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.rundir import RunDir

log = logging.getLogger("raybalance")

STAGES = tuple(STAGE_SECTIONS)  # prepare, baseline, tune, ensemble, report
TRAINED = ("baseline", "tune")  # redone only with overwrite
SECTIONS = STAGE_SECTIONS  # the spec sections each stage depends on (besides the stage before)
STATE = rundir.PIPELINE
SCORES = rundir.SCORES
BASELINE_DIR = rundir.BASELINE


@dataclass
class PipelineResult:
    run_dir: str
    metrics: dict[str, Any]  # the content of report/metrics.json
    report: str  # report.html
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    seconds: dict[str, float] = field(default_factory=dict)


def prepared_digest(run_dir: str) -> str:
    """``RunDir.prepared_digest`` of ``run_dir``."""
    return RunDir(run_dir).prepared_digest()


def stage_digests(spec: JobSpec, prepared: str) -> dict[str, str]:
    """Each stage's digest: its spec sections chained with the previous stage's digest
    (``prepared``: ``prepared_digest`` of the run directory)."""
    d = spec_record(spec)
    out, prev = {}, prepared
    for stage in STAGES:
        prev = out[stage] = json_digest(prev, {s: d[s] for s in SECTIONS[stage]})
    return out


def baseline_spec(spec: JobSpec) -> JobSpec:
    """The plain baseline: cross-entropy, natural batches (model and training as the spec)."""
    return replace(spec, loss=LossSpec(name="ce"), sampler=SamplerSpec(kind="none"))


# --------------------------------------------------------------------------------------------
# stages


def _baseline(spec: JobSpec, run: RunDir) -> str:
    from engine.data import resolve_source
    from engine.train import train_model

    counts = run.class_counts("train", run.label_map().keys)
    plain = resolve_source(run.model_split("train"))  # never the resampled split
    result = train_model(
        baseline_spec(spec), overwrite=True, out_dir=run.baseline, train_data=(plain, counts)
    )
    return result.best_dir


def _save_scores(path: str, scores: dict[str, Any], names: list[str]) -> None:
    from safetensors.numpy import save

    tensors = {}
    for split, s in scores.items():
        tensors[f"{split}/y"] = np.ascontiguousarray(s.y, dtype=np.int64)
        for name, p in s.proba.items():  # (out of fold: the candidates and the ensemble)
            tensors[f"{split}/{name}"] = np.ascontiguousarray(p, dtype=np.float64)
    write_bytes_atomic(path, save(tensors, metadata={"models": json.dumps(names)}))


def load_scores(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"y": ..., model: proba}}`` from ``RUN_DIR/scores.safetensors``."""
    from safetensors.numpy import load_file

    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(path).items():
        split, _, name = key.partition("/")
        out.setdefault(split, {})[name] = value
    return out


def _members(spec: JobSpec, run: RunDir) -> list[Any]:
    """The ``ensemble.top_k`` best trials with a model, as model references."""
    import pandas as pd

    from engine.ensemble import model_ref, select_members

    metric = spec.tune.metric
    per_kind = spec.ensemble.candidates == "per_kind"
    rows = select_members(pd.read_parquet(run.tune_results), spec.ensemble.top_k, metric, per_kind)
    if len(rows) < spec.ensemble.top_k:
        log.warning(
            "ensemble: %d trial(s) with a model, fewer than ensemble.top_k=%d",
            len(rows),
            spec.ensemble.top_k,
        )
    members = []
    for i, r in enumerate(rows):
        max_length = r.get("model.max_length")
        members.append(
            model_ref(
                spec.data,
                f"m{i + 1}",
                str(r["best_dir"]),
                source=f"trial {r['trial_id']}",
                val_metric=float(r[metric]),
                trained_as=str(r.get("model.kind") or spec.model.kind).strip('"'),
                max_length=int(max_length) if _is_num(max_length) else spec.model.max_length,
            )
        )
    return members


def _select(spec: JobSpec, members: list[Any], y: np.ndarray, probas: dict[str, Any]) -> list[Any]:
    """``ensemble.selection: greedy``: the members whose calibrated mean raises the decision
    metric on ``y`` (val, or the out-of-fold rows)."""
    from engine.ensemble import CRITERIA, member_temperatures, select_greedy, temperature_scale

    if spec.ensemble.selection != "greedy" or len(members) < 2:
        return members
    ps = [probas[m.name] for m in members]
    if spec.ensemble.temperature:  # members are averaged after their own calibration
        ts = member_temperatures(y, ps)
        ps = [temperature_scale(p, t) for p, t in zip(ps, ts)]
    keep = select_greedy(
        y,
        ps,
        criterion=CRITERIA.get(spec.tune.metric, "nll"),
        temperature=spec.ensemble.temperature,
    )
    return [members[i] for i in keep]


@dataclass
class _Decided:
    """The ensemble's members (as the artifact holds them), its combination and thresholds."""

    members: list[Any]  # the chosen candidates
    saved: list[Any]  # the artifact's members: the candidates, or their fold models
    fitted: Any  # Combination of ``saved``
    thresholds: Any
    groups: list[list[int]]  # per chosen candidate, its indices in ``saved``
    info: dict[str, Any] = field(default_factory=dict)
    added: dict[str, list] | None = None  # the stacker's per-member contributions


def _decide(spec: JobSpec, members: list[Any], y: np.ndarray, probas: dict[str, Any]):
    """Selection, combination and thresholds fitted on ``y, probas``: (members, fitted,
    the combined probabilities, thresholds)."""
    from engine.ensemble import combine, fit_combination
    from engine.thresholds import fit_thresholds

    members = _select(spec, members, y, probas)
    ps = [probas[m.name] for m in members]
    fitted = fit_combination(
        y, ps, weights=spec.ensemble.weights, temperature=spec.ensemble.temperature
    )
    p = combine(ps, fitted.weights, fitted.temperature, fitted.member_temperatures)
    return members, fitted, p, fit_thresholds(y, p, spec.thresholds)


def _on_val(spec: JobSpec, members: list[Any], scores: dict[str, Any]) -> _Decided:
    from engine.ensemble import combine

    chosen, fitted, _, thresholds = _decide(spec, members, scores["val"].y, scores["val"].proba)
    for s in ("val", "test"):
        scores[s].proba["ensemble"] = combine(
            [scores[s].proba[m.name] for m in chosen],
            fitted.weights,
            fitted.temperature,
            fitted.member_temperatures,
        )
    groups = [[i] for i in range(len(chosen))]
    return _Decided(chosen, chosen, fitted, thresholds, groups)


def _cross_fitted(spec: JobSpec, run: RunDir, members: list[Any], scores: dict[str, Any], embed):
    """``ensemble.cross_fit``: the candidates cross-fitted over train + val
    (``engine.crossfit``); selection, combination and thresholds fitted on the out-of-fold
    rows; each chosen candidate saved as its fold models, weight and temperature shared."""
    from engine import crossfit
    from engine.ensemble import SplitScores, combine
    from engine.thresholds import fit_thresholds

    k = spec.ensemble.cross_fit
    plan = crossfit.write_folds(run, k, spec.split.seed)
    epochs = _best_epochs(run)
    cands = [
        crossfit.trial_candidate(
            m.name, m.trained_as or m.kind, m.dir, spec.tune.metric, epochs.get(m.source)
        )
        for m in members
    ]
    refs = crossfit.fold_refs(spec, cands, crossfit.fit_folds(spec, run, plan, cands))
    cf = crossfit.fold_scores(spec, run, plan, refs, embed)
    at_val = crossfit.val_rows(plan)
    if not np.array_equal(cf.y[at_val], scores["val"].y) or not np.array_equal(
        cf.y_test, scores["test"].y
    ):
        raise RuntimeError("cross-fit: the folds' rows do not line up with the val/test splits")
    h = cf.held  # decisions on the rows scored out of fold
    chosen, fitted, _, thresholds = _decide(
        spec, members, cf.y[h], {n: p[h] for n, p in cf.oof.items()}
    )
    p_oof = combine(
        [cf.oof[m.name] for m in chosen],
        fitted.weights,
        fitted.temperature,
        fitted.member_temperatures,
    )
    groups = [list(range(i * k, (i + 1) * k)) for i in range(len(chosen))]
    per_fold = replace(
        fitted,
        weights=[w / k for w in fitted.weights for _ in range(k)],
        member_temperatures=[t for t in fitted.member_temperatures for _ in range(k)],
    )
    stacked = _stacked(spec, plan, members, cf, _decision(spec, cf.y[h], p_oof[h]))
    if stacked.used:
        chosen, per_fold, p_oof = members, stacked.fitted, stacked.p_oof
        groups = stacked.fitted.stacker["groups"]
        thresholds = fit_thresholds(cf.y[h], p_oof[h], spec.thresholds)
    saved = [r for m in chosen for r in refs[m.name]]
    scores["test"].proba["ensemble"] = combine(
        [p for m in chosen for p in cf.test[m.name]],
        per_fold.weights,
        per_fold.temperature,
        per_fold.member_temperatures,
        per_fold.stacker,
    )
    scores["val"].proba["ensemble"] = p_oof[at_val]
    scores["oof"] = SplitScores(cf.y, {**cf.oof, "ensemble": p_oof})
    for name, ps in cf.test.items():  # each candidate as the mean of its fold models
        scores["test"].proba[f"{name}_folds"] = np.mean(ps, axis=0)
    info = {
        "cross_fit": {
            "folds": k,
            "rows": int(h.sum()),
            "rows_in_every_fold": int((~h).sum()),
            "oof": {m.name: _decision(spec, cf.y[h], cf.oof[m.name][h]) for m in members},
            "oof_ensemble": _decision(spec, cf.y[h], p_oof[h]),
        },
        "combiner": stacked.info,
    }
    return _Decided(chosen, saved, per_fold, thresholds, groups, info, stacked.added), cf


@dataclass
class _Stacked:
    used: bool
    info: dict[str, Any]
    fitted: Any = None  # a Combination with the stacker, over every candidate's fold models
    p_oof: Any = None  # (N, K): out of fold on the held rows, the stacker's own on the rest
    added: dict[str, list] | None = None  # what each candidate adds to it: oof, test


def _stacked(spec: JobSpec, plan, members: list[Any], cf, mean_score: float) -> _Stacked:
    """``ensemble.combiner``: the stacker on every candidate's out-of-fold log-probabilities,
    its C and its score chosen on the cross-fit's own folds, kept (``auto``) when it beats the
    mean combination's out-of-fold score ``mean_score``."""
    from engine import crossfit
    from engine.combining import (
        CRITERIA,
        Combination,
        choose_stacker,
        fit_stacker,
        nll,
        stack_features,
        stack_proba,
    )

    info: dict[str, Any] = {"kind": "mean", "oof_mean": mean_score}
    if spec.ensemble.combiner == "mean" or len(members) < 2:
        return _Stacked(False, info)
    k, h, n_cls = plan.k, cf.held, cf.oof[members[0].name].shape[1]
    x = stack_features([cf.oof[m.name] for m in members], [[i] for i in range(len(members))])
    fold = crossfit.row_folds(plan)
    choice = choose_stacker(
        cf.y[h], x[h], n_cls, fold[h], CRITERIA.get(spec.tune.metric, "macro_f1")
    )
    stack_score = _decision(spec, cf.y[h], choice.proba)
    info.update(oof_stack=stack_score, C=choice.c, cv={str(c): v for c, v in choice.cv.items()})
    if spec.ensemble.combiner == "auto" and not stack_score > mean_score + 1e-4:
        return _Stacked(False, info)
    groups = [list(range(i * k, (i + 1) * k)) for i in range(len(members))]
    stacker = {**fit_stacker(cf.y[h], x[h], n_cls, choice.c), "groups": groups, "C": choice.c}
    p_oof = stack_proba(x, stacker)
    p_oof[h] = choice.proba
    x_test = stack_features([p for m in members for p in cf.test[m.name]], groups)
    added = _stack_contributions(spec, (cf.y[h], x[h], fold[h]), (cf.y_test, x_test), choice)
    n = k * len(members)
    mean_nll = nll(cf.y[h], np.mean([cf.oof[m.name][h] for m in members], axis=0))
    fitted = Combination(
        [1.0 / n] * n, 1.0, mean_nll, nll(cf.y[h], choice.proba), [1.0] * n, stacker
    )
    return _Stacked(True, {**info, "kind": "stack"}, fitted, p_oof, added)


def _stack_contributions(spec: JobSpec, rows: tuple, test: tuple, choice) -> dict[str, list]:
    """Per candidate, the stacker's decision score minus that of a stacker fitted without its
    log-probabilities: out of fold (``rows``: y, features, folds) and on ``test`` (y, features)."""
    from engine.combining import fit_stacker, stack_cv, stack_proba

    (y, x, fold), (y_test, x_test) = rows, test
    n_cls = choice.proba.shape[1]
    m = x.shape[1] // n_cls
    full_test = _decision(spec, y_test, stack_proba(x_test, fit_stacker(y, x, n_cls, choice.c)))
    full_oof = _decision(spec, y, choice.proba)
    out: dict[str, list] = {"oof": [], "test": []}
    for i in range(m):
        cols = np.r_[0 : i * n_cls, (i + 1) * n_cls : m * n_cls]
        p = stack_cv(y, x[:, cols], n_cls, choice.c, fold)
        out["oof"].append(full_oof - _decision(spec, y, p))
        fit = fit_stacker(y, x[:, cols], n_cls, choice.c)
        out["test"].append(full_test - _decision(spec, y_test, stack_proba(x_test[:, cols], fit)))
    return out


def _best_epochs(run: RunDir) -> dict[str, int]:
    """``{"trial <id>": best epoch (1-based)}`` from the search's results table."""
    import pandas as pd

    table = pd.read_parquet(run.tune_results)
    return {
        f"trial {r['trial_id']}": int(r["best_epoch"])
        for r in table.to_dict("records")
        if _is_num(r.get("best_epoch"))
    }


def _decision(spec: JobSpec, y: np.ndarray, p: np.ndarray) -> float:
    from engine.combining import CRITERIA, decision_score

    return decision_score(y, p, CRITERIA.get(spec.tune.metric, "macro_f1"))


def _ensemble(spec: JobSpec, run: RunDir) -> dict[str, Any]:
    from engine.ensemble import model_ref, score_splits, write_artifact

    metric = spec.tune.metric
    label_map = run.label_map()
    members = _members(spec, run)
    baseline = model_ref(
        spec.data, "baseline", run.join(rundir.BASELINE, "best"), source="baseline",
        max_length=spec.model.max_length,
    )  # fmt: skip
    embed = spec.embed if needs_embedding(spec) else None
    splits = {s: run.model_split(s) for s in ("val", "test")}
    scores = score_splits([*members, baseline], splits, spec.data, label_map, embed)
    candidates = [
        {"name": m.name, "kind": m.trained_as or m.kind, "source": m.source, metric: m.val_metric}
        for m in members
    ]
    if spec.ensemble.cross_fit:
        d, cf = _cross_fitted(spec, run, members, scores, embed)
        h = cf.held
        added = d.added or {
            "oof": _contributions(spec, cf.y[h], [cf.oof[m.name][h] for m in d.members], d, True),
            "test": _contributions(
                spec, cf.y_test, [p for m in d.members for p in cf.test[m.name]], d
            ),
        }
    else:
        d = _on_val(spec, members, scores)
        added = {
            s: _contributions(spec, scores[s].y, [scores[s].proba[m.name] for m in d.members], d)
            for s in splits
        }
    fitted = d.fitted
    info = {
        "candidates": candidates,
        "selection": spec.ensemble.selection,
        "members": [
            {
                "name": m.name,
                "kind": m.trained_as or m.kind,
                "source": m.source,
                metric: m.val_metric,
                "weight": float(sum(fitted.weights[j] for j in g)),
                "contribution": {s: added[s][i] for s in added},
            }
            for i, (m, g) in enumerate(zip(d.members, d.groups))
        ],
        "weights": fitted.weights,
        "member_temperatures": fitted.member_temperatures,
        "temperature": fitted.temperature,
        "val_nll_mean": fitted.val_nll_mean,
        "val_nll": fitted.val_nll,
        **d.info,
    }
    write_artifact(
        spec.data,
        d.saved,
        fitted,
        d.thresholds,
        run.ensemble,
        label_map,
        extra=info,
        embed=spec.embed,
        run_name=spec.name,
    )
    names = ["baseline", *(c["name"] for c in candidates), "ensemble"]
    _save_scores(run.scores, scores, names)
    return info


def _contributions(
    spec: JobSpec, y: np.ndarray, probas: list[Any], d: _Decided, per_member: bool = False
) -> list[float | None]:
    """Per chosen member, the ensemble's argmax macro-F1 (or the search's decision metric) on
    rows ``y`` minus the ensemble's without it (``engine.combining.contributions``); None
    where undefined (one member). ``probas``: the saved members' (the fold models'), or with
    ``per_member`` one per chosen member (out-of-fold)."""
    from engine.combining import CRITERIA, contributions

    criterion = CRITERIA.get(spec.tune.metric, "macro_f1")
    fit, groups = d.fitted, d.groups
    if per_member and len(groups[0]) > 1:  # one probability per member: its weights summed
        fit = replace(
            fit,
            weights=[sum(fit.weights[j] for j in g) for g in groups],
            member_temperatures=[fit.member_temperatures[g[0]] for g in groups],
        )
        groups = [[i] for i in range(len(groups))]
    got = contributions(y, probas, fit, criterion, groups)
    return [float(x) if np.isfinite(x) else None for x in got]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)


def input_notes(run_dir: str) -> tuple[dict[str, Any] | None, list[str]]:
    """What prepare dropped from the input (``stats.json`` ``dropped``: unreadable files under
    ``data.max_errored_blocks``, rows per class) and the notes about the input the summary and
    the report show: that, classes some split lacks, and resampling's warnings (a class SMOTE
    could only copy)."""
    from engine.screen import dropped_warning

    run = RunDir(run_dir)
    dropped = read_json(run.stats).get("dropped")
    notes = [] if dropped is None else [f"input: {dropped_warning(dropped)}"]
    notes += [f"split: {w}" for w in (run.split_manifest() or {}).get("warnings", [])]
    notes += [f"resample: {w}" for w in (run.resampled_record() or {}).get("warnings", [])]
    return dropped, notes


def _scored(split: dict[str, np.ndarray], info: dict[str, Any], thresholds) -> list[Any]:
    """Baseline (argmax), best single tuned model (argmax), ensemble + thresholds on a split."""
    from engine.report import Scored
    from engine.thresholds import apply_thresholds

    y, best = split["y"], info["members"][0]
    return [
        Scored("baseline", y, split["baseline"], split["baseline"].argmax(1), "plain CE baseline"),
        Scored(
            "best_single",
            y,
            split[best["name"]],
            split[best["name"]].argmax(1),
            f"best tuned model ({best['kind']}, {best['source']})",
        ),
        Scored(
            "ensemble",
            y,
            split["ensemble"],
            apply_thresholds(split["ensemble"], thresholds),
            f"ensemble of {len(info['members'])} + thresholds",
        ),
    ]


def _trial_notes(table, run: RunDir) -> tuple[Any, list[str]]:
    from engine.tune import SUMMARY

    errors = table[table["status"] == "error"] if len(table) else table
    notes = [
        f"tune trial {r['trial_id']} failed after {r['attempts']} attempt(s): {r['error']}"
        for _, r in errors.iterrows()
    ]
    summary = run.join(rundir.TUNE, SUMMARY)
    note = read_json(summary).get("note") if path_exists(summary) else None
    if note:
        notes.append(f"tune: {note}")
    return errors, notes


def _report(spec: JobSpec, run: RunDir) -> str:
    import pandas as pd

    from engine.evaluate import tail_classes
    from engine.report import ReportInput, write_report
    from engine.thresholds import Thresholds

    keys = run.label_map().keys
    scores = load_scores(run.scores)
    info = read_json(run.join(rundir.ENSEMBLE, artifact.MANIFEST))["extra"]
    thresholds = Thresholds.from_json(read_json(run.join(rundir.ENSEMBLE, artifact.THRESHOLDS)))
    train_counts = dict(zip(keys, run.class_counts("train", keys).tolist()))
    distributions = {"train": train_counts}
    resampled = run.resampled_counts(keys)
    if resampled is not None:
        distributions["train, resampled"] = dict(zip(keys, resampled.tolist()))
    table = pd.read_parquet(run.tune_results)
    dropped, notes = input_notes(run.path)
    errors, trial_notes = _trial_notes(table, run)
    threshold_scores = None
    if len(keys) == 2 and len(scores["val"]["y"]):
        threshold_scores = (scores["val"]["y"], scores["val"]["ensemble"][:, 1])
    completed = int((table["status"] == "completed").sum()) if len(table) else 0
    inp = ReportInput(
        run_name=spec.name,
        labels=keys,
        train_counts=train_counts,
        distributions=distributions,
        test=_scored(scores["test"], info, thresholds),
        val=_scored(scores["val"], info, thresholds),
        tail=tail_classes(train_counts),
        tune_table=table if len(table) else None,
        tune_metric=spec.tune.metric,
        thresholds=thresholds,
        threshold_scores=threshold_scores,
        notes=notes + trial_notes,
        extra={
            "dropped": dropped,
            "ensemble": info,
            "trials": {"total": len(table), "errors": len(errors), "completed": completed},
        },
    )
    return write_report(inp, run.report)["html"]


# --------------------------------------------------------------------------------------------
# the pipeline


def _check_trained(stage: str, state: dict[str, str], digest: str, exists: bool, overwrite: bool):
    """Whether a trained stage must run; raises when its artifact is stale and not overwritten."""
    if not exists:
        return True
    if state.get(stage) == digest:
        return False
    if overwrite:
        return True
    raise ValueError(
        f"the {stage} stage in this run_dir was made with another spec (sections "
        f"{', '.join(SECTIONS[stage]) or '-'} or an earlier stage changed); pass --overwrite to "
        "redo it, or use another run_dir"
    )


class _Progress:
    """The pipeline's record of finished stages (``pipeline.json``) and its result."""

    def __init__(self, run: RunDir, notify: Callable[[str, str], None]):
        self.run = run
        self.notify = notify
        self.result = PipelineResult(run.path, {}, "")
        self.digests: dict[str, str] = {}

    def state(self) -> dict[str, str]:
        path = self.run.pipeline_state
        return read_json(path) if path_exists(path) else {}

    def run_stage(self, stage: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        self.notify(stage, "start")
        fn()
        s = self.state()
        s[stage] = self.digests[stage]
        if stage != "prepare":  # (prepare's changes show in the digests)
            for later in STAGES[STAGES.index(stage) + 1 :]:
                if later not in TRAINED:
                    s.pop(later, None)  # derived stages after a redone one are redone too
        write_json_atomic(self.run.pipeline_state, s)
        remote.push_enclosing(self.run.path)  # a bucket has each finished stage
        self.result.stages[stage] = "ran"
        self.result.seconds[stage] = time.perf_counter() - start
        self.notify(stage, "done")

    def skip(self, stage: str) -> None:
        self.result.stages[stage] = "skipped"
        self.notify(stage, "skip")


def run_pipeline(
    spec: JobSpec,
    *,
    overwrite: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
) -> PipelineResult:
    """Run every stage of ``spec`` (see the module docstring) on the connected Ray cluster.

    ``on_stage(stage, event)`` is called with ``"start"``, ``"skip"`` and ``"done"``.
    Needs a Ray with the dashboard on for the tune stage (see ``engine.tune.search``).
    """
    if not is_uri(spec.run_dir):
        spec = replace(spec, run_dir=os.path.abspath(spec.run_dir))
    run = RunDir(spec.run_dir)
    with run.lock("raybalance run"):
        return _run_stages(spec, run, on_stage, overwrite)


def _run_stages(spec: JobSpec, run: RunDir, on_stage, overwrite: bool) -> PipelineResult:
    """Prepare writes the run folder where it is; the later stages write a local mirror of it
    when it is in a bucket (``engine.remote``), pushed after each stage."""
    from engine.prepare import prepare
    from engine.tune import KEPT_CHECKPOINTS

    p = _Progress(run, on_stage or (lambda stage, event: None))

    def prepare_stage() -> None:  # prepare skips its own up-to-date steps
        prepare(spec, overwrite=overwrite)
        p.digests = stage_digests(spec, prepared_digest(run.path))

    p.run_stage("prepare", prepare_stage)
    lazy = (f"{rundir.TUNE}/{KEPT_CHECKPOINTS}",)  # the trials' checkpoints stay in the bucket
    with remote.local_folder(run.path, lazy) as local, RunDir(local).lock("raybalance run"):
        p.run = RunDir(local)  # (a bucket's mirror is locked on this machine)
        result = _later_stages(replace(spec, run_dir=local), p.run, p, overwrite)
    return replace(
        result,
        run_dir=run.path,
        report=run.join(rundir.REPORT, report.HTML),
    )


def _later_stages(spec: JobSpec, run: RunDir, p: _Progress, overwrite: bool) -> PipelineResult:
    _trained_stages(spec, run, p, overwrite)
    ensemble_done = run.exists(rundir.ENSEMBLE, artifact.MANIFEST) and run.exists(rundir.SCORES)
    for stage, fn, done in (
        ("ensemble", _ensemble, ensemble_done),
        ("report", _report, run.exists(rundir.REPORT, report.METRICS_JSON)),
    ):
        if done and p.state().get(stage) == p.digests[stage]:
            p.skip(stage)
        else:
            p.run_stage(stage, lambda fn=fn: fn(spec, run))
    p.result.metrics = read_json(run.join(rundir.REPORT, report.METRICS_JSON))
    p.result.report = run.join(rundir.REPORT, report.HTML)
    return p.result


def _trained_stages(spec: JobSpec, run: RunDir, p: _Progress, overwrite: bool) -> None:
    """The baseline and the search: redone only with ``overwrite`` when their spec changed."""
    from engine.tune import finished_search_matches, search

    baseline_done = run.exists(rundir.BASELINE, rundir.METRICS)
    if _check_trained("baseline", p.state(), p.digests["baseline"], baseline_done, overwrite):
        p.run_stage("baseline", lambda: _baseline(spec, run))
    else:
        p.skip("baseline")
    st = p.state()
    tune_done = run.exists(rundir.TUNE, rundir.RESULTS)
    if tune_done and "tune" not in st and not overwrite and finished_search_matches(spec):
        # a search that `raybalance tune` finished on this spec: the pipeline carries on from it
        st["tune"] = p.digests["tune"]
        write_json_atomic(run.pipeline_state, st)
    if _check_trained("tune", st, p.digests["tune"], tune_done, overwrite):
        p.run_stage("tune", lambda: search(spec, overwrite=tune_done or overwrite))
    else:
        p.skip("tune")
