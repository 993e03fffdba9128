"""The evaluation report of a run: ``report/metrics.json`` and a self-contained ``report.html``.

    inp = ReportInput(run_name="trec50", labels=keys, train_counts=counts,
                      distributions={"train": counts, "train, resampled": resampled},
                      test=[Scored("baseline", y, p0, p0.argmax(1), "plain CE"),
                            Scored("ensemble", y, p, apply_thresholds(p, t), "ensemble")],
                      tail=tail_classes(counts), thresholds=t)
    paths = write_report(inp, "runs/trec50/report")   # {"metrics": ..., "html": ..., plots}
    for row in summary_rows(read_json(paths["metrics"])): print(row)

Every model is scored with :func:`engine.metrics.classification_metrics` (decisions ``y_pred``,
ranking and calibration from ``proba``); ``tail_recall`` is the mean recall over the ``tail``
classes present in the split. NaN is written as JSON ``null`` and shown as "—".

The HTML page opens offline: its only images are inline base64 PNGs (also saved beside it), its
style is inline, and it links nowhere outside itself. Plots (matplotlib, Agg): class distribution
before/after resampling, per-class F1 of each test model, the row-normalized confusion matrix of
the last test model, PR curves of the tail classes, tuning trials per knob, and the threshold
curve of a binary ensemble. The whole folder is written under a temporary name beside
``out_dir`` and renamed into place when complete.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.io import exists, filesystem_and_path, is_uri, join, replace_dir, temp_dir_beside
from engine.metrics import average_precision, classification_metrics, confusion, pr_curve
from engine.stats import pyplot as _pyplot
from engine.stats import tick_rotation
from engine.thresholds import Thresholds, threshold_curve

if TYPE_CHECKING:
    import pandas

MAX_PR_PANELS = 12  # tail classes drawn as PR panels (the fewest training rows first)
DPI = 100
_RESERVED = ("run", "labels", "tail", "test", "val", "thresholds", "notes")
_LOG_KNOBS = ("lr", "learning_rate", "weight_decay", "eps")


METRICS_JSON = "metrics.json"
HTML = "report.html"


@dataclass(frozen=True)
class Scored:
    """One model's decisions on one split."""

    name: str  # "baseline" | "best_single" | "ensemble" (or any label)
    y_true: np.ndarray  # (N,) int class indices
    proba: np.ndarray  # (N, K) probabilities
    y_pred: np.ndarray  # (N,) int decisions (argmax, or thresholded for the ensemble)
    title: str = ""  # human name for tables/legends, e.g. "plain CE baseline"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Scored.name is {self.name!r}; give a non-empty string")
        proba = np.asarray(self.proba, dtype=np.float64)
        y_true, y_pred = np.asarray(self.y_true), np.asarray(self.y_pred)
        if proba.ndim != 2 or proba.shape[0] == 0 or proba.shape[1] == 0:
            raise ValueError(
                f"Scored {self.name!r}: proba has shape {proba.shape}; pass (N, K) class "
                "probabilities with N >= 1 rows"
            )
        for what, y in (("y_true", y_true), ("y_pred", y_pred)):
            if y.shape != (proba.shape[0],):
                raise ValueError(
                    f"Scored {self.name!r}: {what} has shape {y.shape} for proba of shape "
                    f"{proba.shape}; pass one class index per row"
                )
        object.__setattr__(self, "proba", proba)
        object.__setattr__(self, "y_true", y_true)
        object.__setattr__(self, "y_pred", y_pred)

    @property
    def display(self) -> str:
        return self.title or self.name


