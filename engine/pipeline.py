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
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from engine.config import JobSpec, LossSpec, SamplerSpec
from engine.io import json_digest, local_dir, read_json, write_bytes_atomic, write_json_atomic

log = logging.getLogger("raybalance")

STAGES = ("prepare", "baseline", "tune", "ensemble", "report")
TRAINED = ("baseline", "tune")  # redone only with overwrite
STATE = "pipeline.json"
SCORES = "scores.safetensors"
BASELINE_DIR = "baseline"
# the spec sections each stage depends on (besides the stage before it)
SECTIONS = {
    "prepare": ("data", "stats", "split", "resample", "embed"),
    "baseline": ("model", "train"),
    "tune": ("model", "loss", "sampler", "train", "tune"),
    "ensemble": ("ensemble", "thresholds"),
    "report": (),
}


@dataclass
class PipelineResult:
    run_dir: str
    metrics: dict[str, Any]  # the content of report/metrics.json
    report: str  # report.html
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    seconds: dict[str, float] = field(default_factory=dict)


def prepared_digest(run_dir: str) -> str:
    """A digest of what ``prepare`` made: its completion records, which carry the digests of
    the input files and specs each step was made from (new data changes it)."""
    parts = []
    for rel in (
        os.path.join("splits", "_manifest.json"),
        os.path.join("embedded", "_complete.json"),
        os.path.join("resampled", "_resample.json"),
        "label_map.json",
    ):
        path = os.path.join(run_dir, rel)
        parts.append([rel, read_json(path) if os.path.exists(path) else None])
    return json_digest(parts)


def stage_digests(spec: JobSpec, prepared: str) -> dict[str, str]:
    """Each stage's digest: its spec sections chained with the previous stage's digest
    (``prepared``: ``prepared_digest`` of the run directory)."""
    d = asdict(spec)
    out, prev = {}, prepared
    for stage in STAGES:
        prev = out[stage] = json_digest(prev, {s: d[s] for s in SECTIONS[stage]})
    return out


def baseline_spec(spec: JobSpec) -> JobSpec:
    """The plain baseline: cross-entropy, natural batches (model and training as the spec)."""
    return replace(spec, loss=LossSpec(name="ce"), sampler=SamplerSpec(kind="none"))


# --------------------------------------------------------------------------------------------
# stages


def _baseline(spec: JobSpec, run_dir: str) -> str:
    from engine.data import LabelMap, resolve_source
    from engine.prepare import split_dir
    from engine.split import read_manifest
    from engine.train import fit

    manifest = read_manifest(os.path.join(run_dir, "splits"))
    keys = LabelMap.from_json(read_json(os.path.join(run_dir, "label_map.json"))).keys
    counts = np.array([manifest["counts"]["train"][k] for k in keys])
    plain = resolve_source(split_dir(run_dir, "train"))  # never the resampled split
    out = os.path.join(run_dir, BASELINE_DIR)
    result = fit(baseline_spec(spec), overwrite=True, out_dir=out, train_data=(plain, counts))
    return result.best_dir


def _save_scores(path: str, scores: dict[str, Any], names: list[str]) -> None:
    from safetensors.numpy import save

    tensors = {}
    for split, s in scores.items():
        tensors[f"{split}/y"] = np.ascontiguousarray(s.y, dtype=np.int64)
        for name in names:
            tensors[f"{split}/{name}"] = np.ascontiguousarray(s.proba[name], dtype=np.float64)
    write_bytes_atomic(path, save(tensors, metadata={"models": json.dumps(names)}))


