"""The data layer: finding the input files, checking columns and types, the label map, and
running per-fragment passes over the data as Ray tasks.

    source = resolve_source("data/trec50")            # file, folder, glob or URI
    cols = resolve_columns(read_schema(source), spec.data)
    ds = read_dataset(source)                         # a Ray Dataset, for the later stages

Statistics and splits are low-cardinality reductions and row-wise assignments: they run as Ray
tasks over file fragments read with pyarrow (``run_fragments``), which streams each fragment in
bounded batches, never shuffles, and starts an order of magnitude faster than a Ray Data
execution. Training and inference read the same files as a Ray Dataset (``read_dataset``).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from engine.config import DataSpec
from engine.io import filesystem_and_path, is_uri

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
BATCH_ROWS = 1 << 18
LABEL_MAP_JSON = "label_map.json"  # beside every artifact that predicts labels


# --------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """The files of one dataset, on one pyarrow filesystem, in one format."""

    path: str  # as the user wrote it, for messages
    files: tuple[str, ...]
    format: str
    filesystem: pafs.FileSystem


def _format_of(name: str) -> str | None:
    lower = name.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt
    return None


def resolve_source(path: str | None, format: str = "auto") -> Source:
    """Expand a file, a folder (recursively), a glob or a URI into a sorted list of data files.

    Raises:
        ValueError: the path is unset or missing, holds no data files, or mixes formats.
    """
    if not path:
        raise ValueError("data.path is not set: give the input (a file, folder, glob or URI)")
    fs, p = filesystem_and_path(path)
    if any(ch in p for ch in "*?["):
        base = p[: min(p.index(ch) for ch in "*?[" if ch in p)].rpartition("/")[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = [i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, p)]
        if not files:
            raise ValueError(f"data.path {path!r}: the glob matches no files")
    else:
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"data.path {path!r} does not exist")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
            files = [
                i.path
                for i in infos
                if i.is_file
                and not any(part.startswith((".", "_")) for part in i.path[len(p) :].split("/"))
            ]
        else:
            files = [p]
    if format == "auto":
        found = {f: _format_of(f) for f in files}
        known = {f: fmt for f, fmt in found.items() if fmt}
        if not known:
            raise ValueError(
                f"data.path {path!r}: no .parquet, .csv or .jsonl files found "
                f"({len(files)} other files); set data.format if the files have other suffixes"
            )
        kinds = sorted(set(known.values()))
        if len(kinds) > 1:
            raise ValueError(
                f"data.path {path!r} mixes formats {kinds}: point data.path at one of them "
                "(a glob such as '*.parquet' works)"
            )
        files, fmt = sorted(known), kinds[0]
    else:
        files, fmt = sorted(files), format
    shown = path if is_uri(path) else p
    return Source(path=shown, files=tuple(files), format=fmt, filesystem=fs)


def read_schema(source: Source) -> pa.Schema:
    """The schema of the first file (all files must share it; passes check each batch)."""
    first = source.files[0]
    try:
        if source.format == "parquet":
            return pq.read_schema(first, filesystem=source.filesystem)
        with source.filesystem.open_input_stream(first) as f:
            return read_stream(f, source.format).schema
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"cannot read {first} as {source.format}: {e}") from None


def read_stream(f, format: str):
    """The record batches of an open CSV or JSONL stream, as their reader yields them."""
    return pacsv.open_csv(f) if format == "csv" else pajson.open_json(f)


# --------------------------------------------------------------------------------------------
# columns


@dataclass(frozen=True)
class Columns:
    """The resolved roles of columns. ``vector`` is set when features are one list column."""

    label: str
    text: str | None
    features: tuple[str, ...]
    vector: str | None
    id: str | None
    all: tuple[str, ...]  # every column of the input, in order

    @property
    def checked(self) -> list[str]:
        """Columns the validation pass reads."""
        cols = [self.label]
        if self.text:
            cols.append(self.text)
        cols += list(self.features)
        if self.vector:
            cols.append(self.vector)
        return cols


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def label_kind(t: pa.DataType) -> str | None:
    """The label map's kind for a label column of type ``t``: floats are read as ints (their
    values must be whole, as scikit-learn's ``type_of_target`` requires)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