@dataclass(frozen=True)
class ReportInput:
    """Everything the report shows; see the module docstring."""

    run_name: str
    labels: list[str]  # label keys, index order
    train_counts: dict[str, int]  # rows per class in the (original) train split
    distributions: dict[str, dict[str, int]]  # {"all": ..., "train": ..., "train, resampled": ...}
    test: Sequence[Scored]  # judged on test (thresholds fitted on val only)
    val: Sequence[Scored] = ()  # optional, same models on val
    tail: Sequence[str] = ()  # tail classes (fewest training rows) to draw PR curves for
    tune_table: pandas.DataFrame | None = None  # one row per trial: knob columns + metric column
    tune_metric: str = "val_macro_f1"
    thresholds: Thresholds | None = None  # the ensemble's fitted thresholds
    threshold_scores: tuple[np.ndarray, np.ndarray] | None = None  # (y_val, p_pos_val), binary
    notes: Sequence[str] = ()  # warnings/remarks to list in the report
    extra: dict[str, Any] = field(default_factory=dict)  # copied into metrics.json as is

    def __post_init__(self) -> None:
        labels = list(self.labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(
                f"ReportInput.labels must be non-empty and unique, got {labels[:10]!r}"
                f"{'…' if len(labels) > 10 else ''}"
            )
        bad_keys = [c for c in labels if not isinstance(c, str)]
        if bad_keys:
            raise TypeError(
                f"ReportInput.labels must be strings (label keys), got {bad_keys[:5]!r}; "
                "pass the label map's keys"
            )
        known = set(labels)
        k = len(labels)
        if not self.test:
            raise ValueError("ReportInput.test is empty; pass at least one Scored model on test")
        for split, models in (("test", self.test), ("val", self.val)):
            names = [s.name for s in models]
            if len(set(names)) != len(names):
                raise ValueError(f"ReportInput.{split} has duplicate model names {names}")
            for s in models:
                if not isinstance(s, Scored):
                    raise TypeError(f"ReportInput.{split} holds {type(s).__name__}; pass Scored")
                if s.proba.shape[1] != k:
                    raise ValueError(
                        f"ReportInput.{split} model {s.name!r} has proba with "
                        f"{s.proba.shape[1]} columns for {k} labels; use the run's label map"
                    )
        for what, keys in (
            ("train_counts", self.train_counts),
            ("tail", self.tail),
            *((f"distributions[{n!r}]", d) for n, d in self.distributions.items()),
        ):
            unknown = [c for c in keys if c not in known]
            if unknown:
                raise ValueError(
                    f"ReportInput.{what} names classes {unknown[:5]} that are not in labels; "
                    "use the label keys of the run's label map"
                )
        bad = {c: n for c, n in self.train_counts.items() if not (isinstance(n, int | np.integer))}
        if bad or any(n < 0 for n in self.train_counts.values()):
            raise ValueError(
                f"ReportInput.train_counts must hold counts >= 0, got {bad or self.train_counts}"
            )
        if self.thresholds is not None and not isinstance(self.thresholds, Thresholds):
            raise TypeError(
                f"ReportInput.thresholds is {type(self.thresholds).__name__}; pass a Thresholds"
            )
        if self.threshold_scores is not None:
            if len(self.threshold_scores) != 2:
                raise ValueError("ReportInput.threshold_scores must be (y_val, p_pos_val)")
            y, p = (np.asarray(a) for a in self.threshold_scores)
            if y.ndim != 1 or y.shape != p.shape or len(y) == 0:
                raise ValueError(
                    f"ReportInput.threshold_scores: y_val {y.shape} and p_pos_val {p.shape} "
                    "must be the same non-empty 1-D shape"
                )
        if self.tune_table is not None and self.tune_metric not in self.tune_table.columns:
            raise ValueError(
                f"ReportInput.tune_metric {self.tune_metric!r} is not a column of tune_table "
                f"(columns: {list(self.tune_table.columns)}); name the metric column"
            )
        clash = sorted(set(self.extra) & set(_RESERVED))
        if clash:
            raise ValueError(
                f"ReportInput.extra has reserved keys {clash}; metrics.json already writes "
                f"{list(_RESERVED)} — rename them"
            )


# --------------------------------------------------------------------------------------------
# metrics


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN and infinities become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def _num(x: Any) -> float:
    """A float for display; None (JSON null) and non-numbers become NaN."""
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def _score(s: Scored, labels: list[str], tail: Sequence[str]) -> dict[str, Any]:
    m = classification_metrics(s.y_true, s.proba, y_pred=s.y_pred, labels=labels)
    recalls = [m["per_class"][c]["recall"] for c in tail if m["per_class"][c]["support"] > 0]
    return {
        "title": s.display,
        "rows": len(s.y_true),
        **m,
        "tail_recall": float(np.mean(recalls)) if recalls else math.nan,
    }


def report_metrics(inp: ReportInput) -> dict[str, Any]:
    """The content of ``metrics.json`` (strict JSON: NaN is None).

    ``{"run", "labels", "tail", "test": {model: metrics}, "val": {...}, "thresholds", "notes",
    **extra}``; each model's metrics are ``classification_metrics`` plus ``title``, ``rows``
    and ``tail_recall``.
    """
    labels = list(inp.labels)
    out = {
        "run": inp.run_name,
        "labels": labels,
        "tail": list(inp.tail),
        "test": {s.name: _score(s, labels, inp.tail) for s in inp.test},
        "val": {s.name: _score(s, labels, inp.tail) for s in inp.val},
        "thresholds": inp.thresholds.to_json() if inp.thresholds is not None else None,
        "notes": list(inp.notes),
        **inp.extra,
    }
    return _jsonable(out)


def summary_rows(metrics: dict[str, Any], split: str = "test") -> list[dict[str, Any]]:
    """Rows for a console table: ``model``, ``macro_f1``, ``balanced_accuracy``, ``tail_recall``
    (floats, NaN where the metric is null), from :func:`report_metrics` or a read metrics.json."""
    models = metrics.get(split)
    if not isinstance(models, dict):
        splits = [k for k in ("test", "val") if isinstance(metrics.get(k), dict)]
        raise ValueError(f"metrics have no split {split!r}; available: {splits}")
    return [
        {
            "model": name,
            "macro_f1": _num(m.get("macro_f1")),
            "balanced_accuracy": _num(m.get("balanced_accuracy")),
            "tail_recall": _num(m.get("tail_recall")),
        }
        for name, m in models.items()
    ]


# --------------------------------------------------------------------------------------------
# plots (each returns PNG bytes, or None when there is nothing to draw)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # no Software tag: the page must not carry URLs, even inside image metadata
    # bbox tight: long tick labels and legends outside the axes are never cut
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _plain(text: str, n: int = 10_000) -> str:
    """``text`` cut to ``n`` characters and shown literally by matplotlib (``$`` is mathtext)."""
    return _short(str(text), n).replace("$", r"\$")


def _class_order(inp: ReportInput) -> list[str]:
    """Labels by training rows, most first (the tail at the right / bottom)."""
    idx = {c: i for i, c in enumerate(inp.labels)}
    return sorted(inp.labels, key=lambda c: (-inp.train_counts.get(c, 0), idx[c]))


def _wide(k: int) -> float:
    return float(np.clip(0.22 * k + 2.5, 6.5, 12.4))


def _tick_classes(ax, order: list[str]) -> None:
    k = len(order)
    fontsize = 7 if k > 30 else 8 if k > 12 else 9
    labels = [_plain(c, 28) for c in order]
    rotation, ha = tick_rotation(labels, ax.figure.get_figwidth() * 0.8, fontsize)
    ax.set_xticks(np.arange(k))
    ax.set_xticklabels(labels, rotation=rotation, ha=ha, fontsize=fontsize)
    ax.set_xlim(-0.6, k - 0.4)


def _plot_distribution(inp: ReportInput, order: list[str]) -> bytes | None:
    series = dict(inp.distributions) or ({"train": inp.train_counts} if inp.train_counts else {})
    if not series:
        return None
    plt = _pyplot()
    k = len(order)
    fig, ax = plt.subplots(figsize=(_wide(k), 4.0))
    x = np.arange(k)
    width = 0.84 / len(series)
    top = 1
    for i, (name, counts) in enumerate(series.items()):
        ys = np.array([max(int(counts.get(c, 0)), 0) for c in order], dtype=float)
        top = max(top, ys.max(initial=1))
        shown = np.where(ys > 0, ys, np.nan)  # log scale: a class with no rows has no bar
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width, shown, width=width, label=_plain(name, 40)
        )
        if k * len(series) <= 30:  # the counts while they fit
            ax.bar_label(bars, labels=[f"{int(v)}" if v > 0 else "" for v in ys], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(0.7, top * 1.6)
    _tick_classes(ax, order)
    ax.set_ylabel("rows (log scale)")
    counts = [inp.train_counts.get(c, 0) for c in order]
    ratio = max(counts) / max(min(counts), 1) if counts else math.nan
    ax.set_title(
        f"Class distribution — {k} classes, train imbalance ratio {ratio:.3g}", fontsize=11
    )
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, ncol=len(series))
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _plot_per_class_f1(inp: ReportInput, order: list[str], test: dict[str, Any]) -> bytes:
    plt = _pyplot()
    k = len(order)
    fig, ax = plt.subplots(figsize=(_wide(k), 3.8))
    x = np.arange(k)
    width = 0.84 / len(inp.test)
    for i, s in enumerate(inp.test):
        pc = test[s.name]["per_class"]
        f1 = [_num(pc[c]["f1"]) for c in order]
        ax.bar(
            x + (i - (len(inp.test) - 1) / 2) * width, f1, width=width, label=_plain(s.display, 80)
        )
    absent = [
        j for j, c in enumerate(order) if test[inp.test[-1].name]["per_class"][c]["support"] == 0
    ]
    for j in absent:
        ax.axvspan(j - 0.5, j + 0.5, color="0.85", zorder=0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 on test")
    _tick_classes(ax, order)
    title = "Per-class F1 (classes by training rows, most first)"
    if absent:
        title += " — grey: no test rows"
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _plot_confusion(inp: ReportInput, order: list[str]) -> bytes:
    plt = _pyplot()
    s = inp.test[-1]
    k = len(order)
    perm = np.array([inp.labels.index(c) for c in order])
    cm = confusion(s.y_true.astype(np.int64), s.y_pred.astype(np.int64), k)[np.ix_(perm, perm)]
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(support > 0, cm / support, np.nan)
    side = float(np.clip(0.14 * k + 3.4, 4.6, 9.5))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.88")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    fs = 6 if k > 30 else 7 if k > 12 else 9
    labels = [_plain(c, 28) for c in order]
    rotation, ha = tick_rotation(labels, side * 0.7, fs)
    ax.set_xticks(np.arange(k))
    ax.set_yticks(np.arange(k))
    ax.set_xticklabels(labels, rotation=rotation, ha=ha, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:  # every cell of a true class with test rows gets its number (0 in grey)
        for i in range(k):
            for j in range(k):
                v = norm[i, j]
                if np.isnan(v):
                    continue
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if cm[i, j] else "0",
                    ha="center",
                    va="center",
                    fontsize=10 if k <= 6 else 8,
                    color="white" if v > 0.55 else "black" if cm[i, j] else "0.6",
                )
    ax.set_title(f"Confusion, rows normalized — {_plain(s.display, 60)}", fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    fig.tight_layout()
    return _png(fig)


def _plot_pr_tail(inp: ReportInput, tail: list[str]) -> bytes:
    plt = _pyplot()
    n = len(tail)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    w = {1: 5.4, 2: 4.4}.get(ncols, 3.1)  # few panels: larger ones
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, 0.88 * w * nrows), squeeze=False, sharex=True, sharey=True
    )
    models = [inp.test[-1]] + ([inp.test[0]] if len(inp.test) > 1 else [])
    for ax, c in zip(axes.flat, tail):
        j = inp.labels.index(c)
        y = inp.test[-1].y_true == j
        for s, style in zip(models, ("-", "--")):
            yc = s.y_true == j
            precision, recall, _ = pr_curve(yc, s.proba[:, j])
            ap = average_precision(yc, s.proba[:, j])
            ax.plot(
                recall,
                precision,
                style,
                drawstyle="steps-post",
                lw=1.4,
                label=f"{_plain(s.display, 32)} AP {ap:.2f}",
            )
        ax.axhline(y.mean(), color="0.6", ls=":", lw=1)
        n_rows = int(y.sum())
        ax.set_title(f"{_plain(c, 24)} ({n_rows} test row{'s' if n_rows != 1 else ''})", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, frameon=False, loc="upper right")
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _plot_threshold_curve(inp: ReportInput) -> bytes:
    plt = _pyplot()
    t = inp.thresholds
    y, p = (np.asarray(a) for a in inp.threshold_scores)
    beta = float(t.info.get("beta", 1.0))
    curve = threshold_curve(y, p, beta)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    th = curve["thresholds"]
    ax.plot(th, curve["precision"], label="precision", lw=1.5)
    ax.plot(th, curve["recall"], label="recall", lw=1.5)
    ax.plot(th, curve["f_beta"], label=f"F{beta:g}", lw=2)
    ax.axvline(0.5, color="0.6", ls=":", lw=1, label="argmax (0.5)")
    ax.axvline(t.threshold, color="crimson", ls="--", lw=1.3, label=f"chosen {t.threshold:.3g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("threshold on p(positive)")
    ax.set_title(f"Threshold on val ({t.objective}) — {len(y)} rows", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _knobs(df: pandas.DataFrame, metric: str) -> list[str]:
    """The searched knobs (the dotted columns: ``model.kind``, ``train.lr``), skipping those
    with a single value (nothing to see); results columns (ids, paths, other metrics) never."""
    out = []
    for col in df.columns:
        if col == metric or "." not in str(col):
            continue
        values = df[col].map(lambda v: v if isinstance(v, int | float | str | bool) else str(v))
        if values.nunique(dropna=False) > 1:
            out.append(col)
    return out


def _category(u: Any) -> str:
    """A knob's value as a tick label: JSON text unquoted, an inactive knob as ``n/a``."""
    if u is None or u != u:
        return "n/a"
    if isinstance(u, str):
        try:
            u = json.loads(u)
        except ValueError:
            return u
    return "n/a" if u is None or u != u else str(u)


def _plot_tune(inp: ReportInput) -> tuple[bytes | None, str]:
    import pandas as pd

    df = inp.tune_table
    metric = inp.tune_metric
    y = pd.to_numeric(df[metric], errors="coerce")
    ok = y.notna().to_numpy()
    df, y = df[ok], y[ok].to_numpy(dtype=float)
    dropped = int((~ok).sum())
    knobs = _knobs(df, metric)
    text = f"{len(df)} trials" + (f" ({dropped} without {metric} left out)" if dropped else "")
    if not knobs or len(df) == 0:
        return None, text + ": no knob varies, nothing to plot."
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    n = len(knobs)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.1 * ncols, 2.7 * nrows), squeeze=False, sharey=True
    )
    best = int(np.argmax(y))
    rng = np.random.default_rng(0)
    for ax, col in zip(axes.flat, knobs):
        v = df[col]
        numeric = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
        if numeric and v.notna().any():
            xs = v.to_numpy(dtype=float)
            has = np.isfinite(xs)  # a trial without this knob has no point in its panel
            ax.scatter(xs[has], y[has], s=16, alpha=0.75)
            if has[best]:
                ax.scatter(xs[best], y[best], s=90, marker="*", color="crimson", zorder=3)
            short = str(col).rsplit(".", 1)[-1]
            lo, hi = xs[has].min(), xs[has].max()
            if lo > 0 and (short in _LOG_KNOBS or hi / lo >= 100):
                ax.set_xscale("log")
                # a few ticks, plain numbers: minor log ticks overlap in a narrow panel
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=5))
                ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelrotation=30)
        else:
            cats = v.map(_category).to_numpy()
            values = sorted(set(cats))
            pos = {c: i for i, c in enumerate(values)}
            xs = np.array([pos[c] for c in cats], dtype=float)
            groups = [y[cats == c] for c in values]
            ax.boxplot(
                groups,
                positions=np.arange(len(values)),
                widths=0.5,
                showfliers=False,
                medianprops={"color": "0.3"},
            )
            ax.scatter(xs + rng.uniform(-0.15, 0.15, len(xs)), y, s=14, alpha=0.7, zorder=3)
            ax.scatter(xs[best], y[best], s=90, marker="*", color="crimson", zorder=4)
            ax.set_xticks(np.arange(len(values)))
            ax.set_xticklabels(
                [_plain(c, 12) for c in values], fontsize=7, rotation=30 if len(values) > 3 else 0
            )
        ax.set_title(_plain(col, 32), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric, fontsize=8)
    fig.tight_layout()
    return _png(fig), text + "; the red star is the best trial."


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0;background:#f6f7f9;color:#1d232b;font-size:14px;line-height:1.45}
main{max-width:1260px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
 border-bottom:1px solid #d9dde3;padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta{color:#555;margin:0 0 10px}nav a{margin-right:14px;color:#2458a6;text-decoration:none}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0 8px}
th,td{padding:3px 9px;border:1px solid #e1e4e8;text-align:right;white-space:nowrap}
th{background:#eef1f5;font-weight:600}td.l,th.l{text-align:left}th.c{text-align:center}
td.g,th.g{border-left:2px solid #c3cad4}
tr:nth-child(even) td{background:#fafbfc}td.best{background:#dff3e4!important;font-weight:600}
.tag{display:inline-block;font-size:10px;padding:0 5px;margin-left:6px;border-radius:7px;
 background:#fde8c8;color:#7a4a00;vertical-align:1px}.dim{color:#999}
.scroll{overflow-x:auto;max-width:100%}
figure{margin:10px 0 18px;background:#fff;border:1px solid #e1e4e8;padding:8px;display:block}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#555;font-size:12.5px;margin-top:6px}
ul.notes li{margin:2px 0}.offsets span{display:inline-block;min-width:190px;font-size:12.5px}
.small{font-size:12.5px;color:#555}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


_SUMMARY_COLS = (
    ("macro_f1", "macro-F1", max),
    ("balanced_accuracy", "balanced acc.", max),
    ("tail_recall", "tail recall", max),
    ("g_mean", "G-mean", max),
    ("mcc", "MCC", max),
    ("macro_pr_auc", "macro PR-AUC", max),
    ("ece", "ECE", min),
)


def _summary_table(models: dict[str, Any], split: str) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in _SUMMARY_COLS)
    best = {}
    for key, _, pick in _SUMMARY_COLS:
        vals = [v for v in (_num(m.get(key)) for m in models.values()) if not math.isnan(v)]
        best[key] = pick(vals) if len(set(vals)) > 1 else None  # a tie everywhere: no winner
    rows = []
    for name, m in models.items():
        cells = []
        for key, _, _ in _SUMMARY_COLS:
            v = _num(m.get(key))
            cls = ' class="best"' if best[key] is not None and v == best[key] else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        rows.append(
            f'<tr><td class="l">{_e(m.get("title") or name)}'
            f' <span class="dim">({_e(name)})</span></td><td>{m.get("rows", "")}</td>'
            f"{''.join(cells)}</tr>"
        )
    return (
        f'<div class="scroll"><table class="summary" id="table-summary-{split}"><thead><tr>'
        f'<th class="l">model</th>'
        f"<th>rows</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _per_class_table(inp: ReportInput, order: list[str], test: dict[str, Any]) -> str:
    names = [s.name for s in inp.test]
    tail = set(inp.tail)
    top = "".join(f'<th class="g c" colspan="3">{_e(test[n]["title"])}</th>' for n in names)
    sub = '<th class="g">P</th><th>R</th><th>F1</th>' * len(names)
    rows = []
    for c in order:
        pcs = [test[n]["per_class"][c] for n in names]
        f1s = [_num(pc["f1"]) for pc in pcs]
        support = pcs[-1]["support"]
        finite = [f for f in f1s if not math.isnan(f)]
        best = max(finite) if len(set(finite)) > 1 else None
        cells = []
        for pc, f1 in zip(pcs, f1s):
            cls = ' class="best"' if best is not None and f1 == best and support > 0 else ""
            cells.append(
                f'<td class="g">{_fmt(pc["precision"])}</td><td>{_fmt(pc["recall"])}</td>'
                f"<td{cls}>{_fmt(f1)}</td>"
            )
        tag = '<span class="tag">tail</span>' if c in tail else ""
        rows.append(
            f'<tr><td class="l">{_e(c)}{tag}</td><td>{inp.train_counts.get(c, 0)}</td>'
            f"<td>{support}</td>{''.join(cells)}</tr>"
        )
    return (
        '<div class="scroll"><table class="per-class" id="table-per-class"><thead>'
        f'<tr><th class="l" rowspan="2">label</th><th rowspan="2">train rows</th>'
        f'<th rowspan="2">test support</th>{top}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _thresholds_html(inp: ReportInput, order: list[str]) -> str:
    t = inp.thresholds
    if t is None:
        return "<p>No fitted thresholds: the last model decides by argmax.</p>"
    parts = [
        f"<p>Kind <b>{_e(t.kind)}</b>, objective <b>{_e(t.objective)}</b>, fitted on val "
        "(when the ensemble is cross-fitted: on the out-of-fold rows of train + val), never on "
        "test. "
        f"Objective on val: {_fmt(t.val_score, 4)} fitted vs {_fmt(t.default_score, 4)} with "
        "plain argmax.</p>"
    ]
    if t.kind == "binary":
        parts.append(
            f"<p>Predict <b>{_e(inp.labels[-1])}</b> when p({_e(inp.labels[-1])}) ≥ "
            f"<b>{t.threshold:.4g}</b>.</p>"
        )
    elif t.kind == "offsets" and t.offsets is not None:
        offs = dict(zip(inp.labels, t.offsets))
        spans = "".join(f"<span>{_e(_short(c, 22))}: {offs[c]:+.3f}</span>" for c in order)
        how = (
            f"a logit adjustment, −τ·log(class frequency) with τ = {_fmt(t.info.get('tau'))}, "
            "which beat one offset per class on the held-out folds"
            if t.info.get("rule") == "logit_adjusted"
            else "one per class"
        )
        parts.append(
            f"<p>Offsets added to log-probabilities ({_e(how)}; classes by training rows):</p>"
            f'<p class="offsets">{spans}</p>'
        )
    info = {k: v for k, v in t.info.items() if k not in ("warnings",)}
    if info:
        items = ", ".join(
            f"{_e(k)}: {_e(_fmt(v, 4) if isinstance(v, float) else v)}" for k, v in info.items()
        )
        parts.append(f'<p class="small">{items}</p>')
    return "".join(parts)


def _notes(inp: ReportInput, metrics: dict[str, Any]) -> list[str]:
    notes = list(inp.notes)
    for split in ("test", "val"):
        models: dict[str, list[str]] = {}  # one line per warning, naming every model it concerns
        for name, m in metrics[split].items():
            for w in m.get("warnings", []):
                models.setdefault(w, []).append(name)
        notes += [f"{split} ({', '.join(names)}): {w}" for w, names in models.items()]
    if inp.thresholds is not None:
        notes += [f"thresholds: {w}" for w in inp.thresholds.info.get("warnings", [])]
    return list(dict.fromkeys(notes))


@dataclass
class _Page:
    """The report page as it is built: sections (HTML), the navigation and the plots."""

    body: list[str] = field(default_factory=list)
    nav: list[tuple[str, str]] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)

    def section(self, anchor: str, nav: str, title: str) -> None:
        self.nav.append((anchor, nav))
        self.body.append(f'<h2 id="{anchor}">{title}</h2>')

    def plot(self, name: str, png: bytes, alt: str, caption: str) -> None:
        self.plots[name] = png
        self.body.append(_img(png, alt, caption))


def _meta(inp: ReportInput) -> str:
    n_test = len(inp.test[-1].y_true)
    counts = [inp.train_counts.get(c, 0) for c in inp.labels]
    meta = (
        f"run <b>{_e(inp.run_name)}</b> · {len(inp.labels)} classes · {n_test} test rows · "
        f"{sum(counts)} train rows"
    )
    if inp.tail:
        meta += f" · tail: {_e(', '.join(_short(c, 24) for c in inp.tail[:8]))}"
        meta += " …" if len(inp.tail) > 8 else ""
    return meta


def _summary(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    page.section("summary", "Summary", "Summary on test")
    page.body.append(_summary_table(metrics["test"], "test"))
    page.body.append(
        '<p class="small">Macro averages count the classes present in test or predicted; '
        "tail recall is the mean recall over the tail classes with test rows; ECE is top-label "
        "calibration error (lower is better). Green: best per column.</p>"
    )
    if metrics["val"]:
        page.body.append("<h3>On val</h3>" + _summary_table(metrics["val"], "val"))
    ens = metrics.get("ensemble") or {}
    members = ens.get("members") or []
    if len(members) > 1:
        stacked = (ens.get("combiner") or {}).get("kind") == "stack"
        page.body.append("<h3>The ensemble's members</h3>" + _members_table(members, stacked))
    if ens.get("candidates"):
        page.body.append("<h3>The candidates</h3>" + _candidates_table(ens))


def _candidates_table(ens: dict[str, Any]) -> str:
    """Per candidate (a trial of the search): kind, source, its val score, its out-of-fold
    score when cross-fitted, and whether the ensemble took it."""
    cf = ens.get("cross_fit") or {}
    oof = cf.get("oof") or {}
    chosen = {m.get("name") for m in ens.get("members") or []}
    metric = next((k for k in (ens["candidates"][0]) if k.startswith("val_")), "val_macro_f1")
    rows = []
    for c in ens["candidates"]:
        cells = f"<td>{_fmt(c.get(metric))}</td>"
        if cf:
            cells += f"<td>{_fmt(oof.get(c.get('name')))}</td>"
        rows.append(
            f'<tr><td class="l">{_e(c.get("name"))}</td><td class="l">{_e(c.get("kind"))}</td>'
            f'<td class="l">{_e(c.get("source"))}</td>{cells}'
            f'<td class="l">{"yes" if c.get("name") in chosen else ""}</td></tr>'
        )
    head = f"<th>{_e(metric)} (its trial)</th>" + (
        f"<th>out of fold ({cf.get('folds')} folds)</th>" if cf else ""
    )
    note = (
        f"Each candidate was trained again on {cf.get('folds')} folds of train + val and scored "
        f"{cf.get('rows')} rows it did not see; members, weights, temperatures and thresholds "
        "were fitted on those out-of-fold scores, and each member is the mean of its fold models."
        if cf
        else "Members, weights, temperatures and thresholds were fitted on val."
    )
    note += _combiner_note(ens.get("combiner") or {})
    return (
        '<div class="scroll"><table class="summary" id="table-candidates"><thead><tr>'
        '<th class="l">candidate</th><th class="l">kind</th><th class="l">from</th>'
        f'{head}<th class="l">member</th></tr></thead><tbody>'
        + "".join(rows)
        + f'</tbody></table></div><p class="small">{_e(note)}</p>'
    )


def _combiner_note(comb: dict[str, Any]) -> str:
    """How the members were combined: the mean, or the stacker (and the scores that chose)."""
    if "oof_stack" not in comb:
        return ""
    stack = (
        f"a stacker (a multinomial logistic regression on every candidate's "
        f"log-probabilities, C {_fmt(comb.get('C'))}) scored {_fmt(comb.get('oof_stack'))} out of "
        f"fold (each fold's rows by a stacker fitted on the others) against the mean's "
        f"{_fmt(comb.get('oof_mean'))}"
    )
    used = "the stacker combines the members" if comb.get("kind") == "stack" else "the mean is kept"
    return f" Combining: {stack}; {used}."


def _members_table(members: list[dict[str, Any]], stacked: bool = False) -> str:
    """Per member: kind, source, weight, and what the ensemble loses without it (on val, or
    out of fold when cross-fitted, and on test)."""
    without = (
        "a stacker fitted without the member's log-probabilities"
        if stacked
        else "the ensemble without the member, the other members' weights renormalized"
    )
    first = "oof" if any("oof" in (m.get("contribution") or {}) for m in members) else "val"
    rows = []
    for m in members:
        added = m.get("contribution") or {}
        cells = "".join(f"<td>{_signed(added.get(s))}</td>" for s in (first, "test"))
        rows.append(
            f'<tr><td class="l">{_e(m.get("name"))}</td><td class="l">{_e(m.get("kind"))}</td>'
            f'<td class="l">{_e(m.get("source"))}</td><td>{_fmt(m.get("weight"))}</td>{cells}</tr>'
        )
    return (
        '<div class="scroll"><table class="summary" id="table-members"><thead><tr>'
        '<th class="l">member</th><th class="l">kind</th><th class="l">from</th><th>weight</th>'
        f"<th>added {'out of fold' if first == 'oof' else 'on val'}</th><th>added on test</th>"
        "</tr></thead><tbody>"
        + "".join(rows)
        + '</tbody></table></div><p class="small">Added: the ensemble\'s macro-F1 (argmax '
        f"decisions, before thresholds) minus that of {without}. "
        f"{'The out-of-fold rows' if first == 'oof' else 'Val'} "
        "chose the members and weights; the test column only reports.</p>"
    )


def _signed(x: Any) -> str:
    v = _num(x)
    return "—" if math.isnan(v) else f"{v:+.3f}"


def _distribution(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    dist = _plot_distribution(inp, order)
    if dist is None:
        return
    page.section("distribution", "Distribution", "Class distribution")
    caption = (
        "Rows per class (log scale), classes by training rows; one bar per series: "
        + ", ".join(inp.distributions)
    )
    page.plot("class_distribution", dist, "class distribution", caption)


def _per_class(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    test = metrics["test"]
    page.section("per-class", "Per class", "Per class on test")
    caption = "F1 per class for each model, classes by training rows (tail at the right)."
    page.plot("per_class_f1", _plot_per_class_f1(inp, order, test), "per-class F1", caption)
    page.body.append(_per_class_table(inp, order, test))


def _confusion(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    page.section("confusion", "Confusion", "Confusion matrix")
    caption = f"{inp.test[-1].display} on test; each row sums to 1; grey rows have no test rows."
    page.plot("confusion", _plot_confusion(inp, order), "confusion matrix", caption)


def _tail_pr(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    if not inp.tail:
        return
    idx = {c: i for i, c in enumerate(inp.labels)}
    tail = sorted(inp.tail, key=lambda c: (inp.train_counts.get(c, 0), idx[c]))
    support = metrics["test"][inp.test[-1].name]["per_class"]
    shown = [c for c in tail if support[c]["support"] > 0]
    missing = [c for c in tail if support[c]["support"] == 0]
    cap = f"Tail classes (fewest training rows first); solid: {inp.test[-1].display}"
    if len(inp.test) > 1:
        cap += f", dashed: {inp.test[0].display}"
    cap += "; dotted: the class's share of test rows (a random ranking)."
    if len(shown) > MAX_PR_PANELS:
        cap += f" Showing {MAX_PR_PANELS} of {len(shown)}."
        shown = shown[:MAX_PR_PANELS]
    if missing:
        cap += " No test rows (no curve): " + ", ".join(missing) + "."
    page.section("pr", "Tail PR", "Precision-recall of the tail classes")
    if shown:
        page.plot("pr_tail", _plot_pr_tail(inp, shown), "tail PR curves", cap)
    else:
        page.body.append(f"<p>{_e(cap)}</p>")


def _threshold_section(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    page.section("thresholds", "Thresholds", "Decision thresholds")
    page.body.append(_thresholds_html(inp, order))
    t = inp.thresholds
    if t is not None and t.kind == "binary" and inp.threshold_scores is not None:
        caption = (
            "Precision, recall and F-beta on val for every threshold; the dashed line is the "
            "fitted threshold."
        )
        page.plot("threshold_curve", _plot_threshold_curve(inp), "threshold curve", caption)


def _tune_section(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    if inp.tune_table is None:
        return
    png, text = _plot_tune(inp)
    page.section("tune", "Tuning", "Tuning trials")
    if png is not None:
        page.plot("tune", png, "tuning trials", f"{inp.tune_metric} per knob value; {text}")
    else:
        page.body.append(f"<p>{_e(text)}</p>")


def _notes_section(page: _Page, inp: ReportInput, metrics: dict[str, Any], order) -> None:
    notes = _notes(inp, metrics)
    page.section("notes", "Notes", "Notes and warnings")
    page.body.append(
        '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
        if notes
        else "<p>None.</p>"
    )


SECTIONS = (
    _summary,
    _distribution,
    _per_class,
    _confusion,
    _tail_pr,
    _threshold_section,
    _tune_section,
    _notes_section,
)


def _build(inp: ReportInput, metrics: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """The page and the plots it embeds ({name: PNG bytes})."""
    order = _class_order(inp)
    page = _Page()
    for section in SECTIONS:
        section(page, inp, metrics, order)
    links = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in page.nav)
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(inp.run_name)} — evaluation report</title><style>{_CSS}</style></head>"
        f'<body><main><h1>Evaluation report</h1><p class="meta">{_meta(inp)}</p>'
        f"<nav>{links}</nav>" + "\n".join(page.body) + "</main></body></html>\n"
    )
    return html, page.plots


def write_report(inp: ReportInput, out_dir: str) -> dict[str, str]:
    """Write ``metrics.json``, ``report.html`` and the plots' PNGs as the folder ``out_dir``
    (a local path or URI), replacing an older one only once the new one is complete.

    Returns ``{"metrics": path, "html": path, "<plot>": path, ...}`` with the plots that apply
    (class_distribution, per_class_f1, confusion, pr_tail, threshold_curve, tune).
    """
    metrics = report_metrics(inp)
    data = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    page, plots = _build(inp, metrics)
    files = {
        "metrics": (METRICS_JSON, data.encode()),
        "html": (HTML, page.encode()),
        **{name: (f"{name}.png", png) for name, png in plots.items()},
    }
    fs, final = filesystem_and_path(out_dir)
    tmp = temp_dir_beside(fs, final)
    try:
        for filename, content in files.values():
            with fs.open_output_stream(join(tmp, filename)) as f:
                f.write(content)
        replace_dir(fs, tmp, final)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_dir(tmp)
        raise
    base = str(out_dir) if is_uri(str(out_dir)) else final
    return {key: join(base, filename) for key, (filename, _) in files.items()}
