"""The prepare stage: statistics, exact stratified splits, embeddings and resampling.

    raybalance prepare jobs/configs/trec50.yaml [--set split.seed=1]

stats -> split -> (embed) -> resample. Writes ``RUN_DIR/stats.json``, ``RUN_DIR/label_map.json``,
``RUN_DIR/splits/{train,val,test}/`` with ``splits/_manifest.json``; when text must become
features (``model.kind=mlp`` or a SMOTE-family method on a text column) ``RUN_DIR/embedded/
{train,val,test}/`` with the ``embed.column`` added; when ``resample.method`` is not ``none``,
``RUN_DIR/resampled/train/`` with ``resampled/stats.json`` (the train split after resampling, in
``stats.json``'s schema) — only the train split is resampled. ``RUN_DIR/class_distribution.png``
shows all rows, each split and the resampled train split (log scale), and ``RUN_DIR/spec.yaml``
the resolved spec. A run directory that holds another run's artifacts (``run.json`` names the
run and its spec) is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.config import DataSpec, JobSpec, dump_spec
from engine.data import read_schema, resolve_columns, resolve_source
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.resample import SMOTE_METHODS, ResampleResult, resample
from engine.split import SPLITS, SplitResult, split
from engine.stats import ClassStats, compute_stats, plot_class_distribution

log = logging.getLogger("raybalance")

# The sections whose change makes the prepared artifacts another run's.
PREPARE_SECTIONS = ("data", "stats", "split", "resample", "embed")


def needs_embedding(spec: JobSpec) -> bool:
    """Text must become a feature column: for an MLP head or for SMOTE-family resampling."""
    wants_features = spec.model.kind == "mlp" or spec.resample.method in SMOTE_METHODS
    return bool(spec.data.text) and not spec.data.features and wants_features


def model_data(spec: JobSpec) -> DataSpec:
    """The data spec the later stages see: with the embedding as the features when embedded."""
    if needs_embedding(spec):
        return replace(spec.data, features=[spec.embed.column])
    return spec.data


def split_dir(run_dir: str, name: str) -> str:
    """Where a split's model inputs are: ``embedded/<name>`` when embedded, else ``splits/``."""
    fs, root = filesystem_and_path(run_dir)
    if exists(fs, join(root, "embedded", "_complete.json")):
        return join(run_dir, "embedded", name)
    return join(run_dir, "splits", name)


@dataclass(frozen=True)
class PrepareResult:
    run_dir: str
    stats: ClassStats
    splits: SplitResult
    warnings: list[str]
    resampled: ResampleResult | None = None

    @property
    def artifacts(self) -> dict[str, str]:
        d = self.run_dir
        return {
            "stats": join(d, "stats.json"),
            "label_map": join(d, "label_map.json"),
            "plot": join(d, "class_distribution.png"),
            "splits": join(d, "splits"),
            "spec": join(d, "spec.yaml"),
            **({"resampled": join(d, "resampled")} if self.resampled else {}),
        }


def claim_run_dir(spec: JobSpec, overwrite: bool, sections: tuple[str, ...]) -> None:
    """Refuse a run directory whose ``run.json`` records another run, unless ``overwrite``."""
    fs, root = filesystem_and_path(spec.run_dir)
    marker = join(root, "run.json")
    mine = asdict(spec)
    if exists(fs, marker) and not overwrite:
        theirs = read_json(join(spec.run_dir, "run.json"))
        other = theirs.get("spec", {})
        differs = [s for s in sections if other.get(s) != mine[s]]
        if theirs.get("name") != spec.name:
            differs.insert(0, "name")
        if differs:
            raise ValueError(
                f"run_dir {spec.run_dir!r} holds the artifacts of run {theirs.get('name')!r}, made "
                f"with a different {', '.join(differs)}; choose another run_dir (or name), or "
                "pass --overwrite to replace them"
            )
    fs.create_dir(root, recursive=True)
    write_json_atomic(marker, {"name": spec.name, "spec": mine}, fs)


def prepare(spec: JobSpec, *, overwrite: bool = False) -> PrepareResult:
    """Run statistics and the exact split for ``spec`` into ``spec.run_dir``."""
    data = spec.data
    if data.text is None and data.features is None:
        raise ValueError(
            "prepare needs the model's inputs: set data.text (a text column) or data.features "
            "(numeric columns, or one list column)"
        )
    source = resolve_source(data.path, data.format)
    claim_run_dir(spec, overwrite, PREPARE_SECTIONS)
    fs, root = filesystem_and_path(spec.run_dir)

    result = compute_stats(source, data, spec.stats)
    for w in result.warnings:
        log.warning(w)
    stats = result.stats
    extra: dict[str, Any] = {
        "source": source.path,
        "null_labels_dropped": result.summary.null_labels,
    }
    write_json_atomic(join(root, "stats.json"), stats.to_json(**extra), fs)
    write_json_atomic(join(root, "label_map.json"), stats.label_map.to_json(), fs)

    splits = split(
        source,
        result.columns,
        stats.label_map,
        result.summary.counts,
        spec.split,
        join(spec.run_dir, "splits"),
        schema=result.schema,
    )
    for w in splits.warnings:
        log.warning(w)
    warnings = result.warnings + splits.warnings

    embedded = join(root, "embedded")
    if needs_embedding(spec):
        _embed_splits(spec, result.columns.text)
    elif exists(fs, embedded):
        fs.delete_dir(embedded)  # from an earlier spec: stale

    resampled_dir = join(root, "resampled")
    resampled = None
    if spec.resample.method != "none":
        train_source = resolve_source(split_dir(spec.run_dir, "train"))
        schema = read_schema(train_source)
        cols = resolve_columns(schema, model_data(spec), where=train_source.files[0])
        resampled = resample(
            train_source,
            cols,
            stats.label_map,
            splits.counts["train"],
            spec.resample,
            join(spec.run_dir, "resampled"),
            schema,
            stats_spec=spec.stats,
            stats_extra={"source": train_source.path},
        )
        for w in resampled.warnings:
            log.warning(w)
        warnings += resampled.warnings
    elif exists(fs, resampled_dir):
        fs.delete_dir(resampled_dir)  # from an earlier spec: training must not pick it up

    series = {"all": stats.count_of(), **splits.counts}
    title = "Class distribution"
    if resampled is not None:
        series[f"train, {spec.resample.method}"] = resampled.after
        title = "Class distribution before and after resampling"
    plot_class_distribution(series, join(root, "class_distribution.png"), title=title, fs=fs)
    write_bytes_atomic(join(root, "spec.yaml"), dump_spec(spec).encode(), fs)
    return PrepareResult(spec.run_dir, stats, splits, warnings, resampled)


def _embed_splits(spec: JobSpec, text: str) -> None:
    """Embed every split into ``embedded/<split>``; ``embedded/_complete.json`` marks the end."""
    from engine.embed import embed_files

    root = join(spec.run_dir, "embedded")
    fs, p = filesystem_and_path(root)
    marker = join(p, "_complete.json")
    if exists(fs, marker):
        fs.delete_file(marker)  # the splits were rewritten: the old embeddings are stale
    fs.create_dir(p, recursive=True)
    done = {}
    for name in SPLITS:
        res = embed_files(
            resolve_source(join(spec.run_dir, "splits", name)), join(root, name), text, spec.embed
        )
        done[name] = {"rows": res.rows, "dim": res.dim, "seconds": round(res.seconds, 2)}
    write_json_atomic(marker, {"model": spec.embed.model, "column": spec.embed.column, **done}, fs)
