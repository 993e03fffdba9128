"""Builders of a small two-member ensemble (lexical + MLP over tiny-encoder embeddings) for the
ensemble and predict tests (driver side only: Ray workers never import this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from engine.config import JobSpec, ThresholdSpec, load_spec
from engine.data import LabelMap
from engine.ensemble import combine, fit_combination, model_ref, score_splits, write_artifact
from engine.thresholds import fit_thresholds

WORDS = {
    "ant": "tiny colony insect forage",
    "bee": "honey hive pollen buzz",
    "cat": "purr whisker meow tail",
}


def _texts(rng: np.random.Generator, label: str, n: int) -> list[str]:
    words = WORDS[label].split() + ["the", "a", "of", "some"]
    return [" ".join(rng.choice(words, size=rng.integers(3, 8))) for _ in range(n)]


def _table(seed: int, counts: dict[str, int]) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, n in counts.items():
        texts += _texts(rng, label, n)
        labels += [label] * n
    order = rng.permutation(len(texts))
    return pa.table(
        {
            "text": [texts[i] for i in order],
            "label": [labels[i] for i in order],
            "id": np.arange(len(texts))[order],
        }
    )


def _spec(tmp: Path) -> JobSpec:
    return load_spec(
        None,
        [
            f"run_dir={tmp / 'run'}",
            "data.text=text",
            "data.label=label",
            "model.kind=mlp",
            "embed.model=tiny",
            "embed.max_length=16",
        ],
    )


def _members(tmp: Path, spec: JobSpec, train: pa.Table, label_map: LabelMap):
    """A lexical model and an MLP over the tiny encoder's embeddings, briefly trained."""
    from engine.embed import load_encoder, mean_pool
    from engine.lexical import LexicalClassifier, LexicalParams, Vectorizer, document_frequencies
    from engine.models import MLPClassifier, save_model

    texts = train.column("text").to_pylist()
    y = torch.as_tensor(label_map.encode(train.column("label")))
    params = LexicalParams(n_features=1 << 12)
    vec = Vectorizer.from_df(params, document_frequencies(texts, params), len(texts))
    torch.manual_seed(0)
    lexical = LexicalClassifier(params.n_features, [], 3, 0.0, vec)
    mlp = MLPClassifier(32, [8], 3, 0.0)
    tok, enc = load_encoder(spec.embed)
    x = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        emb = mean_pool(enc(**x).last_hidden_state, x["attention_mask"])
    lex_in = lexical.encode(texts)
    for model, inputs in ((lexical, lex_in), (mlp, {"features": emb})):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            out = model(**inputs) if "features" not in inputs else model(inputs["features"])
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
    dirs = []
    for name, model in (("lex", lexical), ("mlp", mlp)):
        save_model(model, str(tmp / name), label_map)
        dirs.append(str(tmp / name))
    return dirs


def build_ensemble(tmp: Path) -> dict:
    """Splits, two members, their scores on val/test through the pool, and an artifact."""
    spec = _spec(tmp)
    counts = {"ant": 120, "bee": 40, "cat": 10}
    train = _table(0, counts)
    label_map = LabelMap.from_values("label", "string", ["ant", "bee", "cat"])
    for name, seed, scale in (("val", 1, 1), ("test", 2, 1)):
        (tmp / name).mkdir()
        pq.write_table(
            _table(seed, {k: v // 2 * scale for k, v in counts.items()}), tmp / name / "p.parquet"
        )
    lex_dir, mlp_dir = _members(tmp, spec, train, label_map)
    refs = [model_ref(spec.data, "m1", lex_dir), model_ref(spec.data, "m2", mlp_dir)]
    assert [(r.kind, r.inputs) for r in refs] == [("lexical", "text"), ("mlp", "embedding")]
    scores = score_splits(
        refs, {"val": str(tmp / "val"), "test": str(tmp / "test")}, spec.data, label_map, spec.embed
    )
    fit = fit_combination(scores["val"].y, [scores["val"].proba[r.name] for r in refs])
    p_val = combine(
        [scores["val"].proba[r.name] for r in refs],
        fit.weights,
        fit.temperature,
        fit.member_temperatures,
    )
    thresholds = fit_thresholds(scores["val"].y, p_val, ThresholdSpec(cv_folds=0))
    art = write_artifact(
        spec.data,
        refs,
        fit,
        thresholds,
        str(tmp / "ensemble"),
        label_map,
        embed=spec.embed,
        run_name=spec.name,
    )
    return {
        "tmp": tmp,
        "spec": spec,
        "refs": refs,
        "scores": scores,
        "fit": fit,
        "thresholds": thresholds,
        "artifact": art,
        "label_map": label_map,
    }
