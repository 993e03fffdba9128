"""The run folder: every path in it, and what is read from it, spelled in this one module.

    run = RunDir(spec.run_dir)                      # a local path or a URI
    run.claim(spec, overwrite=False)                # run.json: refuse another run's folder
    label_map = run.label_map()
    source = resolve_source(run.model_split("val")) # embedded/val when embedded, else splits/val

Layout (``RUN_DIR`` = ``spec.run_dir``)::

    run.json  spec.yaml  stats.json  label_map.json  class_distribution.png
    splits/{train,val,test}/ (+ a manifest)         the exact stratified splits
    embedded/{train,val,test}/ (+ _complete.json)   frozen-encoder embeddings of the splits
    resampled/train/ (+ a record and its stats)     the resampled train split
    train/                                          ``raybalance train``: best/, metrics.json
    baseline/                                       the pipeline's plain-CE model (as train/)
    tune/  results.parquet  results.csv  search.json  trials/<id>/  ray/
    ensemble/  manifest.json  thresholds.json  label_map.json  members
    scores.safetensors  pipeline.json               every model's val/test scores; stage digests
    report/  metrics.json  report.html

The files inside ``splits/``, ``embedded/``, ``resampled/``, ``ensemble/`` and ``report/`` are
the business of the library that writes them (``engine.split``, ``engine.embed`` ...); the
folder names and the run-level files are this module's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine import remote, resample
from engine.config import SPLIT_SECTIONS, STAGE_SECTIONS, JobSpec
from engine.data import LABEL_MAP_JSON, LabelMap
from engine.io import exists, filesystem_and_path, is_uri, join, read_json, write_json_atomic
from engine.split import MANIFEST as SPLIT_MANIFEST
from engine.split import read_manifest

RUN = "run.json"
SPEC = "spec.yaml"
STATS = "stats.json"
LABEL_MAP = LABEL_MAP_JSON
PLOT = "class_distribution.png"
SPLITS = "splits"
EMBEDDED = "embedded"
EMBEDDED_DONE = "_complete.json"
RESAMPLED = "resampled"
TRAIN = "train"
BASELINE = "baseline"
TUNE = "tune"
ENSEMBLE = "ensemble"
REPORT = "report"
SCORES = "scores.safetensors"
PIPELINE = "pipeline.json"
METRICS = "metrics.json"  # a trained folder's last write (train/, baseline/, trials)
RESULTS = "results.parquet"  # tune/
CROSSFIT = "crossfit"  # the ensemble's cross-fitting folds and fold models (engine.crossfit)
# read by tasks on any node: in the bucket for a mirror
DATA = (SPLITS, EMBEDDED, RESAMPLED, CROSSFIT)
LOGS = "logs"  # each command's log file and the embedded Ray's session logs (engine.logs)
LOCK = remote.LOCK  # the writer that holds the folder (pid, host, command, since)


@dataclass(frozen=True)
class RunDir:
    """One run folder (``path``: a local path or a URI, as the spec gives it)."""

    path: str

    @functools.cached_property
    def data_root(self) -> str:
        """The folder as every node reaches it, where its data folders are: the bucket when
        this folder is a local mirror of a run folder in object storage (``engine.remote``),
        else the folder itself."""
        if is_uri(self.path):
            return self.path
        return remote.mirrored_uri(self.path) or self.path

    def join(self, *parts: str) -> str:
        first = "/".join(parts).strip("/").partition("/")[0]
        return join(self.data_root if first in DATA else self.path, *parts)

    def exists(self, *parts: str) -> bool:
        fs, p = filesystem_and_path(self.join(*parts))
        return exists(fs, p)

    # ---- paths
    @property
    def run_record(self) -> str:
        return self.join(RUN)

    @property
    def spec_yaml(self) -> str:
        return self.join(SPEC)

    @property
    def stats(self) -> str:
        return self.join(STATS)

    @property
    def label_map_path(self) -> str:
        return self.join(LABEL_MAP)

    @property
    def plot(self) -> str:
        return self.join(PLOT)

    @property
    def splits(self) -> str:
        return self.join(SPLITS)

    def split(self, name: str) -> str:
        """The plain split ``name`` (never embedded or resampled)."""
        return self.join(SPLITS, name)

    @property
    def embedded(self) -> str:
        return self.join(EMBEDDED)

    @property
    def embedded_done(self) -> str:
        return self.join(EMBEDDED, EMBEDDED_DONE)

    @property
    def resampled(self) -> str:
        return self.join(RESAMPLED)

    @property
    def resampled_train(self) -> str:
        return self.join(RESAMPLED, "train")

    def resampled_record(self) -> dict[str, Any] | None:
        """``engine.resample``'s record of a complete resampled split, or None."""
        if not (self.exists(RESAMPLED, resample.STATS) and self.exists(RESAMPLED, resample.RECORD)):
            return None
        return read_json(self.join(RESAMPLED, resample.RECORD))

    def model_split(self, name: str) -> str:
        """Where a split's model inputs are: ``embedded/<name>`` when embedded, else the split."""
        if self.exists(EMBEDDED, EMBEDDED_DONE):
            return self.join(EMBEDDED, name)
        return self.split(name)

    @property
    def train(self) -> str:
        return self.join(TRAIN)

    @property
    def logs(self) -> str:
        return self.join(LOGS)

    @property
    def baseline(self) -> str:
        return self.join(BASELINE)

    @property
    def tune(self) -> str:
        return self.join(TUNE)

    @property
    def tune_results(self) -> str:
        return self.join(TUNE, RESULTS)

    @property
    def ensemble(self) -> str:
        return self.join(ENSEMBLE)

    @property
    def report(self) -> str:
        return self.join(REPORT)

    @property
    def scores(self) -> str:
        return self.join(SCORES)

    @property
    def pipeline_state(self) -> str:
        return self.join(PIPELINE)

    def prepared_records(self) -> list[tuple[str, str]]:
        """(relative path, path) of what ``prepare`` made, in a fixed order: the splits'
        manifest, the embeddings' and resampling's completion records, the label map."""
        rels = [
            f"{SPLITS}/{SPLIT_MANIFEST}",
            f"{EMBEDDED}/{EMBEDDED_DONE}",
            f"{RESAMPLED}/{resample.RECORD}",
            LABEL_MAP,
        ]
        return [(rel, self.join(rel)) for rel in rels]

    def prepared_digest(self) -> str:
        """A digest of what ``prepare`` made: its completion records, which carry the digests
        of the input files and specs each step was made from (new data changes it)."""
        from engine.io import json_digest, path_exists

        parts = []
        for rel, path in self.prepared_records():
            parts.append([rel, read_json(path) if path_exists(path) else None])
        return json_digest(parts)

    # ---- contents
    def label_map(self) -> LabelMap:
        return LabelMap.from_json(read_json(self.label_map_path))

    def split_manifest(self) -> dict[str, Any] | None:
        """The splits' manifest (class counts per split), or None when there are no complete
        splits."""
        return read_manifest(self.splits)

    def require_splits(self) -> dict[str, Any]:
        manifest = self.split_manifest()
        if manifest is None:
            raise ValueError(
                f"{self.data_root} has no complete splits: run `raybalance prepare` first"
            )
        return manifest

    def class_counts(self, split: str, keys: list[str]) -> np.ndarray:
        counts = self.require_splits()["counts"][split]
        return np.array([counts[k] for k in keys])

    def resampled_counts(self, keys: list[str]) -> np.ndarray | None:
        """The class counts of a complete resampled split (its statistics are written last)."""
        if not self.exists(RESAMPLED, resample.STATS):
            return None
        counts = read_json(self.join(RESAMPLED, resample.STATS))["counts"]
        return np.array([int(counts.get(k, 0)) for k in keys])

    # ---- ownership and staleness
    def claim(self, spec: JobSpec, overwrite: bool) -> None:
        """Record ``spec`` as this folder's run in ``run.json``; refuse a folder whose record
        names another run or other ``SPLIT_SECTIONS``, unless ``overwrite``."""
        self.check_claim(spec, overwrite)
        fs, root = filesystem_and_path(self.path)
        fs.create_dir(root, recursive=True)
        write_json_atomic(join(root, RUN), {"name": spec.name, "spec": asdict(spec)}, fs)

    def check_claim(self, spec: JobSpec, overwrite: bool) -> None:
        """Raise when ``claim`` would refuse the folder; writes nothing."""
        mine = asdict(spec)
        if self.exists(RUN) and not overwrite:
            theirs = read_json(self.run_record)
            other = theirs.get("spec", {})
            differs = [s for s in SPLIT_SECTIONS if other.get(s) != mine[s]]
            if theirs.get("name") != spec.name:
                differs.insert(0, "name")
            if differs:
                raise ValueError(
                    f"run_dir {self.data_root!r} holds the artifacts of run "
                    f"{theirs.get('name')!r}, made with a different {', '.join(differs)}; choose "
                    "another run_dir (or name), or pass --overwrite to replace them"
                )

    def check_prepared_with(self, spec: JobSpec) -> None:
        """Raise when the splits are missing or were prepared with other prepare sections."""
        self.require_splits()
        owner = read_json(self.run_record)
        stale = [
            s for s in STAGE_SECTIONS["prepare"] if owner["spec"].get(s) != asdict(getattr(spec, s))
        ]
        if stale:
            raise ValueError(
                f"the splits in {self.data_root} were prepared with another "
                f"{', '.join(stale)} spec; run `raybalance prepare --overwrite` with this spec "
                "first, or use another run_dir"
            )

    # ---- one writer at a time
    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the folder for this process while ``command`` writes it: a second writer is
        refused naming the holder; a lock left by a dead process on this host is taken over;
        the same process may nest. Folders behind a URI are not locked (no atomic create)."""
        if is_uri(self.path):
            yield
            return
        created = _missing_dirs(self.path)
        os.makedirs(self.path, exist_ok=True)
        path = os.path.join(self.path, LOCK)
        mine = _take_lock(path, command)
        try:
            yield
        finally:
            if mine:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            for d in created:  # made for this command and left empty (it failed early)
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def _missing_dirs(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    out = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


def _take_lock(path: str, command: str) -> bool:
    """Create the lock file; returns False when this process already holds it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue  # released (or half-written) meanwhile: try again
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                return False
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # its writer died: take it over
                continue
            raise ValueError(
                f"{os.path.dirname(path)} is being written by `{holder.get('command')}` (pid "
                f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); "
                f"wait for it to finish, or remove {path} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump({**me, "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return True
    raise ValueError(f"could not take {path}: it keeps changing; is another writer starting?")


def _holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