def load_scores(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"y": ..., model: proba}}`` from ``RUN_DIR/scores.safetensors``."""
    from safetensors.numpy import load_file

    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(path).items():
        split, _, name = key.partition("/")
        out.setdefault(split, {})[name] = value
    return out


def _ensemble(spec: JobSpec, run_dir: str) -> dict[str, Any]:
    import pandas as pd

    from engine.data import LabelMap
    from engine.ensemble import (
        CRITERIA,
        combine,
        fit_combination,
        member_temperatures,
        model_ref,
        score_splits,
        select_greedy,
        select_members,
        temperature_scale,
        write_artifact,
    )
    from engine.prepare import needs_embedding, split_dir
    from engine.thresholds import fit_thresholds

    label_map = LabelMap.from_json(read_json(os.path.join(run_dir, "label_map.json")))
    table = pd.read_parquet(os.path.join(run_dir, "tune", "results.parquet"))
    metric = spec.tune.metric
    rows = select_members(table, spec.ensemble.top_k, metric)
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
                spec,
                f"m{i + 1}",
                str(r["best_dir"]),
                source=f"trial {r['trial_id']}",
                val_metric=float(r[metric]),
                max_length=int(max_length) if _is_num(max_length) else spec.model.max_length,
            )
        )
    baseline = model_ref(
        spec,
        "baseline",
        os.path.join(run_dir, BASELINE_DIR, "best"),
        source="baseline",
        max_length=spec.model.max_length,
    )
    embed = spec.embed if needs_embedding(spec) else None
    scores = score_splits(
        [*members, baseline],
        {s: split_dir(run_dir, s) for s in ("val", "test")},
        spec,
        label_map,
        embed,
    )
    y_val = scores["val"].y
    candidates = [
        {"name": m.name, "kind": m.kind, "source": m.source, metric: m.val_metric} for m in members
    ]
    if spec.ensemble.selection == "greedy" and len(members) > 1:
        probas = [scores["val"].proba[m.name] for m in members]
        if spec.ensemble.temperature:  # members are averaged after their own calibration
            ts = member_temperatures(y_val, probas)
            probas = [temperature_scale(p, t) for p, t in zip(probas, ts)]
        keep = select_greedy(
            y_val,
            probas,
            criterion=CRITERIA.get(metric, "nll"),
            temperature=spec.ensemble.temperature,
        )
        members = [members[i] for i in keep]
    probas_val = [scores["val"].proba[m.name] for m in members]
    fitted = fit_combination(
        y_val, probas_val, weights=spec.ensemble.weights, temperature=spec.ensemble.temperature
    )
    for split in ("val", "test"):
        scores[split].proba["ensemble"] = combine(
            [scores[split].proba[m.name] for m in members],
            fitted.weights,
            fitted.temperature,
            fitted.member_temperatures,
        )
    thresholds = fit_thresholds(y_val, scores["val"].proba["ensemble"], spec.thresholds)
    info = {
        "candidates": candidates,
        "selection": spec.ensemble.selection,
        "members": [
            {"name": m.name, "kind": m.kind, "source": m.source, metric: m.val_metric}
            for m in members
        ],
        "weights": fitted.weights,
        "member_temperatures": fitted.member_temperatures,
        "temperature": fitted.temperature,
        "val_nll_mean": fitted.val_nll_mean,
        "val_nll": fitted.val_nll,
    }
    write_artifact(
        spec,
        members,
        fitted,
        thresholds,
        os.path.join(run_dir, "ensemble"),
        label_map,
        extra=info,
    )
    names = ["baseline", *(c["name"] for c in candidates), "ensemble"]
    _save_scores(os.path.join(run_dir, SCORES), scores, names)
    return info


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)


def input_notes(run_dir: str) -> tuple[dict[str, Any] | None, list[str]]:
    """What prepare dropped from the input (``stats.json`` ``dropped``: unreadable files under
    ``data.max_errored_blocks``, rows per class) and the report's note about it."""
    from engine.screen import dropped_warning

    dropped = read_json(os.path.join(run_dir, "stats.json")).get("dropped")
    return dropped, [] if dropped is None else [f"input: {dropped_warning(dropped)}"]


