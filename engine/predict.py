"""Batch prediction with an ensemble artifact, on Ray Data.

    raybalance predict runs/demo/ensemble data/new.parquet --out runs/demo/predictions
    result = predict("runs/demo/ensemble", "data/new.parquet", "out/", keep=["id"])

The artifact is verified first (``engine.ensemble.load_artifact``: every file's sha256 against
its manifest, nothing but safetensors / JSON / tokenizer vocabulary, nothing loaded before the
check). The rows then stream through the scoring actor pool (every member loaded once per
actor; the artifact's own frozen encoder embeds the text for members that read embeddings,
unless the data already has the embedding column): members' probabilities → weighted mean →
temperature → the fitted thresholds. Output: Parquet files under ``out`` with the ``keep``
columns (default: every input column), ``prediction`` (the label, in the label column's type)
and ``proba_<label>`` (float32) per class, in input order, plus ``_predict.json`` (rows,
predicted rows per class, the artifact's manifest hash). Written into a temporary folder that
is renamed into place when complete; an existing ``out`` is replaced only with ``overwrite``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.artifact import (
    FORMAT,
    MODEL_FORMAT,
    artifact_from_model,
    manifest_format,
    verify_artifact,
)
from engine.data import (
    ROW,
    Fragment,
    Source,
    iter_fragment,
    read_dataset,
    read_schema,
    resolve_source,
    run_fragments,
    write_in_source_order,
)
from engine.ensemble import (
    MANIFEST,
    load_artifact,
    map_scorer,
    resolve_scoring_columns,
    sha256_file,
)
from engine.io import exists, filesystem_and_path, is_uri, join, replace_dir, writer_temp_dir
from engine.remote import fetch

SUMMARY = "_predict.json"


@dataclass(frozen=True)
class PredictResult:
    path: str
    rows: int
    predicted: dict[str, int]  # rows predicted per class (label keys)
    columns: list[str]


def _needed(art, schema: pa.Schema, data: str) -> dict[str, Any]:
    """The scorer's columns for this data; raises naming what is missing."""
    cols = art.manifest["columns"]
    names = list(schema.names)
    kinds = {m.inputs for m in art.members}
    emb_col = art.embed.column if art.embed is not None else None
    need_text = "text" in kinds or ("embedding" in kinds and emb_col not in names)
    if need_text and cols.get("text") not in names:
        raise ValueError(
            f"{data}: the ensemble's members read the text column {cols.get('text')!r}, which is "
            f"not in the data; its columns are {names}"
        )
    features = cols.get("features")
    one = None
    if "features" in kinds:
        if isinstance(features, str):
            one = features
        elif isinstance(features, list) and len(features) == 1:
            one = features[0]
    columns = {
        "label": cols.get("label"),
        "text": cols.get("text"),
        "features": list(features) if isinstance(features, list) and len(features) > 1 else [],
        "vector": None,
        "_one": one,
    }
    if "features" in kinds:
        missing = [c for c in columns["features"] if c not in names]
        if missing:
            raise ValueError(
                f"{data}: feature columns {missing} of the ensemble are not in the data; its "
                f"columns are {names}"
            )
    return resolve_scoring_columns(columns, schema)


def _feature_columns(art, columns: dict[str, Any], names: list[str]) -> list[str]:
    """The input columns whose numbers reach a member as they are."""
    kinds = {m.inputs for m in art.members}
    out: list[str] = []
    if "features" in kinds:
        out += list(columns["features"]) + ([columns["vector"]] if columns["vector"] else [])
    if "embedding" in kinds and art.embed is not None and art.embed.column in names:
        out.append(art.embed.column)
    return out


def _count_bad(source: Source, frags: list[Fragment], names: list[str]) -> dict[str, list[int]]:
    """Per column: [NaN or infinite values, nulls] in these fragments (list columns: their
    elements)."""
    out = {c: [0, 0] for c in names}
    for frag in frags:
        for table in iter_fragment(source, frag, names):
            for c in names:
                values = table.column(c)
                nulls = values.null_count
                t = values.type
                if (
                    pa.types.is_list(t)
                    or pa.types.is_large_list(t)
                    or pa.types.is_fixed_size_list(t)
                ):
                    values = pc.list_flatten(values)
                    nulls += values.null_count
                if pa.types.is_floating(values.type):
                    out[c][0] += pc.sum(pc.invert(pc.is_finite(values))).as_py() or 0
                out[c][1] += nulls
    return out


def check_features(source: Source, names: list[str], data: str) -> None:
    """Refuse input whose feature values are NaN, infinite or null, with the counts per column,
    before any model runs."""
    if not names:
        return
    parts = run_fragments(
        source, functools.partial(_count_bad, names=names), description="predict: checking features"
    )
    total = {c: [sum(p[c][0] for p in parts), sum(p[c][1] for p in parts)] for c in names}
    bad = {c: v for c, v in total.items() if v[0] or v[1]}
    if bad:
        what = "; ".join(f"{c!r}: {n} NaN/infinite, {z} null" for c, (n, z) in bad.items())
        raise ValueError(
            f"{data}: feature values the models cannot score ({what}); drop or fill those rows "
            "first — nothing was written"
        )


