"""The job spec: an optional YAML job file plus ``--set key=value`` overrides -> dataclasses.

    spec = load_spec("jobs/configs/trec50.yaml", ["split.seed=3", "data.text=null"])

Validation happens once, here: unknown keys, wrong types and out-of-range values fail with the
file, the dotted key path and the reason. Each stage then receives only its own sub-spec; across a
Ray boundary pass ``dataclasses.asdict(spec.x)`` and rebuild with ``build_section(XSpec, d)``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union

import yaml

# Names declared once: the loss registry (engine.losses.LOSSES) and the validation metrics that
# training keeps its best epoch by and the search ranks trials by.
LOSS_NAMES = (
    "ce",
    "weighted_ce",
    "focal",
    "class_balanced",
    "logit_adjusted",
    "balanced_softmax",
    "ldam",
)
SMOTE_METHODS = ("smote", "borderline1", "borderline2", "adasyn")  # they make synthetic rows
RESAMPLE_METHODS = ("none", "random_over", "random_under", "combined", *SMOTE_METHODS)

# The spec sections each pipeline stage depends on (besides the stage before it), and the
# sections that make the splits: a run folder belongs to one run of these.
STAGE_SECTIONS = {
    "prepare": ("data", "stats", "split", "resample", "embed"),
    "baseline": ("model", "train"),
    "tune": ("model", "loss", "sampler", "train", "tune"),
    "ensemble": ("ensemble", "thresholds"),
    "report": (),
}
SPLIT_SECTIONS = ("data", "stats", "split")
VAL_METRICS = (
    "val_macro_f1",
    "val_balanced_accuracy",
    "val_macro_pr_auc",
    "val_minority_recall",
    "val_loss",
)

# --------------------------------------------------------------------------------------------
# errors


class SpecError(ValueError):
    """A spec value is missing, unknown, of the wrong type or out of range.

    ``key`` is the dotted path (``split.val``); ``source`` the file (or ``--set``) it came from.
    """

    def __init__(self, key: str, reason: str, source: str | None = None):
        self.key, self.reason, self.source = key, reason, source
        parts = [x for x in (source, key) if x]
        super().__init__(": ".join([*parts, reason]))

    def within(self, prefix: str, source: str | None = None) -> SpecError:
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return SpecError(key, self.reason, self.source or source)


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise SpecError(key, reason)


def _fraction(value: float, key: str, *, closed_right: bool = False) -> None:
    hi_ok = value <= 1 if closed_right else value < 1
    _require(
        0 <= value and hi_ok, key, f"must be in [0, 1{']' if closed_right else ')'}, got {value}"
    )


# --------------------------------------------------------------------------------------------
# sections

WEIGHT_SCHEMES = ("inverse", "inverse_sqrt", "effective_number", "median_frequency")


@dataclass(frozen=True)
class DataSpec:
    """Where the data is and which columns play which role.

    ``features`` is a list of numeric columns or the name of one fixed-size list column; set
    either ``text`` or ``features``. ``id`` names a column of unique row ids used as each row's
    identity for the split (otherwise a hash of the row's content is used).
    """

    path: str | None = None
    format: Literal["auto", "parquet", "csv", "jsonl"] = "auto"
    label: str = "label"
    text: str | None = None
    features: str | list[str] | None = None
    id: str | None = None
    drop_null_labels: bool = False
    # input files that may be unreadable and dropped (0: the first one stops prepare); see
    # engine/screen.py
    max_errored_blocks: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_errored_blocks, int)
            and not isinstance(self.max_errored_blocks, bool)
            and self.max_errored_blocks >= 0,
            "max_errored_blocks",
            f"must be a whole number >= 0 (input files that may be dropped when unreadable), "
            f"got {self.max_errored_blocks!r}",
        )
        _require(
            not (self.text is not None and self.features is not None),
            "features",
            f"set either data.text ({self.text!r}) or data.features, not both "
            "(add --set data.text=null to use features)",
        )
        if isinstance(self.features, list):
            _require(len(self.features) > 0, "features", "the list of feature columns is empty")
            dup = sorted({c for c in self.features if self.features.count(c) > 1})
            _require(not dup, "features", f"columns listed twice: {dup}")
            _require(
                self.label not in self.features,
                "features",
                f"the label column {self.label!r} is also listed as a feature",
            )
        _require(bool(self.label), "label", "must name the label column")


@dataclass(frozen=True)
class StatsSpec:
    """Class-weight settings: ``beta`` for the effective-number scheme, explicit ``weights``."""

    beta: float = 0.999
    weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        _require(0 <= self.beta < 1, "beta", f"must be in [0, 1), got {self.beta}")
        for k, v in (self.weights or {}).items():
            _require(v > 0, f"weights.{k}", f"class weights must be > 0, got {v}")


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of every class that go to val and test; the rest goes to train."""

    val: float = 0.1
    test: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        _fraction(self.val, "val")
        _fraction(self.test, "test")
        _require(
            self.val + self.test < 1,
            "test",
            f"val + test must be < 1 so that train keeps rows, got {self.val} + {self.test}",
        )


@dataclass(frozen=True)
class ResampleSpec:
    method: Literal[RESAMPLE_METHODS] = "none"
    sampling_strategy: Any = "auto"
    k_neighbors: int = 5
    seed: int = 0
    # SMOTE family: a class with more rows than this is split by a seeded key into partitions
    # of about this many rows, and neighbours are searched inside each partition (exact kNN is
    # quadratic: 1e5 rows x 64 dims take ~1 CPU-minute).
    knn_max_rows: int = 100_000

    def __post_init__(self) -> None:
        _require(self.k_neighbors >= 1, "k_neighbors", f"must be >= 1, got {self.k_neighbors}")
        _require(self.knn_max_rows >= 2, "knn_max_rows", f"must be >= 2, got {self.knn_max_rows}")
        if callable(self.sampling_strategy):
            return
        if not isinstance(self.sampling_strategy, (str, int, float, dict)) or isinstance(
            self.sampling_strategy, bool
        ):
            _require(
                False,
                "sampling_strategy",
                f"must be a string, a float, a mapping or a callable, got "
                f"{type(self.sampling_strategy).__name__} {self.sampling_strategy!r}",
            )


@dataclass(frozen=True)
class EmbedSpec:
    """A frozen encoder that turns a text column into a feature column (``engine.embed``).

    ``model``: ``minilm`` (the offline all-MiniLM-L6-v2), ``tiny`` (a seeded random-init BERT,
    for tests) or a Hugging Face model folder. Token vectors are mean-pooled over the attention
    mask and, with ``normalize``, scaled to unit L2 norm. ``actors``: the size of the encoder
    pool (default: one per GPU, else half the CPUs).
    """

    model: str = "minilm"
    column: str = "embedding"
    batch_size: int = 64
    max_length: int = 128
    normalize: bool = True
    actors: int | None = None

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", "must be 'minilm', 'tiny' or a model folder")
        _require(bool(self.column), "column", "must name the output column")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")
        _require(
            self.actors is None or self.actors >= 1,
            "actors",
            f"must be >= 1 or null (derived from the cluster), got {self.actors}",
        )


@dataclass(frozen=True)
class ModelSpec:
    """``kind``: ``transformer`` (a Hugging Face sequence classifier from ``path``: ``minilm`` =
    the offline all-MiniLM-L6-v2 package, ``tiny`` = a small random-init BERT for tests, or a
    ``save_pretrained`` folder), ``mlp`` (a head over ``data.features``, ``hidden`` layers) or
    ``lexical`` (``engine.lexical``: hashed word + character n-grams of ``data.text`` with
    TF-IDF; ``hidden=[]`` is a linear model, ``hidden=[h, ...]`` a bag of width h then MLP
    blocks; its default ``train.lr`` is 0.01, 200x a transformer's).

    Lexical settings: ``n_features`` hash buckets (word n-grams in one half, char n-grams in
    the other; the bag holds n_features x width weights), ``word_ngrams`` / ``char_ngrams``
    inclusive [lo, hi] ranges (null: none; ``char_wb`` n-grams inside word boundaries),
    ``sublinear_tf`` (1 + ln tf), ``max_terms`` (a text keeps its largest TF-IDF weights).

    ``linear``: multinomial logistic regression solved exactly (scikit-learn's
    ``LogisticRegression``, L2 penalty ``1 / C``; ``C`` null: each of ``LINEAR_C_GRID`` solved,
    warm-started, the best on val kept) on the standardized feature columns (or the
    embedded text, under SMOTE-family resampling), else on the lexical TF-IDF n-grams of
    ``data.text``; the class weights are the loss's (``loss.weights``, searched as
    ``loss.weight_power``); loss name, sampler, lr and epochs do not apply. It is saved as an
    MLP or lexical model without hidden layers, so everything that reads those reads it.

    ``gbdt``: gradient-boosted trees (LightGBM, ``engine.gbdt``) over the feature columns or the
    text's embeddings, rounds stopped early on val as ``stopping`` says (or ``rounds`` of
    them), ``num_leaves`` leaves per tree, each tree on a ``feature_fraction`` share of the
    columns, rows weighted by the loss's class weights; saved as LightGBM's text model. Loss
    name, sampler, lr and epochs do not apply; ``train.num_workers`` > 1 fits data-parallel
    under a ``LightGBMTrainer`` (on CPU workers).
    """

    kind: Literal["transformer", "mlp", "lexical", "linear", "gbdt"] = "transformer"
    path: str = "minilm"
    max_length: int = 64
    hidden: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.1
    n_features: int = 2**18
    word_ngrams: list[int] | None = field(default_factory=lambda: [1, 2])
    char_ngrams: list[int] | None = field(default_factory=lambda: [2, 4])
    sublinear_tf: bool = True
    max_terms: int = 256
    # MLP heads: shift and scale each input feature by the training rows' mean and standard
    # deviation (kept in the model). null: on for data.features columns, off for embeddings.
    standardize: bool | None = None
    # linear: inverse L2 regularization strength; null: the best on val of LINEAR_C_GRID
    C: float | None = None
    # linear: lbfgs (the exact solve on the rows in memory), sgd (averaged SGD over streamed
    # batches, past memory), auto (sgd once the train rows' design matrix passes 2 GiB)
    solver: Literal["auto", "lbfgs", "sgd"] = "auto"
    # gbdt: the number of boosting rounds; null: stopped early on val (``stopping``)
    rounds: int | None = None
    # gbdt: what stops the rounds — loss: the class-weighted val log-loss (20 rounds without a
    # new low); loss_or_f1: grown until neither that loss nor val macro-F1 has improved for 30
    # rounds, the later of their best rounds kept
    stopping: Literal["loss", "loss_or_f1"] = "loss"
    # gbdt: leaves per tree and the share of feature columns each tree sees
    num_leaves: int = 31
    feature_fraction: float = 0.5

    def __post_init__(self) -> None:
        _require(self.max_length >= 1, "max_length", f"must be >= 1, got {self.max_length}")
        _require(self.C is None or self.C > 0, "C", f"must be > 0 or null, got {self.C}")
        _require(
            self.rounds is None or self.rounds >= 1,
            "rounds",
            f"must be >= 1 or null, got {self.rounds}",
        )
        _require(
            2 <= self.num_leaves <= 4096,
            "num_leaves",
            f"must be in [2, 4096], got {self.num_leaves}",
        )
        _require(
            0 < self.feature_fraction <= 1,
            "feature_fraction",
            f"must be in (0, 1], got {self.feature_fraction}",
        )
        _require(all(h >= 1 for h in self.hidden), "hidden", f"sizes must be >= 1: {self.hidden}")
        _require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        _require(
            2 <= self.n_features <= 2**31 - 1,
            "n_features",
            f"must be in [2, 2^31 - 1], got {self.n_features}",
        )
        for key in ("word_ngrams", "char_ngrams"):
            v = getattr(self, key)
            _require(
                v is None or (len(v) == 2 and 1 <= v[0] <= v[1]),
                key,
                f"must be [lo, hi] with 1 <= lo <= hi, or null; got {v}",
            )
        _require(
            self.word_ngrams is not None or self.char_ngrams is not None,
            "char_ngrams",
            "word_ngrams and char_ngrams are both null: set at least one",
        )
        _require(self.max_terms >= 1, "max_terms", f"must be >= 1, got {self.max_terms}")


@dataclass(frozen=True)
class LossSpec:
    """The training loss (``engine.losses.LOSSES``) and its parameters.

    ``weights`` (a stats scheme or {label: w}) weighs ``weighted_ce`` and is focal's alpha;
    ``beta`` is the effective-number beta of ``class_balanced`` (over ``base``: ce or focal);
    ``tau`` scales the log-prior of ``logit_adjusted``; ``ldam`` uses ``max_margin`` and
    ``scale`` and re-weighs from ``drw_epoch`` on (default: 80 % of the epochs).
    """

    name: Literal[LOSS_NAMES] = "ce"
    gamma: float = 2.0
    beta: float = 0.999
    tau: float = 1.0
    weights: str | dict[str, float] | None = None
    base: Literal["ce", "focal"] = "ce"
    max_margin: float = 0.5
    scale: float = 30.0
    drw_epoch: int | None = None

    def __post_init__(self) -> None:
        _require(self.gamma >= 0, "gamma", f"must be >= 0, got {self.gamma}")
        _require(0 <= self.beta < 1, "beta", f"must be in [0, 1), got {self.beta}")
        _require(self.max_margin > 0, "max_margin", f"must be > 0, got {self.max_margin}")
        _require(self.scale > 0, "scale", f"must be > 0, got {self.scale}")
        if self.drw_epoch is not None:
            _require(self.drw_epoch >= 0, "drw_epoch", f"must be >= 0, got {self.drw_epoch}")
        if isinstance(self.weights, str):
            _require(
                self.weights in WEIGHT_SCHEMES,
                "weights",
                f"unknown scheme {self.weights!r}; use one of {list(WEIGHT_SCHEMES)} "
                "or a mapping {label: weight}",
            )


@dataclass(frozen=True)
class SamplerSpec:
    """Per-batch class mix on every worker: ``balanced`` draws classes with p_c ∝ n_c^power
    (0 = uniform, 1 = the data's own mix). ``mode``: ``map`` (a DistributedSampler over rows held
    by each worker) or ``stream`` (a class-buffered batcher over the worker's Ray Data shard)."""

    kind: Literal["none", "balanced"] = "none"
    power: float = 0.0
    mode: Literal["map", "stream"] = "map"
    buffer_rows: int = 4096

    def __post_init__(self) -> None:
        _require(0 <= self.power <= 1, "power", f"must be in [0, 1], got {self.power}")
        _require(self.buffer_rows >= 1, "buffer_rows", f"must be >= 1, got {self.buffer_rows}")


@dataclass(frozen=True)
class TrainSpec:
    """Ray Train settings. ``cpus_per_worker`` null: derived from the cluster so that workers
    leave CPUs for Ray Data's read tasks. ``metric`` picks the best checkpoint (max; min for
    val_loss). ``val_minority_recall``: the recall of the class with the fewest training rows
    at the best cut of its probability whose val precision is at least ``precision_floor``."""

    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # null: the model kind's default (DEFAULT_LR)
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_batch_size: int = 128
    metric: Literal[VAL_METRICS] = "val_macro_f1"
    max_failures: int = 1
    cpus_per_worker: float | None = None
    precision_floor: float = 0.5
    # which checkpoint is the model: the best by ``metric``, or the last epoch's (a fit whose
    # number of epochs was chosen before, as a cross-fitting fold's: nothing is chosen on val)
    keep: Literal["best", "last"] = "best"

    def __post_init__(self) -> None:
        _require(self.keep in ("best", "last"), "keep", f"use best or last, got {self.keep!r}")
        for key in ("epochs", "batch_size", "num_workers", "grad_accum", "eval_batch_size"):
            v = getattr(self, key)
            _require(v >= 1, key, f"must be >= 1, got {v}")
        _require(self.lr is None or self.lr > 0, "lr", f"must be > 0 or null, got {self.lr}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _fraction(self.warmup_ratio, "warmup_ratio")
        _require(
            0 < self.precision_floor <= 1,
            "precision_floor",
            f"must be in (0, 1], got {self.precision_floor}",
        )
        if self.grad_clip is not None:
            _require(self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        _require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        if self.cpus_per_worker is not None:
            _require(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0 or null")
        _require(
            self.batch_size % self.num_workers == 0,
            "batch_size",
            f"is the global batch, split evenly over the {self.num_workers} workers: "
            f"{self.batch_size} is not a multiple of train.num_workers={self.num_workers}",
        )

    @property
    def worker_batch_size(self) -> int:
        """Each worker's share of the global ``batch_size``: N workers train with the same
        samples per optimizer step as one (adding workers changes the speed, not the model)."""
        return self.batch_size // self.num_workers

    @property
    def checkpoint_metric(self) -> str:
        """What ranks checkpoints: ``metric``, or ``epoch`` (the last wins) for ``keep: last``."""
        return "epoch" if self.keep == "last" else self.metric


@dataclass(frozen=True)
class TuneSpec:
    """The Ray Tune search (``engine.tune``; its docstring holds the search-space grammar).

    ``scheduler``: ``asha`` (random search, bad trials stop early), ``fifo`` (random search, no
    early stopping) or ``tpe`` (Optuna's TPE + ASHA). ``metric``: val_macro_f1,
    val_balanced_accuracy, val_macro_pr_auc, val_minority_recall (the rarest class's recall at
    ``train.precision_floor``) or val_loss (minimized). ``max_failures``: retries
    of a failed trial. ``max_concurrent_trials`` null: derived from the cluster's resources.
    ``seed`` seeds the sampling of the knobs. ``grace_period``: epochs every trial runs before
    ASHA may stop it. ``time_budget_s``: no trial starts once this many seconds have passed
    since the search first started (running trials finish; null: no budget). ``kind_share``:
    ``trials`` — every model kind of a ``model.kind`` grid gets ``num_samples`` trials —, or
    ``time`` — each new trial takes the kind that has used the least wall time so far, so that
    kinds whose trials take seconds get many of them (``engine.share``); ``num_samples`` times
    the kinds then caps the trials in all, and ``time_budget_s`` is the main control.
    """

    num_samples: int = 8
    metric: str = "val_macro_f1"
    search_space: dict[str, Any] | None = None
    scheduler: Literal["asha", "fifo", "tpe"] = "asha"
    max_failures: int = 1
    max_concurrent_trials: int | None = None
    seed: int = 0
    grace_period: int = 1
    time_budget_s: float | None = None
    kind_share: Literal["trials", "time"] = "trials"

    def __post_init__(self) -> None:
        _require(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        _require(
            self.kind_share == "trials" or self.scheduler != "tpe",
            "kind_share",
            "time draws the knobs at random: use scheduler asha or fifo, or kind_share trials "
            "with tpe",
        )
        if self.time_budget_s is not None:
            _require(
                self.time_budget_s > 0,
                "time_budget_s",
                f"must be > 0 seconds or null (no budget), got {self.time_budget_s}",
            )
        _require(
            self.metric in VAL_METRICS,
            "metric",
            f"must be one of {VAL_METRICS}, got {self.metric!r}",
        )
        _require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        _require(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        if self.max_concurrent_trials is not None:
            _require(
                self.max_concurrent_trials >= 1,
                "max_concurrent_trials",
                f"must be >= 1 or null (derived), got {self.max_concurrent_trials}",
            )
        parse_search_space(self.search_space, tpe=self.scheduler == "tpe")


@dataclass(frozen=True)
class EnsembleSpec:
    """Members from the ``top_k`` best trials of the search (``candidates: best``: by rank;
    ``per_kind``: the best trial of each model kind searched first, then the next best — on the
    8 sets of benchmarks/RESULTS.md it was never better and twice worse). ``selection``:
    ``greedy`` keeps
    the best and adds the candidate that improves the val ``tune.metric`` of the mean most,
    while one does (val NLL for PR-AUC and loss); ``top_k`` keeps all of them. They are
    averaged (``weights``: ``equal``, or ``fitted`` on val NLL) and temperature-scaled on val
    when ``temperature`` (``engine.ensemble``).

    ``cross_fit``: k >= 2 cross-fits the candidates (``engine.crossfit``): each trained again
    on k exactly stratified folds of train + val, and selection, weights, temperatures and
    thresholds fitted on their out-of-fold probabilities of every labelled row instead of on
    val; each member is then the mean of its k fold models. 0: fitted on val.

    ``combiner`` (with ``cross_fit``): ``mean`` as above; ``stack``: a multinomial
    logistic regression on every candidate's log-probabilities (class c's logit from their
    log p(c): ``engine.combining.fit_stacker``), fitted on the
    out-of-fold rows (its C chosen on the same folds); ``auto``: the stacker when its
    out-of-fold decisions (each fold's rows scored by a stacker fitted on the others) beat
    the mean's. The default is ``mean``: on the 8 sets of benchmarks/RESULTS.md ``auto``
    took the stacker on three, each by a small out-of-fold margin, and lost test macro-F1 on
    all three (0.003–0.005)."""

    top_k: int = 3
    candidates: Literal["best", "per_kind"] = "best"
    selection: Literal["greedy", "top_k"] = "greedy"
    weights: Literal["equal", "fitted"] = "equal"
    temperature: bool = True
    cross_fit: int = 0
    combiner: Literal["mean", "auto", "stack"] = "mean"

    def __post_init__(self) -> None:
        _require(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        _require(
            self.cross_fit == 0 or 2 <= self.cross_fit <= 20,
            "cross_fit",
            f"is the number of folds: 0 (off) or 2..20, got {self.cross_fit}",
        )


@dataclass(frozen=True)
class ThresholdSpec:
    """How decisions are made from the ensemble's val probabilities (``engine.thresholds``).

    ``cv_folds`` (multi-class offsets): the offsets are kept only when offsets fitted on
    ``cv_folds - 1`` folds of val beat argmax on the held-out folds (0 or 1: no check).
    """

    objective: Literal["macro_f1", "f_beta", "target_recall", "target_precision"] = "macro_f1"
    beta: float = 1.0
    target: float | None = None
    cv_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        _require(self.cv_folds >= 0, "cv_folds", f"must be >= 0, got {self.cv_folds}")
        if self.objective in ("target_recall", "target_precision"):
            _require(
                self.target is not None, "target", f"objective {self.objective!r} needs a target"
            )
        if self.target is not None:
            _require(0 < self.target <= 1, "target", f"must be in (0, 1], got {self.target}")


@dataclass(frozen=True)
class JobSpec:
    """The whole job. ``run_dir`` defaults to ``runs/<name>``."""

    name: str = "run"
    run_dir: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    stats: StatsSpec = field(default_factory=StatsSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    resample: ResampleSpec = field(default_factory=ResampleSpec)
    embed: EmbedSpec = field(default_factory=EmbedSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)
    ensemble: EnsembleSpec = field(default_factory=EnsembleSpec)
    thresholds: ThresholdSpec = field(default_factory=ThresholdSpec)

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", f"bad run name {self.name!r}")
        if self.run_dir is None:
            object.__setattr__(self, "run_dir", f"runs/{self.name}")


# --------------------------------------------------------------------------------------------
# building dataclasses from plain data, with type checks


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``5e-5`` and ``1e3`` as floats, as YAML 1.2 and
    Python do (YAML 1.1 wants a dot: ``5.0e-5``; without this a learning rate written the
    usual way would be a string)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints widen to floats)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise SpecError(key, f"must be {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except SpecError:
                continue
        raise SpecError(key, f"must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(key, f"must be a list ({_type_name(tp)}), got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(key, f"must be a mapping ({_type_name(tp)}), got {value!r}")
        kt, vt = typing.get_args(tp)
        # Mapping keys are labels; YAML reads `1: 0.5` as an int key, which is still a label.
        return {str(k) if kt is str else k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpecError(key, f"must be a mapping of {tp.__name__} keys, got {value!r}")
        try:
            return build_section(tp, value)
        except SpecError as e:
            raise e.within(key) from None
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise SpecError(key, f"must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build_section(cls: type, values: dict[str, Any] | None) -> Any:
    """Build the dataclass ``cls`` from a plain mapping, checking keys, types and ranges."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise SpecError(str(unknown[0]), f"unknown key; {cls.__name__} has: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise SpecError(key or text, f"--set needs KEY=VALUE (e.g. split.seed=3), got {text!r}")
    try:
        value = yaml.load(raw, Loader=SpecLoader) if raw.strip() else None
    except yaml.YAMLError as e:
        raise SpecError(key, f"value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise SpecError(
                ".".join(path[: i + 1]), "is not a section; cannot set a key in it", source
            )
        node = child
    node[path[-1]] = value


def load_spec(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> JobSpec:
    """Load a job spec from an optional YAML file plus ``key=value`` overrides (applied in order).

    Raises:
        SpecError: naming the file (or ``--set``), the dotted key and the reason.
    """
    tree: dict[str, Any] = {}
    source = str(path) if path is not None else "--set"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SpecError(
                "", f"config file not found ({p.resolve()}); give a job YAML, or none", str(p)
            )
        try:
            loaded = yaml.load(p.read_text(), Loader=SpecLoader)
        except yaml.YAMLError as e:
            raise SpecError("", f"not valid YAML: {e}", str(p)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SpecError("", f"top level must be a mapping, got {type(loaded).__name__}", str(p))
        tree = loaded or {}
    set_keys: list[str] = []
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, "--set")
        set_keys.append(".".join(keys))
    try:
        return build_section(JobSpec, tree)
    except SpecError as e:
        # Blame --set when the failing key (or a section holding it) came from an override.
        from_set = any(e.key == k or e.key.startswith(k + ".") for k in set_keys)
        raise SpecError(e.key, e.reason, "--set" if from_set else source) from None


def spec_to_dict(spec: Any) -> dict[str, Any]:
    return dataclasses.asdict(spec)


# Settings added after run folders were made, with the default that behaves as before: a
# record of a spec (what a stage's digest and a search's restore compare) leaves them out
# while they are at it, so a folder made before they existed still matches its spec.
LATER_SETTINGS = {
    ("model", "rounds"): None,
    ("model", "solver"): "auto",
    ("model", "num_leaves"): 31,
    ("model", "feature_fraction"): 0.5,
    ("model", "stopping"): "loss",
    ("train", "keep"): "best",
    ("ensemble", "cross_fit"): 0,
    ("ensemble", "combiner"): "mean",
    ("tune", "kind_share"): "trials",
}


def spec_record(spec: JobSpec) -> dict[str, Any]:
    """``asdict(spec)`` without the ``LATER_SETTINGS`` at their defaults."""
    d = dataclasses.asdict(spec)
    for (section, key), default in LATER_SETTINGS.items():
        if d[section].get(key, default) == default:
            d[section].pop(key, None)
    return d


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)


# --------------------------------------------------------------------------------------------
# the search-space grammar (``tune.search_space``; the search itself is ``engine.tune``)

FORMS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCH_SECTIONS: dict[str, type] = {
    "loss": LossSpec,
    "sampler": SamplerSpec,
    "train": TrainSpec,
    "model": ModelSpec,
    "resample": ResampleSpec,
}
WEIGHT_POWER = "loss.weight_power"
NOT_SEARCHABLE = {
    "train.epochs": "it is ASHA's budget (max_t); set train.epochs outside the search",
    "train.num_workers": "it sizes the trials; set train.num_workers outside the search",
    "train.use_gpu": "it sizes the trials; set train.use_gpu outside the search",
    "train.cpus_per_worker": "it sizes the trials; set train.cpus_per_worker outside the search",
    "train.metric": "trials keep their best epoch by tune.metric",
    "train.precision_floor": "it defines the val_minority_recall metric; set it outside the search",
}


@dataclass(frozen=True)
class Dist:
    """One knob's distribution: ``form`` in FORMS or ``fixed``; ``args`` its values/bounds."""

    form: str
    args: tuple[Any, ...]


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def search_space_error(key: str, reason: str) -> SpecError:
    return SpecError(f"search_space.{key}", reason)


def _check_key(key: str) -> None:
    if key == WEIGHT_POWER:
        return
    if key in NOT_SEARCHABLE:
        raise search_space_error(key, f"not searchable: {NOT_SEARCHABLE[key]}")
    section, dot, name = key.partition(".")
    if not dot or "." in name or section not in SEARCH_SECTIONS:
        raise search_space_error(
            key,
            f"unknown key; use <section>.<field> with a section in {list(SEARCH_SECTIONS)}, or "
            f"{WEIGHT_POWER}",
        )
    names = [f.name for f in dataclasses.fields(SEARCH_SECTIONS[section])]
    if name not in names:
        raise search_space_error(
            key, f"unknown key; {SEARCH_SECTIONS[section].__name__} has: {', '.join(names)}"
        )


def _check_value(key: str, value: Any) -> None:
    """Check ``value`` as the value of ``key`` by building its section with it."""
    if key == WEIGHT_POWER:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise search_space_error(
                key, f"the class-weight exponent must be a number >= 0, got {value!r}"
            )
        return
    section, _, name = key.partition(".")
    try:
        build_section(SEARCH_SECTIONS[section], {name: value})
    except SpecError as e:
        hint = ""
        if isinstance(value, dict) and len(value) == 1:
            hint = f" (a distribution is one of {{{'|'.join(FORMS)}: [...]}})"
        raise search_space_error(key, f"{e.reason}{hint}") from None


def parse_dist(key: str, value: Any) -> Dist | None:
    """One search-space entry -> its ``Dist`` (None: drop the default knob)."""
    _check_key(key)
    if value is None:
        return None
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in FORMS):
        _check_value(key, value)
        return Dist("fixed", (value,))
    form, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise search_space_error(key, f"{form} takes a non-empty list, got {args!r}")
    if form in ("choice", "grid"):
        for v in args:
            _check_value(key, v)
        return Dist(form, tuple(args))
    if len(args) != 2 or not all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
    ):
        raise search_space_error(key, f"{form} takes [low, high] (two numbers), got {args!r}")
    lo, hi = args
    if form == "randint":
        if not all(isinstance(a, int) for a in args) or hi <= lo:
            raise search_space_error(
                key, f"randint takes integers [low, high) with low < high, got {args}"
            )
        _check_value(key, lo)
        _check_value(key, hi - 1)
        return Dist(form, (lo, hi))
    if not lo < hi:
        raise search_space_error(key, f"{form} needs low < high, got {args}")
    if form == "loguniform" and lo <= 0:
        raise search_space_error(key, f"loguniform needs 0 < low, got {args}")
    _check_value(key, float(lo))
    _check_value(key, float(hi))
    return Dist(form, (float(lo), float(hi)))


def _flatten(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as they are; a bare section name holding a mapping is flattened one level."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if "." not in key and key in SEARCH_SECTIONS and isinstance(value, dict):
            for name, v in value.items():
                flat[f"{key}.{name}"] = v
        else:
            flat[key] = value
    return flat


def parse_search_space(raw: Mapping[str, Any] | None, *, tpe: bool = False) -> dict[str, Any]:
    """``tune.search_space`` -> {dotted key: Dist or None}. Raises ``SpecError`` naming the key."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError("search_space", f"must be a mapping of dotted keys, got {raw!r}")
    space = {key: parse_dist(key, value) for key, value in _flatten(raw).items()}
    if tpe:
        grids = [k for k, d in space.items() if d is not None and d.form == "grid"]
        if grids:
            raise search_space_error(
                grids[0], "grid is not supported with scheduler tpe; use choice"
            )
    return space


# --------------------------------------------------------------------------------------------
# rules across sections

LINEAR_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # model.C null: the linear fit's C, chosen on val

# train.lr null: a rate that trains each kind (AdamW): a pretrained transformer is fine-tuned
# gently, heads and the n-gram bag start from scratch
DEFAULT_LR = {"transformer": 5e-5, "mlp": 3e-3, "lexical": 1e-2, "linear": 3e-3, "gbdt": 3e-3}
EXACT_KINDS = ("linear", "gbdt")  # fitted by one solve, not by epochs of AdamW


def learning_rate(spec: JobSpec) -> float:
    """``train.lr``, or the model kind's default when it is null."""
    return spec.train.lr if spec.train.lr is not None else DEFAULT_LR[spec.model.kind]


def needs_embedding(spec: JobSpec) -> bool:
    """Text must become a feature column: for an MLP head, trees or SMOTE-family resampling."""
    wants_features = spec.model.kind in ("mlp", "gbdt") or spec.resample.method in SMOTE_METHODS
    return bool(spec.data.text) and not spec.data.features and wants_features


def model_data(spec: JobSpec) -> DataSpec:
    """The data spec of the model inputs: the embedding column when the text was embedded."""
    if needs_embedding(spec):
        return replace(spec.data, features=[spec.embed.column], text=None)
    return spec.data