def resolve_columns(schema: pa.Schema, spec: DataSpec, where: str = "") -> Columns:
    """Check that the named columns exist and have usable types.

    Raises:
        ValueError: naming the column, its type, the columns that exist and how to fix it.
    """
    names = list(schema.names)
    at = f" in {where}" if where else ""

    def need(col: str, key: str) -> pa.DataType:
        if col not in names:
            hint = ""
            if "," in col and all(c.strip() in names for c in col.split(",")):
                hint = f"; for a list of columns write {key}=[{col}] (quoted in a shell)"
            raise ValueError(f"{key} {col!r} is not a column{at}; the columns are: {names}{hint}")
        return schema.field(col).type

    lt = need(spec.label, "data.label")
    if pa.types.is_null(lt):
        raise ValueError(
            f"data.label {spec.label!r} has no values{at} (no rows, or every row blank); "
            "give a file with labelled rows"
        )
    if label_kind(lt) is None:
        raise ValueError(
            f"data.label {spec.label!r} has type {lt}{at}; labels must be int, string, bool or "
            "float with whole values (cast the column to one of these)"
        )
    text = None
    if spec.text is not None:
        tt = need(spec.text, "data.text")
        if not (pa.types.is_string(tt) or pa.types.is_large_string(tt)):
            raise ValueError(f"data.text {spec.text!r} has type {tt}; it must be a string column")
        text = spec.text
    features: tuple[str, ...] = ()
    vector = None
    one = spec.features
    if isinstance(one, (list, tuple)) and len(one) == 1:
        one = one[0]  # [col] is the same as col: a numeric column or one list column
    if isinstance(one, str):
        ft = need(one, "data.features")
        if (pa.types.is_fixed_size_list(ft) or pa.types.is_list(ft)) and _numeric(ft.value_type):
            vector = one
        elif _numeric(ft):
            features = (one,)
        else:
            raise ValueError(
                f"data.features {one!r} has type {ft}; one feature column must be a "
                "(fixed-size) list of numbers, or give a list of numeric columns"
            )
    elif spec.features is not None:
        bad = [f"{c} ({need(c, 'data.features')})" for c in spec.features]
        bad = [b for c, b in zip(spec.features, bad) if not _numeric(schema.field(c).type)]
        if bad:
            raise ValueError(f"data.features must be numeric columns; not numeric: {bad}")
        features = tuple(spec.features)
    id_col = None
    if spec.id is not None:
        need(spec.id, "data.id")
        id_col = spec.id
    return Columns(spec.label, text, features, vector, id_col, tuple(names))


# --------------------------------------------------------------------------------------------
# the label map


def label_key(value: Any) -> str:
    """The label as a JSON object key (``stats.json`` counts and weights use it)."""
    return str(value)


