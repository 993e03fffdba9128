# ruff: noqa: E501  (the table of cases reads best one case per line)
"""Bad input, as a new user meets it: every case of the README's "Data checks" exits 2 with a
message naming the file / column / value, leaves the run folder absent (or unchanged), and the
corrected command then runs in the same folder without ``--overwrite``.

The cases that need no data pass run as subprocesses whose ``RAY_ADDRESS`` points where no Ray
listens: a command that started Ray before checking would fail on the connection instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from jobs import cli

ROOT = Path(__file__).parent.parent
N = 60  # rows of the good table: classes 0/1/2 with 30/20/10 rows


def _good() -> dict[str, list]:
    rng = np.random.default_rng(0)
    labels = [0] * 30 + [1] * 20 + [2] * 10
    return {
        "text": [f"row {i} about class {y}" for i, y in enumerate(labels)],
        "label": labels,
        "f0": rng.normal(size=N).tolist(),
        "f1": rng.normal(size=N).tolist(),
        "when": [np.datetime64("2026-01-01", "s")] * N,
        "vec": [[float(i % 7), 1.0] for i in range(N)],  # one fixed-length feature vector
    }


def _write(folder: Path, cols: dict[str, list], fmt: str = "parquet", name: str = "data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(_good()).slice(0, 0) if fmt == "empty" else pa.table(cols)
    if fmt == "csv":
        pacsv.write_csv(table, folder / f"{name}.csv")
    elif fmt == "empty":
        pq.write_table(table, folder / f"{name}.parquet")
    else:
        pq.write_table(table, folder / f"{name}.parquet")
    return folder


def _header_only(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text("text,label,f0,f1\n")
    return folder


def _truncated(folder: Path) -> Path:
    _write(folder, {k: v for k, v in _good().items() if k != "when"})
    path = folder / "data.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    return folder


def _mixed_types(folder: Path) -> Path:
    g = {k: v for k, v in _good().items() if k != "when"}
    _write(folder, g, name="a")
    _write(folder, {**g, "label": [str(v) for v in g["label"]]}, name="b")
    return folder


def _with(**changes):
    def build(folder: Path) -> Path:
        cols = {**_good(), **changes}
        fmt = cols.pop("_fmt", "parquet")
        if fmt == "csv":  # CSV holds neither dates as such nor lists
            cols.pop("when")
            cols.pop("vec")
        return _write(folder, cols, fmt)

    return build


def _nan_features() -> list[float]:
    f = _good()["f0"]
    f[3] = float("nan")
    return f


# (case, data builder, --set overrides, the message's parts, checked before Ray starts)
CASES = [
    ("missing path", None, [], ["does not exist"], True),
    ("missing label column", _with(), ["data.label=nope"], ["'nope' is not a column", "data.parquet", "'label'"], True),
    ("missing text column", _with(), ["data.text=body"], ["data.text 'body' is not a column"], True),
    ("label of a date type", _with(), ["data.label=when"], ["data.label 'when' has type timestamp", "data.parquet"], True),
    ("header-only CSV", _header_only, [], ["data.label 'label' has no values", "data.csv"], True),
    ("empty Parquet", lambda d: _write(d, {}, "empty"), [], ["holds no rows"], True),
    ("non-numeric features", _with(), ["data.text=null", "data.features=[f0,text]", "model.kind=mlp"], ["not numeric", "text (string)"], True),
    ("features as one string", _with(), ["data.text=null", "data.features=f0,f1", "model.kind=mlp"], ["'f0,f1' is not a column", "data.features=[f0,f1]"], True),
    ("lexical on features", _with(), ["data.text=null", "data.features=[f0,f1]", "model.kind=lexical"], ["model.kind=lexical reads a text column"], True),
    ("labels that are not whole", _with(label=[0.5] + [float(v) for v in _good()["label"][1:]]), [], ["'label'", "not whole numbers", "0.5"], False),
    ("blank labels in a CSV", _with(label=[None, None] + _good()["label"][2:], _fmt="csv"), [], ["2 of 60 rows have a null (blank) label", "'label'"], False),
    ("a single class", _with(label=[1] * N), [], ["holds a single class", "'label'"], False),
    ("NaN features", _with(f0=_nan_features()), ["data.text=null", "data.features=[f0,f1]", "model.kind=mlp"], ["1 of 60 rows have NaN", "f0: 1"], False),
    ("null texts", _with(text=[None] + _good()["text"][1:]), [], ["1 of 60 rows have a null text", "'text'"], False),
    ("ragged feature vectors", _with(vec=[[0.5, 1.0]] * 59 + [[0.5]]), ["data.text=null", "data.features=vec", "model.kind=mlp"], ["feature vectors in 'vec' have different lengths", "[1, 2]"], False),
    ("label types differ across files", _mixed_types, [], ["different types across files"], False),
    ("a truncated file", _truncated, [], ["data.parquet"], False),
]  # fmt: skip


def _args(data: Path, run: Path, sets: list[str]) -> list[str]:
    base = [f"data.path={data}", "data.label=label", "data.text=text", f"run_dir={run}"]
    base += ["name=bad", "split.val=0.2", "split.test=0.2", *sets]
    return ["prepare", *(a for s in base for a in ("--set", s))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "case, build, sets, parts", [c[:4] for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]]
)
def test_cheap_checks_refuse_bad_input_before_ray(tmp_path, case, build, sets, parts):
    data = build(tmp_path / "data") if build else tmp_path / "missing"
    run = tmp_path / "runs" / "bad"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    cmd = [sys.executable, "-m", "jobs.cli", *_args(data, run, sets)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    for part in parts:
        assert part in proc.stderr, (part, proc.stderr)
    assert "Ray" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing written, not even the parent


@pytest.mark.parametrize(
    "case, build, sets, parts",
    [c[:4] for c in CASES if not c[4]],
    ids=[c[0] for c in CASES if not c[4]],
)
def test_data_checks_leave_nothing_and_the_fix_runs(ray_local, tmp_path, capsys, case, build, sets, parts):  # fmt: skip
    run = tmp_path / "runs" / "bad"
    assert cli.main(_args(build(tmp_path / "data"), run, sets)) == 2
    err = capsys.readouterr().err
    for part in parts:
        assert part in err, (part, err)
    assert not (tmp_path / "runs").exists()
    # the corrected data in the same folder: no --overwrite needed
    fixed = _with()(tmp_path / "fixed")
    assert cli.main(_args(fixed, run, sets)) == 0, capsys.readouterr().err
    assert (run / "stats.json").exists() and (run / "logs").is_dir()


def test_a_failed_rerun_leaves_a_prepared_folder_unchanged(ray_local, tmp_path, capsys):
    data = _with()(tmp_path / "data")
    run = tmp_path / "run"
    assert cli.main(_args(data, run, [])) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    labels = [None, None] + _good()["label"][2:]
    pq.write_table(pa.table({**_good(), "label": labels}), data / "data.parquet")
    assert cli.main(_args(data, run, [])) == 2
    assert "2 of 60 rows have a null (blank) label" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_missing_config_file_names_it(tmp_path, capsys):
    assert cli.main(["prepare", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"nope.yaml: config file not found ({tmp_path / 'nope.yaml'})" in err
    assert ": :" not in err


def test_whole_number_float_labels_are_classes(ray_local, tmp_path):
    import json

    labels = [float(v) for v in _good()["label"]]
    data = _with(label=labels, _fmt="csv")(tmp_path / "data")
    run = tmp_path / "run"
    assert cli.main(_args(data, run, [])) == 0
    stats = json.loads((run / "stats.json").read_text())
    assert stats["labels"] == [0, 1, 2] and stats["counts"] == {"0": 30, "1": 20, "2": 10}
    assert json.loads((run / "label_map.json").read_text())["kind"] == "int"


def test_blank_labels_can_be_dropped_and_are_counted(ray_local, tmp_path):
    import json

    labels = ["a"] * 30 + ["b"] * 20 + ["c"] * 8 + ["", "  "]
    data = _with(label=labels)(tmp_path / "data")
    run = tmp_path / "run"
    assert cli.main(_args(data, run, ["data.drop_null_labels=true"])) == 0
    stats = json.loads((run / "stats.json").read_text())
    assert stats["counts"] == {"a": 30, "b": 20, "c": 8} and stats["null_labels_dropped"] == 2


def test_labels_differing_in_case_or_spaces_are_warned(ray_local, tmp_path, capsys):
    labels = ["text block"] * 30 + [" text block"] * 10 + ["Text Block"] * 10 + ["image"] * 10
    data = _with(label=labels)(tmp_path / "data")
    assert cli.main(_args(data, tmp_path / "run", [])) == 0
    err = capsys.readouterr().err
    assert "labels ' text block', 'Text Block', 'text block' differ only in case" in err
    assert "are 3 classes (10, 10, 30 rows)" in err


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_truncated_input_stops_train_and_run_before_any_worker(
    ray_local, tmp_path, capsys, command
):
    """The input is checked by prepare's stats pass before training: no Train worker group, no
    placement group, no run folder."""
    import ray

    before = set(ray.util.placement_group_table())
    data = _truncated(tmp_path / "data")
    args = _args(data, tmp_path / "runs" / "bad", [])
    assert cli.main([command, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert str(data / "data.parquet") in err
    assert set(ray.util.placement_group_table()) == before
    assert not (tmp_path / "runs").exists()
