"""A search that shares its time between model kinds, not its trials (``tune.kind_share: time``).

    searcher = KindShare(space, seed=0)            # a Tune Searcher; space: {key: Dist}
    Tuner(..., search_alg=SearchGenerator(ConcurrencyLimiter(searcher, 2)))

Each new trial takes the model kind that has used the least wall time so far — its finished
trials' seconds plus its running trials' seconds since they started —, ties going to the kind
with fewer trials, then to the space's order. Every other knob is drawn at random from its
distribution. A kind whose trials take seconds (a linear solve, a boosted-trees fit) so gets
many trials in the time one fine-tuning trial takes, and ``tune.time_budget_s`` decides how
many trials there are in all. Which kind a trial gets depends on how long the trials before it
took: unlike the grid, two runs on machines of different speed may split the trials
differently (each trial's knobs still come from the seeded draws in order).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from ray.tune.search import Searcher

KIND = "model.kind"


def draw(d: Any, rng: np.random.Generator, encoded: bool) -> Any:
    """One value of the grammar's ``Dist`` ``d`` (``engine.config``); ``encoded``: choices
    travel as JSON text, as ``engine.tune.to_param_space`` makes them."""
    if d.form in ("fixed", "choice", "grid"):
        v = d.args[0] if d.form == "fixed" else d.args[int(rng.integers(len(d.args)))]
        return json.dumps(v) if encoded else v
    lo, hi = d.args
    if d.form == "uniform":
        return float(rng.uniform(lo, hi))
    if d.form == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if d.form == "randint":
        return int(rng.integers(lo, hi))
    raise ValueError(f"cannot draw from the form {d.form!r}")


class KindShare(Searcher):
    """Tune ``Searcher``: the kind with the least time so far, the other knobs at random.

    ``space``: the resolved search space ({key: Dist}; ``model.kind`` a choice or grid of the
    kinds); ``encoded(key)``: whether that knob's values travel as JSON text; ``clock``: the
    wall clock (seconds)."""

    def __init__(
        self,
        space: Mapping[str, Any],
        *,
        seed: int = 0,
        encoded: Callable[[str], bool] = lambda key: False,
        metric: str | None = None,
        mode: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        d = space.get(KIND)
        if d is None or d.form not in ("choice", "grid"):
            raise ValueError(
                f"tune.kind_share=time shares time between the kinds of a {KIND} choice or "
                "grid in the search space"
            )
        grids = [k for k, v in space.items() if v.form == "grid" and k != KIND]
        if grids:
            raise ValueError(
                f"tune.kind_share=time draws every knob but {KIND} at random: {grids} cannot "
                "be a grid (use choice)"
            )
        self.kinds = [str(k) for k in d.args]
        self.knobs = {k: v for k, v in space.items() if k != KIND}
        self.encoded = {k: bool(encoded(k)) for k in self.knobs}
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.spent = {k: 0.0 for k in self.kinds}
        self.count = {k: 0 for k in self.kinds}
        self.running: dict[str, tuple[str, float]] = {}  # trial id -> (kind, started)

    def used(self, kind: str) -> float:
        """Seconds ``kind`` has used: finished trials, and running ones until now."""
        now = self.clock()
        return self.spent[kind] + sum(now - t for k, t in self.running.values() if k == kind)

    def next_kind(self) -> str:
        return min(self.kinds, key=lambda k: (self.used(k), self.count[k], self.kinds.index(k)))

    def suggest(self, trial_id: str) -> dict[str, Any]:
        kind = self.next_kind()
        self.count[kind] += 1
        self.running[trial_id] = (kind, self.clock())
        config = {k: draw(d, self.rng, self.encoded[k]) for k, d in self.knobs.items()}
        return {KIND: kind, **config}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        started = self.running.pop(trial_id, None)
        if started is not None:
            self.spent[started[0]] += self.clock() - started[1]

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def get_state(self) -> dict[str, Any]:
        """What a restored search needs: the seconds and trials per kind and the draws' state
        (trials running when the search stopped are run again: their time starts anew)."""
        return {
            "spent": dict(self.spent),
            "count": dict(self.count),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.spent = {k: float(state["spent"].get(k, 0.0)) for k in self.kinds}
        self.count = {k: int(state["count"].get(k, 0)) for k in self.kinds}
        self.rng.bit_generator.state = state["rng"]
        self.running = {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))
