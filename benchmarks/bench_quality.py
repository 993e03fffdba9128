"""Imbalance remedies against plain baselines: test macro-F1, balanced accuracy, tail recall.

    .venv/bin/python benchmarks/bench_quality.py --work /tmp/bq --results benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_quality.py --datasets page_blocks0 --work /tmp/bq \
        --set train.epochs=5
    .venv/bin/python benchmarks/bench_quality.py --work /tmp/bq --prepare-only   # (b)-(d) only

For each dataset, on the splits the engine made (one seeded split, the same rows for every row
of the table):

    (a)  plain CE            the engine pipeline's ``baseline``
    (b)  LogReg balanced     LogisticRegression(class_weight='balanced') on the engine's inputs
    (c)  SMOTE + LogReg      imbalanced-learn SMOTE, then LogisticRegression, on the same inputs
    (d1) TF-IDF + LogReg     word 1-2 + char_wb 2-5 TF-IDF (sublinear tf) + LogisticRegression,
    (d2)                     plain and class_weight='balanced'; text sets only
    (e)  tuned threshold     binary sets: (b)'s model and C refitted on train+val inside
                             TunedThresholdClassifierCV(scoring='f1_macro', cv=5)
    (f1) LightGBM balanced   LGBMClassifier(class_weight='balanced', 400 trees, lr 0.05) on the
                             engine's inputs, fitted on train
    (f2)                     binary sets: (f1) inside TunedThresholdClassifierCV on train+val
    (h)  best single         the engine's best single tuned model (``best_single``)
    (i)  ensemble            the engine's ensemble + thresholds (``ensemble``)

    (g)  AutoGluon           with ``--autogluon-python PY`` (a venv holding autogluon.tabular,
                             which cannot share the engine's: it pins older pyarrow / pandas):
                             TabularPredictor(eval_metric='f1_macro', presets='medium_quality')
                             on the raw text or the feature columns, train with val as tuning
                             data, the engine run's wall time as time limit
                             (``benchmarks/autogluon_baseline.py``)

The goal line holds (i) against the best of (a)-(g) (+0.02 on test macro-F1).

(a), (h), (i) come from one run per dataset of ``python -m jobs.pipeline --config
jobs/configs/demo.yaml --set name=DS --set run_dir=WORK/runs/DS --set data.path=WORK/data/DS ...``
(plus ``--set`` from the command line), read from ``RUN_DIR/report/metrics.json``. (b)-(f2) are
:func:`sklearn_baselines` on that run directory: fitted on ``splits/train`` (text sets: the
``embedding`` column of ``embedded/train``, the frozen MiniLM vectors the engine's MLP reads; other
sets: the feature columns, standardized on train), C picked from ``C_GRID`` by val macro-F1
(the same grid and rule for (b), (c) and (d)), scored once on test. SMOTE raises every class to
the largest class's train count with k_neighbors = min(5, smallest count - 1) over the classes it
interpolates; classes with a single train row cannot be interpolated and are raised to that count
by RandomOverSampler (copies) first. Every row is scored by ``engine.metrics.
classification_metrics`` on argmax decisions (the ensemble on its thresholded decisions); tail
recall is the mean test recall over ``engine.evaluate.tail_classes`` of the train counts (the
third of the classes with the fewest train rows) that have test rows.

``--work`` is reused: a dataset already written or a run whose ``report/metrics.json`` exists is
not made again. ``--prepare-only`` runs ``jobs.prepare`` instead of the pipeline (with
``model.kind=mlp`` so that text is embedded) and reports (b)-(d) alone. Raw numbers go to
``WORK/quality.json``; ``--results FILE`` replaces this dataset's subsection of
"## Imbalance remedies vs plain baselines (bench_quality.py)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.data import LabelMap  # noqa: E402
from engine.evaluate import tail_classes  # noqa: E402
from engine.metrics import classification_metrics  # noqa: E402

DATASETS = (
    "trec50",
    "trec6",
    "sms_spam",
    "digits_lt100",
    "digits_lt10",
    "page_blocks0",
    "satimage",
    "sylva",
)
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_ITER = 5000
SEED = 0
SECTION = "## Imbalance remedies vs plain baselines (bench_quality.py)"
INTRO = (
    "Test macro-F1, balanced accuracy and tail-class recall (mean recall over the third of the "
    "classes with the fewest train rows) of the engine's plain-CE baseline, best single tuned "
    "model and ensemble + thresholds against scikit-learn / imbalanced-learn baselines, all on "
    "the engine's own seeded splits. (b), (c), (e) and LightGBM (f1, f2) read the engine's "
    "model inputs (frozen MiniLM embeddings for text, the feature columns otherwise); (d1, d2) "
    "read the raw text; C of (b)-(e) is chosen on val macro-F1; (e) and (f2) tune a binary "
    "threshold on train+val; AutoGluon (g), where it was run, reads the raw text or the feature "
    "columns with the engine run's wall time as its limit. See `benchmarks/bench_quality.py` "
    "for the exact recipe."
)
# Row id, display name, where the numbers come from ("engine" key or sklearn_baselines name).
ROWS = (
    ("a", "plain CE (engine baseline)", "engine", "baseline"),
    ("b", "LogReg balanced, same features", "sklearn", "lr_balanced"),
    ("c", "SMOTE + LogReg, same features", "sklearn", "smote_lr"),
    ("d1", "TF-IDF word 1-2 + char 2-5, LogReg plain", "sklearn", "tfidf_lr_plain"),
    ("d2", "TF-IDF word 1-2 + char 2-5, LogReg balanced", "sklearn", "tfidf_lr"),
    ("e", "LogReg + TunedThresholdClassifierCV (binary)", "sklearn", "lr_tuned"),
    ("f1", "LightGBM balanced, same features", "sklearn", "lgbm_balanced"),
    ("f2", "LightGBM balanced + TunedThresholdClassifierCV (binary)", "sklearn", "lgbm_tuned"),
    ("g", "AutoGluon TabularPredictor medium_quality, f1_macro", "sklearn", "autogluon"),
    ("h", "engine best single tuned model", "engine", "best_single"),
    ("i", "engine ensemble + thresholds", "engine", "ensemble"),
)
BASELINES = ("a", "b", "c", "d1", "d2", "e", "f1", "f2", "g")  # (i) is held against the best
TEXT_ONLY = ("tfidf_lr", "tfidf_lr_plain")
BINARY_ONLY = ("lr_tuned", "lgbm_tuned")
METRICS = ("macro_f1", "balanced_accuracy", "tail_recall")


# --------------------------------------------------------------------------- reading a run


def read_split(folder: Path) -> pa.Table:
    """Every Parquet file of one split folder, in name order."""
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise ValueError(f"no Parquet files in {folder}; is the run directory prepared?")
    return pq.read_table([str(f) for f in files])


def vectors(column: pa.ChunkedArray) -> np.ndarray:
    """A (fixed-size) list<float> column as an (N, d) float32 matrix."""
    arr = column.combine_chunks()
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(arr), -1)


def feature_matrix(table: pa.Table, features: str | list[str] | None, label: str) -> np.ndarray:
    """The model inputs of a feature set: one list column, listed columns, or (None) every
    numeric column other than the label."""
    if isinstance(features, list) and len(features) == 1:
        features = features[0]
    if isinstance(features, str):
        t = table.schema.field(features).type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            return vectors(table[features])
        features = [features]
    if features is None:
        features = [
            f.name
            for f in table.schema
            if f.name != label and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        ]
        lists = [f.name for f in table.schema if pa.types.is_fixed_size_list(f.type)]
        if not features and len(lists) == 1:
            return vectors(table[lists[0]])
    cols = [table[c].to_numpy().astype(np.float64) for c in features]
    return np.stack(cols, axis=1)


def run_spec(run_dir: Path) -> dict[str, Any]:
    """The ``data`` section of the run's resolved ``spec.yaml`` ({} when absent)."""
    import yaml

    spec = run_dir / "spec.yaml"
    if not spec.exists():
        return {}
    return yaml.safe_load(spec.read_text()).get("data") or {}


