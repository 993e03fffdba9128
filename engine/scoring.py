"""Members and batch scoring: which models, and each one's class probabilities on a split.

    refs = [model_ref(spec.data, "m1", "runs/x/tune/trials/t1/best"), ...]
    scores = score_splits(refs, {"val": val_dir, "test": test_dir}, spec.data, label_map)
    ds = map_scorer(read_dataset(source, ordered=True), refs, columns, label_map, None)

Each member's probabilities come from one Ray Data pass per split through an actor pool
(``Scorer``: every member loaded once per actor; one actor per GPU when the cluster has GPUs,
else half the CPUs). With ``combine`` arguments the same actors also apply the ensemble's
weights, temperatures and thresholds (batch prediction).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from engine.combining import combine
from engine.config import DataSpec, EmbedSpec
from engine.data import LabelMap
from engine.io import is_uri, path_exists, sha256_file
from engine.remote import durable, fetch

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
    kind: str  # "mlp" | "gbdt" | "lexical" | "transformer"
    inputs: str  # "text" | "features" | "embedding"
    max_length: int = 128
    source: str = ""  # where it came from (a trial id, "baseline")
    val_metric: float | None = None
    trained_as: str = ""  # the model.kind it was trained as (linear is read as mlp/lexical)
    # {file in dir: sha256}: checked where the folder is loaded (a copy fetched from a bucket)
    files: dict[str, str] | None = None


def model_kind(folder: str) -> str:
    """The kind of a saved model folder, from its ``config.json``."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{folder} is not a saved model: it has no config.json")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    kinds = {"raybalance-mlp": "mlp", "raybalance-lexical": "lexical", "raybalance-gbdt": "gbdt"}
    return kinds.get(model_type, "transformer")


def model_ref(data: DataSpec, name: str, folder: str, **extra: Any) -> ModelRef:
    """A ``ModelRef`` for a model trained on the columns of ``data`` (an MLP without feature
    columns reads the embedding of the text)."""
    kind = model_kind(fetch(folder))
    if kind not in ("mlp", "gbdt"):
        inputs = "text"
    elif data.features:
        inputs = "features"
    else:
        inputs = "embedding"
        if not data.text:
            raise ValueError(f"member {name}: an MLP with neither data.features nor data.text")
    return ModelRef(
        name, folder if is_uri(folder) else os.path.abspath(folder), kind, inputs, **extra
    )


def select_members(
    table: Any, top_k: int, metric: str, per_kind: bool = False
) -> list[dict[str, Any]]:
    """The ``top_k`` best trials of a Tune results table (``engine.tune.results_table``) that
    exported a model, best first; ``per_kind``: the best trial of each ``model.kind`` first
    (so that every kind the search tried is a candidate), then the next best. Raises
    ValueError when there is none."""
    rows = [
        r
        for r in table.to_dict("records")
        if r.get("status") != "error"
        and r.get("best_dir")
        and path_exists(str(r["best_dir"]))
        and _finite(r.get(metric))
    ]
    sign = 1.0 if metric == "val_loss" else -1.0
    rows.sort(key=lambda r: (sign * float(r[metric]), str(r["trial_id"])))
    if not rows:
        raise ValueError(
            f"no trial of the search finished with a model and a finite {metric}; see "
            "RUN_DIR/tune/results.csv for the trials' errors"
        )
    if per_kind:
        kinds = [str(r.get("model.kind")) for r in rows]
        first = {i for i, k in enumerate(kinds) if k not in kinds[:i]}  # each kind's best
        rows = [r for i, r in enumerate(rows) if i in first] + [
            r for i, r in enumerate(rows) if i not in first
        ]
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


def loadable(where: str, files: Mapping[str, str] | None) -> str:
    """A model folder on this node: fetched when it is in a bucket, and checked against the
    hashes ``files`` ({file in it: sha256}, those of a verified artifact) when given."""
    folder = fetch(where)
    for rel, digest in (files or {}).items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path) or sha256_file(path) != digest:
            raise ValueError(
                f"{where}/{rel} does not match the artifact's manifest: the folder changed "
                "after the artifact was verified; rebuild it or restore the file"
            )
    return folder


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
            model, _ = load_model(loadable(ref.dir, ref.files))
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
            from engine.embed import Encoder

            embed = {k: v for k, v in self.embed.items() if k != "files"}
            embed["model"] = loadable(embed["model"], self.embed.get("files"))
            self.encoder = Encoder(embed, self.columns["text"], self.threads, str(self.device))
        return self.encoder.encode(self._text(batch))

    def _inputs(self, ref: ModelRef, model: Any, batch: pa.Table, cache: dict) -> dict[str, Any]:
        import torch

        if ref.kind == "lexical":
            if "lex" not in cache:
                cache["lex"] = model.vectorizer.transform(self._text(batch))
            idx, val = cache["lex"]
            return {"lex_idx": torch.as_tensor(idx).long(), "lex_val": torch.as_tensor(val)}
        if ref.kind == "transformer":
            from engine.models import tokenize

            enc = tokenize(
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
            self.combine.get("stacker"),
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


def scoring_columns(data: DataSpec) -> dict[str, Any]:
    """Which columns the scorer reads: label, text, feature columns or one vector column."""
    features = data.features
    if isinstance(features, (list, tuple)) and len(features) == 1:
        features = features[0]
    return {
        "label": data.label,
        "text": data.text,
        "features": list(data.features) if isinstance(data.features, list) else [],
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
    embed_files: Mapping[str, str] | None = None,
):
    """``ds`` through the scoring actor pool (lazy, like any Ray Data transform).
    ``embed_files``: the encoder folder's {file: sha256}, checked where it is loaded."""
    import ray

    plan = scoring_pool()
    encoder = None
    if embed is not None:
        encoder = {**asdict(embed), "files": dict(embed_files or {})}
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "models": [{**asdict(r), "dir": durable(r.dir)} for r in refs],  # any node
            "columns": columns,
            "label_map": label_map.to_json(),
            "embed": encoder,
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
    data: DataSpec,
    label_map: LabelMap,
    embed: EmbedSpec | None = None,
) -> dict[str, SplitScores]:
    """Every model's probabilities on each split folder: one Ray Data pass per split.

    Rows come in the split's file order (file by file, row by row), so the scores line up
    with a plain read of the split. ``data``: the columns the models were trained on.

    ``embed``: the frozen encoder for ``embedding`` members when a split lacks its column.
    """
    from engine.data import ROW, in_source_order, read_dataset, read_schema, resolve_source

    out: dict[str, SplitScores] = {}
    for split, folder in splits.items():
        source = resolve_source(folder)
        columns = resolve_scoring_columns(scoring_columns(data), read_schema(source))
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