def predict(
    artifact: str,
    data: str,
    out: str,
    *,
    format: str = "auto",
    keep: Sequence[str] | None = None,
    overwrite: bool = False,
    batch_size: int = 512,
) -> PredictResult:
    """Apply the ensemble ``artifact`` — or one trained model folder with its manifest
    (``RUN_DIR/train/best``, a trial's ``best``: used as a one-member ensemble with argmax) —
    to the dataset at ``data``; write ``out`` atomically.

    Raises:
        ValueError: a tampered or unknown artifact, missing input columns, an unknown ``keep``
            column, or an existing ``out`` without ``overwrite``.
    """
    args = (data, out, format, keep, overwrite, batch_size)
    local = fetch(artifact)  # an artifact in a bucket: verified in a local copy
    if manifest_format(local) != MODEL_FORMAT:
        art = _as_named(artifact, local, lambda: load_artifact(local))
        return _predict(_reachable(art, artifact, False), artifact, local, *args)
    with tempfile.TemporaryDirectory(prefix="raybalance-model-") as tmp:
        made = _as_named(
            artifact, local, lambda: artifact_from_model(local, os.path.join(tmp, "artifact"))
        )
        return _predict(_reachable(load_artifact(made), artifact, True), artifact, local, *args)


def _as_named(artifact: str, local: str, load: Callable[[], Any]) -> Any:
    """``load()``, its errors naming ``artifact`` (a bucket's folder) rather than the local
    copy they were found in."""
    try:
        return load()
    except ValueError as e:
        if local == artifact:
            raise
        raise ValueError(str(e).replace(local, artifact)) from None


def _reachable(art, origin: str, one_model: bool):
    """``art`` whose members (and encoder) the scoring actors load from ``origin`` when it is
    in a bucket, on whichever node they run, each member checked there against the verified
    manifest's hashes; ``one_model``: ``origin`` is a model folder (the one member)."""
    if not is_uri(origin):
        return art

    def inside(folder: str) -> tuple[str, dict[str, str]]:
        """(the artifact folder ``folder`` in the bucket, the manifest's hashes of its files)."""
        rel = os.path.relpath(folder, art.path).replace(os.sep, "/")
        listed = art.manifest["files"]
        files = {k[len(rel) + 1 :]: v for k, v in listed.items() if k.startswith(rel + "/")}
        return join(origin, rel), files

    members = []
    for ref in art.members:
        where, files = inside(ref.dir)
        members.append(replace(ref, dir=origin if one_model else where, files=files))
    embed, embed_files = art.embed, None
    if embed is not None and not one_model:
        where, embed_files = inside(embed.model)
        embed = replace(embed, model=where)
    return replace(art, members=members, embed=embed, embed_files=embed_files)


def check_inputs(artifact: str, data: str, format: str = "auto") -> None:
    """The checks that need no cluster: the artifact (or model folder) against its manifest,
    and that ``data`` holds data files."""
    local = fetch(artifact)
    fmt = MODEL_FORMAT if manifest_format(local) == MODEL_FORMAT else FORMAT
    _as_named(artifact, local, lambda: verify_artifact(local, fmt))
    resolve_source(data, format)


def _predict(
    art,
    origin: str,
    verified: str,
    data: str,
    out: str,
    format: str,
    keep: Sequence[str] | None,
    overwrite: bool,
    batch_size: int,
) -> PredictResult:
    source = resolve_source(data, format)
    schema = read_schema(source)
    columns = _needed(art, schema, data)
    keep = list(schema.names) if keep is None else list(keep)
    unknown = [c for c in keep if c not in schema.names]
    if unknown:
        raise ValueError(f"--keep columns {unknown} are not in {data}; its columns: {schema.names}")
    clash = [c for c in keep if c == "prediction" or c.startswith("proba_")]
    if clash:
        raise ValueError(
            f"{data} has columns {clash} that the output would overwrite; leave them out with "
            "--keep"
        )
    fs, root = filesystem_and_path(out)
    if exists(fs, root) and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")

    check_features(source, _feature_columns(art, columns, list(schema.names)), data)
    ds = read_dataset(source, ordered=True)  # each row carries its place: output in input order
    scored = map_scorer(
        ds,
        art.members,
        columns,
        art.label_map,
        art.embed,
        with_labels=False,
        combine_args=art.combine_args(),
        keep=[*keep, ROW],
        batch_size=batch_size,
        embed_files=art.embed_files,
    )
    tmp = writer_temp_dir(fs, root)
    try:
        write_in_source_order(scored, fs, tmp, source)
        files = sorted(
            f.path for f in fs.get_file_info(pa.fs.FileSelector(tmp)) if f.path.endswith(".parquet")
        )
        counts: dict[str, int] = {k: 0 for k in art.label_map.keys}
        rows = 0
        keys = dict(zip(art.label_map.labels, art.label_map.keys))
        for path in files:
            col = pq.read_table(path, columns=["prediction"], filesystem=fs).column(0)
            rows += len(col)
            for vc in pc.value_counts(col).to_pylist():
                counts[keys[vc["values"]]] += vc["counts"]
        summary = {
            "rows": rows,
            "predicted": counts,
            "data": data,
            "artifact": origin if is_uri(origin) else os.path.abspath(origin),
            "manifest_sha256": sha256_file(os.path.join(verified, MANIFEST)),  # the copy used
        }
        with fs.open_output_stream(f"{tmp}/{SUMMARY}") as f:
            f.write(json.dumps(summary, indent=2).encode())
        replace_dir(fs, tmp, root)
    except BaseException:
        fs.delete_dir(tmp) if exists(fs, tmp) else None
        raise
    out_cols = keep + ["prediction"] + [f"proba_{k}" for k in art.label_map.keys]
    return PredictResult(out, rows, counts, out_cols)