def tail_recall(per_class: dict[str, dict[str, Any]], tail: list[str]) -> float:
    """Mean recall over the tail classes that have test rows (NaN when none has)."""
    r = [per_class[k]["recall"] for k in tail if per_class[k]["support"] > 0]
    return float(np.mean(r)) if r else float("nan")


def score(y: np.ndarray, proba: np.ndarray, keys: list[str], tail: list[str]) -> dict[str, Any]:
    """The engine's metrics of argmax decisions, per class by label key, plus tail recall."""
    m = classification_metrics(y, proba, proba.argmax(axis=1), labels=keys)
    return {
        "macro_f1": m["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"],
        "tail_recall": tail_recall(m["per_class"], tail),
        "per_class": {
            k: {s: v[s] for s in ("precision", "recall", "f1", "support")}
            for k, v in m["per_class"].items()
        },
    }


# --------------------------------------------------------------------------- the baselines


def full_proba(model: Any, x: Any, k: int) -> np.ndarray:
    """predict_proba as (N, K) over every class of the label map."""
    out = np.zeros((len(x) if isinstance(x, list) else x.shape[0], k))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(x)
    return out


def smote_steps(y: np.ndarray) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Samplers that raise every class to the largest class's count: RandomOverSampler for
    classes of one row (SMOTE needs a neighbour), then SMOTE with k = min(5, smallest - 1)."""
    from imblearn.over_sampling import SMOTE, RandomOverSampler

    counts = np.bincount(y)
    top = int(counts.max())
    present = [int(c) for c in np.flatnonzero(counts)]
    single = {c: top for c in present if counts[c] == 1}
    interp = {c: top for c in present if 1 < counts[c] < top}
    steps: list[tuple[str, Any]] = []
    if single:
        ros = RandomOverSampler(sampling_strategy=single, random_state=SEED)
        steps.append(("copy_singletons", ros))
    k = 0
    if interp:
        k = min(5, int(min(counts[c] for c in interp)) - 1)
        steps.append(("smote", SMOTE(sampling_strategy=interp, k_neighbors=k, random_state=SEED)))
    info = {"k_neighbors": k, "copied_classes": len(single), "smote_classes": len(interp)}
    info["train_rows_after"] = int(top * len(present))
    return steps, info


def logreg(balanced: bool, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, class_weight="balanced" if balanced else None, max_iter=MAX_ITER, random_state=SEED
    )


def model_factories(scale: bool, y_train: np.ndarray) -> dict[str, tuple[Callable, dict]]:
    """(b), (c) and (d) as name -> (C -> unfitted pipeline, notes)."""
    from imblearn.pipeline import Pipeline as ImbPipeline
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pre = [("scale", StandardScaler())] if scale else []
    steps, info = smote_steps(y_train)
    return {
        "lr_balanced": (lambda c: Pipeline([*pre, ("lr", logreg(True, c))]), {}),
        "smote_lr": (lambda c: ImbPipeline([*pre, *steps, ("lr", logreg(False, c))]), info),
        "tfidf_lr": (lambda c: Pipeline([("tfidf", _word_char()), ("lr", logreg(True, c))]), {}),
        "tfidf_lr_plain": (
            lambda c: Pipeline([("tfidf", _word_char()), ("lr", logreg(False, c))]),
            {},
        ),
    }


def _word_char():
    """TF-IDF of word 1-2 grams and character 2-5 grams (within word boundaries), side by side."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )


