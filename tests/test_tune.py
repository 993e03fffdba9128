"""The Tune search: the search-space grammar, trial sizing, the knobs a trial applies, and real
searches on their own embedded Ray (`python -m jobs.tune` in a subprocess with the dashboard on,
in a short temp dir of its own): end to end with an ASHA search where some trials fail past
their retries, and a search killed mid-way that resumes without re-running finished trials."""

from __future__ import annotations

import glob
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import SpecError, TrainSpec, load_spec
from engine.tune import (
    TUNE_KEEPS,
    Dist,
    apply_knobs,
    decode_knobs,
    default_search_space,
    grid_size,
    is_active,
    parse_search_space,
    power_weights,
    resolve_search_space,
    to_param_space,
    trial_resources,
    trial_values,
)
from tests._procs import kill_when

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "jobs/configs/digits_lt100.yaml"


# --------------------------------------------------------------------------------------------
# the search-space grammar


def test_grammar_parses_every_form_nested_sections_constants_and_null():
    space = parse_search_space(
        {
            "loss.name": {"choice": ["ce", "focal"]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "loss.gamma": {"uniform": [0, 3]},
            "train.batch_size": {"randint": [16, 65]},
            "sampler.kind": {"grid": ["none", "balanced"]},
            "resample.sampling_strategy": {"power": 0.5},  # a dict that is a value
            "model": {"dropout": 0.2, "hidden": {"choice": [[16], [32, 16]]}},
            "loss.tau": None,
            "loss.weight_power": {"uniform": [0, 1.5]},
        }
    )
    assert space["loss.name"] == Dist("choice", ("ce", "focal"))
    assert space["train.lr"] == Dist("loguniform", (1e-4, 1e-2))
    assert space["loss.gamma"] == Dist("uniform", (0.0, 3.0))
    assert space["train.batch_size"] == Dist("randint", (16, 65))
    assert space["sampler.kind"] == Dist("grid", ("none", "balanced"))
    assert space["resample.sampling_strategy"] == Dist("fixed", ({"power": 0.5},))
    assert space["model.dropout"] == Dist("fixed", (0.2,))
    assert space["model.hidden"] == Dist("choice", ([16], [32, 16]))
    assert space["loss.tau"] is None
    assert grid_size(space) == 2 and parse_search_space(None) == {}


@pytest.mark.parametrize(
    "override, match",
    [
        ("tune.search_space={loss.nme: {choice: [ce]}}", r"tune\.search_space\.loss\.nme: unknown"),
        ("tune.search_space={lss.name: ce}", r"tune\.search_space\.lss\.name: unknown key"),
        ("tune.search_space={loss: {name: {choice: [ce, focall]}}}", "got 'focall'"),
        ("tune.search_space.loss.gamma={uniform: [-1, 3]}", r"loss\.gamma: must be >= 0"),
        ("tune.search_space.train.epochs={choice: [2, 3]}", r"train\.epochs: not searchable"),
        ("tune.search_space={train.lr: {loguniform: [0, 1]}}", "0 < low"),
        ("tune.search_space={train.lr: {uniform: [1, 0.1]}}", "low < high"),
        ("tune.search_space={train.lr: {choice: []}}", "non-empty list"),
        ("tune.search_space={train.batch_size: {randint: [1.5, 8]}}", "integers"),
        ("tune.search_space={loss.gamma: {unifrm: [0, 1]}}", r"must be float.*a distribution"),
        ("tune.search_space={loss.weight_power: -1}", "exponent must be a number >= 0"),
        ("tune.time_budget_s=0", "time_budget_s: must be > 0 seconds or null"),
    ],
)
def test_bad_search_spaces_fail_at_load_naming_the_key(override, match):
    with pytest.raises(SpecError, match=match):
        load_spec(CONFIG, [override])


def test_grid_is_refused_with_tpe_and_the_metric_is_checked():
    with pytest.raises(SpecError, match="grid is not supported with scheduler tpe"):
        load_spec(CONFIG, ["tune.scheduler=tpe", "tune.search_space={train.lr: {grid: [0.1]}}"])
    with pytest.raises(SpecError, match=r"tune\.metric: must be one of"):
        load_spec(CONFIG, ["tune.metric=accuracy"])


def test_default_space_is_derived_from_the_spec_and_counts_and_overridden():
    spec = load_spec(CONFIG, ["train.lr=0.002"])
    space = default_search_space(spec)
    assert set(space) == {
        "loss.name",
        "loss.weight_power",
        "loss.gamma",
        "loss.tau",
        "sampler.kind",
        "sampler.power",
        "train.lr",
    }
    assert space["train.lr"].args == pytest.approx((0.0002, 0.02))
    assert "ldam" in space["loss.name"].args and "weighted_ce" in space["loss.name"].args

    over = load_spec(
        CONFIG,
        [
            "resample.method=random_over",
            "tune.search_space={loss.tau: null, train.lr: 0.01, loss.beta: {uniform: [0.9, 0.99]}}",
        ],
    )
    counts = np.array([100, 50, 4])
    resolved = resolve_search_space(over, counts)
    strategies = resolved["resample.sampling_strategy"].args
    assert strategies == ("auto", {"power": 0.5}, {"max_ratio": 5.0})  # sqrt(100 / 4)
    assert "loss.tau" not in resolved and resolved["train.lr"] == Dist("fixed", (0.01,))
    assert resolved["loss.beta"] == Dist("uniform", (0.9, 0.99))


def test_model_kinds_that_cannot_read_the_data_are_dropped_from_the_search(caplog):
    space = {"model.kind": {"grid": ["mlp", "lexical"]}}
    text = load_spec(None, ["data.text=t", "model.kind=mlp", f"tune.search_space={space}"])
    assert resolve_search_space(text)["model.kind"].args == ("mlp", "lexical")
    features = load_spec(
        None,
        ["data.features=[a, b]", "model.kind=mlp", f"tune.search_space={space}"],
    )
    with caplog.at_level(logging.WARNING, logger="raybalance"):
        assert resolve_search_space(features)["model.kind"].args == ("mlp",)
    assert "['lexical'] dropped from the search" in caplog.text
    # text that is not embedded (the run's own model is lexical): no MLP trials
    lexical = load_spec(None, ["data.text=t", "model.kind=lexical", f"tune.search_space={space}"])
    assert resolve_search_space(lexical)["model.kind"].args == ("lexical",)
    # SMOTE rows have no text: only MLP trials
    smote = load_spec(
        None,
        ["data.text=t", "model.kind=mlp", "resample.method=smote", f"tune.search_space={space}"],
    )
    assert resolve_search_space(smote)["model.kind"].args == ("mlp",)
    only = load_spec(
        None,
        ["data.features=[a]", "model.kind=mlp", "tune.search_space={model.kind: lexical}"],
    )
    with pytest.raises(SpecError, match="none of \\['lexical'\\] can read this data"):
        resolve_search_space(only)


def test_linear_trials_search_class_weights_and_ignore_the_training_knobs():
    from engine.tune import apply_knobs, is_active, trial_values

    grid = {"model.kind": {"grid": ["mlp", "linear"]}}
    feats = load_spec(None, ["data.features=[a, b]", "model.kind=mlp", f"tune.search_space={grid}"])
    space = resolve_search_space(feats)
    assert space["model.kind"].args == ("mlp", "linear")
    assert "model.C" not in space  # a linear trial picks its C on val itself (model.C null)
    searched = "{model.kind: {grid: [mlp, linear]}, model.C: {loguniform: [0.1, 10]}}"
    with_c = load_spec(None, ["data.features=[a]", f"tune.search_space={searched}"])
    assert resolve_search_space(with_c)["model.C"] == Dist("loguniform", (0.1, 10.0))

    linear = trial_values(feats, {"model.kind": "linear", "loss.name": "focal"})
    mlp = trial_values(feats, {"model.kind": "mlp", "loss.name": "focal"})
    for knob in ("loss.gamma", "loss.name", "train.lr", "sampler.kind"):
        assert is_active(knob, mlp) and not is_active(knob, linear), knob
    assert is_active("model.C", linear) and not is_active("model.C", mlp)
    assert is_active("loss.weight_power", linear)  # w ∝ n^-p weighs the solve's rows
    knobs = {"model.kind": "linear", "model.C": 3.0, "loss.weight_power": 1.0, "loss.name": "ce"}
    trial = apply_knobs(feats, knobs, np.array([90, 10]), ["0", "1"])
    assert trial.model.C == 3.0
    assert trial.loss.weights == pytest.approx({"0": 0.5556, "1": 5.0}, rel=1e-3)


def test_choices_of_values_optuna_cannot_hold_round_trip_through_json():
    space = {
        "resample.sampling_strategy": Dist("choice", ("auto", {"power": 0.5})),
        "model.hidden": Dist("fixed", ([8, 8],)),
        "loss.name": Dist("choice", ("ce", "focal")),
    }
    params = to_param_space(space)
    assert params["resample.sampling_strategy"].categories == ['"auto"', '{"power": 0.5}']
    assert params["model.hidden"] == "[8, 8]"
    config = {"resample.sampling_strategy": '{"power": 0.5}', "model.hidden": "[8, 8]"}
    config["loss.name"] = "focal"
    knobs = decode_knobs(config, space)
    assert knobs == {
        "resample.sampling_strategy": {"power": 0.5},
        "model.hidden": [8, 8],
        "loss.name": "focal",
    }


def test_conditional_knobs_are_applied_only_where_they_mean_something():
    spec = load_spec(CONFIG, ["loss.name=ce"])
    keys = [str(i) for i in range(3)]
    counts = np.array([100, 10, 1])
    knobs = {
        "loss.name": "ce",
        "loss.gamma": 1.5,
        "loss.tau": 0.7,
        "loss.weight_power": 1.0,
        "sampler.kind": "none",
        "sampler.power": 0.3,
    }
    values = trial_values(spec, knobs)
    active = {k for k in knobs if is_active(k, values)}
    assert active == {"loss.name", "sampler.kind"}
    trial = apply_knobs(spec, knobs, counts, keys)
    assert trial.loss.weights is None and trial.loss.gamma == 1.5  # sampled, ignored by ce

    focal = apply_knobs(spec, {**knobs, "loss.name": "focal"}, counts, keys)
    w = np.array([focal.loss.weights[k] for k in keys])
    np.testing.assert_allclose(w, power_weights(counts, 1.0))
    assert (w * counts).sum() == pytest.approx(counts.sum())  # mean weight per row 1
    np.testing.assert_allclose(w[0] / w[2], 0.01)  # w_c ∝ n_c^-1
    assert is_active("loss.gamma", trial_values(spec, {"loss.name": "focal"}))
    assert is_active("loss.tau", trial_values(spec, {"loss.name": "logit_adjusted"}))
    assert is_active("sampler.power", trial_values(spec, {"sampler.kind": "balanced"}))

    # weighted_ce without the power knob still gets weights (the inverse scheme)
    weighted = apply_knobs(spec, {"loss.name": "weighted_ce"}, counts, keys)
    assert weighted.loss.weights == "inverse"
    with pytest.raises(ValueError, match="trial knobs"):
        apply_knobs(spec, {"train.batch_size": 0}, counts, keys)


# --------------------------------------------------------------------------------------------
# how many trials at once


def _fits(cluster, train, res, reserve):
    need = res.max_concurrent * (train.num_workers * res.cpus_per_worker + 0.01)
    return need <= cluster["CPU"] - reserve + 1e-9


@pytest.mark.parametrize(
    "cluster, train, kw, expected",
    [
        ({"CPU": 2}, {}, {}, (1, 0.99)),  # one CPU kept for the trials' data tasks
        ({"CPU": 2}, {}, {"limit": 2}, (2, 0.49)),  # more trials asked: smaller shares
        ({"CPU": 16}, {"num_workers": 2}, {}, (7, 1.06)),
        ({"CPU": 16}, {}, {"trials": 3}, (3, 4.99)),  # few trials: bigger shares
        ({"CPU": 64}, {}, {"trials": 64}, (63, 0.99)),
        ({"CPU": 16, "GPU": 2}, {"use_gpu": True}, {}, (2, 7.49)),  # one GPU per trial
        ({"CPU": 16, "GPU": 4}, {"use_gpu": True, "num_workers": 2}, {}, (2, 3.74)),
        ({"CPU": 8}, {"cpus_per_worker": 2.0}, {}, (3, 2.0)),
        ({"CPU": 1}, {}, {"streaming": True}, (1, 0.49)),  # half of one CPU for the stream
        ({"CPU": 2}, {}, {"light": True}, (2, 0.49)),  # small models: two trials per CPU
        ({"CPU": 16}, {}, {"light": True, "trials": 64}, (30, 0.49)),
        ({"CPU": 16}, {"num_workers": 2}, {"light": True}, (7, 1.06)),  # only one-worker trials
    ],
)
def test_max_concurrent_trials_is_derived_from_the_cluster(cluster, train, kw, expected):
    spec = TrainSpec(**train)
    args = {"streaming": False, "trials": 8, **kw}
    res = trial_resources(cluster, spec, **args)
    assert (res.max_concurrent, res.cpus_per_worker) == pytest.approx(expected)
    reserve = 1.0 if cluster["CPU"] >= 2 else cluster["CPU"] / 2
    assert _fits(cluster, spec, res, reserve)


def test_trials_that_cannot_all_fit_are_refused():
    with pytest.raises(ValueError, match="max_concurrent_trials=3"):
        trial_resources(
            {"CPU": 4}, TrainSpec(cpus_per_worker=1.0), streaming=False, trials=8, limit=3
        )
    with pytest.raises(ValueError, match="need 4 GPUs, the cluster has 2"):
        trial_resources(
            {"CPU": 16, "GPU": 2}, TrainSpec(use_gpu=True), streaming=False, trials=8, limit=4
        )
    with pytest.raises(ValueError, match="CPU per worker"):
        trial_resources({"CPU": 2}, TrainSpec(), streaming=False, trials=64, limit=40)


def test_a_ray_whose_workers_lack_the_state_api_is_refused(ray_local):
    """The session's Ray has no dashboard: Train could not free a stopped trial's CPUs."""
    from engine.tune import check_trainer_cleanup

    with pytest.raises(ValueError, match="need Ray's state API in the workers"):
        check_trainer_cleanup()


@pytest.mark.slow
def test_tpe_searcher_and_asha_take_the_grammar(ray_local, tmp_path):
    """Optuna's TPE over the grammar's forms, JSON-encoded choices included, with ASHA; Tune
    keeps only each trial's latest checkpoints."""
    from ray import tune

    from engine.config import TuneSpec
    from engine.tune import new_tuner

    space = {
        "loss.name": Dist("choice", ("ce", "focal")),
        "resample.sampling_strategy": Dist("choice", ("auto", {"power": 0.5})),
        "train.lr": Dist("loguniform", (1e-4, 1e-1)),
        "train.batch_size": Dist("randint", (16, 65)),
    }

    def toy_trial(config):  # stands in for run_trial (nested: pickled by value)
        import tempfile

        from ray import tune

        from engine.tune import decode_knobs

        knobs = decode_knobs(config, space)
        assert knobs["resample.sampling_strategy"] in ("auto", {"power": 0.5})
        score = -abs(np.log10(knobs["train.lr"]) + 2) + (knobs["loss.name"] == "focal")
        for epoch in range(3):
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state.json").write_text(str(epoch))
                ckpt = tune.Checkpoint.from_directory(d)
                tune.report({"val_macro_f1": score + epoch / 10, "epoch": epoch}, checkpoint=ckpt)

    spec = TuneSpec(num_samples=4, scheduler="tpe", seed=3)
    trainable = tune.with_resources(toy_trial, {"cpu": 0.01})
    grid = new_tuner(trainable, spec, 3, space, 4, str(tmp_path / "ray")).fit()
    assert len(grid) == 4 and not grid.errors
    for result in grid:
        assert 1e-4 <= result.config["train.lr"] <= 1e-1
        assert result.config["resample.sampling_strategy"] in ('"auto"', '{"power": 0.5}')
        assert 16 <= result.config["train.batch_size"] < 65
        assert 1 <= result.metrics["training_iteration"] <= 3
        kept = sorted(Path(result.path).glob("checkpoint_*"))
        assert 1 <= len(kept) <= TUNE_KEEPS and len(kept) <= result.metrics["training_iteration"]
        last = result.metrics["training_iteration"] - 1
        assert (kept[-1] / "state.json").read_text() == str(last)  # the latest is kept


# --------------------------------------------------------------------------------------------
# real searches, each in a process of its own with its own embedded Ray


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from engine.datasets import make_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    make_dataset("digits_lt100", str(out))
    return out


def _job(module: str, data: Path, run: Path, *sets: str) -> list[str]:
    cmd = [sys.executable, "-m", *module.split(), "--config", str(CONFIG)]
    for s in [
        f"data.path={data}",
        f"run_dir={run}",
        "model.hidden=[16]",
        "train.epochs=2",
        "train.num_workers=1",
        "train.batch_size=64",
        "train.lr=0.003",
        *sets,
    ]:
        cmd += ["--set", s]
    return cmd


def _check_best_dirs(table: pd.DataFrame) -> None:
    from engine.models import load_model

    for row in table[table["status"] != "error"].itertuples():
        model, lm = load_model(row.best_dir)
        assert len(lm) == 10 and Path(row.best_dir).parent.name == row.trial_id


@pytest.mark.slow
@pytest.mark.integration
def test_asha_search_end_to_end_with_a_trial_that_fails_past_its_retries(digits, tmp_path, ray_env):
    """A grid of 3 resampling strategies: 'majority' cannot over-sample, so that trial fails
    twice (max_failures=1; first in the grid, so its retry overlaps the others), {power: 0.5}
    resamples the train split into the trial's own folder, and 'auto' (the run's own) trains
    on the run's resampled split."""
    from engine.tune import search

    run = tmp_path / "run"
    sets = [
        "resample.method=random_over",
        "tune.num_samples=1",
        "tune.max_failures=1",
        "tune.max_concurrent_trials=2",
        "tune.search_space={resample.sampling_strategy: {grid: [majority, {power: 0.5}, auto]}, "
        "loss.name: {choice: [ce, focal, logit_adjusted]}}",
    ]
    cmd = _job("jobs.cli tune", digits, run, *sets)
    proc = subprocess.run(cmd, cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranked by val_macro_f1" in proc.stdout and "best:" in proc.stdout

    table = pd.read_parquet(run / "tune" / "results.parquet")
    assert len(table) == 3 and len(pd.read_csv(run / "tune" / "results.csv")) == 3
    assert {"val_macro_f1", "val_macro_pr_auc", "best_dir", "error", "epochs"} <= set(table)
    failed = table[table["status"] == "error"]
    ok = table[table["status"] != "error"]
    assert len(failed) == 1 and set(ok["status"]) <= {"completed", "stopped"}
    assert "completed" in set(ok["status"])  # the first trial at a rung is never stopped
    assert list(failed["resample.sampling_strategy"]) == ['"majority"']
    assert failed["error"].str.contains("cannot be used with over-sampler").all()
    assert list(failed["attempts"]) == [2] and failed["best_dir"].isna().all()
    assert (ok["attempts"] == 1).all() and table["status"].iloc[-1] == "error"
    assert ok["val_macro_f1"].between(0, 1).all() and ok["epochs"].between(1, 2).all()
    assert ok["val_macro_f1"].is_monotonic_decreasing  # best first
    _check_best_dirs(table)
    own = ok[ok["resample.sampling_strategy"] == '{"power": 0.5}']["trial_id"].item()
    stats = json.loads((run / "tune/trials" / own / "resampled/stats.json").read_text())
    assert stats["counts"] != json.loads((run / "resampled/stats.json").read_text())["counts"]
    # a finished search is refused before anything runs
    spec = load_spec(CONFIG, [f"data.path={digits}", f"run_dir={run}"])
    with pytest.raises(ValueError, match="holds a finished search"):
        search(spec)

    # the pipeline on the same spec carries on from this search and reports the failed trial
    cmd = _job("jobs.cli run", digits, run, *sets)
    proc = subprocess.run(cmd, cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "tune: complete artifact found, skipped" in out and "▶ tune" not in out
    trial = failed["trial_id"].item()
    line = f"tune trial {trial} failed after 2 attempt(s)"
    assert line in out
    metrics = json.loads((run / "report/metrics.json").read_text())
    assert metrics["trials"] == {
        "total": 3,
        "errors": 1,
        "completed": int((ok["status"] == "completed").sum()),
    }
    assert any(n.startswith(line) for n in metrics["notes"])
    assert line in (run / "report/report.html").read_text()
    # a search space that differs from the finished search's is not taken as it
    cmd = _job(
        "jobs.cli run",
        digits,
        run,
        *sets[:-1],
        "tune.search_space={loss.name: {choice: [ce, focal]}}",
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0 and "the tune stage in this run_dir was made with another spec" in (
        proc.stdout + proc.stderr
    )


def _tune_statuses(run: Path) -> dict[str, str]:
    states = sorted(glob.glob(str(run / "tune/ray/tune/experiment_state-*.json")))
    if not states:
        return {}
    try:
        data = json.loads(Path(states[-1]).read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    trials = (json.loads(t[0]) for t in data["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def _attempts(run: Path, trial_id: str) -> int:
    path = run / "tune/trials" / trial_id / "attempts.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_search_resumes_without_rerunning_finished_trials(digits, tmp_path, ray_env):
    run = tmp_path / "run"
    cmd = _job(
        "jobs.tune",
        digits,
        run,
        "tune.num_samples=4",  # trials take seconds: leave some for after the kill
        "tune.scheduler=fifo",
        "tune.max_concurrent_trials=1",
    )
    kill_when(
        cmd,
        ROOT,
        {**ray_env, "TUNE_GLOBAL_CHECKPOINT_S": "0"},  # the state saved after every step
        tmp_path / "first.log",
        lambda: "TERMINATED" in _tune_statuses(run).values(),
        what="a finished trial",
    )
    finished = {t for t, s in _tune_statuses(run).items() if s == "TERMINATED"}
    assert finished and not (run / "tune/results.parquet").exists()

    proc = subprocess.run(cmd, cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(run / "tune/results.parquet")
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert (table["epochs"] == 2).all()
    attempts = dict(zip(table["trial_id"], table["attempts"]))
    assert {t: attempts[t] for t in finished} == {t: 1 for t in finished}  # not run again
    assert all(_attempts(run, t) == attempts[t] for t in attempts)
    _check_best_dirs(table)
    for row in table.to_dict("records"):  # the default space's conditional knobs
        assert pd.isna(row["loss.gamma"]) == (row["loss.name"] != "focal")
        assert pd.isna(row["loss.tau"]) == (row["loss.name"] != "logit_adjusted")
        assert pd.isna(row["sampler.power"]) == (row["sampler.kind"] != "balanced")


@pytest.mark.slow
@pytest.mark.integration
def test_a_resumed_search_reruns_its_errored_trial_and_only_it(digits, tmp_path, ray_env):
    """Killed after one trial errored past its retries ('majority' cannot over-sample) and
    one finished: the rerun restores the search (``resume_errored``), gives the errored trial
    one more attempt (Tune keeps its failure count), does not run the finished one again, and
    finishes the rest."""
    run = tmp_path / "run"
    cmd = _job(
        "jobs.tune",
        digits,
        run,
        "resample.method=random_over",
        "tune.num_samples=1",
        "tune.max_failures=1",
        "tune.scheduler=fifo",
        "tune.max_concurrent_trials=1",
        "tune.search_space={resample.sampling_strategy: "
        "{grid: [majority, auto, {power: 0.5}, {power: 0.25}]}}",
    )

    def errored_and_finished() -> bool:
        states = set(_tune_statuses(run).values())
        return {"ERROR", "TERMINATED"} <= states

    # Tune saves its search state at most every 10 s by default: on a fast machine the first
    # saved state holding an errored and a finished trial was the final one, written as the
    # search ended. Saved after every step, the kill lands while trials are left to run.
    first_env = {**ray_env, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    kill_when(cmd, ROOT, first_env, tmp_path / "first.log", errored_and_finished, what="an error")
    statuses = _tune_statuses(run)
    errored = [t for t, s in statuses.items() if s == "ERROR"]
    finished = [t for t, s in statuses.items() if s == "TERMINATED"]
    assert len(errored) == 1 and finished and not (run / "tune/results.parquet").exists()
    assert _attempts(run, errored[0]) == 2  # the first try and its one retry

    proc = subprocess.run(cmd, cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(run / "tune/results.parquet")
    attempts = dict(zip(table["trial_id"], table["attempts"]))
    assert len(table) == 4 and set(statuses) <= set(attempts)
    assert attempts[errored[0]] == 3 and _attempts(run, errored[0]) == 3  # ran once more
    assert {t: attempts[t] for t in finished} == {t: 1 for t in finished}  # not run again
    row = table[table["trial_id"] == errored[0]].iloc[0]
    assert row["status"] == "error" and "cannot be used with over-sampler" in row["error"]
    assert (table[table["trial_id"] != errored[0]]["status"] == "completed").all()


@pytest.mark.slow
@pytest.mark.parametrize("budget", [None, 2.0])
def test_the_time_budget_stops_starting_trials_and_lets_running_ones_finish(
    ray_local, tmp_path, budget
):
    from ray import tune

    from engine.config import TuneSpec
    from engine.tune import _write_summary, new_tuner

    space = {"train.lr": Dist("loguniform", (1e-4, 1e-1))}

    def slow_trial(config):  # three 1-second epochs: the budget is spent during the first trial
        import time

        from ray import tune

        for epoch in range(3):
            time.sleep(1.0)
            tune.report({"val_macro_f1": config["train.lr"], "epoch": epoch})

    spec = TuneSpec(num_samples=4, scheduler="fifo", time_budget_s=budget)
    trainable = tune.with_resources(slow_trial, {"cpu": 0.01})
    grid = new_tuner(trainable, spec, 3, space, 1, str(tmp_path / "ray")).fit()
    assert not grid.errors
    assert all(r.metrics["training_iteration"] == 3 for r in grid)  # none was cut short
    if budget is None:
        assert len(grid) == 4
    else:
        assert len(grid) == 1  # one at a time: the budget was spent before a second could start
    summary = _write_summary(spec, 4, len(grid), str(tmp_path))
    assert summary["budget_spent"] == (budget is not None)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    if budget is not None:
        assert summary["note"] == (
            "the search's time budget (tune.time_budget_s=2) was spent after 1 of 4 trials; "
            "3 were not started"
        )


# the shipped cluster: a 4-CPU head and g5.xlarge workers (4 CPUs, 1 GPU each)
SHIPPED = [{"CPU": 4.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]


def test_gpu_workers_ask_for_what_one_node_holds_not_the_cluster_total():
    """On the shipped cluster a trial's worker once asked ~5.5 CPUs + 1 GPU: no node holds
    that, and Train waited forever. Sized from the nodes, it asks at most a GPU node's CPUs
    per GPU."""
    totals = {"CPU": 12.0, "GPU": 2.0}
    spec = TrainSpec(use_gpu=True)
    unsized = trial_resources(totals, spec, streaming=False, trials=8)
    assert unsized.cpus_per_worker > 4  # the hang, from the totals alone
    res = trial_resources(totals, spec, streaming=False, trials=8, nodes=SHIPPED)
    assert res.max_concurrent == 2 and 0.05 <= res.cpus_per_worker <= 4.0
    gpu_nodes = [n for n in SHIPPED if n.get("GPU")]
    assert all(res.cpus_per_worker <= n["CPU"] / n["GPU"] for n in gpu_nodes)


def test_more_gpu_workers_than_gpus_are_refused_naming_both():
    with pytest.raises(
        ValueError, match=r"num_workers=3 GPU workers need 3 GPUs; the cluster has 2"
    ):
        trial_resources(
            {"CPU": 12, "GPU": 2},
            TrainSpec(use_gpu=True, num_workers=3, batch_size=33),
            streaming=False,
            trials=4,
            nodes=SHIPPED,
        )
    # a cluster with no GPU node up yet (autoscaling) is let through; its size is unknown
    res = trial_resources(
        {"CPU": 4}, TrainSpec(use_gpu=True), streaming=False, trials=4, nodes=[{"CPU": 4.0}]
    )
    assert res.cpus_per_worker <= 1.0


def test_a_stopped_trial_in_a_bucket_is_exported_from_its_checkpoints_there(bucket):
    """A run's mirror leaves the trials' kept checkpoints in the bucket: a trial stopped before
    its own export gets its best/ from the best of them, fetched when needed."""
    from engine import remote
    from engine.io import write_bytes_atomic, write_json_atomic
    from engine.tune import _export_best

    trial = f"{bucket}/runs/r/tune/trials/t1"
    for epoch, f1 in ((0, 0.4), (1, 0.7)):
        ckpt = f"{trial}/checkpoints/epoch-{epoch:05d}"
        write_json_atomic(f"{ckpt}/history.json", [{"epoch": epoch, "val_macro_f1": f1}])
        write_bytes_atomic(f"{ckpt}/model/model.safetensors", f"weights {epoch}".encode())
    write_json_atomic(f"{trial}/attempts.jsonl", {})
    with remote.mirrored(f"{bucket}/runs/r", lazy=("tune/trials/*/checkpoints/*",)) as m:
        local = Path(m.path) / "tune/trials/t1"
        assert local.is_dir() and not (local / "checkpoints").exists()
        best = _export_best(str(local), [], "val_macro_f1")
        assert best == str(local / "best")
        assert (local / "best/model.safetensors").read_bytes() == b"weights 1"
    pushed = Path(remote.fetch(f"{trial}/best"))  # and it is in the bucket
    assert (pushed / "model.safetensors").read_bytes() == b"weights 1"
