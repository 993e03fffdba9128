"""Screening the input for unreadable files, when the spec allows some to be dropped.

With ``data.max_errored_blocks: N`` (N > 0), ``prepare`` first reads every input file in full
(Ray tasks, one read of the data) and sets aside the files it cannot read — a truncated file, a
corrupt page, a CSV row that does not parse. A block here is one input file: a file that fails
anywhere is dropped whole, so that every later pass (statistics, splits) sees the same rows.
More than N such files stops the run, naming each with its error. With the default N = 0 nothing
is screened and the first unreadable file stops ``prepare`` with its name.

What was dropped is counted per class as far as the file still allows: a Parquet file whose
footer reads has its row count, and its label column is read row group by row group; rows whose
label cannot be read are counted as of unknown class, and a file whose footer does not read
(truncated) has an unknown number of rows. The counts go to ``stats.json`` (``dropped``) and from
there into the report (``metrics.json`` ``dropped`` and a note on the page).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data import Fragment, Source, iter_fragment, label_key


@dataclass(frozen=True)
class BadFile:
    """One unreadable input file and what is known of its rows."""

    path: str
    error: str
    rows: int | None  # from the Parquet footer; None when it cannot be read
    per_class: dict[str, int] = field(default_factory=dict)  # rows whose label could be read
    unknown_rows: int | None = None  # rows of unknown class (None: the count is unknown too)


@dataclass(frozen=True)
class Screen:
    """The readable files and the unreadable ones."""

    good: tuple[str, ...]
    bad: tuple[BadFile, ...]

    def dropped(self, allowed: int) -> dict[str, Any]:
        """The ``dropped`` record of ``stats.json``."""
        per_class: Counter[str] = Counter()
        for b in self.bad:
            per_class.update(b.per_class)
        unknown = [b.unknown_rows for b in self.bad]
        return {
            "max_errored_blocks": allowed,
            "files": [asdict(b) for b in self.bad],
            "per_class": dict(sorted(per_class.items())),
            "unknown_class_rows": sum(u for u in unknown if u is not None),
            "files_with_unknown_rows": sum(u is None for u in unknown),
            "rows": sum(per_class.values()) + sum(u for u in unknown if u is not None),
        }


def _count_labels(col: pa.ChunkedArray | pa.Array, into: Counter[str]) -> None:
    for vc in col.value_counts().to_pylist():
        into[label_key(vc["values"]) if vc["values"] is not None else "null"] += vc["counts"]


def _salvage_parquet(source: Source, path: str, label: str) -> tuple[int | None, Counter, int]:
    """(rows, labels per class, rows of unknown class) of a Parquet file that failed to read."""
    try:
        pf = pq.ParquetFile(path, filesystem=source.filesystem)
        meta = pf.metadata
    except (pa.ArrowException, OSError):
        return None, Counter(), 0
    per_class: Counter[str] = Counter()
    unknown = 0
    for g in range(meta.num_row_groups):
        try:
            _count_labels(pf.read_row_group(g, columns=[label]).column(0), per_class)
        except (pa.ArrowException, OSError, KeyError):
            unknown += meta.row_group(g).num_rows
    return meta.num_rows, per_class, unknown


def screen_files(source: Source, files: list[str], label: str) -> list[BadFile | None]:
    """Read each of ``files`` in full; ``None`` for a readable one, else what it lost."""
    out: list[BadFile | None] = []
    for path in files:
        try:
            deque(
                iter_fragment(source, Fragment(path)), maxlen=0
            )  # decoding every batch is the check
            out.append(None)
            continue
        except ValueError as e:  # iter_fragment names the file and the reader's error
            error = str(e)
        if source.format == "parquet":
            rows, per_class, unknown = _salvage_parquet(source, path, label)
            out.append(
                BadFile(path, error, rows, dict(per_class), None if rows is None else unknown)
            )
        else:
            out.append(BadFile(path, error, None, {}, None))
    return out


def screen(source: Source, label: str, allowed: int) -> Screen:
    """Read every file of ``source`` (Ray tasks); refuse more than ``allowed`` unreadable ones.

    Raises:
        ValueError: more than ``allowed`` files are unreadable (each named with its error), or
            none is readable.
    """
    import ray

    from engine.progress import progress_bar

    files = list(source.files)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = min(len(files), 2 * cpus)
    groups = [files[i::n] for i in range(n)]
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="DEFAULT")(screen_files)
    refs = [remote.remote(source, g, label) for g in groups]
    verdict: dict[str, BadFile | None] = {}
    with progress_bar(f"screening {len(files)} input file(s)", total=len(refs)) as advance:
        for g, ref in zip(groups, refs):
            verdict.update(zip(g, ray.get(ref)))
            advance(1)
    bad = tuple(b for f in files if (b := verdict[f]) is not None)
    good = tuple(f for f in files if verdict[f] is None)
    if len(bad) > allowed or not good:
        listed = "; ".join(f"{b.path}: {b.error}" for b in bad[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        why = (
            "none of them can be read"
            if not good
            else f"more than data.max_errored_blocks={allowed} allows"
        )
        raise ValueError(
            f"{len(bad)} of {len(files)} input files under {source.path} are unreadable, {why}: "
            f"{listed}{more}. Replace or remove them, or raise data.max_errored_blocks"
        )
    return Screen(good, bad)


def dropped_warning(dropped: dict[str, Any]) -> str:
    """One line for the log and the report from a ``Screen.dropped`` record."""
    files = dropped["files"]
    per_class = ", ".join(f"{k}: {n}" for k, n in dropped["per_class"].items()) or "none"
    parts = [f"rows per class {{{per_class}}}"]
    if dropped["unknown_class_rows"]:
        parts.append(f"{dropped['unknown_class_rows']} rows of unknown class")
    if dropped["files_with_unknown_rows"]:
        parts.append(f"{dropped['files_with_unknown_rows']} file(s) of unknown size")
    names = ", ".join(f["path"] for f in files[:5]) + (" …" if len(files) > 5 else "")
    return (
        f"dropped {len(files)} unreadable input file(s) (data.max_errored_blocks="
        f"{dropped['max_errored_blocks']}): {dropped['rows']} known rows lost, "
        f"{'; '.join(parts)}: {names}"
    )
