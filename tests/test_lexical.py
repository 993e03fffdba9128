"""The lexical model: hashed n-gram TF-IDF against scikit-learn, document frequencies as Ray
tasks, truncation, saving, the EmbeddingBag model against a dense matmul, the lazy sparse
optimizer against AdamW, and (slow) training on the real TREC-50 end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from engine.config import ModelSpec, SpecError, dump_spec, load_spec
from engine.data import LabelMap, resolve_source
from engine.lexical import (
    LazyAdamW,
    LexicalClassifier,
    LexicalParams,
    Vectorizer,
    clip_grad_norm,
    document_frequencies,
    fit_vectorizer,
    top_terms,
)
from engine.models import build_model, load_model, logits_of, save_model

CORPUS = [
    "What is the capital of France ?",
    "Who wrote Hamlet ?",
    "How many people live in Tokyo ?",
    "What is the boiling point of water in Fahrenheit ?",
    "What does NASA stand for ?",
    "Who was the first man on the moon ?",
    "How far is the moon from the earth ?",
    "What is the capital of the capital of nothing , really",
    "",
    "Why is the sky blue ?",
    "the the the THE the",
    "Ünïcödé wörds and punctuation !?!",
]


def _sklearn_rows(texts, params: LexicalParams, fit_on=None) -> np.ndarray:
    """The same features with scikit-learn alone: HashingVectorizers hstacked + TfidfTransformer."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    def hashed(t):
        parts = []
        if params.word_ngrams:
            parts.append(
                HashingVectorizer(
                    analyzer="word",
                    ngram_range=params.word_ngrams,
                    n_features=params.word_features,
                    alternate_sign=False,
                    norm=None,
                ).transform(t)
            )
        if params.char_ngrams:
            parts.append(
                HashingVectorizer(
                    analyzer="char_wb",
                    ngram_range=params.char_ngrams,
                    n_features=params.n_features - params.word_features,
                    alternate_sign=False,
                    norm=None,
                ).transform(t)
            )
        return sp.hstack(parts).tocsr()

    tfidf = TfidfTransformer(sublinear_tf=params.sublinear_tf, smooth_idf=True)
    tfidf.fit(hashed(fit_on if fit_on is not None else texts))
    return tfidf.transform(hashed(texts)).toarray()


def _dense(idx: np.ndarray, val: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((idx.shape[0], n))
    np.add.at(out, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), val.ravel())
    return out


@pytest.mark.parametrize(
    "word, char, sublinear",
    [((1, 2), (2, 4), True), ((1, 2), (2, 4), False), ((1, 1), None, True), (None, (1, 3), True)],
)
def test_rows_equal_the_sklearn_pipeline(word, char, sublinear):
    params = LexicalParams(
        n_features=2**11, word_ngrams=word, char_ngrams=char, sublinear_tf=sublinear, max_terms=512
    )
    vec = Vectorizer.from_df(params, document_frequencies(CORPUS, params), len(CORPUS))
    ref = _sklearn_rows(CORPUS, params)
    np.testing.assert_allclose(vec.tfidf(CORPUS).toarray(), ref, atol=1e-6)
    idx, val = vec.transform(CORPUS)
    assert idx.shape == val.shape == (len(CORPUS), 512)
    assert idx.dtype == np.int64 and val.dtype == np.float32
    assert (val > 0).sum(1).max() < 512  # nothing truncated: the padded rows are the full rows
    np.testing.assert_allclose(_dense(idx, val, params.n_features), ref, atol=1e-6)
    # texts never seen: the idf of the fit corpus, as TfidfTransformer.transform
    new = ["What is the capital of Peru ?", "zzz qqq"]
    np.testing.assert_allclose(
        vec.tfidf(new).toarray(), _sklearn_rows(new, params, fit_on=CORPUS), atol=1e-6
    )


def test_word_and_char_columns_are_disjoint_halves():
    p = LexicalParams(n_features=2**10, max_terms=300)
    vec = Vectorizer.from_df(p, document_frequencies(CORPUS, p), len(CORPUS))
    words = Vectorizer.from_df(
        LexicalParams(n_features=2**10, char_ngrams=None), np.ones(2**10, np.int64), 1
    )
    x = vec.tfidf(["hello world"])
    assert x.nnz > 3 and set(x.indices[x.indices < 2**9]) == {
        i % 2**9 for i in words.tfidf(["hello world"]).indices
    }
    assert p.word_features == 2**9 and (x.indices >= 2**9).sum() > 0


