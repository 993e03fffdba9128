"""A search that uses the time it is given: no trial starts once the budget is spent.

    search_alg = BudgetedSearch(BasicVariantGenerator(...), budget_s=600, started_at=t0)

Wraps any Tune search algorithm. The budget counts from ``started_at`` (wall clock, the
search's first start, so a restored search keeps its deadline); trials already running when it
is spent finish, and the search then ends. Tune's own ``TuneConfig(time_budget_s)`` instead
stops the running trials too, which throws their training away.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.search.search_algorithm import SearchAlgorithm


class BudgetedSearch(SearchAlgorithm):
    def __init__(self, inner: SearchAlgorithm, budget_s: float | None, started_at: float):
        self.inner = inner
        self.budget_s = budget_s
        self.started_at = started_at
        self.spent = False

    def _over(self) -> bool:
        if self.budget_s is not None and time.time() - self.started_at >= self.budget_s:
            self.spent = True
        return self.spent

    @property
    def metric(self):
        return self.inner.metric

    @property
    def mode(self):
        return self.inner.mode

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    @property
    def total_samples(self) -> int:
        return self.inner.total_samples

    def add_configurations(self, experiments) -> None:
        self.inner.add_configurations(experiments)

    def next_trial(self):
        if self._over():
            return None
        return self.inner.next_trial()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return self._over() or self.inner.is_finished()

    def set_finished(self) -> None:
        self.inner.set_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return self.inner.has_checkpoint(dirpath)

    def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
        self.inner.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self.inner.restore_from_dir(dirpath)
