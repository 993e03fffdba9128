"""The evaluation report: metrics.json against classification_metrics, a self-contained HTML page.

.venv/bin/pytest -q tests/test_report.py
.venv/bin/python -m tests.test_report runs/report-demo   # synthetic K=2/12/50 reports to view
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import ThresholdSpec
from engine.metrics import classification_metrics
from engine.report import ReportInput, Scored, report_metrics, summary_rows, write_report
from engine.thresholds import apply_thresholds, fit_thresholds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = (
    "macro_f1",
    "balanced_accuracy",
    "weighted_f1",
    "g_mean",
    "mcc",
    "macro_pr_auc",
    "macro_roc_auc",
    "ece",
    "log_loss",
)


# --------------------------------------------------------------------------------------------
# synthetic runs


def _proba(y: np.ndarray, k: int, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(0.0, 1.0, (len(y), k))
    logits[np.arange(len(y)), y] += signal[y]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _split(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = np.repeat(np.arange(len(counts)), counts)
    return rng.permutation(y)


def synthetic_input(
    k: int,
    *,
    seed: int = 0,
    absent: int | None = None,
    tune: bool = True,
    thresholds: bool = True,
    tail_fraction: float = 1 / 3,
    labels: list[str] | None = None,
    run_name: str = "synthetic",
) -> ReportInput:
    """A long-tailed K-class run: a weaker baseline, a better single model and an ensemble with
    thresholds fitted on val; ``absent`` drops that class from test."""
    rng = np.random.default_rng(seed)
    labels = labels or [f"class_{i:02d}" for i in range(k)]
    train = (2000 * 0.82 ** np.arange(k)).astype(int) + 2 * (k - np.arange(k)) + 4
    if k == 2:
        train = np.array([1800, 120])
    held = np.maximum(train // 8, 6)
    test_counts = held.copy()
    if absent is not None:
        test_counts[absent] = 0
    y_val, y_test = _split(held, rng), _split(test_counts, rng)
    strength = np.linspace(2.8, 1.2, k) if k > 2 else np.array([1.0, 0.6])  # the tail is harder
    models = {"baseline": 0.7, "best_single": 1.0, "ensemble": 1.25}
    titles = {"baseline": "plain CE baseline", "best_single": "best trial", "ensemble": "ensemble"}
    val, test = [], []
    t = None
    for name, m in models.items():
        pv, pt = _proba(y_val, k, strength * m, rng), _proba(y_test, k, strength * m, rng)
        dv, dt = pv.argmax(1), pt.argmax(1)
        if name == "ensemble" and thresholds:
            spec = ThresholdSpec(objective="f_beta" if k == 2 else "macro_f1")
            t = fit_thresholds(y_val, pv, spec)
            dv, dt = apply_thresholds(pv, t), apply_thresholds(pt, t)
            scores = (y_val, pv[:, 1]) if k == 2 else None
        val.append(Scored(name, y_val, pv, dv, titles[name]))
        test.append(Scored(name, y_test, pt, dt, titles[name]))
    train_counts = dict(zip(labels, map(int, train)))
    resampled = {c: max(n, int(train.max() // 4)) for c, n in train_counts.items()}
    order = sorted(labels, key=lambda c: (train_counts[c], labels.index(c)))
    tail = order[: max(1, round(k * tail_fraction))] if tail_fraction else []
    table = None
    if tune:
        n = 24
        loss = rng.choice(["ce", "focal", "ldam", "balanced_softmax"], n)
        table = pd.DataFrame(
            {
                "loss.name": loss,
                "loss.gamma": np.where(loss == "focal", rng.uniform(0.5, 3.0, n), np.nan),
                "train.lr": 10 ** rng.uniform(-5, -2, n),
                "sampler.kind": rng.choice(["none", "class_balanced"], n),
                "train.batch_size": 32,  # constant: no panel
                "val_macro_f1": rng.uniform(0.3, 0.7, n),
            }
        )
        table.loc[3, "val_macro_f1"] = np.nan  # a failed trial
    return ReportInput(
        run_name=run_name,
        labels=labels,
        train_counts=train_counts,
        distributions={
            "all": {c: int(n + 2 * h) for c, n, h in zip(labels, train, held)},
            "train": train_counts,
            "train, resampled": resampled,
        },
        test=test,
        val=val,
        tail=tail,
        tune_table=table,
        thresholds=t,
        threshold_scores=scores if thresholds and k == 2 else None,
        notes=["synthetic data <for tests> & demos"],
        extra={"seed": seed, "nan_value": float("nan")},
    )


# --------------------------------------------------------------------------------------------
# HTML inspection


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.best_cells: list[str] = []
        self.sections: list[str] = []
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._cell_best = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href", "srcset", "data", "action", "poster", "background"):
            if name in a:
                self.refs.append((tag, name, a[name] or ""))
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "h2" and a.get("id"):
            self.sections.append(a["id"])
        if tag == "table":
            self._table = a.get("id") or "?"
            self.tables[self._table] = []
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []
            self._cell_best = a.get("class") == "best"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = "".join(self._cell).strip()
            self._row.append(text)
            if self._cell_best:
                self.best_cells.append(text)
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_body = False
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _check_page(path: str) -> _Page:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    page = _Page()
    page.feed(text)
    page.close()
    assert page.imgs, "the page has no images"
    for src in page.imgs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert (
            png.startswith(PNG_MAGIC) and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
        )
    for tag, attr, value in page.refs:
        ok = value.startswith("#") or (tag == "img" and attr == "src" and value.startswith("data:"))
        assert ok, f"<{tag} {attr}={value[:60]!r}> refers outside the page"
    stripped = text
    for src in page.imgs:
        stripped = stripped.replace(src, "")
    for bad in ("http:", "https:", "//", "url(", "@import", "<script", "<link", "file:"):
        assert bad not in stripped.lower(), f"{bad!r} in the page"
    return page


def _no_constants(name: str):
    raise AssertionError(f"{name} in metrics.json: not strict JSON")


def _metrics_file(paths: dict[str, str]) -> dict:
    with open(paths["metrics"], encoding="utf-8") as f:
        m = json.loads(f.read(), parse_constant=_no_constants)
    json.dumps(m, allow_nan=False)
    return m


def _same(a, b) -> None:
    """JSON value ``a`` equals metric ``b`` (NaN written as null)."""
    if isinstance(b, float) and math.isnan(b):
        assert a is None
    else:
        assert a == pytest.approx(b, abs=1e-12)


def _check_against_metrics(m: dict, inp: ReportInput) -> None:
    for split, models in (("test", inp.test), ("val", inp.val)):
        assert list(m[split]) == [s.name for s in models]
        for s in models:
            ref = classification_metrics(s.y_true, s.proba, y_pred=s.y_pred, labels=inp.labels)
            got = m[split][s.name]
            for key in SUMMARY_KEYS:
                _same(got[key], ref[key])
            assert got["warnings"] == ref["warnings"]
            assert list(got["per_class"]) == list(inp.labels)
            for c in inp.labels:
                assert set(got["per_class"][c]) >= {
                    "precision",
                    "recall",
                    "f1",
                    "support",
                    "pr_auc",
                    "roc_auc",
                }
                for key, v in ref["per_class"][c].items():
                    _same(got["per_class"][c][key], v)
            recalls = [ref["per_class"][c]["recall"] for c in inp.tail]
            recalls = [r for r in recalls if not math.isnan(r)]
            _same(got["tail_recall"], float(np.mean(recalls)) if recalls else math.nan)


# --------------------------------------------------------------------------------------------
# tests


def test_binary_report_with_threshold_curve_and_tune(tmp_path):
    inp = synthetic_input(2)
    assert inp.thresholds is not None and inp.thresholds.kind == "binary"
    paths = write_report(inp, str(tmp_path / "report"))
    assert set(paths) == {
        "metrics",
        "html",
        "class_distribution",
        "per_class_f1",
        "confusion",
        "pr_tail",
        "threshold_curve",
        "tune",
    }
    for key, p in paths.items():
        assert os.path.dirname(p) == str(tmp_path / "report")
        if key not in ("metrics", "html"):
            with open(p, "rb") as f:
                assert f.read(8) == PNG_MAGIC
    m = _metrics_file(paths)
    assert m["run"] == "synthetic" and m["labels"] == inp.labels and m["tail"] == ["class_01"]
    assert m["thresholds"] == json.loads(json.dumps(inp.thresholds.to_json()))
    assert m["notes"] == list(inp.notes)
    assert m["seed"] == 0 and m["nan_value"] is None  # extra, NaN as null
    _check_against_metrics(m, inp)

    page = _check_page(paths["html"])
    assert len(page.imgs) == 6
    assert page.sections == [
        "summary",
        "distribution",
        "per-class",
        "confusion",
        "pr",
        "thresholds",
        "tune",
        "notes",
    ]
    summary = page.tables["table-summary-test"]
    assert len(summary) == 3 and len(page.tables["table-summary-val"]) == 3
    assert [r[0] for r in summary[:3]] == [
        "plain CE baseline (baseline)",
        "best trial (best_single)",
        "ensemble (ensemble)",
    ]
    assert summary[2][2] == f"{m['test']['ensemble']['macro_f1']:.3f}"
    per_class = page.tables["table-per-class"]
    assert [r[0] for r in per_class] == ["class_00", "class_01tail"]
    assert per_class[1][1:3] == [
        "120",
        str(m["test"]["ensemble"]["per_class"]["class_01"]["support"]),
    ]
    with open(paths["html"], encoding="utf-8") as f:
        assert f"{inp.thresholds.threshold:.4g}" in f.read()


SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    """12 classes, offsets fitted on val, the last (tail) class absent from test and named like
    markup, no tune table."""
    labels = [f"class_{i:02d}" for i in range(11)] + [SCRIPT]
    labels[5] = "$\\alpha$ costs $5"  # matplotlib would read $…$ as mathtext
    inp = synthetic_input(12, absent=11, tune=False, seed=1, labels=labels, run_name="a&b <run>")
    paths = write_report(inp, str(tmp_path_factory.mktemp("k12") / "report"))
    return inp, paths


def test_twelve_classes_offsets_without_tune(twelve):
    inp, paths = twelve
    assert inp.thresholds is not None and inp.thresholds.kind == "offsets"
    assert "tune" not in paths and "threshold_curve" not in paths
    m = _metrics_file(paths)
    assert m["thresholds"]["kind"] == "offsets" and len(m["thresholds"]["offsets"]) == 12
    _check_against_metrics(m, inp)
    page = _check_page(paths["html"])
    assert "tune" not in page.sections and "pr" in page.sections
    assert len(page.imgs) == 4
    assert len(page.tables["table-summary-test"]) == len(page.tables["table-summary-val"]) == 3
    per_class = page.tables["table-per-class"]
    # classes by training rows, most first; 4 tail classes tagged
    assert [r[0].removesuffix("tail") for r in per_class] == inp.labels
    assert sum(r[0].endswith("tail") for r in per_class) == 4
    for row, c in zip(per_class, inp.labels):
        assert row[1] == str(inp.train_counts[c])
        f1s = row[5::3]  # P, R, F1 per model after label, train rows, support
        assert f1s == [f"{m['test'][n]['per_class'][c]['f1']:.3f}" for n in m["test"]]
    # the best F1 of each row with test rows is highlighted
    best = [max(float(v) for v in row[5::3]) for row in per_class if row[2] != "0"]
    assert sorted(best) == sorted(float(v) for v in page.best_cells[-len(best) :])


def test_absent_class_gives_null_not_a_crash(twelve):
    inp, paths = twelve
    m = _metrics_file(paths)
    pc = m["test"]["ensemble"]["per_class"][SCRIPT]
    assert pc["support"] == 0 and pc["recall"] is None and pc["pr_auc"] is None
    assert SCRIPT in m["test"]["ensemble"]["absent"]
    assert SCRIPT in m["tail"]
    page = _check_page(paths["html"])
    row = page.tables["table-per-class"][-1]
    assert row[0] == SCRIPT + "tail"
    assert row[2] == "0" and row[4] == "—"  # support, recall of the first model
    with open(paths["html"], encoding="utf-8") as f:
        text = f.read()
    assert "No test rows (no curve): &lt;script&gt;" in text
    assert "has no rows in this split" in text  # metric warnings are listed


def test_all_text_is_escaped(twelve):
    _, paths = twelve
    with open(paths["html"], encoding="utf-8") as f:
        text = f.read()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a&amp;b &lt;run&gt;" in text
    assert "synthetic data &lt;for tests&gt; &amp; demos" in text


def test_empty_tail_and_no_thresholds(tmp_path):
    inp = synthetic_input(5, tune=False, thresholds=False, tail_fraction=0)
    paths = write_report(inp, str(tmp_path / "report"))
    assert "pr_tail" not in paths and "threshold_curve" not in paths
    m = _metrics_file(paths)
    assert m["tail"] == [] and m["thresholds"] is None
    assert all(v["tail_recall"] is None for v in m["test"].values())
    page = _check_page(paths["html"])
    assert "pr" not in page.sections
    assert all(r[4] == "—" for r in page.tables["table-summary-test"])  # tail recall column


def test_second_write_replaces_the_folder_atomically(tmp_path, monkeypatch):
    out = tmp_path / "run" / "report"
    first = write_report(synthetic_input(2, tune=False, run_name="first"), str(out))
    assert os.path.exists(first["threshold_curve"])
    small = synthetic_input(3, tune=False, thresholds=False, tail_fraction=0, run_name="second")
    second = write_report(small, str(out))
    assert _metrics_file(second)["run"] == "second"
    assert not os.path.exists(first["threshold_curve"])  # the old folder is gone, not merged
    assert os.listdir(tmp_path / "run") == ["report"]  # no temporary folder left

    import engine.report

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(engine.report, "replace_dir", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(small, str(out))
    assert os.listdir(tmp_path / "run") == ["report"]
    assert _metrics_file(second)["run"] == "second"  # the complete old report stays


def test_report_metrics_is_strict_json_and_summary_rows():
    inp = synthetic_input(12, absent=11, tune=False, seed=3)
    m = report_metrics(inp)
    json.dumps(m, allow_nan=False)
    rows = summary_rows(m)
    assert [r["model"] for r in rows] == ["baseline", "best_single", "ensemble"]
    for r in rows:
        got = m["test"][r["model"]]
        assert set(r) == {"model", "macro_f1", "balanced_accuracy", "tail_recall"}
        for key in ("macro_f1", "balanced_accuracy", "tail_recall"):
            assert r[key] == pytest.approx(got[key])
    assert [r["model"] for r in summary_rows(m, "val")] == ["baseline", "best_single", "ensemble"]
    # read back from JSON, null tail recall becomes NaN
    m2 = report_metrics(synthetic_input(4, tune=False, tail_fraction=0))
    assert all(math.isnan(r["tail_recall"]) for r in summary_rows(json.loads(json.dumps(m2))))
    with pytest.raises(ValueError, match="no split 'train'"):
        summary_rows(m, "train")


def test_invalid_inputs_raise_clear_errors():
    good = synthetic_input(3, tune=False)
    y = np.array([0, 1, 2])
    p = np.full((3, 3), 1 / 3)

    def with_(**kw):
        fields = {f: getattr(good, f) for f in good.__dataclass_fields__}
        return ReportInput(**{**fields, **kw})

    with pytest.raises(ValueError, match="2 columns for 3 labels"):
        with_(test=[Scored("m", y[:2], p[:2, :2], y[:2] % 2)])
    with pytest.raises(ValueError, match="duplicate model names"):
        with_(test=[Scored("m", y, p, y), Scored("m", y, p, y)])
    with pytest.raises(ValueError, match="not in labels"):
        with_(tail=["nope"])
    with pytest.raises(ValueError, match="reserved keys"):
        with_(extra={"test": 1})
    with pytest.raises(ValueError, match="not a column of tune_table"):
        with_(tune_table=pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(TypeError, match="must be strings"):
        with_(labels=[0, 1, 2], train_counts={}, distributions={}, tail=[])
    with pytest.raises(ValueError, match="test is empty"):
        with_(test=[])
    with pytest.raises(ValueError, match="y_pred has shape"):
        Scored("m", y, p, y[:2])


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/report-demo"
    for k in (2, 12, 50):
        paths = write_report(synthetic_input(k, absent=k - 2 if k > 2 else None), f"{out}/k{k}")
        print(paths["html"])


def test_the_members_table_shows_what_each_member_adds(tmp_path):
    from dataclasses import replace

    members = [
        {"name": "m1", "kind": "linear", "source": "trial a", "weight": 0.6,
         "contribution": {"val": 0.031, "test": -0.004}},
        {"name": "m2", "kind": "gbdt", "source": "trial <b>", "weight": 0.4,
         "contribution": {"val": None, "test": 0.012}},
    ]  # fmt: skip
    inp = replace(synthetic_input(3, tune=False), extra={"ensemble": {"members": members}})
    html = Path(write_report(inp, str(tmp_path / "r"))["html"]).read_text()
    table = html[html.index('id="table-members"') : html.index("</table>", html.index("members"))]
    assert "+0.031" in table and "-0.004" in table and "+0.012" in table and "—" in table
    assert "trial &lt;b&gt;" in table and "linear" in table and "0.600" in table
    one = replace(inp, extra={"ensemble": {"members": members[:1]}})
    assert (
        'id="table-members"' not in Path(write_report(one, str(tmp_path / "s"))["html"]).read_text()
    )
