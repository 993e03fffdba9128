"""The embeddings stage on a local 2-CPU Ray: the seeded "tiny" encoder for the mechanics
(columns, types, normalization, batch-size invariance, refusals, atomic files) and the offline
MiniLM against a direct transformers computation (integration)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import EmbedSpec, SpecError
from engine.data import resolve_source
from engine.embed import (
    MANIFEST,
    EmbedResult,
    embed_dataset,
    embed_files,
    encoder_dim,
    load_encoder,
    mean_pool,
    plan_pool,
)

N = 200
TOPICS = ["cats", "the weather", "tax law", "football", "a distant galaxy"]


def _table(n: int = N) -> pa.Table:
    """id, a text with repeats (50 distinct texts), a label, a float and a vector column."""
    texts = [f"question {i % 10} about {TOPICS[i % 50 // 10]}" for i in range(n)]
    texts[3] = ""  # empty strings are fine
    vec = np.arange(n * 3, dtype=np.float32)
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "text": texts,
            "label": np.arange(n, dtype=np.int64) % 4,
            "x": np.linspace(0, 1, n),
            "v": pa.FixedSizeListArray.from_arrays(pa.array(vec), 3),
        }
    )


def _collect(ds) -> pa.Table:
    import ray

    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    return table.sort_by("id")


def _vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    col = table.column(column).combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return _table()


@pytest.fixture(scope="module")
def embedded7(ray_local, table) -> pa.Table:
    """The table embedded by the tiny encoder in batches of 7 rows."""
    ds = ray_local.data.from_arrow(table)
    return _collect(embed_dataset(ds, "text", EmbedSpec(model="tiny", batch_size=7)))


# --------------------------------------------------------------------------------------------
# pure parts


def test_encoder_dim_reads_config_only():
    assert encoder_dim(EmbedSpec(model="tiny")) == 32
    assert encoder_dim(EmbedSpec(model="minilm")) == 384
    with pytest.raises(ValueError, match="exceeds the 512 positions"):
        encoder_dim(EmbedSpec(model="minilm", max_length=1000))
    with pytest.raises(ValueError, match="is not a folder"):
        encoder_dim(EmbedSpec(model="/no/such/model"))


def test_spec_validation():
    with pytest.raises(SpecError, match="max_length"):
        EmbedSpec(max_length=1)
    with pytest.raises(SpecError, match="actors"):
        EmbedSpec(actors=0)
    with pytest.raises(SpecError, match="column"):
        EmbedSpec(column="")


def test_plan_pool_from_cluster_resources():
    spec = EmbedSpec()
    p = plan_pool(spec, {"CPU": 2.0})
    assert (p.actors, p.num_cpus, p.num_gpus, p.threads, p.device) == (1, 1.0, 0, 2, "cpu")
    p = plan_pool(spec, {"CPU": 16.0})
    assert (p.actors, p.num_cpus, p.threads) == (8, 1.0, 2)
    p = plan_pool(EmbedSpec(actors=2), {"CPU": 2.0})  # one CPU stays free for reads
    assert (p.actors, p.num_cpus, p.threads) == (2, 0.5, 1)
    assert plan_pool(spec, {"CPU": 1.0}).num_cpus == 0.01
    p = plan_pool(spec, {"CPU": 16.0, "GPU": 2.0})
    assert (p.actors, p.num_cpus, p.num_gpus, p.threads, p.device) == (2, 1.0, 1, 8, "cuda")
    assert plan_pool(spec, {"CPU": 2.0, "GPU": 2.0}).num_cpus == 0.5
    assert plan_pool(EmbedSpec(actors=8), {"CPU": 16.0, "GPU": 2.0}).actors == 2


def test_mean_pool_ignores_padding():
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[0, 3:] = 1e6  # padded positions must not matter
    raw = mean_pool(noisy, mask, normalize=False)
    torch.testing.assert_close(raw[0], hidden[0, :3].mean(0))
    unit = mean_pool(hidden, mask)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))


def test_tiny_encoder_is_the_same_in_every_process():
    import torch

    before = torch.random.get_rng_state()
    _, a = load_encoder(EmbedSpec(model="tiny"))
    _, b = load_encoder(EmbedSpec(model="tiny"))
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is untouched
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not a.training


# --------------------------------------------------------------------------------------------
# embed_dataset


def test_embed_dataset_adds_a_normalized_fixed_size_column(embedded7, table):
    dim = encoder_dim(EmbedSpec(model="tiny"))
    assert embedded7.num_rows == N
    assert embedded7.column_names == [*table.column_names, "embedding"]
    for name in table.column_names:
        assert embedded7.schema.field(name).type == table.schema.field(name).type
        assert embedded7.column(name).equals(table.column(name))  # rows keep their values
    assert embedded7.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    v = _vectors(embedded7)
    assert v.shape == (N, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_equal_texts_equal_vectors_different_texts_differ(embedded7):
    v = _vectors(embedded7)
    texts = embedded7.column("text").to_pylist()
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        j = first.setdefault(t, i)
        np.testing.assert_allclose(v[i], v[j], atol=1e-5)  # in different batches of 7
    reps = np.array(sorted(first.values()))
    assert len(reps) == 51  # 50 texts + the empty one
    d = np.linalg.norm(v[reps][:, None] - v[reps][None], axis=2)
    assert d[~np.eye(len(reps), dtype=bool)].min() > 1e-3


def test_embed_dataset_refusals(ray_local):
    from_items = ray_local.data.from_items
    spec = EmbedSpec(model="tiny")
    with pytest.raises(ValueError, match="'embedding' already exists"):
        embed_dataset(from_items([{"text": "a", "embedding": 1.0}]), "text", spec)
    with pytest.raises(ValueError, match=r"text column 'body' is not in the dataset.*'text'"):
        embed_dataset(from_items([{"text": "a"}]), "body", spec)
    with pytest.raises(ValueError, match="'text' has type int64"):
        embed_dataset(from_items([{"text": 1}]), "text", spec)
    rows = [{"text": None if i in (2, 5) else f"t{i}"} for i in range(8)]
    with pytest.raises(ValueError, match=r"'text' has 2 null values in its 8 rows.*stats pass"):
        embed_dataset(from_items(rows), "text", spec)


# --------------------------------------------------------------------------------------------
# embed_files


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_embed_files_atomic_rerun_and_batch_invariance(
    ray_local, table, embedded7, tmp_path, monkeypatch
):
    src = tmp_path / "in"
    src.mkdir()
    for i, idx in enumerate(np.array_split(np.arange(N), 3)):
        pq.write_table(table.take(pa.array(idx)), src / f"p{i}.parquet")
    source = resolve_source(str(src))
    out = tmp_path / "runs" / "embedded"
    spec = EmbedSpec(model="tiny", batch_size=64)

    result = embed_files(source, str(out), "text", spec)
    assert isinstance(result, EmbedResult)
    assert (result.path, result.rows, result.dim) == (str(out), N, 32) and result.seconds > 0
    files = _listing(out)
    assert MANIFEST in files and all(
        f.startswith("part-") and f.endswith(".parquet") for f in files if f != MANIFEST
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("model", "dim", "column", "rows")} == {
        "model": "tiny",
        "dim": 32,
        "column": "embedding",
        "rows": N,
    }
    assert manifest["seconds"] > 0
    assert _listing(out.parent) == ["embedded"]  # no temporary folder left beside it

    written = pq.read_table(out).sort_by("id")
    assert written.column_names == embedded7.column_names
    assert written.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    # batches of 64 from three files give the vectors that batches of 7 from one block gave
    np.testing.assert_allclose(_vectors(written), _vectors(embedded7), atol=1e-5)

    # a rerun replaces the folder: same names, same rows, no duplicates
    embed_files(source, str(out), "text", spec)
    assert _listing(out) == files
    again = pq.read_table(out)
    assert again.num_rows == N and len(set(again.column("id").to_pylist())) == N
    assert _listing(out.parent) == ["embedded"]

    # a run that fails while writing leaves the last complete folder as it was
    import engine.embed

    def failing(ds, text, spec, *, check_nulls):
        def boom(batch):
            raise RuntimeError("disk full")

        return ds.map_batches(boom, batch_format="pyarrow")

    monkeypatch.setattr(engine.embed, "_embed", failing)
    with pytest.raises(Exception, match="disk full"):
        embed_files(source, str(out), "text", spec)
    assert _listing(out) == files and pq.read_table(out).num_rows == N
    assert _listing(out.parent) == ["embedded"]


def test_embed_many_serves_every_source_from_one_encoder_pool_in_each_ones_order(
    ray_local, table, embedded7, tmp_path, monkeypatch
):
    import engine.embed
    from engine.embed import embed_many

    stages = []  # each call builds one Ray Data stage with one encoder actor pool
    real = engine.embed._embed
    monkeypatch.setattr(engine.embed, "_embed", lambda *a, **k: stages.append(1) or real(*a, **k))

    sizes = [(0, 40), (40, 55), (55, N)]
    sources, outs = [], []
    for i, (a, b) in enumerate(sizes):
        folder = tmp_path / f"in{i}"
        folder.mkdir()
        rows = np.arange(a, b)[::-1]  # each source in its own (not sorted) order
        for j, part in enumerate(np.array_split(rows, 2)):
            pq.write_table(table.take(pa.array(part)), folder / f"p{j}.parquet")
        sources.append(resolve_source(str(folder)))
        outs.append(str(tmp_path / "emb" / f"s{i}"))
    results = embed_many(sources, outs, "text", EmbedSpec(model="tiny", batch_size=16))
    assert len(stages) == 1  # one encoder pool for the three sources
    expect = _vectors(embedded7.sort_by("id"))
    for (a, b), src, out, res in zip(sizes, sources, outs, results):
        assert res.rows == b - a and res.path == out
        files = sorted(f for f in os.listdir(out) if f.endswith(".parquet"))
        got = pa.concat_tables([pq.read_table(os.path.join(out, f)) for f in files])
        source_rows = pa.concat_tables([pq.read_table(f) for f in src.files])
        want_ids = source_rows.column("id").to_pylist()  # source order
        assert got.column("id").to_pylist() == want_ids
        ids = np.asarray(want_ids)
        np.testing.assert_allclose(_vectors(got), expect[ids], atol=1e-5)
        with open(os.path.join(out, MANIFEST)) as f:
            assert json.load(f)["rows"] == b - a
    assert sorted(os.listdir(tmp_path / "emb")) == ["s0", "s1", "s2"]  # no temporary folder


def test_embed_files_refuses_null_texts_before_encoding(ray_local, tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", None, None, "b"], "y": [0, 1, 0, 1]}), path)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"'text' has 2 null values in its 4 rows"):
        embed_files(resolve_source(str(path)), str(out), "text", EmbedSpec(model="tiny"))
    with pytest.raises(ValueError, match="'body' is not in the data"):
        embed_files(resolve_source(str(path)), str(out), "body", EmbedSpec(model="tiny"))
    assert not out.exists() and _listing(tmp_path) == ["in.parquet"]


# --------------------------------------------------------------------------------------------
# the real model

SENTENCES = [
    "How do I reset my password?",
    "What is the way to change my password?",
    "The cat sat on the warm windowsill all afternoon.",
    "What is the capital of Australia?",
    "Who wrote the novel Pride and Prejudice?",
    "How far is the Moon from the Earth?",
    "When did the Berlin Wall fall?",
    "What does a koala eat?",
    "How many bones are in the human body?",
    "Why is the sky blue?",
    "What is the boiling point of water at sea level?",
    "Who painted the Mona Lisa?",
    "What language is spoken in Brazil?",
    "How do bees make honey?",
    "What causes earthquakes?",
    "Which planet is known as the red planet?",
    "What is the largest ocean on Earth?",
    "Who invented the telephone?",
    "How tall is Mount Everest?",
    "What is photosynthesis?",
    "Where is the Great Barrier Reef?",
    "What year did the Titanic sink?",
    "How do vaccines work?",
    "What is the speed of light?",
    "Who was the first person on the Moon?",
    "What is the currency of Japan?",
    "How many players are on a soccer team?",
    "What is the chemical symbol for gold?",
    "Why do leaves change color in autumn?",
    "What is the longest river in Africa?",
    "How does a rainbow form?",
    "Who discovered penicillin?",
    "What is the population of Canada?",
    "How do airplanes stay in the air?",
    "What is the smallest prime number?",
    "Where do penguins live?",
    "What is the main ingredient of guacamole?",
    "How long does it take to boil an egg?",
    "Who composed the Four Seasons?",
    "What is the hardest natural substance?",
    "How many continents are there?",
    "What is the freezing point of water in Fahrenheit?",
    "Who is the author of Hamlet?",
    "What does DNA stand for?",
    "How many hours are in a week?",
    "What is the tallest animal?",
    "Where was pizza invented?",
    "What gas do plants absorb?",
    "",
    "A very long question " + "about many things " * 60,  # cut at max_length tokens
]


@pytest.mark.integration
def test_minilm_matches_direct_transformers(ray_local):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from engine.models import minilm_path

    spec = EmbedSpec(model="minilm", batch_size=16)
    assert encoder_dim(spec) == 384
    table = pa.table({"id": np.arange(len(SENTENCES)), "text": SENTENCES})
    got = _vectors(_collect(embed_dataset(ray_local.data.from_arrow(table), "text", spec)))
    assert got.shape == (len(SENTENCES), 384)

    # the reference: sentence-transformers' recipe, one sentence at a time, on the driver
    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    ref = []
    with torch.no_grad():
        for s in SENTENCES:
            enc = tok([s], truncation=True, max_length=spec.max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            v = h.mean(0)  # no padding: every token counts
            ref.append((v / v.norm()).numpy())
    np.testing.assert_allclose(got, np.stack(ref), atol=1e-4)

    cos = got @ got.T
    assert cos[0, 1] > 0.6 > cos[0, 2]  # the paraphrase is closer than the unrelated sentence
    assert cos[0, 1] > cos[0, 3:48].max()
