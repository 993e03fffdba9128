"""Baseline (g) of bench_quality.py: AutoGluon's TabularPredictor on the engine's splits.

    /path/to/ag-venv/bin/python benchmarks/autogluon_baseline.py --data DIR --time-limit 300 \
        --out proba.npy

Run by ``bench_quality.py --autogluon-python PYTHON`` with the Python of a separate virtual
environment: ``autogluon.tabular`` pins pyarrow and pandas below the engine's, so it cannot be
installed beside the engine (``pip install "autogluon.tabular[lightgbm]==1.6.3"`` into its own
venv: it needs no torch; without the ``lightgbm`` extra AutoGluon skips its LightGBM models).
This script imports nothing of the engine: ``DIR`` holds ``train.parquet``,
``val.parquet`` and ``test.parquet`` with the model's input columns and the int class index
``y`` (0..K-1, written by bench_quality.py), and ``classes.json`` with K. The predictor is
fitted on train with val as its tuning data (``presets="medium_quality"``,
``eval_metric="f1_macro"``, ``time_limit`` seconds) and its test probabilities are written as
an (N, K) float64 array, a class it never saw at 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LABEL = "y"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of {train,val,test}.parquet")
    p.add_argument("--time-limit", type=float, required=True, help="seconds for the fit")
    p.add_argument("--out", required=True, help="where the (N, K) test probabilities go (.npy)")
    args = p.parse_args()
    from autogluon.tabular import TabularPredictor

    data = Path(args.data)
    k = int(json.loads((data / "classes.json").read_text()))
    train, val, test = (pd.read_parquet(data / f"{s}.parquet") for s in ("train", "val", "test"))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as models:
        predictor = TabularPredictor(
            label=LABEL, eval_metric="f1_macro", path=models, verbosity=1
        ).fit(
            train,
            tuning_data=val,
            presets="medium_quality",
            time_limit=args.time_limit,
        )
        proba = predictor.predict_proba(test.drop(columns=[LABEL]))
        seconds = time.time() - t0
        leader = predictor.model_best
    out = np.zeros((len(test), k))
    for col in proba.columns:
        out[:, int(col)] = proba[col].to_numpy()
    np.save(args.out, out)
    print(json.dumps({"seconds": round(seconds, 1), "best_model": leader}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
