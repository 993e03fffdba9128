"""The jobs end to end: `raybalance datasets/stats/prepare` on real data and on real Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from engine.split import SPLITS, split_counts
from jobs import cli

ROOT = Path(__file__).parent.parent


def test_prepare_on_trec50_writes_exact_splits_stats_and_plot(ray_local, trec50, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["prepare", str(ROOT / "jobs/configs/trec50.yaml"), "--set", f"data.path={trec50}"]
    assert cli.main(args + ["--set", f"run_dir={run}"]) == 0
    printed = capsys.readouterr().out
    assert "5382 rows, 50 classes" in printed and str(run / "stats.json") in printed

    stats = json.loads((run / "stats.json").read_text())
    assert stats["rows"] == 5382 and len(stats["labels"]) == 50
    assert stats["counts"]["HUM:ind"] == 956 and stats["counts"]["NUM:ord"] == 3
    assert stats["imbalance_ratio"] == pytest.approx(956 / 3)
    assert json.loads((run / "label_map.json").read_text())["labels"] == stats["labels"]
    assert (run / "class_distribution.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "spec.yaml").exists()

    source = pads.dataset(str(trec50)).to_table()
    whole = sorted(zip(source["label"].to_pylist(), source["text"].to_pylist()))
    parts = []
    for s, name in enumerate(SPLITS):
        t = pads.dataset(str(run / "splits" / name)).to_table()
        assert t.column_names == source.column_names
        got = {}
        for lab in t["label"].to_pylist():
            got[lab] = got.get(lab, 0) + 1
        for lab, n in stats["counts"].items():
            assert got.get(lab, 0) == split_counts(n, 0.1, 0.2)[s], (name, lab)
        parts += zip(t["label"].to_pylist(), t["text"].to_pylist())
    assert sorted(parts) == whole  # a partition: nothing lost, nothing duplicated
    manifest = json.loads((run / "splits" / "_manifest.json").read_text())
    assert manifest["rows"] == {"train": 3773, "val": 539, "test": 1070}


def test_prepare_refuses_another_runs_directory(ray_local, trec50, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["prepare", "--set", f"data.path={trec50}", "--set", "data.text=text"]
    assert cli.main(base + ["--set", "name=a", "--set", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--set", "name=b", "--set", f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "holds the artifacts of run 'a'" in err and "--overwrite" in err
    # the same run again is fine (it reproduces its own artifacts) ...
    assert cli.main(base + ["--set", "name=a", "--set", f"run_dir={run}"]) == 0
    # ... and --overwrite takes the directory over
    assert cli.main(base + ["--set", "name=b", "--set", f"run_dir={run}", "--overwrite"]) == 0


def test_prepare_needs_inputs_and_a_path(capsys):
    assert cli.main(["prepare", "--set", "data.path=/nowhere"]) == 2
    assert "set data.text" in capsys.readouterr().err
    assert cli.main(["prepare", "--set", "data.text=t", "--set", "data.path=/nowhere/x"]) == 2
    assert "data.path '/nowhere/x' does not exist" in capsys.readouterr().err
    assert cli.main(["prepare", "--set", "split.val=2"]) == 2
    assert "--set: split.val: must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prepare", "run", "train", "tune"])
def test_bad_input_is_refused_before_ray_starts(tmp_path, command):
    """RAY_ADDRESS points at a port where no Ray listens: a command that started Ray first
    would fail on the connection; it must fail on the input, naming it, and quickly."""
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    cmd = [sys.executable, "-m", "jobs.cli", command, str(ROOT / "jobs/configs/digits_lt100.yaml")]
    cmd += ["--set", f"data.path={tmp_path / 'missing'}", "--set", f"run_dir={tmp_path / 'run'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"data.path '{tmp_path / 'missing'}' does not exist" in proc.stderr
    assert "Ray" not in proc.stderr and time.perf_counter() - t0 < 60
    assert not (tmp_path / "run").exists()  # nothing written


def test_stats_command_prints_the_table_and_writes_outputs(ray_local, trec50, tmp_path, capsys):
    out = tmp_path / "stats"
    assert cli.main(["stats", str(trec50), "--label", "label", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "50 classes" in printed and "HUM:ind" in printed and "effective_number" in printed
    assert json.loads((out / "stats.json").read_text())["counts"]["NUM:ord"] == 3
    assert (out / "class_distribution.png").exists()
    assert cli.main(["stats", str(trec50), "--label", "nope"]) == 2
    assert "data.label 'nope' is not a column" in capsys.readouterr().err


def test_cli_usage(capsys):
    assert cli.main([]) == 2
    assert "prepare" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["datasets", "make", "nope", "--out", "/tmp/x"]) == 2
    assert "trec50" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_as_a_job_process_on_an_embedded_ray(tmp_path):
    """`python -m jobs.prepare --config ...` in its own process starts its own local Ray."""
    data = tmp_path / "digits"
    assert cli.main(["datasets", "make", "digits_lt100", "--out", str(data)]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [
        sys.executable,
        "-m",
        "jobs.prepare",
        "--config",
        str(ROOT / "jobs/configs/digits_lt100.yaml"),
        "--set",
        f"data.path={data}",
        "--set",
        f"run_dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "431 rows, 10 classes" in proc.stdout
    manifest = json.loads((tmp_path / "run" / "splits" / "_manifest.json").read_text())
    assert sum(manifest["rows"].values()) == 431


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_prepare_connects_to_a_cluster_given_by_address(tmp_path, trec50):
    """A `ray start` head (its own HOME, so its token never touches the user's) and a job that
    reaches it through --address. Only the processes this test started are stopped."""
    import psutil

    home = tmp_path / "home"
    home.mkdir()
    temp = f"/tmp/rbt-{os.getpid()}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = [
        ray_bin,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=3",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        address = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "jobs.cli", "prepare", "--address", address]
        cmd += ["--set", f"data.path={trec50}", "--set", "data.text=text"]
        cmd += ["--set", f"run_dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"connected to the Ray cluster at {address} (1 node(s), 3 CPUs)" in proc.stderr
        manifest = json.loads((tmp_path / "run" / "splits" / "_manifest.json").read_text())
        assert sum(manifest["rows"].values()) == 5382
    finally:
        for p in psutil.process_iter(["cmdline"]):
            if temp in " ".join(p.info["cmdline"] or []):
                p.kill()


def test_usage_names_the_command_as_it_was_called(capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.pipeline", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m jobs.pipeline")
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert capsys.readouterr().out.startswith("usage: raybalance run")


def test_a_job_run_as_a_module_names_its_log_after_the_job(monkeypatch):
    """`python -m jobs.pipeline` (how a job is submitted to a cluster) runs its main as
    ``__main__``: the log kept in RUN_DIR/logs is still ``pipeline-<time>.log``."""
    import sys
    import types

    from jobs.common import _command
    from jobs.pipeline import main

    assert _command(main) == "pipeline"
    as_script = types.FunctionType(main.__code__, {**main.__globals__, "__name__": "__main__"})
    as_script.__module__ = "__main__"
    fake = types.ModuleType("__main__")
    fake.__spec__ = types.SimpleNamespace(name="jobs.pipeline")
    monkeypatch.setitem(sys.modules, "__main__", fake)
    assert _command(as_script) == "pipeline"