@dataclass(frozen=True)
class LabelMap:
    """Sorted labels <-> 0..K-1. Saved as ``label_map.json`` next to every artifact."""

    column: str
    kind: str  # "int" | "string" | "bool"
    labels: tuple[Any, ...]

    @classmethod
    def from_values(cls, column: str, kind: str, values: Sequence[Any]) -> LabelMap:
        return cls(column, kind, tuple(sorted(values)))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def keys(self) -> list[str]:
        return [label_key(v) for v in self.labels]

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LabelMap:
        return cls(obj["column"], obj["kind"], tuple(obj["labels"]))

    def arrow_values(self) -> pa.Array:
        t = {"int": pa.int64(), "string": pa.string(), "bool": pa.bool_()}[self.kind]
        return pa.array(self.labels, type=t)

    def encode(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Labels -> int64 indices. Raises ValueError naming labels that are not in the map."""
        column = normalize_labels(column)
        idx = pc.index_in(column, value_set=self.arrow_values())
        if idx.null_count:
            unknown = pc.unique(pc.filter(column, pc.is_null(idx))).to_pylist()
            shown = sorted(unknown, key=lambda v: (v is None, str(v)))[:10]
            raise ValueError(
                f"labels {shown} in column {self.column!r} are not in the label map "
                f"({len(self.labels)} labels: {list(self.labels)[:10]}"
                f"{' ...' if len(self.labels) > 10 else ''}); they were not seen when the map "
                "was made — rebuild it from data that holds every class"
            )
        return idx.to_numpy(zero_copy_only=False).astype(np.int64)


def normalize_labels(
    column: pa.Array | pa.ChunkedArray, name: str = "label", where: str = ""
) -> pa.Array | pa.ChunkedArray:
    """One type per label kind: int64, string or bool (dictionary columns decoded). Floats with
    whole values become int64 (``1.0`` is class ``1``); blank strings are null labels.

    Raises:
        ValueError: a float label that is not whole (NaN and inf included), naming it.
    """
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = t.value_type
    if pa.types.is_floating(t):
        return _whole_labels(column, name, where)
    if pa.types.is_integer(t) and t != pa.int64():
        return column.cast(pa.int64())
    if pa.types.is_large_string(t):
        column = column.cast(pa.string())
        t = pa.string()
    if pa.types.is_string(t):
        blank = pc.equal(pc.utf8_trim_whitespace(column), "")
        if pc.any(blank).as_py():
            return pc.if_else(blank, pa.scalar(None, pa.string()), column)
    return column


def _whole_labels(column, name: str, where: str):
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    present = ~np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
    bad = present & ~(np.isfinite(values) & (np.floor(values) == values))
    if bad.any():
        at = f" in {where}" if where else ""
        example = values[bad][:3].tolist()
        raise ValueError(
            f"data.label {name!r}{at} has {int(bad.sum())} value(s) that are not whole numbers "
            f"(e.g. {example}); labels are classes: a float label column must hold whole "
            "values (1.0 is class 1). Round, bin or cast the column to int or string first"
        )
    out = np.where(present, values, 0).astype(np.int64)
    return pa.array(out, type=pa.int64(), mask=~present)


# --------------------------------------------------------------------------------------------
# fragments and passes


@dataclass(frozen=True)
class Fragment:
    """A file, or some row groups of a Parquet file: the unit of work of a pass."""

    path: str
    row_groups: tuple[int, ...] | None = None


def fragments(source: Source, target: int) -> list[Fragment]:
    """Files as fragments; a few large Parquet files are cut into row groups for parallelism."""
    if source.format != "parquet" or len(source.files) >= target:
        return [Fragment(f) for f in source.files]
    out: list[Fragment] = []
    per_file = math.ceil(target / len(source.files))
    for f in source.files:
        try:
            n = pq.ParquetFile(f, filesystem=source.filesystem).metadata.num_row_groups
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(
                f"cannot read {f} as parquet: {e} (a corrupt or truncated file: replace or "
                "remove it)"
            ) from None
        groups = np.array_split(np.arange(n), min(per_file, max(n, 1)))
        out += [Fragment(f, tuple(int(g) for g in gs)) for gs in groups if len(gs)]
    return out


READ_RETRIES = 3  # a read that fails with an I/O error is retried this often, then reported
RETRY_BACKOFF_S = 0.2  # doubled at each retry


def iter_fragment(
    source: Source,
    fragment: Fragment,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Stream one fragment as tables of at most ``batch_rows`` rows (``columns`` only).

    ``schema`` (the first file's) fixes CSV/JSON type inference so every file reads alike.
    A transient I/O error (``OSError``: a dropped connection, a busy object store) reopens the
    fragment and goes on after the batches already given, up to ``READ_RETRIES`` times; a file
    that cannot be parsed (or keeps failing) raises ``ValueError`` naming it.
    """
    done, failures = 0, 0
    while True:
        try:
            for i, table in enumerate(
                _read_fragment(source, fragment, columns, schema, batch_rows)
            ):
                if i >= done:
                    done += 1
                    yield table
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"cannot read {fragment.path} as {source.format}: {e}") from None
        except OSError as e:
            failures += 1
            if failures > READ_RETRIES:
                raise ValueError(
                    f"cannot read {fragment.path} as {source.format}: {e} (failed {failures} times)"
                ) from None
            time.sleep(RETRY_BACKOFF_S * 2 ** (failures - 1))