def test_truncation_keeps_the_largest_weights_without_renormalizing():
    params = LexicalParams(n_features=2**12, max_terms=5)
    vec = Vectorizer.from_df(params, document_frequencies(CORPUS, params), len(CORPUS))
    full = vec.tfidf(CORPUS)
    idx, val = vec.transform(CORPUS)
    for r in range(len(CORPUS)):
        row = full.getrow(r)
        top = np.sort(row.data)[::-1][:5]
        assert np.allclose(val[r, : len(top)], top)  # largest first, the exact full-row weights
        assert np.all(val[r, len(top) :] == 0) and np.all(idx[r, len(top) :] == 0)
        kept = {int(i): float(v) for i, v in zip(idx[r], val[r]) if v > 0}
        assert all(np.isclose(row[0, i], v) for i, v in kept.items())
    assert np.all(val[8] == 0)  # the empty text: all padding
    assert np.all(np.linalg.norm(val, axis=1)[[0, 1, 2]] < 1)  # not re-normalized


def test_top_terms_breaks_ties_by_column_and_is_deterministic():
    x = sp.csr_matrix(np.array([[0, 0.5, 0, 0.5, 0.2], [0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0]]))
    idx, val = top_terms(x, 2)
    assert idx.tolist() == [[1, 3], [0, 0], [0, 0]]
    assert val.tolist() == [[0.5, 0.5], [0, 0], [1.0, 0]]
    p = LexicalParams(n_features=2**12)
    a = Vectorizer.from_df(p, document_frequencies(CORPUS, p), len(CORPUS))
    b = Vectorizer.from_df(p, document_frequencies(list(CORPUS), p), len(CORPUS))
    for x, y in zip(a.transform(CORPUS), b.transform(CORPUS)):
        assert np.array_equal(x, y)


def test_idf_from_ray_tasks_over_files_equals_the_in_memory_one(ray_local, tmp_path):
    texts = [f"{CORPUS[i % len(CORPUS)]} number {i % 7}" for i in range(300)]
    texts[5] = None  # a null text has no terms
    table = pa.table({"label": [i % 3 for i in range(300)], "text": texts})
    for i, part in enumerate(np.array_split(np.arange(300), 4)):
        pq.write_table(table.take(part), tmp_path / f"p{i}.parquet", row_group_size=30)
    table.to_pandas().to_csv(tmp_path / "all.csv", index=False)
    params = LexicalParams(n_features=2**12)
    want = Vectorizer.from_df(params, document_frequencies(texts, params), 300)
    for source in (
        resolve_source(str(tmp_path / "*.parquet")),
        resolve_source(str(tmp_path / "*.csv")),
    ):
        got = fit_vectorizer(source, "text", params)
        assert got.n_docs == 300
        assert np.array_equal(got.idf, want.idf)
    # hashing is the same in another process (MurmurHash3, not Python's seeded hash)
    remote = ray_local.remote(lambda v, t: v.transform(t))
    idx, val = ray_local.get(remote.remote(want, CORPUS))
    local = want.transform(CORPUS)
    assert np.array_equal(idx, local[0]) and np.array_equal(val, local[1])


def test_vectorizer_saves_json_and_safetensors_only(tmp_path):
    params = LexicalParams(n_features=2**10, word_ngrams=(1, 3), char_ngrams=None, max_terms=7)
    vec = Vectorizer.from_df(params, document_frequencies(CORPUS, params), len(CORPUS))
    vec.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["idf.safetensors", "lexical.json"]
    meta = json.loads((tmp_path / "lexical.json").read_text())
    assert meta["params"]["word_ngrams"] == [1, 3] and meta["n_docs"] == len(CORPUS)
    back = Vectorizer.load(str(tmp_path))
    assert back.params == params and np.array_equal(back.idf, vec.idf)
    for x, y in zip(back.transform(CORPUS), vec.transform(CORPUS)):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("hidden", [[], [8], [8, 6]])
def test_classifier_is_a_sparse_matmul_and_padding_adds_nothing(hidden):
    torch.manual_seed(0)
    n, k = 64, 5
    model = LexicalClassifier(n, hidden, k, dropout=0.3).eval()
    with torch.no_grad():
        model.bag.weight.normal_()
    idx = torch.randint(0, n, (4, 6))
    val = torch.rand(4, 6)
    val[1, 3:] = 0  # padding slots
    x = torch.zeros(4, n).index_put_(
        (torch.arange(4).repeat_interleave(6), idx.ravel()), val.ravel(), accumulate=True
    )
    h = x @ model.bag.weight + model.bias
    want = model.net(h) if hidden else h
    got = model(idx, val)
    assert got.shape == (4, k)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    pad_idx = torch.cat([idx, torch.randint(0, n, (4, 3))], 1)
    pad_val = torch.cat([val, torch.zeros(4, 3)], 1)
    torch.testing.assert_close(model(pad_idx, pad_val), got)
    if not hidden:  # a column never seen in training has weight 0
        assert torch.count_nonzero(LexicalClassifier(n, [], k).bag.weight) == 0