def tuned_threshold(make: Callable[[float], Any], data, keys, tail, c: float) -> dict[str, Any]:
    """(e) / (f2): the model of ``c`` refitted on train+val inside scikit-learn's
    ``TunedThresholdClassifierCV(scoring="f1_macro")`` (5-fold, stratified), scored on test."""
    from sklearn.model_selection import TunedThresholdClassifierCV

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
    t0 = time.time()
    x = np.concatenate([x_tr, x_va])
    y = np.concatenate([y_tr, y_va])
    model = TunedThresholdClassifierCV(make(c), scoring="f1_macro", cv=5, random_state=SEED)
    fit_quiet(model, x, y)
    # predict_proba is the untuned model's: score the tuned decisions themselves
    pred = model.predict(x_te)
    onehot = np.eye(len(keys))[np.asarray(pred, dtype=np.int64)]
    out = score(y_te, onehot, keys, tail)
    out.update(C=c, threshold=float(model.best_threshold_), seconds=round(time.time() - t0, 1))
    return out


def lightgbm(balanced: bool = True):
    """LightGBM with scikit-learn's API: class_weight balanced, 400 trees of 31 leaves, learning
    rate 0.05 (no per-set tuning)."""
    import lightgbm as lgb

    return lgb.LGBMClassifier(
        n_estimators=400,
        learning_rate=0.05,
        num_leaves=31,
        class_weight="balanced" if balanced else None,
        random_state=SEED,
        verbose=-1,
        n_jobs=2,
    )


