"""Frozen-encoder embeddings as a Ray Data stage: a text column -> a fixed-size float32 column.

    ds = embed_dataset(read_dataset(source), "text", EmbedSpec(model="minilm"))   # lazy
    result = embed_files(resolve_source("data/trec50"), "runs/x/embedded", "text", spec)
    results = embed_many([train, val, test], ["e/train", "e/val", "e/test"], "text", spec)

An actor pool holds the tokenizer and the encoder (loaded once per actor, eval mode, no grad).
Each batch is tokenized (padded to its longest text, cut at ``max_length`` tokens), encoded, and
the token vectors are averaged over the attention mask and, with ``normalize``, scaled to unit
L2 norm — what sentence-transformers does for all-MiniLM-L6-v2. Padding never reaches the mean,
so a text's vector does not depend on its batch (equal up to float rounding).

The pool is sized from the cluster: one actor per GPU (``num_gpus=1`` each) when there are GPUs,
otherwise half the CPUs, each with ``CPUs // actors`` torch threads. A CPU actor reserves at
most one CPU and always leaves one CPU free, so Ray Data's read and write tasks can run beside
it (an actor pool that holds every CPU deadlocks the stream on a small machine).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.config import EmbedSpec, build_section
from engine.data import (
    Fragment,
    Source,
    iter_fragment,
    read_ordered,
    read_schema,
    run_fragments,
    write_sources_in_order,
)
from engine.io import (
    exists,
    filesystem_and_path,
    join,
    replace_dir,
    write_json_atomic,
    writer_temp_dir,
)
from engine.progress import progress_event

log = logging.getLogger("raybalance")

MANIFEST = "_embed.json"
TINY_SEED = 0  # every actor builds the same random "tiny" encoder
SORT_WINDOW = 8  # forward passes per Ray Data batch, whose texts are sorted by length


@dataclass(frozen=True)
class EmbedResult:
    path: str
    rows: int
    dim: int
    seconds: float


# --------------------------------------------------------------------------------------------
# the encoder


def _model_path(spec: EmbedSpec) -> str:
    from engine.models import resolve_path

    try:
        return resolve_path(spec.model)
    except ValueError:
        raise ValueError(
            f"embed.model {spec.model!r} is not a folder; use 'minilm', 'tiny' or a folder "
            "holding a Hugging Face model (config.json, weights, tokenizer)"
        ) from None


def encoder_config(spec: EmbedSpec):
    """The model config for ``spec`` (reads ``config.json`` only; loads no weights).

    Raises:
        ValueError: the model is unknown, or ``max_length`` exceeds its position embeddings.
    """
    from transformers import AutoConfig

    if spec.model == "tiny":
        from engine.models import tiny_bert_config

        return tiny_bert_config(spec.max_length)
    config = AutoConfig.from_pretrained(_model_path(spec))
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and spec.max_length > limit:
        raise ValueError(
            f"embed.max_length={spec.max_length} exceeds the {limit} positions of model "
            f"{spec.model!r}; set embed.max_length <= {limit}"
        )
    return config


def encoder_dim(spec: EmbedSpec) -> int:
    """The output dimension for the spec's model (384 for MiniLM, 32 for ``tiny``)."""
    return int(encoder_config(spec).hidden_size)


def load_encoder(spec: EmbedSpec) -> tuple[Any, Any]:
    """(tokenizer, encoder) for ``spec``, the encoder in eval mode with gradients off."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = _model_path(spec)  # "tiny" uses MiniLM's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    if spec.model == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = AutoModel.from_config(encoder_config(spec))
    else:
        encoder_config(spec)  # checks max_length against the model
        model = AutoModel.from_pretrained(path, use_safetensors=True)
    model.eval()
    model.requires_grad_(False)
    return tokenizer, model


def mean_pool(hidden, mask, normalize: bool = True):
    """Average (B, T, d) token vectors over a (B, T) attention mask; optionally L2-normalize."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


def vectors_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A (n, d) matrix as a ``fixed_size_list<float32>[d]`` Arrow array."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


class Encoder:
    """The actor of the pool: tokenizer + encoder loaded once, applied to Arrow batches."""

    def __init__(self, spec: dict[str, Any], text: str, threads: int, device: str) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
        hf_logging.disable_progress_bar()  # "Loading weights" bars, once per actor
        self.spec = build_section(EmbedSpec, spec)
        self.text = text
        self.device = torch.device(device)
        self.tokenizer, model = load_encoder(self.spec)
        self.model = model.to(self.device)
        self.dim = int(model.config.hidden_size)
        self.field = pa.field(self.spec.column, pa.list_(pa.float32(), self.dim))
        self.pad_id = self.tokenizer.pad_token_id or 0  # masked out: any id does

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 vectors; texts of similar length share a forward pass."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.spec.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        # Longest first, so that a batch too large for memory fails at once. Padding to the
        # longest text of a sorted chunk halves the work on short, uneven texts (TREC).
        order = np.argsort(-lengths, kind="stable")
        step = self.spec.batch_size
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            width = int(lengths[rows].max())
            x = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                x[r, : lengths[i]] = ids[i]
                mask[r, : lengths[i]] = 1
            x_t = torch.from_numpy(x).to(self.device)
            mask_t = torch.from_numpy(mask).to(self.device)
            with torch.inference_mode():
                hidden = self.model(input_ids=x_t, attention_mask=mask_t).last_hidden_state
                pooled = mean_pool(hidden.float(), mask_t, self.spec.normalize)
            out[rows] = pooled.cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        col = batch.column(self.text)
        if col.null_count:
            raise ValueError(_null_message(self.text, col.null_count, batch.num_rows, "a batch of"))
        vectors = self.encode([str(t) for t in col.to_pylist()])
        return batch.append_column(self.field, vectors_array(vectors))