def _read_fragment(
    source: Source,
    fragment: Fragment,
    columns: Sequence[str] | None,
    schema: pa.Schema | None,
    batch_rows: int,
) -> Iterator[pa.Table]:
    fs = source.filesystem
    cols = list(columns) if columns is not None else None
    if source.format == "parquet":
        pf = pq.ParquetFile(fragment.path, filesystem=fs)
        for b in pf.iter_batches(
            batch_size=batch_rows, row_groups=fragment.row_groups, columns=cols
        ):
            yield pa.Table.from_batches([b])
        return
    with fs.open_input_stream(fragment.path) as f:
        if source.format == "csv":
            conv = (
                pacsv.ConvertOptions(column_types=schema, include_columns=cols)
                if schema is not None
                else pacsv.ConvertOptions(include_columns=cols)
            )
            reader = pacsv.open_csv(f, convert_options=conv)
        else:
            parse = pajson.ParseOptions(explicit_schema=schema) if schema is not None else None
            reader = pajson.open_json(f, parse_options=parse)
        for b in reader:
            t = pa.Table.from_batches([b])
            if cols is not None and source.format == "jsonl":
                t = t.select(cols)
            for off in range(0, t.num_rows, batch_rows):
                yield t.slice(off, batch_rows)


# What the data tasks started inside ``fractional_tasks`` ask for (outside it: one CPU each).
# Inside a search the CPU kept free for them (``engine.tune.trial_resources``) can lie in pieces
# on several nodes — two 1-CPU nodes each holding a trial at half a CPU, or the workers of one
# trial on one node and its trial actor's sliver on the other: a task asking a whole CPU then
# never starts, and every trial waits on its reads forever.
DATA_TASK_CPUS = 0.25
_TASK_CPUS: ContextVar[float | None] = ContextVar("raybalance_task_cpus", default=None)


@contextmanager
def fractional_tasks(cpus: float = DATA_TASK_CPUS) -> Iterator[None]:
    """Within it, the reads, preprocessing and fragment tasks this thread starts ask for
    ``cpus`` each instead of a whole CPU."""
    token = _TASK_CPUS.set(cpus)
    try:
        yield
    finally:
        _TASK_CPUS.reset(token)


def data_task_cpus(explicit: float | None = None) -> float | None:
    """The CPUs a data task asks for: ``explicit``, else ``fractional_tasks``'s, else None
    (Ray's default: one)."""
    return explicit if explicit is not None else _TASK_CPUS.get()


def task_args(explicit: float | None = None) -> dict[str, float]:
    """``map_batches`` arguments for ``data_task_cpus(explicit)``: {} for Ray's default."""
    cpus = data_task_cpus(explicit)
    return {} if cpus is None else {"num_cpus": cpus}