def test_lazy_adamw_is_adamw_on_touched_rows_and_leaves_others_alone():
    torch.manual_seed(0)
    w0 = torch.randn(10, 3)
    lazy = torch.nn.EmbeddingBag(10, 3, mode="sum", sparse=True)
    dense = torch.nn.EmbeddingBag(10, 3, mode="sum")
    lin0 = torch.nn.Linear(3, 2)
    lin_a, lin_b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for m in (lin_a, lin_b):
        m.load_state_dict(lin0.state_dict())
    for m in (lazy, dense):
        m.weight.data.copy_(w0)
    oa = LazyAdamW([*lazy.parameters(), *lin_a.parameters()], lr=0.05, weight_decay=0.1)
    ob = torch.optim.AdamW([*dense.parameters(), *lin_b.parameters()], lr=0.05, weight_decay=0.1)
    idx = torch.tensor([[0, 1, 2], [3, 4, 2]])  # rows 0-4, every step; rows 5-9 never
    for _ in range(6):
        val = torch.rand(2, 3)
        for bag, lin, opt, clip in (
            (lazy, lin_a, oa, clip_grad_norm),
            (dense, lin_b, ob, torch.nn.utils.clip_grad_norm_),
        ):
            lin(bag(idx, per_sample_weights=val)).pow(2).sum().backward()
            clip([*bag.parameters(), *lin.parameters()], 0.3)
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(lazy.weight[:5], dense.weight[:5])
    torch.testing.assert_close(lin_a.weight, lin_b.weight)
    assert torch.equal(lazy.weight[5:], w0[5:])  # lazy: no decay or momentum on absent rows
    assert not torch.allclose(dense.weight[5:], w0[5:])  # AdamW decays every row
    state = oa.state_dict()  # checkpointable like any optimizer
    oa2 = LazyAdamW([*lazy.parameters(), *lin_a.parameters()], lr=0.05)
    oa2.load_state_dict(state)


def test_model_round_trip_carries_the_vectorizer(tmp_path):
    lm = LabelMap.from_values("label", "string", ["DESC", "HUM", "LOC", "NUM"])
    spec = ModelSpec(kind="lexical", hidden=[16], n_features=2**12, max_terms=64)
    params = LexicalParams.from_spec(spec)
    vec = Vectorizer.from_df(params, document_frequencies(CORPUS, params), len(CORPUS))
    model = build_model(spec, lm, vectorizer=vec).eval()
    assert isinstance(model, LexicalClassifier)
    save_model(model, str(tmp_path / "m"), lm)
    assert sorted(os.listdir(tmp_path / "m")) == [
        "config.json",
        "idf.safetensors",
        "label_map.json",
        "lexical.json",
        "model.safetensors",
    ]
    loaded, lm2 = load_model(str(tmp_path / "m"))
    loaded.eval()
    assert lm2 == lm and isinstance(loaded, LexicalClassifier)
    batch = loaded.encode(["Who wrote Hamlet ?", "Where is Tokyo ?"])  # raw text, folder alone
    torch.testing.assert_close(
        logits_of(loaded, batch),
        logits_of(model, model.encode(["Who wrote Hamlet ?", "Where is Tokyo ?"])),
    )
    assert logits_of(loaded, batch).shape == (2, 4)


def test_spec_fields_round_trip_through_yaml_and_set(tmp_path):
    spec = load_spec(
        None,
        [
            "model.kind=lexical",
            "model.char_ngrams=null",
            "model.word_ngrams=[1, 3]",
            "model.n_features=65536",
            "model.max_terms=32",
            "model.sublinear_tf=false",
            "model.hidden=[]",
        ],
    )
    m = spec.model
    assert (m.char_ngrams, m.word_ngrams, m.n_features, m.max_terms) == (None, [1, 3], 65536, 32)
    assert m.sublinear_tf is False and m.hidden == []
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(dump_spec(spec))
    assert load_spec(cfg) == spec
    p = LexicalParams.from_spec(m)
    assert p.word_ngrams == (1, 3) and p.char_ngrams is None and p.word_features == 65536
    assert ModelSpec().n_features == 2**18 and ModelSpec().char_ngrams == [2, 4]


@pytest.mark.parametrize(
    "override, key, reason",
    [
        ("model.word_ngrams=[2, 1]", "model.word_ngrams", "1 <= lo <= hi"),
        ("model.char_ngrams=[3]", "model.char_ngrams", "[lo, hi]"),
        ("model.max_terms=0", "model.max_terms", ">= 1"),
        ("model.n_features=1", "model.n_features", "must be in [2"),
        ("model.word_ngrams=null", "model.char_ngrams", "both null"),
        ("model.sublinear_tf=maybe", "model.sublinear_tf", "must be bool"),
    ],
)
def test_bad_lexical_settings_name_the_key(override, key, reason):
    extra = ["model.char_ngrams=null"] if "both null" in reason else []
    with pytest.raises(SpecError) as info:
        load_spec(None, [*extra, override])
    assert info.value.key == key and reason in info.value.reason


