"""``tune.kind_share: time``: each trial takes the kind that has used the least time, so cheap
kinds get many trials; the other knobs drawn from their distributions; state survives a
restore; and a real Tune search gives the cheap kind most of its trials."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import Dist, SpecError, TuneSpec
from engine.share import KindShare, draw

SPACE = {
    "model.kind": Dist("grid", ("mlp", "linear")),
    "train.lr": Dist("loguniform", (1e-4, 1e-1)),
    "loss.gamma": Dist("uniform", (0.0, 3.0)),
    "train.batch_size": Dist("randint", (16, 65)),
    "resample.sampling_strategy": Dist("choice", ("auto", {"power": 0.5})),
    "loss.name": Dist("fixed", ("focal",)),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(share: KindShare, clock: Clock, n: int, seconds: dict[str, float]) -> list[str]:
    """``n`` trials one after another, each taking its kind's seconds."""
    kinds = []
    for i in range(n):
        config = share.suggest(f"t{i}")
        clock.now += seconds[config["model.kind"]]
        share.on_trial_complete(f"t{i}", {"val_macro_f1": 0.5})
        kinds.append(config["model.kind"])
    return kinds


def test_the_kind_with_the_least_time_takes_the_next_trial():
    clock = Clock()
    share = KindShare(SPACE, seed=0, clock=clock)
    kinds = _run(share, clock, 22, {"mlp": 10.0, "linear": 1.0})
    # mlp first (a tie, the space's order), then linear until it has used mlp's 10 s, ...
    assert kinds[:12] == ["mlp"] + ["linear"] * 10 + ["mlp"]
    assert kinds.count("linear") == 20 and kinds.count("mlp") == 2
    assert share.spent == {"mlp": 20.0, "linear": 20.0}


def test_running_trials_count_their_time_so_far():
    clock = Clock()
    share = KindShare(SPACE, seed=0, clock=clock)
    assert share.suggest("a")["model.kind"] == "mlp"
    assert share.suggest("b")["model.kind"] == "linear"  # mlp has a trial running
    clock.now = 5.0
    share.on_trial_complete("b")  # linear: 5 s; mlp still running: 5 s
    assert share.used("mlp") == share.used("linear") == 5.0
    assert share.suggest("c")["model.kind"] == "mlp"  # a tie in time and trials: the order
    clock.now = 6.0  # mlp: trial a's 6 s and c's 1 s so far
    assert share.used("mlp") == 7.0 and share.suggest("d")["model.kind"] == "linear"


def test_every_other_knob_is_drawn_from_its_distribution():
    share = KindShare(SPACE, seed=3, encoded=lambda key: key == "resample.sampling_strategy")
    configs = [share.suggest(f"t{i}") for i in range(200)]
    lr = np.array([c["train.lr"] for c in configs])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    assert (np.log10(lr) < -2.5).mean() == pytest.approx(0.5, abs=0.12)  # log-uniform
    assert all(0 <= c["loss.gamma"] <= 3 for c in configs)
    assert {c["train.batch_size"] for c in configs} <= set(range(16, 65))
    assert {c["resample.sampling_strategy"] for c in configs} == {'"auto"', '{"power": 0.5}'}
    assert {c["loss.name"] for c in configs} == {"focal"}
    again = KindShare(SPACE, seed=3, encoded=lambda key: key == "resample.sampling_strategy")
    assert [again.suggest(f"t{i}")["train.lr"] for i in range(5)] == list(lr[:5])


def test_a_restored_search_goes_on_from_the_saved_time_and_draws(tmp_path):
    clock = Clock()
    share = KindShare(SPACE, seed=0, clock=clock)
    _run(share, clock, 5, {"mlp": 4.0, "linear": 1.0})
    share.save(str(tmp_path / "state.json"))
    json.loads((tmp_path / "state.json").read_text())  # plain JSON, no pickle
    restored = KindShare(SPACE, seed=99, clock=clock)
    restored.restore(str(tmp_path / "state.json"))
    assert restored.spent == share.spent and restored.count == share.count
    assert _run(restored, clock, 6, {"mlp": 4.0, "linear": 1.0}) == _run(
        share, clock, 6, {"mlp": 4.0, "linear": 1.0}
    )


def test_a_space_it_cannot_share_is_refused():
    with pytest.raises(ValueError, match="choice or grid"):
        KindShare({"train.lr": Dist("uniform", (0.0, 1.0))})
    with pytest.raises(ValueError, match=r"\['loss.name'\] cannot be a grid"):
        KindShare({**SPACE, "loss.name": Dist("grid", ("ce", "focal"))})
    with pytest.raises(SpecError, match="kind_share"):
        TuneSpec(kind_share="time", scheduler="tpe")


def test_draw_keeps_each_forms_values():
    rng = np.random.default_rng(0)
    assert draw(Dist("fixed", ({"power": 0.5},)), rng, True) == '{"power": 0.5}'
    assert draw(Dist("choice", (1, 2)), rng, False) in (1, 2)
    assert isinstance(draw(Dist("randint", (0, 3)), rng, False), int)


@pytest.mark.slow
def test_a_tune_search_gives_the_cheap_kind_most_trials(ray_local, tmp_path):
    """A real Tune search, one trial at a time: trials of 'mlp' take 4 s, of 'linear' none;
    with kind_share trials each would get 6 of the 12."""
    from ray import tune

    from engine.tune import new_tuner

    space = {"model.kind": SPACE["model.kind"], "train.lr": SPACE["train.lr"]}

    def toy_trial(config):  # stands in for run_trial (nested: pickled by value)
        import time

        from ray import tune

        if config["model.kind"] == "mlp":
            time.sleep(4.0)
        tune.report({"val_macro_f1": config["train.lr"], "epoch": 0})

    spec = TuneSpec(num_samples=6, scheduler="fifo", kind_share="time", seed=1)
    trainable = tune.with_resources(toy_trial, {"cpu": 0.01})
    grid = new_tuner(trainable, spec, 1, space, 1, str(tmp_path / "ray")).fit()
    assert len(grid) == 12 and not grid.errors
    kinds = [r.config["model.kind"] for r in grid]
    assert kinds.count("linear") >= 8, kinds
    assert all(1e-4 <= r.config["train.lr"] <= 1e-1 for r in grid)