def call_with_task_cpus(cpus: float | None, fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """``fn(*args, **kwargs)`` with its data tasks asking for ``cpus`` each: for a Ray task of
    its own, since ``fractional_tasks`` holds in one thread of one process."""
    if cpus is None:
        return fn(*args, **kwargs)
    with fractional_tasks(cpus):
        return fn(*args, **kwargs)


def _apply(task: Callable[[Source, list[Fragment]], Any], source: Source, frags: list[Fragment]):
    return task(source, frags)


def run_fragments(
    source: Source,
    task: Callable[[Source, list[Fragment]], Any],
    *,
    description: str,
    tasks_per_cpu: int = 2,
) -> list[Any]:
    """Run ``task(source, fragments)`` as Ray tasks over groups of fragments; return the results.

    Results come back in submission order, so a reduction over them does not depend on timing.
    Failed tasks are retried by Ray; tasks must therefore be idempotent (passes that write use
    content-derived file names).
    """
    import ray

    from engine.progress import progress_bar

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    frags = fragments(source, target=cpus * tasks_per_cpu)
    n_tasks = min(len(frags), cpus * tasks_per_cpu)
    groups = [frags[i::n_tasks] for i in range(n_tasks)]
    # "DEFAULT": never inside a placement group that captures child tasks (a Tune trial's
    # 0.01-CPU bundle would refuse these 1-CPU tasks); the cluster's CPUs serve them.
    cpus_each = data_task_cpus() or 1
    remote = ray.remote(num_cpus=cpus_each, max_retries=3, scheduling_strategy="DEFAULT")(_apply)
    task_ref = ray.put(task)
    refs = [remote.remote(task_ref, source, g) for g in groups]
    index = {r: i for i, r in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with progress_bar(description, total=len(refs)) as advance:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                try:
                    results[index[r]] = ray.get(r)
                except ray.exceptions.RayTaskError as e:
                    # A user-facing error inside a task: raise it as itself, without the
                    # remote traceback, so that the message reads as if raised here.
                    if isinstance(e.cause, (ValueError, TypeError)):
                        for other in pending:
                            ray.cancel(other)
                        raise e.cause from None
                    raise
                advance(1)
    return results


ROW = "_raybalance_row"  # a row's place: source << SOURCE_SHIFT | fragment << ROW_BITS | row
ROW_BITS = 40
SOURCE_SHIFT = 56  # 2**16 fragments per source at most (there are 2 per cluster CPU)


def read_dataset(
    source: Source,
    columns: Sequence[str] | None = None,
    *,
    ordered: bool = False,
    task_cpus: float | None = None,
):
    """The files as a Ray Dataset (training and inference stream from it).

    ``ordered``: every row carries its place in the source in the int64 column ``ROW``
    (fragment index << ``ROW_BITS`` | row within the fragment; fragments in file order), so
    order is a property of the data, not of the scheduler: ``in_source_order`` sorts a
    collected table by it and ``write_in_source_order`` writes files whose names sort in it.
    (Ray Data keeps no read order under load, even with ``preserve_order``.)

    ``task_cpus``: the CPUs each read task asks for (default: ``fractional_tasks``'s, else
    Ray Data's one), for reads that run while other work holds parts of every node's CPUs.
    Such a read goes through the engine's own fragment reads: Ray Data's file listing runs as
    a task of one whole CPU whatever its reads are given.
    """
    import ray

    task_cpus = data_task_cpus(task_cpus)
    cols = list(columns) if columns is not None else None
    if ordered or task_cpus is not None:
        return _fragment_reads([source], cols, task_cpus, places=ordered)
    files = list(source.files)
    fs = source.filesystem
    if source.format == "parquet":
        ds = ray.data.read_parquet(files, filesystem=fs)
    elif source.format == "csv":
        ds = ray.data.read_csv(files, filesystem=fs)
    else:
        ds = ray.data.read_json(files, filesystem=fs)  # pyarrow reads newline-delimited JSON
    return ds.select_columns(cols) if cols is not None else ds


def ordered_fragments(source: Source) -> list[Fragment]:
    """The fragments of an ordered read, in source order (two per cluster CPU at most)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    frags = fragments(source, target=2 * cpus)
    if len(frags) >= 1 << (SOURCE_SHIFT - ROW_BITS):
        raise ValueError(f"{source.path}: {len(frags)} fragments are too many for an ordered read")
    return frags


def read_ordered(sources: Sequence[Source], columns: list[str] | None = None):
    """One Ray Dataset of the rows of several sources (with the same columns), each row with
    its place in ``ROW``: the source's index in ``sources`` << ``SOURCE_SHIFT`` | its place
    in that source. One pipeline (one actor pool downstream) serves them all, and
    ``write_sources_in_order`` writes each source's rows back to its own folder."""
    return _fragment_reads(sources, columns, data_task_cpus(), places=True)


def _fragment_reads(
    sources: Sequence[Source], columns: list[str] | None, task_cpus: float | None, places: bool
):
    """The rows of ``sources`` read by one Ray task per fragment (``ordered_fragments``), each
    with its place in ``ROW`` when ``places``."""
    import ray

    plan = [(s, ordered_fragments(s)) for s in sources]
    schemas = [read_schema(s) if s.format != "parquet" else None for s in sources]
    items = [{"source": i, "fragment": j} for i, (_, fr) in enumerate(plan) for j in range(len(fr))]
    kwargs = {"plan": plan, "columns": columns, "schemas": schemas, "places": places}
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _read_fragments,
        fn_kwargs=kwargs,
        batch_size=1,
        batch_format="pyarrow",
        **task_args(task_cpus),
    )


def _read_fragments(
    batch: pa.Table,
    plan: list[tuple[Source, list[Fragment]]],
    columns: list[str] | None,
    schemas: list[pa.Schema | None],
    places: bool = True,
) -> Iterator[pa.Table]:
    for i, j in zip(batch.column("source").to_pylist(), batch.column("fragment").to_pylist()):
        source, frags = plan[i]
        start = i << SOURCE_SHIFT | j << ROW_BITS
        for table in iter_fragment(source, frags[j], columns, schemas[i]):
            if not places:
                yield table
                continue
            rows = np.arange(start, start + table.num_rows, dtype=np.int64)
            start += table.num_rows
            yield table.append_column(ROW, pa.array(rows))


def in_source_order(table: pa.Table) -> pa.Table:
    """Rows of an ``ordered`` read (collected in any order) in source order, without ``ROW``."""
    if ROW not in table.column_names:
        return table
    return table.sort_by(ROW).drop_columns([ROW])


def write_in_source_order(ds, fs: pafs.FileSystem, folder: str, source: Source) -> int:
    """Write the rows of an ``ordered`` read of ``source`` as Parquet files under ``folder``
    (created) whose names sort in source order (``part-<first row's place>.parquet``); returns
    the row count.

    A distributed sort by ``ROW``, cut at the first place of every fragment, gives one
    contiguous range per fragment; each is written under its first place, so neither the
    scheduler nor retries can reorder the output, and a rerun writes the same names.
    """
    return write_sources_in_order(ds, fs, [folder], [source])[0]


def write_sources_in_order(
    ds, fs: pafs.FileSystem, folders: Sequence[str], sources: Sequence[Source]
) -> list[int]:
    """``write_in_source_order`` for the rows of ``read_ordered(sources)``: source ``i``'s rows
    go to ``folders[i]``; returns the row count of each."""
    for folder in folders:
        fs.create_dir(folder, recursive=True)
    cuts = [
        i << SOURCE_SHIFT | j << ROW_BITS
        for i, s in enumerate(sources)
        for j in range(len(ordered_fragments(s)))
    ][1:]
    written = ds.sort(ROW, boundaries=cuts or None).map_batches(
        _write_range,
        fn_kwargs={"fs": fs, "folders": list(folders)},
        batch_size=None,
        batch_format="pyarrow",
    )
    rows = [0] * len(folders)
    for r in written.take_all():
        rows[int(r["source"])] += int(r["rows"])
    return rows


def _write_range(table: pa.Table, fs: pafs.FileSystem, folders: list[str]) -> pa.Table:
    if table.num_rows == 0:
        return pa.table({"source": pa.array([], pa.int64()), "rows": pa.array([], pa.int64())})
    table = table.sort_by(ROW)
    first = table.column(ROW)[0].as_py()
    source, place = first >> SOURCE_SHIFT, first & ((1 << SOURCE_SHIFT) - 1)
    path = f"{folders[source]}/part-{place:020d}.parquet"
    pq.write_table(table.drop_columns([ROW]), path, filesystem=fs)
    return pa.table({"source": [source], "rows": [table.num_rows]})