def _null_message(text: str, nulls: int, rows: int, where: str) -> str:
    return (
        f"text column {text!r} has {nulls} null values in {where} {rows} rows; embeddings need "
        "a text in every row: drop or fill them first (the stats pass reports null texts)"
    )


# --------------------------------------------------------------------------------------------
# the pool


@dataclass(frozen=True)
class PoolPlan:
    """How the encoder pool runs: ``actors`` actors of ``num_cpus``/``num_gpus`` each."""

    actors: int
    num_cpus: float
    num_gpus: int
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus else "cpu"


def plan_pool(spec: EmbedSpec, resources: dict[str, float] | None = None) -> PoolPlan:
    """Size the pool from the cluster's resources (``ray.cluster_resources()`` by default)."""
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    if gpus >= 1:
        # One actor per GPU; more would wait for a GPU that never frees up.
        actors = min(spec.actors or gpus, gpus)
    else:
        actors = spec.actors or max(1, cpus // 2)
    # At most one CPU per actor, and one whole CPU left for the read/write tasks (they ask for
    # 1 CPU each): a pool holding every CPU starves its own input.
    share = float(np.floor(100 * min(1.0, (cpus - 1) / actors)) / 100)
    return PoolPlan(actors, max(0.01, share), 1 if gpus else 0, max(1, cpus // actors))


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or getattr(pa.types, "is_string_view", lambda _: False)(t)
    )


def embed_dataset(ds, text: str, spec: EmbedSpec):
    """Add ``spec.column`` (``fixed_size_list<float32>[dim]``) to ``ds``, keeping every column.

    The checks run now (one pass over the text column counts nulls); the encoder runs when the
    result is consumed, like any Ray Data transform.

    Raises:
        ValueError: ``text`` is missing, not a string column or holds nulls, or ``spec.column``
            exists already.
    """
    return _embed(ds, text, spec, check_nulls=True)


def _null_counts(batch: pa.Table) -> pa.Table:
    return pa.table({"rows": [batch.num_rows], "nulls": [batch.column(0).null_count]})


def _embed(ds, text: str, spec: EmbedSpec, *, check_nulls: bool):
    import ray

    schema = ds.schema()
    names = list(schema.names) if schema is not None else []
    if text not in names:
        raise ValueError(f"text column {text!r} is not in the dataset; its columns are {names}")
    t = dict(zip(schema.names, schema.types)).get(text)
    if isinstance(t, pa.DataType) and not _is_text(t):
        raise ValueError(f"text column {text!r} has type {t}; embeddings need a string column")
    if spec.column in names:
        raise ValueError(
            f"column {spec.column!r} already exists in the dataset; set embed.column to "
            "another name (or drop the old column first)"
        )
    encoder_config(spec)  # fail here, not in an actor, on a bad model or max_length
    if check_nulls:
        parts = (
            ds.select_columns([text])
            .map_batches(_null_counts, batch_format="pyarrow", batch_size=None)
            .take_all()
        )
        nulls = sum(p["nulls"] for p in parts)
        if nulls:
            rows = sum(p["rows"] for p in parts)
            raise ValueError(_null_message(text, nulls, rows, "its"))
    plan = plan_pool(spec)
    return ds.map_batches(
        Encoder,
        fn_constructor_kwargs={
            "spec": _spec_dict(spec),
            "text": text,
            "threads": plan.threads,
            "device": plan.device,
        },
        batch_size=spec.batch_size * SORT_WINDOW,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        udf_modifying_row_count=False,
    )


def _spec_dict(spec: EmbedSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


# --------------------------------------------------------------------------------------------
# files in, files out


def _count_text(source: Source, frags: list[Fragment], text: str) -> tuple[int, int]:
    rows = nulls = 0
    for frag in frags:
        for table in iter_fragment(source, frag, [text]):
            rows += table.num_rows
            nulls += table.column(text).null_count
    return rows, nulls


def embed_files(source: Source, out_dir: str, text: str, spec: EmbedSpec) -> EmbedResult:
    """Embed ``source`` into Parquet files under ``out_dir``, replacing it atomically.

    The files are written into a temporary folder beside ``out_dir`` that is renamed into place
    only when complete (with ``_embed.json``: model, dim, column, rows, seconds), so a crash
    never leaves a partial folder and a rerun replaces the old one instead of appending to it.

    Raises:
        ValueError: ``text`` is missing or holds nulls, ``spec.column`` exists, or no rows.
    """
    return embed_many([source], [out_dir], text, spec)[0]


def _check_source(source: Source, text: str, spec: EmbedSpec) -> int:
    """The row count of ``source`` after checking its text column (present, no nulls)."""
    import functools

    schema = read_schema(source)
    if text not in schema.names:
        raise ValueError(
            f"{source.path}: text column {text!r} is not in the data; columns: {schema.names}"
        )
    if spec.column in schema.names:
        raise ValueError(
            f"{source.path}: column {spec.column!r} already exists; set embed.column to "
            "another name"
        )
    counts = run_fragments(
        source,
        functools.partial(_count_text, text=text),
        description=f"embed: checking {text!r} in {source.path}",
    )
    rows, nulls = (sum(c) for c in zip(*counts)) if counts else (0, 0)
    if rows == 0:
        raise ValueError(f"{source.path} holds no rows: nothing to embed")
    if nulls:
        raise ValueError(f"{source.path}: " + _null_message(text, nulls, rows, "its"))
    return rows


def embed_many(
    sources: list[Source], out_dirs: list[str], text: str, spec: EmbedSpec
) -> list[EmbedResult]:
    """``embed_files`` for several sources (a run's splits) in one Ray Data pipeline: the
    encoder pool starts once and serves them all; each output folder is replaced atomically
    once every one is complete."""
    t0 = time.perf_counter()
    rows = [_check_source(s, text, spec) for s in sources]
    dim = encoder_dim(spec)
    targets = [filesystem_and_path(d) for d in out_dirs]
    temps: list[tuple[Any, str]] = []
    try:
        temps = [(fs, writer_temp_dir(fs, final)) for fs, final in targets]
        # Nulls were counted above, faster than a Ray Data pass. Each row carries its place
        # in its source: the files hold the rows in the split's order, so that training on
        # them is the same from run to run.
        ds = _embed(read_ordered(sources), text, spec, check_nulls=False)
        ds = _with_progress(ds, sum(rows), f"embed {text!r}")
        fs = temps[0][0]
        written = write_sources_in_order(ds, fs, [t for _, t in temps], sources)
        seconds = time.perf_counter() - t0
        for source, n, w, (tfs, tmp) in zip(sources, rows, written, temps):
            if w != n or _count_rows(tfs, tmp) != n:
                raise RuntimeError(f"embedding {source.path} wrote {w} rows but it holds {n}")
            write_json_atomic(
                join(tmp, MANIFEST), _manifest(spec, dim, n, seconds, text, source), tfs
            )
        for (tfs, tmp), (_, final) in zip(temps, targets):
            replace_dir(tfs, tmp, final)
    except BaseException:
        for tfs, tmp in temps:
            if exists(tfs, tmp):
                tfs.delete_dir(tmp)
        raise
    log.info(
        "embedded %d rows of %r with %s (dim %d) in %.1f s: %.0f rows/s",
        sum(rows),
        text,
        spec.model,
        dim,
        seconds,
        sum(rows) / max(seconds, 1e-9),
    )
    return [EmbedResult(path=d, rows=n, dim=dim, seconds=seconds) for d, n in zip(out_dirs, rows)]


def _with_progress(ds, total: int, task: str):
    """``ds`` computed block by block with a progress event per block (rows embedded, rows/s;
    the bar shows the time left), as a dataset of the computed blocks. The ordered write that
    follows sorts, which needs every block anyway."""
    import ray

    refs, done, t0 = [], 0, time.perf_counter()
    progress_event(task, 0, total)
    for bundle in ds.iter_internal_ref_bundles():
        refs += [entry.ref for entry in bundle.blocks]
        done += bundle.num_rows() or 0
        rate = done / max(time.perf_counter() - t0, 1e-9)
        progress_event(task, min(done, total), total, f"{rate:.0f} rows/s")
    if done < total:
        progress_event(task, total, total)
    return ray.data.from_arrow_refs(refs) if refs else ds


def _manifest(spec: EmbedSpec, dim: int, rows: int, seconds: float, text: str, source: Source):
    return {
        "model": spec.model,
        "dim": dim,
        "column": spec.column,
        "rows": rows,
        "seconds": round(seconds, 3),
        "text": text,
        "max_length": spec.max_length,
        "normalize": spec.normalize,
        "source": source.path,
    }


def _count_rows(fs, folder: str) -> int:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return sum(
        pq.ParquetFile(i.path, filesystem=fs).metadata.num_rows
        for i in infos
        if i.is_file and i.path.endswith(".parquet")
    )


_Encoder = Encoder  # the earlier name
