"""Models: offline MiniLM / tiny BERT with the label map, the MLP head, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.config import ModelSpec
from engine.data import LabelMap
from engine.models import (
    MLPClassifier,
    build_model,
    feature_matrix,
    load_model,
    load_tokenizer,
    logits_of,
    save_model,
    standardization,
)

LM = LabelMap.from_values("label", "string", ["ham", "spam", "eggs"])


def test_tiny_transformer_carries_the_label_map_and_round_trips(tmp_path):
    spec = ModelSpec(kind="transformer", path="tiny", max_length=16)
    model = build_model(spec, LM)
    assert model.config.id2label == {0: "eggs", 1: "ham", 2: "spam"}
    assert model.config.label2id["spam"] == 2
    tok = load_tokenizer(spec)
    enc = tok(["hello there", "buy now"], padding="max_length", max_length=16, return_tensors="pt")
    model.eval()
    logits = logits_of(model, dict(enc))
    assert logits.shape == (2, 3)
    save_model(model, str(tmp_path / "m"), LM, tokenizer=tok)
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert json.loads((tmp_path / "m" / "label_map.json").read_text())["labels"] == [
        "eggs",
        "ham",
        "spam",
    ]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")  # plain transformers
    AutoTokenizer.from_pretrained(tmp_path / "m")
    plain.eval()
    assert torch.allclose(plain(**enc).logits, logits, atol=1e-5)


@pytest.mark.integration
def test_minilm_loads_offline_with_a_new_head():
    model = build_model(ModelSpec(path="minilm"), LM)
    assert model.config.hidden_size == 384 and model.config.num_labels == 3


def test_mlp_round_trip_without_pickles(tmp_path):
    model = build_model(ModelSpec(kind="mlp", hidden=[16, 8]), LM, input_dim=5)
    assert isinstance(model, MLPClassifier)
    x = torch.randn(4, 5)
    model.eval()
    save_model(model, str(tmp_path / "mlp"), LM)
    loaded, lm = load_model(str(tmp_path / "mlp"))
    loaded.eval()
    assert lm == LM
    assert torch.equal(loaded(x), model(x))
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == [
        "config.json",
        "label_map.json",
        "model.safetensors",
    ]


def test_standardization_is_mean_and_inverse_std_and_constant_features_pass_through():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(200, 50, 1000), rng.normal(-3, 0.01, 1000), np.full(1000, 7.0)])
    shift, scale = standardization(len(x), x.sum(0), (x * x).sum(0))
    assert np.allclose(shift, x.mean(0)) and np.allclose(scale[:2], 1 / x.std(0)[:2])
    assert scale[2] == 1.0  # constant: shifted to 0, not divided by 0
    z = (x - shift) * scale
    assert np.allclose(z[:, :2].mean(0), 0, atol=1e-9) and np.allclose(z[:, :2].std(0), 1)
    with pytest.raises(ValueError, match="no training rows"):
        standardization(0, np.zeros(3), np.zeros(3))


def test_a_standardizing_mlp_keeps_its_shift_and_scale_in_the_safetensors(tmp_path):
    model = build_model(ModelSpec(kind="mlp", hidden=[8], standardize=True), LM, input_dim=3)
    model.set_standardization([100.0, 0.0, -5.0], [0.01, 1.0, 2.0])
    model.eval()
    x = torch.tensor([[100.0, 1.0, -5.0], [300.0, -1.0, -4.0]])
    # the same as a plain MLP with the same weights fed standardized inputs
    plain = MLPClassifier(3, [8], 3, 0.1)
    plain.net.load_state_dict(model.net.state_dict())
    plain.eval()
    z = (x - torch.tensor([100.0, 0.0, -5.0])) * torch.tensor([0.01, 1.0, 2.0])
    assert torch.allclose(model(x), plain(z))
    save_model(model, str(tmp_path / "m"), LM)
    loaded, _ = load_model(str(tmp_path / "m"))
    loaded.eval()
    assert torch.equal(loaded(x), model(x)) and torch.equal(loaded.scale, model.scale)
    with pytest.raises(ValueError, match="without standardize"):
        plain.set_standardization([0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="need 3 shifts"):
        model.set_standardization([0.0], [1.0])

    # a model saved before standardization existed (no key in its config) loads as before
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    save_model(plain, str(tmp_path / "old"), LM)
    old = json.loads((tmp_path / "old" / "config.json").read_text())
    del old["standardize"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    assert (
        cfg["standardize"] is True
        and not load_model(str(tmp_path / "old"))[0].config["standardize"]
    )


def test_mlp_needs_features_and_paths_must_exist():
    with pytest.raises(ValueError, match="set data.features"):
        build_model(ModelSpec(kind="mlp"), LM)
    with pytest.raises(ValueError, match="is not a folder"):
        build_model(ModelSpec(path="/no/such/model"), LM)


def test_feature_matrix_from_columns_or_a_vector():
    batch = {"a": np.array([1, 2]), "b": np.array([0.5, 1.5])}
    assert feature_matrix(batch, ["a", "b"], None).tolist() == [[1.0, 0.5], [2.0, 1.5]]
    vec = {"v": np.array([np.array([1.0, 2.0]), np.array([3.0, 4.0])], dtype=object)}
    assert feature_matrix(vec, [], "v").shape == (2, 2)
