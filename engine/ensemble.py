"""Top-K ensembles of tuned models, calibrated and thresholded on val, saved as one artifact.

    raybalance run jobs/configs/demo.yaml                  # the pipeline builds RUN_DIR/ensemble
    members = select_members(tune_table, top_k=3, metric="val_macro_f1")
    scores = score_splits(refs, {"val": val_dir, "test": test_dir}, spec)   # Ray Data actor pool
    fit = fit_combination(scores["val"].y, [scores["val"].proba[m.name] for m in refs], ...)
    write_artifact(spec, refs, fit, thresholds, "runs/x/ensemble")
    art = load_artifact("runs/x/ensemble")                 # hashes checked, pickles refused

Candidates are the ``top_k`` trials of the search ranked by ``tune.metric`` (each trial's best
epoch), whatever their model kind: an MLP head over frozen embeddings, a lexical n-gram model
and a fine-tuned transformer mix freely. ``ensemble.selection: greedy`` keeps the best and adds,
while one helps on val, the candidate that improves the val metric of the mean most
(``select_greedy``); ``top_k`` keeps them all. Each member's class probabilities on val and
test come from one Ray Data pass per split through an actor pool (``Scorer``: every member
loaded once per actor; one actor per GPU when the cluster has GPUs, else half the CPUs). The
ensemble's probability: with ``ensemble.temperature``, each member is first scaled by its own
temperature (``p ∝ exp(log p / T)``, T fitted on val NLL) so that members of different kinds
speak on one scale; then the weighted mean (``ensemble.weights``: ``equal``, or ``fitted`` —
simplex weights minimizing val NLL), scaled by the ensemble's own temperature. The decision
thresholds (``engine.thresholds``) are fitted on the calibrated val probabilities. Nothing here
looks at test.

The artifact (``RUN_DIR/ensemble/``)::

    manifest.json     format, versions, columns, members (kind, inputs, weight, source),
                      temperature, and the sha256 of every other file
    label_map.json    labels <-> class indices
    thresholds.json   the fitted decision rule
    members/<name>/   each member as saved by ``engine.models.save_model``
    encoder/          the frozen text encoder, when a member reads embeddings of the text

It holds only safetensors, JSON and tokenizer vocabulary text; ``load_artifact`` refuses a file
of any other kind, a file the manifest does not list, and a hash that does not match — before
anything is loaded (a planted pickle is never read). The folder is written under a temporary
name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import EmbedSpec, JobSpec, build_section
from engine.data import LabelMap

FORMAT = "raybalance-ensemble/1"
MANIFEST = "manifest.json"
ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt")  # weights, configs, tokenizer vocab
PROBA_FLOOR = 1e-12
T_BOUNDS = (0.01, 20.0)  # a lexical model's flat TF-IDF scores may need T ≈ 0.05


# --------------------------------------------------------------------------------------------
# members


@dataclass(frozen=True)
class ModelRef:
    """A model to score: a folder written by ``save_model`` and how it reads its inputs.

    ``inputs``: ``text`` (transformer and lexical models), ``features`` (an MLP over the
    data's feature columns) or ``embedding`` (an MLP over the frozen encoder's vectors of the
    text). ``max_length``: a transformer's token limit.
    """

    name: str
    dir: str
    kind: str  # "mlp" | "lexical" | "transformer"
    inputs: str  # "text" | "features" | "embedding"
    max_length: int = 128
    source: str = ""  # where it came from (a trial id, "baseline")
    val_metric: float | None = None


def model_kind(folder: str) -> str:
    """The kind of a saved model folder, from its ``config.json``."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{folder} is not a saved model: it has no config.json")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    return {"raybalance-mlp": "mlp", "raybalance-lexical": "lexical"}.get(model_type, "transformer")


def model_ref(spec: JobSpec, name: str, folder: str, **extra: Any) -> ModelRef:
    """A ``ModelRef`` for a model trained on the run of ``spec``."""
    from engine.prepare import needs_embedding

    kind = model_kind(folder)
    if kind != "mlp":
        inputs = "text"
    elif spec.data.features:
        inputs = "features"
    else:
        inputs = "embedding"
        if not needs_embedding(spec) and not spec.data.text:
            raise ValueError(f"member {name}: an MLP with neither data.features nor data.text")
    return ModelRef(name, os.path.abspath(folder), kind, inputs, **extra)


