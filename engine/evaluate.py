"""Scoring an exported model on a split of the run (test by default).

    m = evaluate_split(spec, "runs/x/train/best", split="test")
    m["macro_f1"], m["tail_recall"], m["per_class"]["NUM:ord"]["recall"]

The split's rows go through the same Ray Data stage as training (tokenization, feature
stacking, or the lexical model's own saved vectorizer); the model runs on the driver, which
suits evaluation sets of thousands of rows.
``tail`` classes are the third of the classes with the fewest training rows (at least one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.config import JobSpec
from engine.data import read_dataset, read_schema, resolve_columns, resolve_source
from engine.metrics import classification_metrics
from engine.models import load_model, logits_of
from engine.rundir import RunDir


def tail_classes(train_counts: dict[str, int], fraction: float = 1 / 3) -> list[str]:
    """The ``fraction`` of classes with the fewest training rows (ties by label)."""
    order = sorted(train_counts, key=lambda k: (train_counts[k], k))
    return order[: max(1, round(len(order) * fraction))]


def predict_proba(model: torch.nn.Module, arrays: dict[str, np.ndarray], batch_size: int = 256):
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(arrays["label"]), batch_size):
            batch = {
                k: torch.as_tensor(v[start : start + batch_size])
                for k, v in arrays.items()
                if k != "label"
            }
            for k in ("input_ids", "attention_mask", "lex_idx"):
                if k in batch:
                    batch[k] = batch[k].long()
            out.append(torch.softmax(logits_of(model, batch).float(), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate_split(spec: JobSpec, model_dir: str, split: str = "test") -> dict[str, Any]:
    """Metrics of the model in ``model_dir`` on the run's ``<split>`` (embedded when the run
    embeds its text), by label key."""
    from engine.train import input_data, materialize, preprocess, resolved_model

    run = RunDir(spec.run_dir)
    model, label_map = load_model(model_dir)
    source = resolve_source(run.model_split(split))
    cols = resolve_columns(read_schema(source), input_data(spec), where=source.files[0])
    vectorizer = getattr(model, "vectorizer", None)  # a lexical model featurizes with its own
    ds = preprocess(read_dataset(source), cols, resolved_model(spec), label_map, vectorizer)
    arrays = materialize(ds)
    m = classification_metrics(arrays["label"], predict_proba(model, arrays))
    keys = label_map.keys
    m["per_class"] = {keys[c]: v for c, v in m["per_class"].items()}
    m["absent"] = [keys[c] for c in m["absent"]]
    train_counts = run.require_splits()["counts"]["train"]
    tail = tail_classes(train_counts)
    recalls = [m["per_class"][k]["recall"] for k in tail if m["per_class"][k]["support"] > 0]
    m["tail"] = tail
    m["tail_recall"] = float(np.mean(recalls)) if recalls else float("nan")
    return m
