"""Class statistics in one streaming pass: counts, frequencies, imbalance ratio, class weights.

    raybalance stats data/trec50 --label label

The same pass validates the data (null labels, NaN/inf or null features, null texts, ragged
feature vectors), so a bad input fails with a clear message before any other stage runs.
Each Ray task streams its fragments and returns a small ``Summary``; the driver merges them —
no shuffle, no groupby.

Class-weight schemes (each as its source defines its scale):

- ``inverse``: N / (K·n_c), scikit-learn's ``class_weight='balanced'`` (Σ_c n_c·w_c = N).
- ``inverse_sqrt``: 1/√n_c, scaled the same way (Σ_c n_c·w_c = N).
- ``effective_number``: (1−β)/(1−β^n_c), scaled so Σ_c w_c = K (Cui et al. 2019).
- ``median_frequency``: median_c(n_c) / n_c (Eigen & Fergus 2015): the median class gets 1.
- ``explicit``: the values given in ``stats.weights`` (every label must be given).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.config import WEIGHT_SCHEMES, DataSpec, StatsSpec
from engine.data import (
    Columns,
    Fragment,
    LabelMap,
    Source,
    iter_fragment,
    label_kind,
    normalize_labels,
    read_schema,
    resolve_columns,
    run_fragments,
)

# --------------------------------------------------------------------------------------------
# the validation + counting pass


@dataclass
class Summary:
    """What one pass over the data saw. Merged across tasks with ``merge``."""

    rows: int = 0
    counts: Counter = field(default_factory=Counter)  # label value -> rows (non-null labels)
    null_labels: int = 0
    label_kinds: set[str] = field(default_factory=set)
    null_texts: int = 0
    bad_values: Counter = field(default_factory=Counter)  # feature column -> NaN/inf/null values
    bad_rows: int = 0  # rows with any NaN/inf/null feature value
    vector_lengths: set[int] = field(default_factory=set)
    files_with_bad_rows: set[str] = field(default_factory=set)

    def merge(self, other: Summary) -> Summary:
        self.rows += other.rows
        self.counts.update(other.counts)
        self.null_labels += other.null_labels
        self.label_kinds |= other.label_kinds
        self.null_texts += other.null_texts
        self.bad_values.update(other.bad_values)
        self.bad_rows += other.bad_rows
        self.vector_lengths |= other.vector_lengths
        self.files_with_bad_rows |= other.files_with_bad_rows
        return self


def _not_finite(col: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """A boolean mask of null, NaN or ±inf values; None when every value is finite."""
    if pa.types.is_integer(col.type):
        return pc.is_null(col).to_numpy(zero_copy_only=False) if col.null_count else None
    ok = pc.fill_null(pc.is_finite(col), False)
    if pc.all(ok).as_py() is not False:
        return None
    return pc.invert(ok).to_numpy(zero_copy_only=False)


def summarize(table: pa.Table, cols: Columns, where: str = "") -> Summary:
    """Summarize one batch: label counts, nulls, non-finite features."""
    s = Summary(rows=table.num_rows)
    labels = table[cols.label]
    kind = label_kind(labels.type)
    if kind is None:
        raise ValueError(
            f"data.label {cols.label!r} has type {labels.type} in {where}; labels must be "
            "int, string or bool"
        )
    s.label_kinds.add(kind)
    labels = normalize_labels(labels, cols.label, where)
    s.null_labels = labels.null_count
    vc = pc.value_counts(labels.drop_null() if labels.null_count else labels)
    s.counts.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
    if cols.text:
        s.null_texts = table[cols.text].null_count
    bad = np.zeros(table.num_rows, dtype=bool)
    for c in cols.features:
        mask = _not_finite(table[c])
        if mask is not None:
            s.bad_values[c] += int(mask.sum())
            bad |= mask
    if cols.vector:
        vec = table[cols.vector].combine_chunks()
        if vec.null_count:
            nulls = pc.is_null(vec).to_numpy(zero_copy_only=False)
            s.bad_values[cols.vector] += int(nulls.sum())
            bad |= nulls
        lengths = pc.list_value_length(vec).drop_null()
        if len(lengths):
            mm = pc.min_max(lengths)
            s.vector_lengths |= {mm["min"].as_py(), mm["max"].as_py()}
        flat = pc.list_flatten(vec)
        vmask = _not_finite(flat)
        if vmask is not None:
            s.bad_values[cols.vector] += int(vmask.sum())
            parents = pc.list_parent_indices(vec).to_numpy(zero_copy_only=False)
            bad[np.unique(parents[vmask])] = True
    s.bad_rows = int(bad.sum())
    if s.bad_rows and where:
        s.files_with_bad_rows.add(where)
    return s


def _summary_task(
    source: Source, frags: list[Fragment], cols: Columns, schema: pa.Schema
) -> Summary:
    total = Summary()
    for frag in frags:
        for table in iter_fragment(source, frag, cols.checked, schema):
            missing = [c for c in cols.checked if c not in table.column_names]
            if missing:
                raise ValueError(
                    f"{frag.path} lacks columns {missing} that the first file has; its columns "
                    f"are {table.column_names}"
                )
            total.merge(summarize(table, cols, frag.path))
    return total


def scan(source: Source, cols: Columns, schema: pa.Schema | None = None) -> Summary:
    """One streaming pass over ``source`` (only the label, text and feature columns)."""
    task = functools.partial(_summary_task, cols=cols, schema=schema)
    parts = run_fragments(source, task, description=f"stats {source.path}")
    return functools.reduce(Summary.merge, parts, Summary())


def check_summary(s: Summary, cols: Columns, spec: DataSpec, source: str) -> list[str]:
    """Turn what the pass saw into errors (bad input) or warnings (things dropped).

    Returns the warnings; raises ValueError naming the file, column and count otherwise.
    """
    warnings: list[str] = []
    if s.rows == 0:
        raise ValueError(f"{source} holds no rows: nothing to learn from")
    if len(s.label_kinds) > 1:
        raise ValueError(
            f"{source}: label column {cols.label!r} has different types across files "
            f"({sorted(s.label_kinds)}); write every file with one label type"
        )
    if s.null_labels:
        if not spec.drop_null_labels:
            raise ValueError(
                f"{source}: {s.null_labels} of {s.rows} rows have a null (blank) label in "
                f"column {cols.label!r}; fill them, or set data.drop_null_labels=true to drop "
                "them"
            )
        warnings.append(f"dropped {s.null_labels} of {s.rows} rows with a null {cols.label!r}")
    if not s.counts:
        raise ValueError(f"{source}: every label in column {cols.label!r} is null")
    if len(s.counts) == 1:
        (only,) = s.counts
        raise ValueError(
            f"{source}: column {cols.label!r} holds a single class ({only!r}, {s.rows} rows); "
            "a classifier needs at least two classes"
        )
    if s.null_texts:
        raise ValueError(
            f"{source}: {s.null_texts} of {s.rows} rows have a null text in column "
            f"{cols.text!r}; drop or fill them"
        )
    if s.bad_rows:
        per_col = ", ".join(f"{c}: {n}" for c, n in sorted(s.bad_values.items()))
        files = sorted(s.files_with_bad_rows)
        raise ValueError(
            f"{source}: {s.bad_rows} of {s.rows} rows have NaN, inf or null feature values "
            f"in {len(s.bad_values)} column(s) ({per_col}); first files: {files[:3]}. "
            "Impute or drop them before training"
        )
    if len(s.vector_lengths) > 1:
        raise ValueError(
            f"{source}: feature vectors in {cols.vector!r} have different lengths "
            f"({sorted(s.vector_lengths)[:5]}); every row needs the same dimension"
        )
    return warnings


# --------------------------------------------------------------------------------------------
# class statistics


def class_weights(counts: np.ndarray, scheme: str, beta: float = 0.999) -> np.ndarray:
    """Per-class weights for ``counts`` (all > 0) under ``scheme`` (see the module docstring)."""
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise ValueError(f"class counts must be a non-empty vector of positive numbers: {counts}")
    k, total = len(n), n.sum()
    if scheme == "inverse":
        return total / (k * n)
    if scheme == "inverse_sqrt":
        w = 1 / np.sqrt(n)
        return w * total / (w * n).sum()
    if scheme == "effective_number":
        if not 0 <= beta < 1:
            raise ValueError(f"effective_number needs beta in [0, 1), got {beta}")
        w = (1 - beta) / (1 - np.power(beta, n)) if beta > 0 else np.ones_like(n)
        return w * k / w.sum()
    if scheme == "median_frequency":
        return np.median(n) / n
    raise ValueError(f"unknown class-weight scheme {scheme!r}; use one of {list(WEIGHT_SCHEMES)}")


@dataclass(frozen=True)
class ClassStats:
    label_map: LabelMap
    counts: tuple[int, ...]  # in label-map order
    weights: dict[str, tuple[float, ...]]
    beta: float

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def imbalance_ratio(self) -> float:
        return max(self.counts) / min(self.counts)

    def count_of(self) -> dict[str, int]:
        return dict(zip(self.label_map.keys, self.counts))

    @classmethod
    def from_json(cls, d: dict[str, Any], label_map: LabelMap) -> ClassStats:
        """Read back ``to_json``'s output (``stats.json``) with the run's label map."""
        keys = label_map.keys
        weights = {s: tuple(float(w[k]) for k in keys) for s, w in d["weights"].items()}
        return cls(label_map, tuple(int(d["counts"][k]) for k in keys), weights, d["beta"])

    def to_json(self, **extra: Any) -> dict[str, Any]:
        keys = self.label_map.keys
        return {
            "label_column": self.label_map.column,
            "labels": list(self.label_map.labels),
            "num_classes": len(keys),
            "rows": self.rows,
            "counts": dict(zip(keys, self.counts)),
            "frequencies": {k: c / self.rows for k, c in zip(keys, self.counts)},
            "imbalance_ratio": self.imbalance_ratio,
            "beta": self.beta,
            "weights": {s: dict(zip(keys, w)) for s, w in self.weights.items()},
            **extra,
        }


def class_stats(label_map: LabelMap, counts: dict[Any, int], spec: StatsSpec) -> ClassStats:
    """Counts (by label value) -> ClassStats with every weight scheme (and explicit weights)."""
    n = np.array([counts.get(v, 0) for v in label_map.labels], dtype=np.int64)
    empty = [k for k, c in zip(label_map.keys, n) if c == 0]
    if empty:
        raise ValueError(f"classes {empty} have no rows; class weights need every class present")
    weights = {s: tuple(float(x) for x in class_weights(n, s, spec.beta)) for s in WEIGHT_SCHEMES}
    if spec.weights:
        keys = label_map.keys
        unknown = sorted(set(spec.weights) - set(keys))
        missing = [k for k in keys if k not in spec.weights]
        if unknown or missing:
            raise ValueError(
                f"stats.weights: labels {unknown} are not classes of the data and classes "
                f"{missing[:10]} have no weight; give one weight per class of {keys[:10]}"
            )
        weights["explicit"] = tuple(float(spec.weights[k]) for k in keys)
    return ClassStats(label_map, tuple(int(x) for x in n), weights, spec.beta)


@dataclass(frozen=True)
class StatsResult:
    stats: ClassStats
    summary: Summary
    columns: Columns
    schema: pa.Schema
    warnings: list[str]


def compute_stats(source: Source, data: DataSpec, spec: StatsSpec | None = None) -> StatsResult:
    """Resolve the columns, run the pass, check the data and compute the class statistics."""
    schema = read_schema(source)
    cols = resolve_columns(schema, data, where=source.files[0])
    summary = scan(source, cols, schema if source.format != "parquet" else None)
    warnings = check_summary(summary, cols, data, source.path)
    warnings += near_duplicate_labels(summary.counts)
    kind = next(iter(summary.label_kinds))
    label_map = LabelMap.from_values(cols.label, kind, list(summary.counts))
    stats = class_stats(label_map, summary.counts, spec or StatsSpec())
    return StatsResult(stats, summary, cols, schema, warnings)


def near_duplicate_labels(counts: Counter) -> list[str]:
    """A warning per group of string labels that differ only in case or surrounding spaces
    (``' text block'``, ``'Text Block'``): counted as separate classes, which is seldom meant."""
    groups: dict[str, list[str]] = {}
    for v in counts:
        if isinstance(v, str):
            groups.setdefault(v.strip().casefold(), []).append(v)
    return [
        f"labels {', '.join(repr(v) for v in sorted(vs))} differ only in case or surrounding "
        f"spaces and are {len(vs)} classes ({', '.join(str(counts[v]) for v in sorted(vs))} "
        "rows); if they are one class, normalize the label column before training"
        for vs in groups.values()
        if len(vs) > 1
    ]


# --------------------------------------------------------------------------------------------
# plot


LINEAR_UP_TO = 30  # a ratio above which the bars of the smallest classes need a log axis
# fonts tried before matplotlib's default for labels it has no glyph for (CJK), when installed
CJK_FONTS = ["Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Droid Sans Fallback"]


def pyplot():
    """matplotlib's pyplot on the Agg backend, with ``CJK_FONTS`` first among the fonts (the
    stats plot and the report's plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = ["sans-serif"]
    fonts = plt.rcParams["font.sans-serif"]
    plt.rcParams["font.sans-serif"] = [*CJK_FONTS, *(f for f in fonts if f not in CJK_FONTS)]
    return plt