def select_members(table: Any, top_k: int, metric: str) -> list[dict[str, Any]]:
    """The ``top_k`` best trials of a Tune results table (``engine.tune.results_table``) that
    exported a model, best first. Raises ValueError when there is none."""
    rows = [
        r
        for r in table.to_dict("records")
        if r.get("status") != "error"
        and r.get("best_dir")
        and os.path.isdir(str(r["best_dir"]))
        and _finite(r.get(metric))
    ]
    sign = 1.0 if metric == "val_loss" else -1.0
    rows.sort(key=lambda r: (sign * float(r[metric]), str(r["trial_id"])))
    if not rows:
        raise ValueError(
            f"no trial of the search finished with a model and a finite {metric}; see "
            "RUN_DIR/tune/results.csv for the trials' errors"
        )
    return rows[:top_k]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# batch inference: one actor pool, every model


def _vector_matrix(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """A (fixed-size) list<number> column -> (n, d) float32."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise ValueError(f"feature column {name!r} holds {col.null_count} null rows")
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if n and flat.size % n:
        raise ValueError(f"feature column {name!r} holds lists of different lengths")
    return flat.reshape(n, flat.size // n if n else 0)


def _numeric_matrix(batch: pa.Table, columns: Sequence[str]) -> np.ndarray:
    out = []
    for c in columns:
        col = batch.column(c)
        if col.null_count:
            raise ValueError(f"feature column {c!r} holds {col.null_count} null values")
        out.append(col.to_numpy().astype(np.float32))
    return np.stack(out, axis=1)


class Scorer:
    """The actor of the scoring pool: every model loaded once, applied to Arrow batches.

    Returns per batch: ``label`` (class index; with ``with_labels``), ``p<i>`` (model i's
    class probabilities, ``list<float32>[K]``) — or, with ``combine`` (prediction), the
    ``keep`` columns, ``prediction`` (the label) and one ``proba_<label>`` column per class.
    """

    def __init__(
        self,
        models: list[dict[str, Any]],
        columns: dict[str, Any],
        label_map: dict[str, Any],
        embed: dict[str, Any] | None,
        threads: int,
        device: str,
        with_labels: bool = True,
        combine: dict[str, Any] | None = None,
        keep: list[str] | None = None,
    ) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from engine.models import load_model

        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        hf_logging.disable_progress_bar()
        self.device = torch.device(device)
        self.refs = [ModelRef(**m) for m in models]
        self.models = []
        for ref in self.refs:
            model, _ = load_model(ref.dir)
            self.models.append(model.to(self.device).eval())
        self.columns = columns
        self.label_map = LabelMap.from_json(label_map)
        self.embed = embed
        self.encoder = None
        self.threads = threads
        self.with_labels = with_labels
        self.combine = combine
        self.keep = list(keep or [])

    def _text(self, batch: pa.Table) -> list[str]:
        name = self.columns["text"]
        col = batch.column(name)
        if col.null_count:
            raise ValueError(
                f"text column {name!r} holds {col.null_count} null values in a batch of "
                f"{batch.num_rows} rows: drop or fill them first"
            )
        return [str(t) for t in col.to_pylist()]

    def _embedding(self, batch: pa.Table) -> np.ndarray:
        assert self.embed is not None
        column = self.embed["column"]
        if column in batch.column_names:
            return _vector_matrix(batch.column(column), column)
        if self.encoder is None:
            from engine.embed import _Encoder

            self.encoder = _Encoder(
                self.embed, self.columns["text"], self.threads, str(self.device)
            )
        return self.encoder.encode(self._text(batch))

    def _inputs(self, ref: ModelRef, model: Any, batch: pa.Table, cache: dict) -> dict[str, Any]:
        import torch

        if ref.kind == "lexical":
            if "lex" not in cache:
                cache["lex"] = model.vectorizer.transform(self._text(batch))
            idx, val = cache["lex"]
            return {"lex_idx": torch.as_tensor(idx).long(), "lex_val": torch.as_tensor(val)}
        if ref.kind == "transformer":
            from engine.train import _tokenize

            enc = _tokenize(
                {"t": np.array(self._text(batch), dtype=object)}, "t", ref.dir, ref.max_length
            )
            return {k: torch.as_tensor(v).long() for k, v in enc.items()}
        if ref.inputs == "embedding":
            if "emb" not in cache:
                cache["emb"] = self._embedding(batch)
            return {"features": torch.as_tensor(cache["emb"])}
        if "feat" not in cache:
            if self.columns.get("vector"):
                v = self.columns["vector"]
                cache["feat"] = _vector_matrix(batch.column(v), v)
            else:
                cache["feat"] = _numeric_matrix(batch, self.columns["features"])
        return {"features": torch.as_tensor(cache["feat"])}

    def probabilities(self, batch: pa.Table) -> list[np.ndarray]:
        import torch

        from engine.models import logits_of

        out, cache = [], {}
        with torch.inference_mode():
            for ref, model in zip(self.refs, self.models):
                x = {
                    k: v.to(self.device) for k, v in self._inputs(ref, model, batch, cache).items()
                }
                logits = logits_of(model, x).float()
                out.append(torch.softmax(logits, dim=1).cpu().numpy().astype(np.float64))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        probas = self.probabilities(batch)
        if self.combine is None:
            cols: dict[str, Any] = {}
            if self.with_labels:
                cols["label"] = pa.array(self.label_map.encode(batch.column(self.columns["label"])))
            for i, p in enumerate(probas):
                cols[f"p{i}"] = _list_array(p)
            for k in self.keep:  # e.g. the rows' places in their source
                cols[k] = batch.column(k)
            return pa.table(cols)
        from engine.thresholds import Thresholds, apply_thresholds

        p = combine(
            probas,
            self.combine["weights"],
            self.combine["temperature"],
            self.combine.get("member_temperatures"),
        )
        pred = apply_thresholds(p, Thresholds.from_json(self.combine["thresholds"]))
        out = batch.select(self.keep)
        out = out.append_column("prediction", self.label_map.arrow_values().take(pa.array(pred)))
        for c, key in enumerate(self.label_map.keys):
            out = out.append_column(f"proba_{key}", pa.array(p[:, c].astype(np.float32)))
        return out


def _list_array(p: np.ndarray) -> pa.FixedSizeListArray:
    v = np.ascontiguousarray(p, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def scoring_columns(spec: JobSpec) -> dict[str, Any]:
    """Which columns the scorer reads: label, text, feature columns or one vector column."""
    features = spec.data.features
    if isinstance(features, (list, tuple)) and len(features) == 1:
        features = features[0]
    return {
        "label": spec.data.label,
        "text": spec.data.text,
        "features": list(spec.data.features) if isinstance(spec.data.features, list) else [],
        "vector": None,
        "_one": features if isinstance(features, str) else None,
    }


def resolve_scoring_columns(columns: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """Decide whether one feature column is a vector (list) column or a plain numeric one."""
    out = dict(columns)
    one = out.pop("_one", None)
    if one is not None:
        if one not in schema.names:
            raise ValueError(f"feature column {one!r} is not in the data; columns: {schema.names}")
        t = schema.field(one).type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            out["vector"], out["features"] = one, []
        else:
            out["vector"], out["features"] = None, [one]
    return out


def scoring_pool(resources: Mapping[str, float] | None = None):
    """The scoring pool's size, as the embedding pool's: one actor per GPU, else half the
    CPUs, one CPU left for the read and write tasks (``engine.embed.PoolPlan``)."""
    from engine.embed import plan_pool

    return plan_pool(EmbedSpec(), dict(resources) if resources is not None else None)


def map_scorer(
    ds,
    refs: Sequence[ModelRef],
    columns: dict[str, Any],
    label_map: LabelMap,
    embed: EmbedSpec | None,
    *,
    with_labels: bool = True,
    combine_args: dict[str, Any] | None = None,
    keep: list[str] | None = None,
    batch_size: int = 512,
):
    """``ds`` through the scoring actor pool (lazy, like any Ray Data transform)."""
    import ray

    plan = scoring_pool()
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "models": [asdict(r) for r in refs],
            "columns": columns,
            "label_map": label_map.to_json(),
            "embed": asdict(embed) if embed is not None else None,
            "threads": plan.threads,
            "device": plan.device,
            "with_labels": with_labels,
            "combine": combine_args,
            "keep": keep,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        udf_modifying_row_count=False,
    )


@dataclass
class SplitScores:
    """Class indices and each model's probabilities on one split, row-aligned."""

    y: np.ndarray
    proba: dict[str, np.ndarray] = field(default_factory=dict)


def score_splits(
    refs: Sequence[ModelRef],
    splits: Mapping[str, str],
    spec: JobSpec,
    label_map: LabelMap,
    embed: EmbedSpec | None = None,
) -> dict[str, SplitScores]:
    """Every model's probabilities on each split folder: one Ray Data pass per split.

    Rows come in the split's file order (file by file, row by row), so the scores line up
    with a plain read of the split.

    ``embed``: the frozen encoder for ``embedding`` members when a split lacks its column.
    """
    from engine.data import ROW, in_source_order, read_dataset, read_schema, resolve_source

    out: dict[str, SplitScores] = {}
    for split, folder in splits.items():
        source = resolve_source(folder)
        columns = resolve_scoring_columns(scoring_columns(spec), read_schema(source))
        ds = map_scorer(
            read_dataset(source, ordered=True), refs, columns, label_map, embed, keep=[ROW]
        )
        parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
        table = in_source_order(pa.concat_tables(parts)) if parts else None
        k = len(label_map)
        if table is None or table.num_rows == 0:
            out[split] = SplitScores(
                np.zeros(0, np.int64), {r.name: np.zeros((0, k)) for r in refs}
            )
            continue
        y = table.column("label").to_numpy().astype(np.int64)
        probas = {
            r.name: _vector_matrix(table.column(f"p{i}"), r.name).astype(np.float64)
            for i, r in enumerate(refs)
        }
        out[split] = SplitScores(y, probas)
    return out


# --------------------------------------------------------------------------------------------
# combining: weights and temperature fitted on val


def combine(
    probas: Sequence[np.ndarray],
    weights: Sequence[float],
    temperature: float,
    member_temperatures: Sequence[float] | None = None,
):
    """Each member's probabilities scaled by its own temperature, their weighted mean, scaled
    by the ensemble's temperature; rows sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    ts = member_temperatures if member_temperatures is not None else [1.0] * len(probas)
    p = (
        sum(
            wi * temperature_scale(np.asarray(pi, dtype=np.float64), ti)
            for wi, pi, ti in zip(w, probas, ts)
        )
        / w.sum()
    )
    return temperature_scale(p, temperature)


def temperature_scale(p: np.ndarray, temperature: float) -> np.ndarray:
    """``p ∝ exp(log p / T)``; T = 1 leaves p as it is."""
    logp = np.log(np.maximum(p, PROBA_FLOOR)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], PROBA_FLOOR))))


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """The temperature in ``T_BOUNDS`` minimizing val NLL (1.0 without val rows)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(
        lambda t: nll(y, temperature_scale(p, math.exp(t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(math.exp(res.x))
    return t if nll(y, temperature_scale(p, t)) <= nll(y, p) else 1.0


def fit_weights(y: np.ndarray, probas: Sequence[np.ndarray]) -> np.ndarray:
    """Simplex weights (softmax-parametrized) minimizing the val NLL of the weighted mean."""
    from scipy.optimize import minimize

    m = len(probas)
    if m == 1 or len(y) == 0:
        return np.full(m, 1.0 / m)
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probas])  # (m, N, K)
    picked = stacked[:, np.arange(len(y)), y]  # (m, N): each member's p of the true class

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return float(-np.mean(np.log(np.maximum(w @ picked, PROBA_FLOOR))))

    res = minimize(loss, np.zeros(m), method="L-BFGS-B")
    w = np.exp(res.x - res.x.max())
    w /= w.sum()
    return w if loss(res.x) <= loss(np.zeros(m)) else np.full(m, 1.0 / m)


def calibrated_nll(y: np.ndarray, p: np.ndarray, temperature: bool = True) -> float:
    """Val NLL of ``p`` after its own fitted temperature (when ``temperature``)."""
    t = fit_temperature(y, p) if temperature else 1.0
    return nll(y, temperature_scale(p, t))


def decision_score(y: np.ndarray, p: np.ndarray, criterion: str) -> float:
    """Higher is better: ``macro_f1`` / ``balanced_accuracy`` of argmax decisions (classes
    present in ``y`` or predicted, as ``engine.metrics``), or ``nll`` negated."""
    if criterion == "nll":
        return -nll(y, p)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    tp = np.bincount(y[pred == y], minlength=k).astype(np.float64)
    support = np.bincount(y, minlength=k).astype(np.float64)
    if criterion == "balanced_accuracy":
        present = support > 0
        return float(np.mean(tp[present] / support[present])) if present.any() else float("nan")
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    seen = (support > 0) | (predicted > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)
    return float(f1[seen].mean()) if seen.any() else float("nan")


CRITERIA = {"val_macro_f1": "macro_f1", "val_balanced_accuracy": "balanced_accuracy"}


def select_greedy(
    y_val: np.ndarray,
    probas: Sequence[np.ndarray],
    *,
    criterion: str = "nll",
    temperature: bool = True,
    tol: float = 1e-4,
) -> list[int]:
    """Indices of the members to keep (Caruana et al., 2004, without replacement): the first
    (the best trial), then, while one improves the val ``criterion`` of the mean by more than
    ``tol``, the candidate that improves it most. ``criterion``: ``nll`` (of the mean after its
    own temperature, when ``temperature``), ``macro_f1`` or ``balanced_accuracy`` (of argmax
    decisions, which a temperature does not change)."""
    if criterion not in ("nll", "macro_f1", "balanced_accuracy"):
        raise ValueError(f"criterion {criterion!r}: use nll, macro_f1 or balanced_accuracy")
    chosen = [0]
    left = list(range(1, len(probas)))

    def score(idx: list[int]) -> float:
        p = np.mean([probas[i] for i in idx], axis=0)
        if criterion == "nll":
            return -calibrated_nll(y_val, p, temperature)
        return decision_score(y_val, p, criterion)

    cur = score(chosen)
    while left:
        best, i = max((score(chosen + [i]), -i) for i in left)
        i = -i  # ties: the better-ranked candidate
        if not best > cur + tol:
            break
        chosen.append(i)
        left.remove(i)
        cur = best
    return chosen


def member_temperatures(y_val: np.ndarray, probas: Sequence[np.ndarray]) -> list[float]:
    """Each member's own temperature on val: members of different kinds are calibrated before
    they are averaged (a lexical model's flat probabilities would otherwise count for little)."""
    return [fit_temperature(y_val, p) for p in probas]


@dataclass(frozen=True)
class Combination:
    weights: list[float]
    temperature: float
    val_nll_mean: float  # val NLL of the plain mean of the members
    val_nll: float  # val NLL of the fitted combination
    member_temperatures: list[float] | None = None


def fit_combination(
    y_val: np.ndarray,
    probas: Sequence[np.ndarray],
    *,
    weights: str = "equal",
    temperature: bool = True,
) -> Combination:
    """Member temperatures (when ``temperature``), weights (``equal`` or ``fitted``) and the
    ensemble's temperature (when ``temperature``), all on val."""
    m = len(probas)
    ts = member_temperatures(y_val, probas) if temperature else [1.0] * m
    calibrated = [temperature_scale(np.asarray(p, dtype=np.float64), t) for p, t in zip(probas, ts)]
    w = fit_weights(y_val, calibrated) if weights == "fitted" else np.full(m, 1.0 / m)
    mean = combine(probas, np.full(m, 1.0 / m), 1.0)
    p = combine(calibrated, w, 1.0)
    t = fit_temperature(y_val, p) if temperature else 1.0
    return Combination(
        [float(x) for x in w],
        t,
        nll(y_val, mean),
        nll(y_val, temperature_scale(p, t)),
        [float(x) for x in ts],
    )


# --------------------------------------------------------------------------------------------
# the artifact


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return sorted(out)


def versions() -> dict[str, str]:
    import ray
    import safetensors
    import torch
    import transformers

    from engine import __version__

    return {
        "raybalance": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def _save_encoder(embed: EmbedSpec, folder: str) -> None:
    """The frozen encoder (weights + tokenizer) as a ``save_pretrained`` folder."""
    from engine.embed import load_encoder

    tokenizer, model = load_encoder(embed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_artifact(
    spec: JobSpec,
    members: Sequence[ModelRef],
    fit: Combination,
    thresholds: Any,
    out_dir: str,
    label_map: LabelMap,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the ensemble artifact to ``out_dir`` (replaced atomically); returns its path."""
    from engine.io import filesystem_and_path, replace_dir, temp_dir_beside

    fs, root = filesystem_and_path(out_dir)
    tmp = temp_dir_beside(fs, root)
    try:
        entries = []
        for ref in members:
            rel = f"members/{ref.name}"
            shutil.copytree(ref.dir, os.path.join(tmp, rel))
            entries.append({**asdict(ref), "dir": rel})
        embed = None
        if any(r.inputs == "embedding" for r in members):
            _save_encoder(spec.embed, os.path.join(tmp, "encoder"))
            embed = {**asdict(spec.embed), "model": "encoder"}
        with open(os.path.join(tmp, "label_map.json"), "w") as f:
            json.dump(label_map.to_json(), f, indent=2)
        with open(os.path.join(tmp, "thresholds.json"), "w") as f:
            json.dump(thresholds.to_json(), f, indent=2)
        bad = [p for p in _files(tmp) if not p.endswith(ALLOWED_SUFFIXES)]
        if bad:
            raise ValueError(
                f"member folders hold files of a kind an artifact may not carry: {bad[:5]}; "
                "models must be saved as safetensors + JSON"
            )
        features = spec.data.features
        manifest = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": spec.name,
            "versions": versions(),
            "columns": {
                "label": spec.data.label,
                "text": spec.data.text,
                "features": features if not isinstance(features, tuple) else list(features),
            },
            "embed": embed,
            "members": entries,
            "weights": fit.weights,
            "member_temperatures": fit.member_temperatures,
            "temperature": fit.temperature,
            "val_nll": fit.val_nll,
            "thresholds": "thresholds.json",
            "label_map": "label_map.json",
            "extra": extra or {},
            "files": {p: sha256_file(os.path.join(tmp, p)) for p in _files(tmp)},
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, allow_nan=False)
        replace_dir(fs, tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass(frozen=True)
class Artifact:
    """A verified ensemble artifact (see the module docstring)."""

    path: str
    manifest: dict[str, Any]
    label_map: LabelMap
    thresholds: Any  # engine.thresholds.Thresholds
    members: list[ModelRef]
    embed: EmbedSpec | None

    @property
    def weights(self) -> list[float]:
        return list(self.manifest["weights"])

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    @property
    def member_temperatures(self) -> list[float] | None:
        ts = self.manifest.get("member_temperatures")
        return None if ts is None else [float(t) for t in ts]

    def combine_args(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "temperature": self.temperature,
            "member_temperatures": self.member_temperatures,
            "thresholds": self.thresholds.to_json(),
        }


def verify_artifact(path: str) -> dict[str, Any]:
    """Check ``path`` against its manifest without loading anything else; returns it.

    Raises:
        ValueError: no manifest, another format, a file of a refused kind (e.g. a pickle), a
            file the manifest does not list, a listed file missing, or a hash mismatch.
    """
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise ValueError(
            f"{path} is not an ensemble artifact: it has no {MANIFEST} (build one with "
            "`raybalance run`)"
        )
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath} is not valid JSON ({e}); rebuild the artifact") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{mpath}: format {got!r} is not {FORMAT!r}; rebuild the artifact")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ValueError(f"{mpath} lists no file hashes; rebuild the artifact")
    present = [p for p in _files(path) if p != MANIFEST]
    refused = [p for p in present if not p.endswith(ALLOWED_SUFFIXES)]
    if refused:
        raise ValueError(
            f"{path} holds {refused[:5]}: an artifact may hold only safetensors, JSON and "
            "tokenizer vocabulary files, and nothing else is ever loaded (pickles are refused); "
            "remove them or rebuild the artifact"
        )
    unlisted = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if unlisted or missing:
        raise ValueError(
            f"{path} does not match its manifest: files not listed {unlisted[:5]}, listed but "
            f"missing {missing[:5]}; the artifact was changed after it was written — rebuild it"
        )
    for rel, digest in listed.items():
        if sha256_file(os.path.join(path, rel)) != digest:
            raise ValueError(
                f"{os.path.join(path, rel)}: sha256 does not match {MANIFEST}; the artifact was "
                "changed after it was written — rebuild it or restore the file"
            )
    return manifest


def load_artifact(path: str) -> Artifact:
    """Verify and read an artifact's manifest, label map and thresholds (models load later,
    in the scoring actors, from the verified folders)."""
    from engine.thresholds import Thresholds

    path = os.path.abspath(path)
    manifest = verify_artifact(path)
    with open(os.path.join(path, "label_map.json")) as f:
        label_map = LabelMap.from_json(json.load(f))
    with open(os.path.join(path, "thresholds.json")) as f:
        thresholds = Thresholds.from_json(json.load(f))
    members = [ModelRef(**{**m, "dir": os.path.join(path, m["dir"])}) for m in manifest["members"]]
    embed = None
    if manifest.get("embed"):
        embed = build_section(
            EmbedSpec,
            {**manifest["embed"], "model": os.path.join(path, manifest["embed"]["model"])},
        )
    if len(manifest["weights"]) != len(members):
        raise ValueError(f"{path}: {len(members)} members but {len(manifest['weights'])} weights")
    return Artifact(path, manifest, label_map, thresholds, members, embed)
