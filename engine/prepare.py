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
from engine.data import LabelMap, read_schema, resolve_columns, resolve_source
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    json_digest,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.resample import SMOTE_METHODS, ResampleResult, resample
from engine.screen import dropped_warning, screen
from engine.split import SPLITS, SplitResult, read_manifest, split
from engine.stats import ClassStats, compute_stats, plot_class_distribution

log = logging.getLogger("raybalance")

# The sections the prepared artifacts depend on (training refuses artifacts made with others);
# a change of the first three makes them another run's (prepare refuses without --overwrite),
# a change of resample or embed just redoes those steps.
PREPARE_SECTIONS = ("data", "stats", "split", "resample", "embed")
OWNING_SECTIONS = ("data", "stats", "split")


def needs_embedding(spec: JobSpec) -> bool:
    """Text must become a feature column: for an MLP head or for SMOTE-family resampling."""
    wants_features = spec.model.kind == "mlp" or spec.resample.method in SMOTE_METHODS
    return bool(spec.data.text) and not spec.data.features and wants_features


def model_data(spec: JobSpec) -> DataSpec:
    """The data spec the later stages see: with the embedding as the features when embedded."""
    if needs_embedding(spec):
        return replace(spec.data, features=[spec.embed.column], text=None)
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


def input_fingerprint(spec: JobSpec, source) -> str:
    """A digest of what the stats and splits depend on: the input files (path, size, mtime) and
    the data, stats and split specs. Equal digests: the prepared splits are up to date."""
    infos = source.filesystem.get_file_info(list(source.files))
    files = [[i.path, i.size, i.mtime_ns] for i in infos]
    return json_digest(files, *(asdict(getattr(spec, s)) for s in OWNING_SECTIONS))


def prepare(spec: JobSpec, *, overwrite: bool = False) -> PrepareResult:
    """Statistics, exact splits, embeddings and resampling for ``spec`` into ``spec.run_dir``.

    Each step is skipped when its complete output exists and was made from the same inputs
    and spec (a digest recorded in it), so a rerun after a crash, or with only a new
    ``resample`` section, continues where it stopped instead of redoing everything.
    """
    data = spec.data
    if data.text is None and data.features is None:
        raise ValueError(
            "prepare needs the model's inputs: set data.text (a text column) or data.features "
            "(numeric columns, or one list column)"
        )
    if spec.model.kind == "lexical" and spec.resample.method in SMOTE_METHODS:
        raise ValueError(
            f"model.kind=lexical reads the text, but resample.method={spec.resample.method} "
            "makes synthetic rows without text; use a random resampling method "
            "(random_over, random_under, combined) with lexical models"
        )
    source = resolve_source(data.path, data.format)
    fs, root = filesystem_and_path(spec.run_dir)

    fingerprint = input_fingerprint(spec, source)
    splits_dir = join(spec.run_dir, "splits")
    manifest = read_manifest(splits_dir)
    fresh = (
        manifest is not None
        and manifest.get("fingerprint") == fingerprint
        and exists(fs, join(root, "stats.json"))
        and exists(fs, join(root, "label_map.json"))
    )
    dropped = None
    if not fresh and data.max_errored_blocks > 0:  # refused here, before anything is written
        screened = screen(source, data.label, data.max_errored_blocks)
        if screened.bad:
            dropped = screened.dropped(data.max_errored_blocks)
            source = replace(source, files=screened.good)
    claim_run_dir(spec, overwrite, OWNING_SECTIONS)
    if fresh:
        log.info("prepare: stats and splits of %s are up to date; reusing them", source.path)
        label_map = LabelMap.from_json(read_json(join(spec.run_dir, "label_map.json")))
        stats = ClassStats.from_json(read_json(join(spec.run_dir, "stats.json")), label_map)
        splits = SplitResult(splits_dir, manifest["counts"], manifest.get("warnings", []), 0)
        warnings = list(manifest.get("stats_warnings", [])) + splits.warnings
        text_col = data.text
    else:
        result = compute_stats(source, data, spec.stats)
        if dropped is not None:
            result.warnings.insert(0, dropped_warning(dropped))
        for w in result.warnings:
            log.warning(w)
        stats = result.stats
        extra: dict[str, Any] = {
            "source": source.path,
            "null_labels_dropped": result.summary.null_labels,
        }
        if dropped is not None:
            extra["dropped"] = dropped
        write_json_atomic(join(root, "stats.json"), stats.to_json(**extra), fs)
        write_json_atomic(join(root, "label_map.json"), stats.label_map.to_json(), fs)
        splits = split(
            source,
            result.columns,
            stats.label_map,
            result.summary.counts,
            spec.split,
            splits_dir,
            schema=result.schema,
            extra_manifest={"fingerprint": fingerprint, "stats_warnings": result.warnings},
        )
        for w in splits.warnings:
            log.warning(w)
        warnings = result.warnings + splits.warnings
        text_col = result.columns.text
        manifest = read_manifest(splits_dir)
    splits_key = json_digest(fingerprint, manifest["run"])

    embedded = join(root, "embedded")
    embed_key = None
    if needs_embedding(spec):
        embed_key = json_digest(splits_key, asdict(spec.embed))
        _embed_splits(spec, text_col, embed_key)
    elif exists(fs, embedded):
        fs.delete_dir(embedded)  # from an earlier spec: stale

    resampled_dir = join(root, "resampled")
    resampled = None
    if spec.resample.method != "none":
        resample_key = json_digest(splits_key, embed_key, asdict(spec.resample), asdict(spec.stats))
        done = join(resampled_dir, "_resample.json")
        if exists(fs, join(resampled_dir, "stats.json")) and exists(fs, done):
            old = read_json(join(spec.run_dir, "resampled", "_resample.json"))
            if old.get("inputs") == resample_key:
                log.info("prepare: the resampled train split is up to date; reusing it")
                resampled = ResampleResult(
                    join(spec.run_dir, "resampled", "train"),
                    old["method"],
                    spec.resample.sampling_strategy,
                    old["before"],
                    old["after"],
                    old.get("warnings", []),
                    old.get("pending_rows", 0),
                )
        if resampled is None:
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
                inputs=resample_key,
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


def _embed_splits(spec: JobSpec, text: str, key: str) -> None:
    """Embed every split into ``embedded/<split>``; ``embedded/_complete.json`` marks the end
    and records ``key`` (splits + embed spec): equal keys, nothing to do."""
    from engine.embed import embed_files

    root = join(spec.run_dir, "embedded")
    fs, p = filesystem_and_path(root)
    marker = join(p, "_complete.json")
    if exists(fs, marker):
        if read_json(join(root, "_complete.json")).get("inputs") == key:
            log.info("prepare: the embedded splits are up to date; reusing them")
            return
        fs.delete_file(marker)  # the splits or the encoder changed: the embeddings are stale
    fs.create_dir(p, recursive=True)
    done = {}
    for name in SPLITS:
        res = embed_files(
            resolve_source(join(spec.run_dir, "splits", name)), join(root, name), text, spec.embed
        )
        done[name] = {"rows": res.rows, "dim": res.dim, "seconds": round(res.seconds, 2)}
    info = {"model": spec.embed.model, "column": spec.embed.column, "inputs": key, **done}
    write_json_atomic(marker, info, fs)