def _report(spec: JobSpec, run_dir: str) -> str:
    import pandas as pd

    from engine.data import LabelMap
    from engine.evaluate import tail_classes
    from engine.report import ReportInput, Scored, write_report
    from engine.split import read_manifest
    from engine.thresholds import Thresholds, apply_thresholds

    label_map = LabelMap.from_json(read_json(os.path.join(run_dir, "label_map.json")))
    keys = label_map.keys
    manifest = read_manifest(os.path.join(run_dir, "splits"))
    scores = load_scores(os.path.join(run_dir, SCORES))
    art = read_json(os.path.join(run_dir, "ensemble", "manifest.json"))
    thresholds = Thresholds.from_json(
        read_json(os.path.join(run_dir, "ensemble", "thresholds.json"))
    )
    train_counts = {k: int(manifest["counts"]["train"][k]) for k in keys}
    distributions = {"train": train_counts}
    resampled = os.path.join(run_dir, "resampled", "stats.json")
    if os.path.exists(resampled):
        counts = read_json(resampled)["counts"]
        distributions["train, resampled"] = {k: int(counts.get(k, 0)) for k in keys}
    table = pd.read_parquet(os.path.join(run_dir, "tune", "results.parquet"))
    info = art["extra"]
    best = info["members"][0]

    def scored(split: str) -> list[Scored]:
        s = scores[split]
        y = s["y"]
        return [
            Scored("baseline", y, s["baseline"], s["baseline"].argmax(1), "plain CE baseline"),
            Scored(
                "best_single",
                y,
                s[best["name"]],
                s[best["name"]].argmax(1),
                f"best tuned model ({best['kind']}, {best['source']})",
            ),
            Scored(
                "ensemble",
                y,
                s["ensemble"],
                apply_thresholds(s["ensemble"], thresholds),
                f"ensemble of {len(info['members'])} + thresholds",
            ),
        ]

    dropped, notes = input_notes(run_dir)
    errors = table[table["status"] == "error"] if len(table) else table
    for _, r in errors.iterrows():
        notes.append(
            f"tune trial {r['trial_id']} failed after {r['attempts']} attempt(s): {r['error']}"
        )
    threshold_scores = None
    if len(keys) == 2 and len(scores["val"]["y"]):
        threshold_scores = (scores["val"]["y"], scores["val"]["ensemble"][:, 1])
    inp = ReportInput(
        run_name=spec.name,
        labels=keys,
        train_counts=train_counts,
        distributions=distributions,
        test=scored("test"),
        val=scored("val"),
        tail=tail_classes(train_counts),
        tune_table=table if len(table) else None,
        tune_metric=spec.tune.metric,
        thresholds=thresholds,
        threshold_scores=threshold_scores,
        notes=notes,
        extra={
            "dropped": dropped,
            "ensemble": info,
            "trials": {
                "total": len(table),
                "errors": len(errors),
                "completed": int((table["status"] == "completed").sum()) if len(table) else 0,
            },
        },
    )
    return write_report(inp, os.path.join(run_dir, "report"))["html"]


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
    from engine.prepare import prepare
    from engine.tune import finished_search_matches, search

    spec = replace(spec, run_dir=local_dir(spec.run_dir, "raybalance run"))
    run_dir = spec.run_dir
    state_path = os.path.join(run_dir, STATE)
    result = PipelineResult(run_dir, {}, "")
    digests: dict[str, str] = {}
    notify = on_stage or (lambda stage, event: None)

    def state() -> dict[str, str]:
        return read_json(state_path) if os.path.exists(state_path) else {}

    def finish(stage: str, start: float) -> None:
        s = state()
        s[stage] = digests[stage]
        if stage != "prepare":  # (prepare's changes show in the digests)
            for later in STAGES[STAGES.index(stage) + 1 :]:
                if later not in TRAINED:
                    s.pop(later, None)  # derived stages after a redone one are redone too
        write_json_atomic(state_path, s)
        result.stages[stage] = "ran"
        result.seconds[stage] = time.perf_counter() - start
        notify(stage, "done")

    def skip(stage: str) -> None:
        result.stages[stage] = "skipped"
        notify(stage, "skip")

    # prepare skips its own up-to-date steps
    t0 = time.perf_counter()
    notify("prepare", "start")
    prepare(spec, overwrite=overwrite)
    digests = stage_digests(spec, prepared_digest(run_dir))
    finish("prepare", t0)

    st = state()
    baseline_done = os.path.exists(os.path.join(run_dir, BASELINE_DIR, "metrics.json"))
    if _check_trained("baseline", st, digests["baseline"], baseline_done, overwrite):
        t0 = time.perf_counter()
        notify("baseline", "start")
        _baseline(spec, run_dir)
        finish("baseline", t0)
    else:
        skip("baseline")

    st = state()
    tune_done = os.path.exists(os.path.join(run_dir, "tune", "results.parquet"))
    if tune_done and "tune" not in st and not overwrite and finished_search_matches(spec):
        # a search that `raybalance tune` finished on this spec: the pipeline carries on from it
        st["tune"] = digests["tune"]
        write_json_atomic(state_path, st)
    if _check_trained("tune", st, digests["tune"], tune_done, overwrite):
        t0 = time.perf_counter()
        notify("tune", "start")
        search(spec, overwrite=tune_done or overwrite)
        finish("tune", t0)
    else:
        skip("tune")

    for stage, fn, artifact in (
        ("ensemble", _ensemble, os.path.join("ensemble", "manifest.json")),
        ("report", _report, os.path.join("report", "metrics.json")),
    ):
        st = state()
        done = os.path.exists(os.path.join(run_dir, artifact))
        if stage == "ensemble":
            done = done and os.path.exists(os.path.join(run_dir, SCORES))
        if done and st.get(stage) == digests[stage]:
            skip(stage)
            continue
        t0 = time.perf_counter()
        notify(stage, "start")
        fn(spec, run_dir)
        finish(stage, t0)

    result.metrics = read_json(os.path.join(run_dir, "report", "metrics.json"))
    result.report = os.path.join(run_dir, "report", "report.html")
    return result


def remove_stage_outputs(run_dir: str, stage: str) -> None:
    """Delete a stage's artifacts (tests and ``--redo``)."""
    paths = {
        "baseline": [BASELINE_DIR],
        "tune": ["tune"],
        "ensemble": ["ensemble", SCORES],
        "report": ["report"],
    }[stage]
    for p in paths:
        full = os.path.join(run_dir, p)
        if os.path.isdir(full):
            shutil.rmtree(full)
        elif os.path.exists(full):
            os.remove(full)