def fit_quiet(model: Any, x: Any, y: np.ndarray) -> bool:
    """Fit; True when no ConvergenceWarning was raised."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    others = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return len(others) == len(caught)


def select_and_score(
    make: Callable[[float], Any],
    data: dict[str, tuple[Any, np.ndarray]],
    keys: list[str],
    tail: list[str],
) -> dict[str, Any]:
    """Fit each C of ``C_GRID`` on train, keep the best on val macro-F1 (ties: smaller C),
    score it on test."""
    k = len(keys)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
    t0 = time.time()
    best, val_f1 = None, {}
    unconverged = []
    for c in C_GRID:
        model = make(c)
        if not fit_quiet(model, x_tr, y_tr):
            unconverged.append(c)
        f1 = score(y_va, full_proba(model, x_va, k), keys, tail)["macro_f1"]
        val_f1[str(c)] = f1
        if best is None or f1 > best[1]:
            best = (c, f1, model)
    c, f1, model = best
    out = score(y_te, full_proba(model, x_te, k), keys, tail)
    out.update(C=c, val_macro_f1=f1, val_macro_f1_by_C=val_f1, unconverged_C=unconverged)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def split_inputs(run: Path, text: bool):
    """(label keys, tail classes, tables, model inputs x, labels y, text column) of the
    run's train / val / test splits (see :func:`sklearn_baselines`)."""
    label_map = LabelMap.from_json(json.loads((run / "label_map.json").read_text()))
    keys = label_map.keys
    manifest = json.loads((run / "splits" / "_manifest.json").read_text())
    tail = tail_classes(manifest["counts"]["train"])
    splits = ("train", "val", "test")
    if text:
        if not (run / "embedded" / "_complete.json").exists():
            raise ValueError(
                f"{run} has no embedded splits; (b) and (c) read the engine's embeddings: "
                "prepare the run with model.kind=mlp so that its text is embedded"
            )
        # embedded/<split> holds the split's rows with their columns plus the embedding
        tables = {s: read_split(run / "embedded" / s) for s in splits}
        x = {s: vectors(tables[s]["embedding"]) for s in splits}
        text_col = run_spec(run).get("text") or "text"
    else:
        tables = {s: read_split(run / "splits" / s) for s in splits}
        x = {
            s: feature_matrix(tables[s], run_spec(run).get("features"), label_map.column)
            for s in splits
        }
        text_col = None
    for s in splits:
        n = manifest["rows"][s]
        assert tables[s].num_rows == n, f"{s}: {tables[s].num_rows} rows, manifest {n}"
    y = {s: label_map.encode(tables[s][label_map.column]) for s in splits}
    return keys, tail, tables, x, y, text_col


def ag_columns(tables, x, text_col: str | None) -> dict[str, dict[str, Any]]:
    """(g)'s inputs per split: the raw text, or the feature columns as f0, f1, ..."""
    if text_col is not None:
        return {s: {"text": t[text_col].to_pylist()} for s, t in tables.items()}
    return {s: {f"f{j}": m[:, j] for j in range(m.shape[1])} for s, m in x.items()}


def autogluon_of_run(run_dir: str | Path, text: bool, autogluon: tuple[str, float]):
    """(g) alone on a run directory's splits."""
    keys, tail, tables, x, y, text_col = split_inputs(Path(run_dir), text)
    return autogluon_baseline(ag_columns(tables, x, text_col), y, keys, tail, *autogluon)


