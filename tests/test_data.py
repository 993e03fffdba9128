"""The data layer: sources, column checks, the label map, and every bad-input message."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from engine.config import DataSpec
from engine.data import (
    ROW,
    LabelMap,
    call_with_task_cpus,
    data_task_cpus,
    fractional_tasks,
    in_source_order,
    iter_fragment,
    read_dataset,
    read_schema,
    resolve_columns,
    resolve_source,
    run_fragments,
    write_in_source_order,
)
from engine.stats import compute_stats


def _parquet(path, **cols) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return str(path)


def _stats(path, **data):
    spec = DataSpec(path=str(path), **data)
    return compute_stats(resolve_source(spec.path, spec.format), spec)


# --------------------------------------------------------------------------------------------
# sources


def test_file_folder_glob_and_uri_resolve_to_the_same_files(tmp_path):
    for i in range(3):
        _parquet(tmp_path / "d" / f"part-{i}.parquet", label=[0, 1])
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".hidden.parquet").write_text("junk")
    folder = resolve_source(str(tmp_path / "d"))
    glob_ = resolve_source(str(tmp_path / "d" / "part-*.parquet"))
    uri = resolve_source(f"file://{tmp_path}/d")
    assert folder.files == glob_.files == uri.files and len(folder.files) == 3
    assert folder.format == "parquet"
    one = resolve_source(str(tmp_path / "d" / "part-0.parquet"))
    assert len(one.files) == 1


def test_source_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="data.path is not set"):
        resolve_source(None)
    with pytest.raises(ValueError, match=r"nope' does not exist"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="the glob matches no files"):
        resolve_source(str(tmp_path / "*.parquet"))
    (tmp_path / "m").mkdir()
    _parquet(tmp_path / "m" / "a.parquet", label=[0])
    pacsv.write_csv(pa.table({"label": [1]}), tmp_path / "m" / "b.csv")
    with pytest.raises(ValueError, match=r"mixes formats \['csv', 'parquet'\]"):
        resolve_source(str(tmp_path / "m"))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="no .parquet, .csv or .jsonl files found"):
        resolve_source(str(tmp_path / "t"))


def test_csv_and_jsonl_read_alike(ray_local, tmp_path):
    table = pa.table({"label": ["b", "a", "b", "c"], "text": ["x", "y", "z", "w"]})
    pacsv.write_csv(table, tmp_path / "d.csv")
    with open(tmp_path / "d.jsonl", "w") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")
    for name in ("d.csv", "d.jsonl"):
        res = _stats(tmp_path / name, label="label", text="text")
        assert res.stats.label_map.labels == ("a", "b", "c")
        assert res.stats.counts == (1, 2, 1)
        assert read_dataset(resolve_source(str(tmp_path / name))).count() == 4
    pq.write_table(table, tmp_path / "d.parquet")
    ds = read_dataset(resolve_source(str(tmp_path / "d.parquet")), columns=["text"])
    assert ds.schema().names == ["text"] and ds.count() == 4


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_order_is_a_property_of_the_rows_whatever_the_scheduler_does(ray_local, tmp_path, fmt):
    # three files (one cut into row groups, so fragments split a file), then a full random
    # shuffle: no scheduler can give a worse order than that
    ids = np.random.default_rng(0).permutation(1_000)
    cuts = [(0, 300), (300, 900), (900, 1000)]
    for name, (lo, hi) in zip("abc", cuts):
        table = pa.table({"id": ids[lo:hi], "x": ids[lo:hi] * 0.5})
        if fmt == "parquet":
            pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=70)
        else:
            pacsv.write_csv(table, tmp_path / f"{name}.csv")
    source = resolve_source(str(tmp_path))
    for seed in range(3):
        ds = read_dataset(source, columns=["id"], ordered=True).random_shuffle(seed=seed)
        rows = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))
        assert rows.column("id").to_pylist() != ids.tolist()  # the shuffle did reorder
        assert rows.column_names == ["id", ROW]
        assert in_source_order(rows).column("id").to_pylist() == ids.tolist()
    out = tmp_path / "out"
    ds = read_dataset(source, ordered=True).random_shuffle(seed=7)
    assert write_in_source_order(ds, pafs.LocalFileSystem(), str(out), source) == len(ids)
    got = pq.read_table(out)
    assert got.column_names == ["id", "x"]  # the place column is not written
    assert got.column("id").to_pylist() == ids.tolist()
    assert len(list(out.iterdir())) > 1  # several ranges, named so that they sort in order


def test_an_unordered_read_has_no_place_column(ray_local, tmp_path):
    pq.write_table(pa.table({"id": [1, 2, 3]}), tmp_path / "a.parquet")
    ds = read_dataset(resolve_source(str(tmp_path)))
    assert ds.schema().names == ["id"]


def test_fractional_data_tasks_run_where_no_whole_cpu_is_free(ray_local, tmp_path):
    # an actor holds 1.8 of the 2 CPUs, as trials holding parts of every node's CPUs do: a task
    # asking a whole CPU (Ray Data's file listing and reads, a fragment task) would wait
    # forever; inside fractional_tasks (and in a task run by call_with_task_cpus) they run
    import ray

    def _row_count(source, frags) -> int:  # local: sent to the tasks by value
        return sum(t.num_rows for f in frags for t in iter_fragment(source, f))

    ids = np.arange(500)
    for name, part in zip("ab", np.array_split(ids, 2)):
        pq.write_table(pa.table({"id": part, "x": part * 2.0}), tmp_path / f"{name}.parquet")
    source = resolve_source(str(tmp_path))

    @ray.remote(num_cpus=1.8)
    class Holder:
        def ready(self) -> bool:
            return True

    @ray.remote(num_cpus=0)
    def reads(cpus: float) -> tuple[pa.Table, pa.Table, int, float | None]:
        plain = read_dataset(source, columns=["id"], task_cpus=cpus)
        with fractional_tasks(cpus):
            ordered = read_dataset(source, columns=["id"], ordered=True)
            counted = sum(run_fragments(source, _row_count, description="rows"))
        return (
            pa.concat_tables(plain.iter_batches(batch_format="pyarrow", batch_size=None)),
            pa.concat_tables(ordered.iter_batches(batch_format="pyarrow", batch_size=None)),
            counted,
            data_task_cpus(),  # none outside the block
        )

    def count_in_task() -> int:
        return sum(run_fragments(source, _row_count, description="rows"))

    holder = Holder.remote()
    try:
        assert ray.get(holder.ready.remote(), timeout=60)
        plain, ordered, counted, after = ray.get(reads.remote(0.1), timeout=120)
        task = ray.remote(num_cpus=0)(call_with_task_cpus)
        in_task = ray.get(task.remote(0.1, count_in_task), timeout=120)
    finally:
        ray.kill(holder)
    assert plain.column_names == ["id"]  # no places unless asked
    assert sorted(plain.column("id").to_pylist()) == ids.tolist()
    assert in_source_order(ordered).column("id").to_pylist() == ids.tolist()
    assert counted == in_task == len(ids) and after is None


# --------------------------------------------------------------------------------------------
# columns and types


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = _parquet(tmp_path / "a.parquet", y=[0, 1], text=["a", "b"])
    schema = read_schema(resolve_source(path))
    with pytest.raises(
        ValueError, match=r"data.label 'label' is not a column; the columns are: \['y', 'text'\]"
    ):
        resolve_columns(schema, DataSpec(label="label"))
    with pytest.raises(ValueError, match=r"data.features 'f9' is not a column"):
        resolve_columns(schema, DataSpec(label="y", features=["f9"]))


def test_column_types_are_checked(tmp_path):
    path = _parquet(
        tmp_path / "a.parquet",
        fl=[0.5, 1.5],
        y=[0, 1],
        n=[1, 2],
        s=["a", "b"],
        vec=pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2)),
    )
    schema = read_schema(resolve_source(path))
    with pytest.raises(ValueError, match="labels must be int, string, bool or float with whole"):
        resolve_columns(schema, DataSpec(label="vec"))
    assert resolve_columns(schema, DataSpec(label="fl")).label == "fl"  # checked on read
    with pytest.raises(ValueError, match="it must be a string column"):
        resolve_columns(schema, DataSpec(label="y", text="n"))
    with pytest.raises(
        ValueError, match=r"must be numeric columns; not numeric: \['s \(string\)'\]"
    ):
        resolve_columns(schema, DataSpec(label="y", features=["n", "s"]))
    cols = resolve_columns(schema, DataSpec(label="y", features="vec"))
    assert cols.vector == "vec" and cols.features == ()
    cols = resolve_columns(schema, DataSpec(label="y", features=["n", "fl"]))
    assert cols.features == ("n", "fl")


@pytest.mark.parametrize(
    "labels, kind, expected",
    [
        ([3, 1, 2, 1], "int", (1, 2, 3)),
        (["b", "a", "b"], "string", ("a", "b")),
        ([True, False, True], "bool", (False, True)),
    ],
)
def test_label_kinds_and_sorted_label_map(ray_local, tmp_path, labels, kind, expected):
    path = _parquet(tmp_path / "a.parquet", label=labels)
    res = _stats(path, label="label")
    lm = res.stats.label_map
    assert lm.kind == kind and lm.labels == expected
    assert LabelMap.from_json(json.loads(json.dumps(lm.to_json()))) == lm
    codes = lm.encode(pa.array(labels))
    assert [expected[c] for c in codes] == labels


def test_small_int_and_dictionary_labels_are_normalized():
    lm = LabelMap.from_values("y", "string", ["a", "b"])
    dict_col = pa.array(["b", "a", "b"]).dictionary_encode()
    assert lm.encode(dict_col).tolist() == [1, 0, 1]
    ints = LabelMap.from_values("y", "int", [5, 7])
    assert ints.encode(pa.array([7, 5], pa.int8())).tolist() == [1, 0]


def test_a_label_not_in_the_map_is_an_error_naming_it():
    lm = LabelMap.from_values("y", "string", ["ham", "spam"])
    with pytest.raises(ValueError, match=r"labels \['eggs', 'toast'\] in column 'y' are not in"):
        lm.encode(pa.array(["ham", "toast", "eggs", "toast"]))


# --------------------------------------------------------------------------------------------
# content checks of the validation pass


def test_empty_input(ray_local, tmp_path):
    path = _parquet(tmp_path / "a.parquet", label=pa.array([], pa.int64()))
    with pytest.raises(ValueError, match="holds no rows"):
        _stats(path, label="label")


def test_one_class(ray_local, tmp_path):
    path = _parquet(tmp_path / "a.parquet", label=["x"] * 5)
    with pytest.raises(ValueError, match=r"holds a single class \('x', 5 rows\)"):
        _stats(path, label="label")


def test_null_labels_fail_unless_dropped_and_are_counted(ray_local, tmp_path):
    path = _parquet(tmp_path / "a.parquet", label=[0, None, 1, None, 1])
    with pytest.raises(
        ValueError, match=r"2 of 5 rows have a null \(blank\) label .*drop_null_labels=true"
    ):
        _stats(path, label="label")
    res = _stats(path, label="label", drop_null_labels=True)
    assert res.summary.null_labels == 2 and res.stats.counts == (1, 2)
    assert res.warnings == ["dropped 2 of 5 rows with a null 'label'"]


def test_all_labels_null(ray_local, tmp_path):
    path = _parquet(tmp_path / "a.parquet", label=pa.array([None, None], pa.int64()))
    with pytest.raises(ValueError, match="every label in column 'label' is null"):
        _stats(path, label="label", drop_null_labels=True)


def test_nan_and_inf_features_are_counted_by_row_and_column(ray_local, tmp_path):
    path = _parquet(
        tmp_path / "a.parquet",
        label=[0, 1, 0, 1],
        a=[1.0, np.nan, np.inf, 0.0],
        b=[-np.inf, None, 3.0, 4.0],
        c=[1, 2, 3, 4],
    )
    msg = r"3 of 4 rows have NaN, inf or null feature values in 2 column\(s\) \(a: 2, b: 2\)"
    with pytest.raises(ValueError, match=msg):
        _stats(path, label="label", features=["a", "b", "c"])


def test_nan_in_a_vector_column_and_ragged_vectors(ray_local, tmp_path):
    vec = pa.array([[1.0, 2.0], [np.nan, 1.0], [0.0, np.inf]], pa.list_(pa.float64(), 2))
    path = _parquet(tmp_path / "a.parquet", label=[0, 1, 1], vec=vec)
    with pytest.raises(ValueError, match=r"2 of 3 rows .*\(vec: 2\)"):
        _stats(path, label="label", features="vec")
    ragged = pa.array([[1.0, 2.0], [1.0], [0.0, 3.0]], pa.list_(pa.float64()))
    path = _parquet(tmp_path / "b.parquet", label=[0, 1, 1], vec=ragged)
    with pytest.raises(ValueError, match=r"have different lengths \(\[1, 2\]\)"):
        _stats(path, label="label", features="vec")


def test_null_text(ray_local, tmp_path):
    path = _parquet(tmp_path / "a.parquet", label=[0, 1, 1], text=["a", None, "c"])
    with pytest.raises(ValueError, match="1 of 3 rows have a null text in column 'text'"):
        _stats(path, label="label", text="text")


def test_files_with_another_label_type(ray_local, tmp_path):
    _parquet(tmp_path / "d" / "a.parquet", label=[0, 1])
    _parquet(tmp_path / "d" / "b.parquet", label=["x", "y"])
    with pytest.raises(ValueError, match=r"different types across files \(\['int', 'string'\]\)"):
        _stats(tmp_path / "d", label="label")


def test_a_file_missing_a_column(ray_local, tmp_path):
    _parquet(tmp_path / "d" / "a.parquet", label=[0, 1], text=["a", "b"])
    _parquet(tmp_path / "d" / "b.parquet", label=[0, 1])
    with pytest.raises(ValueError, match=r"b.parquet lacks columns \['text'\]"):
        _stats(tmp_path / "d", label="label", text="text")


class _Flaky(pafs.FileSystemHandler):
    """The local filesystem, whose first ``fail`` opens for reading fail with an I/O error."""

    def __init__(self, fail: int):
        self.local = pafs.LocalFileSystem()
        self.fail = fail

    def _maybe_fail(self):
        if self.fail > 0:
            self.fail -= 1
            raise OSError("connection reset by peer (injected)")

    def open_input_file(self, path):
        self._maybe_fail()
        return self.local.open_input_file(path)

    def open_input_stream(self, path):
        self._maybe_fail()
        return self.local.open_input_stream(path)

    def get_type_name(self):
        return "flaky"

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)

    def normalize_path(self, path):
        return path


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_transient_read_error_is_retried_and_no_row_is_lost_or_repeated(
    tmp_path, fmt, monkeypatch
):
    import engine.data as data

    table = pa.table({"id": np.arange(5000), "y": np.arange(5000) % 3})
    path = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=1000)
    else:
        pacsv.write_csv(table, path)
    frag = data.Fragment(str(path))

    def read(handler):
        fs = pafs.PyFileSystem(handler)
        source = data.Source(str(path), (str(path),), fmt, fs)
        schema = table.schema if fmt == "csv" else None
        got = [t for t in data.iter_fragment(source, frag, schema=schema, batch_rows=700)]
        return pa.concat_tables(got).column("id").to_pylist()

    assert read(_Flaky(fail=2)) == table.column("id").to_pylist()  # failed opens
    # a stream that breaks after three batches were given: the retry goes on after them
    real, attempts = data._read_fragment, []

    def breaks_once(*args):
        attempts.append(1)
        for i, t in enumerate(real(*args)):
            if i == 3 and len(attempts) == 1:
                raise OSError("connection reset by peer (injected)")
            yield t

    monkeypatch.setattr(data, "_read_fragment", breaks_once)
    assert read(_Flaky(fail=0)) == table.column("id").to_pylist() and len(attempts) == 2
    monkeypatch.setattr(data, "_read_fragment", real)
    with pytest.raises(ValueError, match=rf"cannot read .*t\.{fmt}.*failed 4 times"):
        read(_Flaky(fail=10))