def test_lexical_without_text_or_with_smote_is_a_clear_error():
    from engine.train import input_data

    feats = load_spec(None, ["model.kind=lexical", "data.features=[a, b]"])
    with pytest.raises(ValueError, match="model.kind=lexical needs data.text"):
        input_data(feats)
    smote = load_spec(None, ["model.kind=lexical", "data.text=t", "resample.method=smote"])
    with pytest.raises(ValueError, match="resample.method=smote"):
        input_data(smote)
    plain = load_spec(None, ["model.kind=lexical", "data.text=t"])
    assert input_data(plain).text == "t"


@pytest.mark.slow
def test_train_lexical_on_trec50_exports_a_self_contained_model(
    ray_local, trec50, tmp_path, capsys
):
    from engine.evaluate import evaluate_split
    from jobs import cli

    run = tmp_path / "run"
    sets = [
        f"data.path={trec50}",
        f"run_dir={run}",
        "model.kind=lexical",
        "model.hidden=[64]",
        "train.lr=0.01",
        "train.epochs=4",
        "train.num_workers=2",  # DDP with the bag's sparse gradients
        "loss.name=weighted_ce",
        "loss.weights=inverse",
    ]
    args = ["train", "jobs/configs/trec50.yaml"]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0, capsys.readouterr().err
    history = json.loads((run / "train" / "metrics.json").read_text())
    best_f1 = max(row["val_macro_f1"] for row in history)
    assert best_f1 > 0.4  # 50 classes: chance is ~0.02; measured ~0.5-0.6
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = run / "train" / "best"
    assert {"lexical.json", "idf.safetensors", "model.safetensors", "config.json"} <= set(
        os.listdir(best)
    )
    spec = load_spec("jobs/configs/trec50.yaml", sets)
    m = evaluate_split(spec, str(best), "test")
    assert m["macro_f1"] > 0.35 and 0 <= m["tail_recall"] <= 1
    model, lm = load_model(str(best))
    model.eval()
    probs = torch.softmax(logits_of(model, model.encode(["How far is Yaroslavl from Moscow ?"])), 1)
    assert lm.keys[int(probs.argmax())] == "NUM:dist"


def test_inputs_stage_makes_int32_indices_that_reach_the_model_as_long():
    from engine.data import Columns
    from engine.train import _to_device, _to_inputs, preprocess

    lm = LabelMap.from_values("label", "string", ["a", "b"])
    spec = ModelSpec(kind="lexical", n_features=2**10, max_terms=16)
    params = LexicalParams.from_spec(spec)
    vec = Vectorizer.from_df(params, document_frequencies(CORPUS, params), len(CORPUS))
    cols = Columns("label", "text", (), None, None, ("label", "text"))
    batch = {"label": np.array(["a", "b", "a"]), "text": np.array(CORPUS[:2] + [None], object)}
    out = _to_inputs(batch, cols, spec, lm, vec)
    assert out["lex_idx"].dtype == np.int32 and out["lex_idx"].shape == (3, 16)
    assert out["label"].tolist() == [0, 1, 0] and np.all(out["lex_val"][2] == 0)
    idx, val = vec.transform(CORPUS[:2])
    assert np.array_equal(out["lex_idx"][:2], idx) and np.array_equal(out["lex_val"][:2], val)
    dev = _to_device(out, torch.device("cpu"))
    assert dev["lex_idx"].dtype == torch.int64 and dev["lex_val"].dtype == torch.float32
    with pytest.raises(ValueError, match="needs the vectorizer"):
        preprocess(None, cols, spec, lm)
    no_text = Columns("label", None, ("x",), None, None, ("label", "x"))
    with pytest.raises(ValueError, match="needs data.text"):
        preprocess(None, no_text, spec, lm, vec)


def test_the_bag_trains_with_dense_gradients_across_cuda_workers():
    """NCCL cannot all-reduce sparse gradients: several CUDA workers get a dense bag; CPU
    workers (gloo) and a single GPU keep the sparse one."""
    import torch

    from engine.lexical import LexicalClassifier, fit_for_ddp

    for device, world, sparse in (("cuda", 2, False), ("cuda", 1, True), ("cpu", 2, True)):
        model = LexicalClassifier(64, [], 3)
        fit_for_ddp(model, torch.device(device), world)
        assert model.bag.sparse is sparse
        ids = torch.tensor([[1, 2], [3, 0]])
        weights = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
        model(ids, weights).sum().backward()
        assert model.bag.weight.grad.is_sparse is sparse