def sklearn_baselines(
    run_dir: str | Path, text: bool, autogluon: tuple[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """(b) LogReg balanced, (c) SMOTE + LogReg and, for text sets, (d) TF-IDF + LogReg on the
    splits of a prepared run directory; (e), (f); (g) with ``autogluon``.

    Args:
        run_dir: A run directory holding ``label_map.json``, ``splits/{train,val,test}`` (and,
            for text, ``embedded/{train,val,test}`` with the ``embedding`` column).
        text: Whether the set is text (inputs: ``embedding``; adds TF-IDF) or features.
        autogluon: (the Python of AutoGluon's venv, seconds): also (g) AutoGluon on the raw
            text or the feature columns.

    Returns:
        name -> {macro_f1, balanced_accuracy, tail_recall, per_class {key: precision, recall, f1,
        support}, C, val_macro_f1, val_macro_f1_by_C, unconverged_C, seconds, + sampler notes}.
    """
    keys, tail, tables, x, y, text_col = split_inputs(Path(run_dir), text)
    splits = ("train", "val", "test")
    factories = model_factories(scale=not text, y_train=y["train"])
    out = {}
    for name, (make, notes) in factories.items():
        if name in TEXT_ONLY:
            if not text:
                continue
            data = {s: (tables[s][text_col].to_pylist(), y[s]) for s in splits}
        else:
            data = {s: (x[s], y[s]) for s in splits}
        out[name] = {**select_and_score(make, data, keys, tail), **notes}
    data = {s: (x[s], y[s]) for s in splits}
    t0 = time.time()
    gbm = lightgbm().fit(x["train"], y["train"])
    out["lgbm_balanced"] = score(y["test"], full_proba(gbm, x["test"], len(keys)), keys, tail)
    out["lgbm_balanced"]["seconds"] = round(time.time() - t0, 1)
    if len(keys) == 2:
        make_lr = factories["lr_balanced"][0]
        out["lr_tuned"] = tuned_threshold(make_lr, data, keys, tail, out["lr_balanced"]["C"])
        out["lgbm_tuned"] = tuned_threshold(lambda c: lightgbm(), data, keys, tail, 0.0)
    if autogluon is not None:
        cols = ag_columns(tables, x, text_col)
        out["autogluon"] = autogluon_baseline(cols, y, keys, tail, *autogluon)
    return out


def autogluon_baseline(
    cols: dict[str, dict[str, Any]],
    y: dict[str, np.ndarray],
    keys: list[str],
    tail: list[str],
    python: str,
    budget: float,
) -> dict[str, Any]:
    """(g): ``benchmarks/autogluon_baseline.py`` run by ``python`` (AutoGluon's own venv) on
    the model inputs ``cols`` (raw text, or the feature columns) of each split, ``budget``
    seconds; its test probabilities scored like the others."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for s, c in cols.items():
            pq.write_table(pa.table({**c, "y": y[s]}), os.path.join(tmp, f"{s}.parquet"))
        Path(tmp, "classes.json").write_text(json.dumps(len(keys)))
        out = os.path.join(tmp, "proba.npy")
        cmd = [python, str(ROOT / "benchmarks" / "autogluon_baseline.py"), "--data", tmp]
        cmd += ["--time-limit", str(round(budget)), "--out", out]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"AutoGluon failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        result = score(y["test"], np.load(out), keys, tail)
    return {**result, **info, "budget_s": round(budget), "wall_s": round(time.time() - t0, 1)}


# --------------------------------------------------------------------------- data and engine


def dataset_inputs(data_file: Path) -> tuple[str | None, str | list[str]]:
    """(text column or None, features: ``"features"`` or the numeric columns) of a made set."""
    schema = pq.read_schema(data_file)
    if "text" in schema.names:
        return "text", []
    if "features" in schema.names:
        return None, "features"
    return None, [n for n in schema.names if n != "label"]


def make_data(name: str, work: Path) -> Path:
    """``WORK/data/NAME/data.parquet``, written unless it exists."""
    from engine.datasets import make_dataset

    out = work / "data" / name
    if not (out / "data.parquet").exists():
        make_dataset(name, str(out))
    return out


def engine_args(
    name: str, run_dir: Path, data_dir: Path, text: str | None, features: str | list[str]
) -> list[str]:
    """The ``--set`` arguments that point the pipeline at one dataset."""
    sets = [f"name={name}", f"run_dir={run_dir}", f"data.path={data_dir}", "data.label=label"]
    if text:
        sets.append(f"data.text={text}")
    else:
        feats = features if isinstance(features, str) else "[" + ",".join(features) + "]"
        sets += [f"data.features={feats}", "data.text=null", "model.kind=mlp"]
    return sets


def run_engine(module: str, config: str, sets: list[str], log: Path) -> tuple[int, float]:
    """``python -m MODULE --config CONFIG --set ...`` with its output in ``log``."""
    cmd = [sys.executable, "-m", module, "--config", config]
    for s in sets:
        cmd += ["--set", s]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    with log.open("w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.time() - t0


def engine_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``test`` of ``report/metrics.json``: baseline, best_single, ensemble (None if absent)."""
    path = run_dir / "report" / "metrics.json"
    if not path.exists():
        return None
    test = json.loads(path.read_text())["test"]
    return {k: test[k] for k in ("baseline", "best_single", "ensemble") if k in test}


# --------------------------------------------------------------------------- reporting


def machine() -> str:
    """CPU model, cores, RAM, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    ram = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln)
        kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        ram = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    libs = []
    for pkg in ("torch", "ray", "scikit-learn", "imbalanced-learn"):
        try:
            libs.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            libs.append(f"{pkg} -")
    return f"{cpu}, {os.cpu_count()} cores{ram}; Python {platform.python_version()}; " + ", ".join(
        libs
    )


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, dict[str, float] | None]]:
    """(id, name, metrics or None) for (a)-(f); (d) left out of feature sets."""
    rows = []
    binary = (result.get("data") or {}).get("classes") == 2
    for rid, label, src, key in ROWS:
        if (key in TEXT_ONLY and not result["text"]) or (key in BINARY_ONLY and not binary):
            continue
        rows.append((rid, label, (result.get(src) or {}).get(key)))
    return rows


def beats_line(result: dict[str, Any]) -> str:
    """(i) against each baseline and the best of them on test macro-F1 (the goal: the best
    + 0.02), computed from the numbers."""
    rows = {rid: (label, m) for rid, label, m in table_rows(result)}
    if rows.get("i", (None, None))[1] is None:
        return "(i) not measured: no comparison"
    f = rows["i"][1]["macro_f1"]
    others = {rid: rows[rid][1]["macro_f1"] for rid in BASELINES if rows.get(rid, (0, None))[1]}
    parts = [
        f"{'beats' if f > v else 'does not beat'} ({rid}) {v:.4f} ({f - v:+.4f})"
        for rid, v in others.items()
    ]
    best = max(others, key=others.get)
    goal = "met" if f >= others[best] + 0.02 else "NOT met"
    return (
        f"(i) macro-F1 {f:.4f}: "
        + "; ".join(parts)
        + f". Best baseline ({best}) {others[best]:.4f}: (i) {f - others[best]:+.4f} "
        f"(goal +0.02: {goal})"
    )


def fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def subsection(name: str, result: dict[str, Any], command: str, host: str) -> str:
    """The Markdown of one dataset."""
    d = result["data"]
    wall = result.get("pipeline_wall_s")
    if result.get("prepare_only"):
        engine = "not run (--prepare-only)"
    elif result.get("engine") is None:
        engine = f"failed or missing ({result.get('engine_error', 'no report/metrics.json')})"
    else:
        engine = f"{wall:.0f} s" if wall is not None else "reused (time not recorded)"
    sk = result.get("sklearn") or {}
    chosen = ", ".join(
        f"({rid}) C={sk[key]['C']:g}"
        for rid, _, src, key in ROWS
        if key in sk and "C" in sk[key] and not key.startswith("lgbm")
    )
    smote = sk.get("smote_lr", {})
    lines = [
        f"### {name}",
        "",
        f"- Machine: {host}; run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}`",
        f"- Data: {d['rows']} rows, {d['classes']} classes, imbalance ratio "
        f"{d['imbalance_ratio']:.3g}; train/val/test {d['train']}/{d['val']}/{d['test']} "
        f"(split seed {d['split_seed']}); tail classes: {len(d['tail'])} of {d['classes']}",
        f"- Engine pipeline wall time: {engine}",
        f"- (b)-(e): C from {list(C_GRID)} on val macro-F1 (same grid and rule for each; (e) "
        "refits (b)'s C on train+val inside the threshold tuner): "
        f"{chosen or '—'}",
    ]
    if smote:
        lines.append(
            f"- (c): every class raised to the largest train count: SMOTE "
            f"(k_neighbors={smote['k_neighbors']}) for {smote['smote_classes']} class(es), "
            f"RandomOverSampler copies for {smote['copied_classes']} single-row class(es); "
            f"{smote['train_rows_after']} train rows after"
        )
    ag = sk.get("autogluon")
    if ag:
        lines.append(
            f"- (g): AutoGluon fitted in {ag['seconds']:.0f} s of its {ag['budget_s']} s limit "
            f"(its best: {ag['best_model']})"
        )
    bad = {k: v["unconverged_C"] for k, v in sk.items() if v.get("unconverged_C")}
    if bad:
        lines.append(f"- Not converged in {MAX_ITER} iterations (C values): {bad}")
    lines += [
        "",
        "| | method | test macro-F1 | balanced acc. | tail recall |",
        "|---|---|--:|--:|--:|",
    ]
    for rid, label, m in table_rows(result):
        m = m or {}
        lines.append(
            f"| ({rid}) | {label} | {fmt(m.get('macro_f1'))} | "
            f"{fmt(m.get('balanced_accuracy'))} | {fmt(m.get('tail_recall'))} |"
        )
    lines += ["", f"- {beats_line(result)}", ""]
    return "\n".join(lines)


def replace_section(old: str, head: str, intro: str, sub: str, text: str) -> str:
    """``old`` with subsection ``### sub`` of section ``head`` set to ``text`` (others kept)."""
    if head not in old:
        old = old.rstrip("\n") + f"\n\n{head}\n\n{intro}\n"
    start = old.index(head)
    nxt = old.find("\n## ", start + len(head))
    section = old[start : nxt if nxt >= 0 else len(old)]
    marker = f"### {sub}\n"
    if marker in section:
        s0 = section.index(marker)
        s1 = section.find("\n### ", s0 + len(marker))
        section = section[:s0] + text.rstrip("\n") + "\n" + (section[s1:] if s1 >= 0 else "")
    else:
        section = section.rstrip("\n") + "\n\n" + text
    return old[:start] + section.rstrip("\n") + "\n" + (old[nxt:] if nxt >= 0 else "")


def data_summary(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "splits" / "_manifest.json").read_text())
    counts = manifest["counts"]
    total = {k: sum(counts[s].get(k, 0) for s in counts) for k in counts["train"]}
    return {
        "rows": sum(manifest["rows"].values()),
        "classes": len(total),
        "imbalance_ratio": max(total.values()) / max(1, min(total.values())),
        **{s: manifest["rows"][s] for s in ("train", "val", "test")},
        "split_seed": manifest.get("seed"),
        "tail": tail_classes(counts["train"]),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="test quality: imbalance remedies vs plain baselines")
    for col in ("dataset", "", "method", "macro-F1", "bal. acc.", "tail recall"):
        right = col.endswith(("F1", "acc.", "recall"))
        table.add_column(col, justify="right" if right else "left", no_wrap=not right)
    for name, result in results.items():
        for rid, label, m in table_rows(result):
            m = m or {}
            table.add_row(name, f"({rid})", label, *(fmt(m.get(k)) for k in METRICS))
        table.add_section()
    console = Console(width=max(shutil.get_terminal_size().columns, 110))
    console.print(table)
    for name, result in results.items():
        console.print(f"{name}: {beats_line(result)}")


# --------------------------------------------------------------------------- main


def one_dataset(name: str, args: argparse.Namespace, previous: dict[str, Any]) -> dict[str, Any]:
    work = Path(args.work).resolve()
    data_dir = make_data(name, work)
    text, features = dataset_inputs(data_dir / "data.parquet")
    run_dir = work / "runs" / name
    sets = engine_args(name, run_dir, data_dir, text, features) + list(args.set)
    result: dict[str, Any] = {"text": bool(text), "run_dir": str(run_dir)}
    result["prepare_only"] = args.prepare_only
    if args.prepare_only:
        ready = (run_dir / "splits" / "_manifest.json").exists() and (
            not text or (run_dir / "embedded" / "_complete.json").exists()
        )
        if not ready:
            extra = ["model.kind=mlp"] if text else []
            log = work / "logs" / f"{name}-prepare.log"
            rc, _ = run_engine("jobs.prepare", args.config, sets + extra, log)
            if rc:
                raise RuntimeError(f"{name}: prepare failed (exit {rc}); see {work / 'logs'}")
    elif engine_metrics(run_dir) is None:
        log = work / "logs" / f"{name}-pipeline.log"
        print(f"{name}: running the engine pipeline (log: {log})", flush=True)
        rc, wall = run_engine("jobs.pipeline", args.config, sets, log)
        result["pipeline_wall_s"] = round(wall, 1)
        if rc:
            tail = log.read_text().splitlines()[-15:]
            result["engine_error"] = f"exit {rc}, see {log}"
            print(f"{name}: the pipeline failed (exit {rc}):\n" + "\n".join(tail), flush=True)
    else:
        result["pipeline_wall_s"] = previous.get("pipeline_wall_s")
    result["engine"] = None if args.prepare_only else engine_metrics(run_dir)
    result["data"] = data_summary(run_dir)
    ag = None
    if args.autogluon_python:  # the engine run's wall time, unless a budget is given
        budget = args.autogluon_budget or result.get("pipeline_wall_s") or 300.0
        ag = (args.autogluon_python, float(budget))
    kept = previous.get("sklearn") if args.reuse_baselines else None
    if kept:
        print(f"{name}: baselines kept from {work / 'quality.json'}", flush=True)
        result["sklearn"] = dict(kept)
        if ag and "autogluon" not in kept:
            result["sklearn"]["autogluon"] = autogluon_of_run(run_dir, bool(text), ag)
    else:
        print(f"{name}: scikit-learn baselines on {run_dir}", flush=True)
        result["sklearn"] = sklearn_baselines(run_dir, text=bool(text), autogluon=ag)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--work", required=True, help="data and run directories (reused)")
    p.add_argument("--config", default="jobs/configs/demo.yaml", help="the pipeline's config")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the pipeline (repeatable)",
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="run jobs.prepare instead of the pipeline: (b)-(d) only",
    )
    p.add_argument("--results", default=None, help="Markdown file to write the section into")
    p.add_argument(
        "--autogluon-python",
        default=None,
        help="the Python of a venv with autogluon.tabular: adds (g)",
    )
    p.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="keep (b)-(g) from WORK/quality.json where present (adds a missing (g) alone)",
    )
    p.add_argument(
        "--autogluon-budget",
        type=float,
        default=None,
        help="(g)'s time limit in seconds (default: the engine pipeline's wall time)",
    )
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw_path = work / "quality.json"
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    command = "python benchmarks/bench_quality.py " + shlex.join(sys.argv[1:])
    host = machine()
    results = {}
    for name in args.datasets:
        results[name] = one_dataset(name, args, raw.get(name, {}))
        raw[name] = results[name]
        raw_path.write_text(json.dumps(raw, indent=2, default=float) + "\n")
        if args.results:
            from engine.io import write_bytes_atomic

            path = Path(args.results)
            old = path.read_text() if path.exists() else "# Benchmark results\n"
            text = subsection(name, results[name], command, host)
            write_bytes_atomic(path, replace_section(old, SECTION, INTRO, name, text).encode())
    print_table(results)
    print(f"raw numbers: {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