def tick_rotation(labels: list[str], width_in: float, fontsize: float) -> tuple[float, str]:
    """(rotation, horizontal alignment) that keeps class names from running into each other:
    flat when every name fits its slot, slanted when a few do not, upright when many."""
    slot_chars = width_in * 72 / max(len(labels), 1) / (0.6 * fontsize)
    longest = max((len(c) for c in labels), default=0)
    if longest <= slot_chars:
        return 0, "center"
    return (35, "right") if len(labels) <= 12 else (90, "center")


def plot_class_distribution(
    series: dict[str, dict[str, int]],
    path: str,
    title: str = "Class distribution",
    fs=None,
) -> str:
    """Bars per class (sorted by the first series' count) with their counts; a log axis only
    when the imbalance ratio is above ``LINEAR_UP_TO``; written as PNG atomically.

    ``series`` maps a legend name ("all", "train", ...) to {label: count}.
    """
    import io

    from engine.io import write_bytes_atomic

    plt = pyplot()

    first = next(iter(series.values()))
    order = sorted(first, key=lambda k: (-first[k], k))
    k = len(order)
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.28 * k + 2, 24.0)), 4.2), dpi=110)
    width = 0.8 / len(series)
    x = np.arange(k)
    positive = [v for v in first.values() if v > 0]
    ratio = max(first.values()) / max(min(first.values()), 1)
    log = ratio > LINEAR_UP_TO or not positive
    numbers = k * len(series) <= 40  # counts on the bars while they fit
    for i, (name, counts) in enumerate(series.items()):
        ys = [max(counts.get(c, 0), 0) for c in order]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width=width, label=name)
        if numbers:
            ax.bar_label(bars, fontsize=7, rotation=90 if len(series) > 2 else 0, padding=2)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(0.7 if log else 0, max(first.values()) * (3 if log else 1.15))
    ax.set_xticks(x)
    labels = [c if len(c) <= 28 else c[:27] + "…" for c in order]
    fontsize = 7 if k > 25 else 9
    rotation, ha = tick_rotation(labels, fig.get_figwidth() * 0.8, fontsize)
    ax.set_xticklabels(labels, rotation=rotation, ha=ha, fontsize=fontsize)
    ax.set_ylabel("rows (log scale)" if log else "rows")
    ax.set_title(f"{title} — {k} classes, imbalance ratio {ratio:.3g}")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue(), fs)
    return path
