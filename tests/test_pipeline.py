"""`raybalance run` end to end on real Ray (its own embedded Ray with the dashboard, in a
subprocess): the demo config on real TREC-50 text with a tiny encoder, MLP, lexical, linear
and gbdt trials mixed in one ensemble, the summary table, metrics.json / report.html, a rerun
that skips every stage, a changed spec, and `raybalance predict` on the artifact agreeing with
the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine.config import load_spec
from engine.pipeline import STAGES, baseline_spec, load_scores, stage_digests
from tests.conftest import job_env

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "jobs/configs/demo.yaml"
SMALL = [
    "embed.model=tiny",
    "embed.max_length=16",
    "model.hidden=[16]",
    "model.n_features=16384",
    "train.epochs=2",
    "train.batch_size=128",
    "tune.num_samples=1",
    "tune.max_concurrent_trials=1",
    "ensemble.top_k=2",
    "thresholds.cv_folds=3",
]


def _run(args: list[str], env: dict[str, str], timeout: int = 600):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def _cmd(data: Path, run: Path, *extra: str) -> list[str]:
    cmd = ["run", str(DEMO)]
    for s in [f"data.path={data}", f"run_dir={run}", *SMALL, *extra]:
        cmd += ["--set", s]
    return cmd


@pytest.fixture(scope="module")
def demo_run(trec50, tmp_path_factory):
    """One pipeline run of the demo config (shrunk) on TREC-50; its output and environment."""
    tmp = tmp_path_factory.mktemp("pipeline")
    with job_env(tmp / "home") as env:
        run = tmp / "run"
        proc = _run(_cmd(trec50, run), env)
        yield {"proc": proc, "run": run, "env": env, "data": trec50, "tmp": tmp}


@pytest.mark.integration
def test_run_prints_the_summary_and_writes_every_artifact(demo_run):
    proc, run = demo_run["proc"], demo_run["run"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    for row in ("plain CE baseline", "best tuned model", "ensemble of", "macro-F1", "tail recall"):
        assert row in out
    assert "report:" in out and "artifact:" in out
    # a quiet console: at most 60 lines, none from Ray's or the libraries' loggers; the rest
    # is in the run's log folder
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    noise = ("INFO", "WARNING ", "(run_trial", "pid=", "Trial status", "streaming_executor")
    assert not [ln for ln in lines if any(n in ln for n in noise)], "\n".join(lines)
    logs = sorted((run / "logs").glob("pipeline-*.log"))
    assert logs and "raybalance.progress: tune" in logs[0].read_text()
    assert "raybalance.progress: cross-fit 10/10" in logs[0].read_text()  # 2 candidates x 5
    assert any((run / "logs").glob("ray-*/*.out"))  # the workers' output, copied
    # the baseline's exported model predicts by itself (its own manifest, the same checks)
    assert (run / "baseline" / "best" / "manifest.json").exists()

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    test_rows = json.loads((run / "splits" / "_manifest.json").read_text())["rows"]["test"]
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    assert set(metrics["test"]) == {"baseline", "best_single", "ensemble"}
    for name, m in metrics["test"].items():
        assert 0 <= m["macro_f1"] <= 1 and 0 <= m["balanced_accuracy"] <= 1, name
        assert set(m["per_class"]) == set(labels)
        keys = {"precision", "recall", "f1", "support"}
        assert all(set(v) >= keys for v in m["per_class"].values())
        assert sum(v["support"] for v in m["per_class"].values()) == test_rows
    # the printed table is metrics.json's
    assert f"{metrics['test']['ensemble']['macro_f1']:.3f}" in out

    table = pd.read_parquet(run / "tune" / "results.parquet")
    kinds = sorted(table["model.kind"])
    assert kinds == ["gbdt", "lexical", "linear", "mlp"] and (table["status"] != "error").all()
    manifest = json.loads((run / "ensemble" / "manifest.json").read_text())
    info = manifest["extra"]
    # candidates (the demo's per_kind): the best trial of each kind, best first (as trained:
    # linear stays linear); each cross-fitted on 5 folds, a member saved as its 5 fold models
    kinds = list(dict.fromkeys(table["model.kind"]))
    assert [c["kind"] for c in info["candidates"]] == kinds[:2]
    assert 1 <= len(info["members"]) <= 2 and info["cross_fit"]["folds"] == 5
    assert [m["name"] for m in manifest["members"]] == [
        f"{m['name']}f{f}" for m in info["members"] for f in range(5)
    ]
    assert set(info["cross_fit"]["oof"]) == {c["name"] for c in info["candidates"]}
    assert metrics["ensemble"]["members"] == info["members"]
    html = (run / "report" / "report.html").read_text()
    # what each member adds: recorded, printed with the member line, shown in the report
    for m in info["members"]:
        assert set(m["contribution"]) == {"oof", "test"} and 0 <= m["weight"] <= 1
        if len(info["members"]) > 1:
            assert -1 <= m["contribution"]["oof"] <= 1
            assert f"{m['name']} {m['kind']} ({m['contribution']['oof']:+.3f} oof)" in out
    assert ('id="table-members"' in html) == (len(info["members"]) > 1)
    assert 'id="table-candidates"' in html and "out of fold (5 folds)" in html
    assert "<img" in html and 'src="http' not in html and "best tuned model" in html
    assert (run / "report" / "per_class_f1.png").stat().st_size > 1000
    state = json.loads((run / "pipeline.json").read_text())
    spec = load_spec(DEMO, [f"data.path={demo_run['data']}", f"run_dir={run}", *SMALL])
    assert set(state) == set(STAGES)
    assert state["tune"] == stage_digests(spec, state_prepared(run))["tune"]


def state_prepared(run: Path) -> str:
    from engine.pipeline import prepared_digest

    return prepared_digest(str(run))


@pytest.mark.integration
def test_predict_on_raw_text_agrees_with_the_pipeline_and_a_rerun_skips_every_stage(demo_run):
    run, env = demo_run["run"], demo_run["env"]
    assert demo_run["proc"].returncode == 0
    # raw test rows (text and label, no embedding column): the artifact embeds them itself
    out = demo_run["tmp"] / "pred"
    test_split = str(run / "splits" / "test")
    proc = _run(["predict", str(run / "ensemble"), test_split, "--out", str(out)], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = pq.read_table(out)
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in labels], axis=1)
    expected = load_scores(str(run / "scores.safetensors"))["test"]["ensemble"]
    assert proba.shape == expected.shape
    # both read the split in file order: row by row, not just as sets
    assert np.allclose(proba, expected, atol=2e-4)
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    truth = got.column("label").to_pylist()
    pred = got.column("prediction").to_pylist()
    ens = metrics["test"]["ensemble"]
    assert np.mean([p == t for p, t in zip(pred, truth)]) == pytest.approx(ens["accuracy"])

    # the baseline's model folder (what `raybalance train` exports) predicts by itself
    out = demo_run["tmp"] / "pred-baseline"
    proc = _run(["predict", str(run / "baseline" / "best"), test_split, "--out", str(out)], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = pq.read_table(out)
    proba = np.stack([got.column(f"proba_{k}").to_numpy() for k in labels], axis=1)
    expected = load_scores(str(run / "scores.safetensors"))["test"]["baseline"]
    assert np.allclose(proba, expected, atol=2e-4)

    # the same command again: every stage is found complete
    before = (run / "report" / "metrics.json").stat().st_mtime_ns
    proc = _run(_cmd(demo_run["data"], run), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("baseline", "tune", "ensemble", "report"):
        assert f"{stage}: complete artifact found, skipped" in proc.stderr
    assert (run / "report" / "metrics.json").stat().st_mtime_ns == before

    # a trained stage's spec changed: refused without --overwrite, naming the stage
    proc = _run(_cmd(demo_run["data"], run, "train.lr=0.01"), env)
    assert proc.returncode == 2 and "the baseline stage in this run_dir was made with another" in (
        proc.stderr
    )
    # an ensemble setting changed: only the derived stages run again
    proc = _run(_cmd(demo_run["data"], run, "ensemble.top_k=1"), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "baseline: complete artifact found, skipped" in proc.stderr
    assert "tune: complete artifact found, skipped" in proc.stderr
    assert "ensemble: done" in proc.stderr and "report: done" in proc.stderr
    manifest = json.loads((run / "ensemble" / "manifest.json").read_text())
    assert len(manifest["members"]) == 5  # one candidate's 5 fold models (reused)
    newest = max((run / "logs").glob("pipeline-*.log"), key=lambda p: p.stat().st_mtime)
    assert "cross-fit" not in proc.stderr + newest.read_text()  # nothing trained again


def test_stage_digests_change_from_the_first_stage_whose_inputs_changed():
    base = load_spec(DEMO, [])
    d = stage_digests(base, "p0")
    assert list(d) == list(STAGES) and len(set(d.values())) == len(STAGES)
    assert stage_digests(base, "p0") == d

    def changed(overrides: list[str], prepared: str = "p0") -> list[str]:
        new = stage_digests(load_spec(DEMO, overrides), prepared)
        return [s for s in STAGES if new[s] != d[s]]

    assert changed([], prepared="p1") == list(STAGES)  # new data: everything
    assert changed(["train.lr=0.01"]) == ["baseline", "tune", "ensemble", "report"]
    assert changed(["loss.name=focal"]) == ["tune", "ensemble", "report"]
    assert changed(["tune.num_samples=5"]) == ["tune", "ensemble", "report"]
    assert changed(["ensemble.top_k=5"]) == ["ensemble", "report"]
    assert changed(["thresholds.objective=f_beta"]) == ["ensemble", "report"]
    assert baseline_spec(base).loss.name == "ce" and baseline_spec(base).sampler.kind == "none"


def test_the_summary_notes_say_what_a_tiny_class_means(ray_local, tmp_path):
    """A one-row class: not in val or test (said, with what it means) and only copied by SMOTE
    (said): the notes the summary table and the report show."""
    import pyarrow as pa

    from engine.pipeline import input_notes
    from engine.prepare import prepare

    rng = np.random.default_rng(0)
    labels = [0] * 40 + [1] * 20 + [2]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"label": labels, "f0": rng.normal(size=61), "f1": rng.normal(size=61)}),
        data / "x.parquet",
    )
    sets = [f"data.path={data}", "data.text=null", "data.features=[f0,f1]", "model.kind=mlp"]
    sets += [f"run_dir={tmp_path / 'run'}", "resample.method=smote"]
    prepare(load_spec(None, sets))
    _, notes = input_notes(str(tmp_path / "run"))
    text = "\n".join(notes)
    assert "split: split 'val' has no rows of 1 class(es)" in text
    assert "model selection, the ensemble and the thresholds cannot see them" in text
    assert "they are not evaluated" in text
    assert "resample:" in text and "it has a single row" in text
