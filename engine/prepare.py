"""The prepare stage: statistics and exact stratified splits into the run directory.

    raybalance prepare jobs/configs/trec50.yaml [--set split.seed=1]

Writes ``RUN_DIR/stats.json``, ``RUN_DIR/label_map.json``, ``RUN_DIR/class_distribution.png``
(all rows and each split, log scale), ``RUN_DIR/splits/{train,val,test}/`` with
``splits/_manifest.json``, and ``RUN_DIR/spec.yaml`` (the resolved spec). A run directory that
holds another run's artifacts (``run.json`` names the run and its spec) is refused unless
``overwrite`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from engine.config import JobSpec, dump_spec
from engine.data import resolve_source
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.split import SplitResult, split
from engine.stats import ClassStats, compute_stats, plot_class_distribution

log = logging.getLogger("raybalance")

# The sections whose change makes the prepared artifacts another run's.
PREPARE_SECTIONS = ("data", "stats", "split")


@dataclass(frozen=True)
class PrepareResult:
    run_dir: str
    stats: ClassStats
    splits: SplitResult
    warnings: list[str]

    @property
    def artifacts(self) -> dict[str, str]:
        d = self.run_dir
        return {
            "stats": join(d, "stats.json"),
            "label_map": join(d, "label_map.json"),
            "plot": join(d, "class_distribution.png"),
            "splits": join(d, "splits"),
            "spec": join(d, "spec.yaml"),
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
    if spec.resample.method != "none":
        raise ValueError(
            f"resample.method={spec.resample.method!r}: resampling is not part of this version of "
            "prepare; set resample.method=none"
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
    series = {"all": stats.count_of(), **splits.counts}
    plot_class_distribution(series, join(root, "class_distribution.png"), fs=fs)
    write_bytes_atomic(join(root, "spec.yaml"), dump_spec(spec).encode(), fs)
    return PrepareResult(spec.run_dir, stats, splits, result.warnings + splits.warnings)
