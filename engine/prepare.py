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

from engine import rundir
from engine.config import (
    SMOTE_METHODS,
    SPLIT_SECTIONS,
    JobSpec,
    dump_spec,
    model_data,
    needs_embedding,
)
from engine.data import read_schema, read_stream, resolve_columns, resolve_source
from engine.io import (
    filesystem_and_path,
    json_digest,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.resample import ResampleResult, resample
from engine.rundir import RunDir
from engine.screen import dropped_warning, screen
from engine.split import SPLITS, SplitResult, split
from engine.stats import ClassStats, compute_stats, plot_class_distribution

log = logging.getLogger("raybalance")


@dataclass(frozen=True)
class PrepareResult:
    run_dir: str
    stats: ClassStats
    splits: SplitResult
    warnings: list[str]
    resampled: ResampleResult | None = None

    @property
    def artifacts(self) -> dict[str, str]:
        run = RunDir(self.run_dir)
        return {
            "stats": run.stats,
            "label_map": run.label_map_path,
            "plot": run.plot,
            "splits": run.splits,
            "spec": run.spec_yaml,
            **({"resampled": run.resampled} if self.resampled else {}),
        }


def input_fingerprint(spec: JobSpec, source) -> str:
    """A digest of what the stats and splits depend on: the input files (path, size, mtime) and
    the data, stats and split specs. Equal digests: the prepared splits are up to date."""
    infos = source.filesystem.get_file_info(list(source.files))
    files = [[i.path, i.size, i.mtime_ns] for i in infos]
    return json_digest(files, *(asdict(getattr(spec, s)) for s in SPLIT_SECTIONS))


def check_prepare_spec(spec: JobSpec) -> None:
    """The checks that need no data: raise before anything is read or written."""
    if spec.data.text is None and spec.data.features is None:
        raise ValueError(
            "prepare needs the model's inputs: set data.text (a text column) or data.features "
            "(numeric columns, or one list column)"
        )
    if spec.model.kind == "lexical" and spec.data.text is None:
        raise ValueError(
            "model.kind=lexical reads a text column: set data.text, or use model.kind=mlp "
            "(or linear, gbdt) for feature data"
        )
    if spec.model.kind == "lexical" and spec.resample.method in SMOTE_METHODS:
        raise ValueError(
            f"model.kind=lexical reads the text, but resample.method={spec.resample.method} "
            "makes synthetic rows without text; use a random resampling method "
            "(random_over, random_under, combined) with lexical models"
        )


def check_input(spec: JobSpec) -> None:
    """The input checks that need no cluster and read only file footers and headers (and the
    first rows of a CSV / JSONL file): the path holds data files, the columns exist with
    usable types, the model kind can read them, and the input has rows.

    Raises:
        ValueError / FileNotFoundError: naming the path, file, column or setting at fault.
    """
    check_prepare_spec(spec)
    source = resolve_source(spec.data.path, spec.data.format)
    resolve_columns(read_schema(source), spec.data, where=source.files[0])
    if not has_rows(source):
        raise ValueError(f"{source.path} holds no rows: nothing to learn from")


def has_rows(source) -> bool:
    """Whether some file of ``source`` holds a row (stops at the first that does)."""
    import pyarrow.parquet as pq

    for path in source.files:
        if source.format == "parquet":
            if pq.read_metadata(path, filesystem=source.filesystem).num_rows > 0:
                return True
            continue
        with source.filesystem.open_input_stream(path) as f:
            reader = read_stream(f, source.format)
            if any(batch.num_rows for batch in reader):
                return True
    return False


@dataclass
class _Prepared:
    """What the stats-and-splits step hands on to the later steps."""

    stats: ClassStats
    splits: SplitResult
    warnings: list[str]
    text: str | None
    key: str  # digest of the input files, the split sections and the splits made


def prepare(spec: JobSpec, *, overwrite: bool = False) -> PrepareResult:
    """Statistics, exact splits, embeddings and resampling for ``spec`` into ``spec.run_dir``.

    Each step is skipped when its complete output exists and was made from the same inputs
    and spec (a digest recorded in it), so a rerun after a crash, or with only a new
    ``resample`` section, continues where it stopped instead of redoing everything.
    """
    check_prepare_spec(spec)
    run = RunDir(spec.run_dir)
    source = resolve_source(spec.data.path, spec.data.format)
    with run.lock("raybalance prepare"):
        done = _stats_and_splits(spec, run, source, overwrite)
        embed_key = _embed_step(spec, run, done)
        resampled = _resample_step(spec, run, done, embed_key)
        _plot_and_spec(spec, run, done, resampled)
    warnings = done.warnings + (resampled.warnings if resampled is not None else [])
    return PrepareResult(spec.run_dir, done.stats, done.splits, warnings, resampled)


def _stats_and_splits(spec: JobSpec, run: RunDir, source, overwrite: bool) -> _Prepared:
    """Class statistics and the exact splits, reused when made from the same inputs."""
    data = spec.data
    fingerprint = input_fingerprint(spec, source)
    manifest = run.split_manifest()
    fresh = (
        manifest is not None
        and manifest.get("fingerprint") == fingerprint
        and run.exists(rundir.STATS)
        and run.exists(rundir.LABEL_MAP)
    )
    run.check_claim(spec, overwrite)
    dropped = None
    if not fresh and data.max_errored_blocks > 0:  # refused here, before anything is written
        screened = screen(source, data.label, data.max_errored_blocks)
        if screened.bad:
            dropped = screened.dropped(data.max_errored_blocks)
            source = replace(source, files=screened.good)
    if fresh:
        run.claim(spec, overwrite)
        log.info("prepare: stats and splits of %s are up to date; reusing them", source.path)
        label_map = run.label_map()
        stats = ClassStats.from_json(read_json(run.stats), label_map)
        splits = SplitResult(run.splits, manifest["counts"], manifest.get("warnings", []), 0)
        warnings = list(manifest.get("stats_warnings", [])) + splits.warnings
        return _Prepared(
            stats, splits, warnings, data.text, json_digest(fingerprint, manifest["run"])
        )
    result = compute_stats(source, data, spec.stats)  # every check of the data's values
    run.claim(spec, overwrite)  # the input passed: the folder is this run's from here on
    if dropped is not None:
        result.warnings.insert(0, dropped_warning(dropped))
    for w in result.warnings:
        log.warning(w)
    extra: dict[str, Any] = {
        "source": source.path,
        "null_labels_dropped": result.summary.null_labels,
        **({"dropped": dropped} if dropped is not None else {}),
    }
    write_json_atomic(run.stats, result.stats.to_json(**extra))
    write_json_atomic(run.label_map_path, result.stats.label_map.to_json())
    splits = split(
        source,
        result.columns,
        result.stats.label_map,
        result.summary.counts,
        spec.split,
        run.splits,
        schema=result.schema,
        extra_manifest={"fingerprint": fingerprint, "stats_warnings": result.warnings},
    )
    for w in splits.warnings:
        log.warning(w)
    key = json_digest(fingerprint, run.require_splits()["run"])
    return _Prepared(
        result.stats, splits, result.warnings + splits.warnings, result.columns.text, key
    )


def _embed_step(spec: JobSpec, run: RunDir, done: _Prepared) -> str | None:
    """Embed the splits when the model needs features from text; else drop stale embeddings.
    Returns the embeddings' digest (None when none)."""
    if needs_embedding(spec):
        key = json_digest(done.key, asdict(spec.embed))
        _embed_splits(spec, done.text, key)
        return key
    if run.exists(rundir.EMBEDDED):
        fs, root = filesystem_and_path(run.embedded)
        fs.delete_dir(root)  # from an earlier spec: stale
    return None


def _resample_step(
    spec: JobSpec, run: RunDir, done: _Prepared, embed_key: str | None
) -> ResampleResult | None:
    """Resample the train split (reused when made from the same inputs); with
    ``resample.method: none``, drop a resampled split an earlier spec made."""
    if spec.resample.method == "none":
        if run.exists(rundir.RESAMPLED):
            fs, root = filesystem_and_path(run.resampled)
            fs.delete_dir(root)  # from an earlier spec: training must not pick it up
        return None
    key = json_digest(done.key, embed_key, asdict(spec.resample), asdict(spec.stats))
    old = run.resampled_record()
    if old is not None and old.get("inputs") == key:
        log.info("prepare: the resampled train split is up to date; reusing it")
        return ResampleResult(
            run.resampled_train,
            old["method"],
            spec.resample.sampling_strategy,
            old["before"],
            old["after"],
            old.get("warnings", []),
            old.get("pending_rows", 0),
        )
    train_source = resolve_source(run.model_split("train"))
    schema = read_schema(train_source)
    cols = resolve_columns(schema, model_data(spec), where=train_source.files[0])
    resampled = resample(
        train_source,
        cols,
        done.stats.label_map,
        done.splits.counts["train"],
        spec.resample,
        run.resampled,
        schema,
        stats_spec=spec.stats,
        stats_extra={"source": train_source.path},
        inputs=key,
    )
    for w in resampled.warnings:
        log.warning(w)
    return resampled


def _plot_and_spec(
    spec: JobSpec, run: RunDir, done: _Prepared, resampled: ResampleResult | None
) -> None:
    series = {"all": done.stats.count_of(), **done.splits.counts}
    title = "Class distribution"
    if resampled is not None:
        series[f"train, {spec.resample.method}"] = resampled.after
        title = "Class distribution before and after resampling"
    fs, plot = filesystem_and_path(run.plot)
    plot_class_distribution(series, plot, title=title, fs=fs)
    write_bytes_atomic(run.spec_yaml, dump_spec(spec).encode())


def _embed_splits(spec: JobSpec, text: str, key: str) -> None:
    """Embed every split into ``embedded/<split>``; ``embedded/_complete.json`` marks the end
    and records ``key`` (splits + embed spec): equal keys, nothing to do."""
    from engine.embed import embed_many

    run = RunDir(spec.run_dir)
    fs, marker = filesystem_and_path(run.embedded_done)
    if run.exists(rundir.EMBEDDED, rundir.EMBEDDED_DONE):
        if read_json(run.embedded_done).get("inputs") == key:
            log.info("prepare: the embedded splits are up to date; reusing them")
            return
        fs.delete_file(marker)  # the splits or the encoder changed: the embeddings are stale
    fs.create_dir(filesystem_and_path(run.embedded)[1], recursive=True)
    results = embed_many(
        [resolve_source(run.split(name)) for name in SPLITS],
        [run.join(rundir.EMBEDDED, name) for name in SPLITS],
        text,
        spec.embed,
    )
    done = {
        name: {"rows": r.rows, "dim": r.dim, "seconds": round(r.seconds, 2)}
        for name, r in zip(SPLITS, results)
    }
    info = {"model": spec.embed.model, "column": spec.embed.column, "inputs": key, **done}
    write_json_atomic(run.embedded_done, info)
