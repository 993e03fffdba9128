"""Hashed word + character n-grams with TF-IDF, and a linear (or MLP) head over them.

    raybalance train jobs/configs/trec50.yaml --set model.kind=lexical --set train.lr=0.01 \
        --set train.epochs=5 --set loss.name=weighted_ce --set loss.weights=inverse

    params = LexicalParams.from_spec(spec.model)
    vec = fit_vectorizer(train_source, "text", params)    # document frequencies as Ray tasks
    idx, val = vec.transform(["What is a fjord ?"])       # (B, max_terms) int64 / float32
    model = LexicalClassifier(params.n_features, [], num_classes=50, vectorizer=vec)
    logits = model(torch.as_tensor(idx), torch.as_tensor(val))

Features: scikit-learn's ``HashingVectorizer`` (signed 32-bit MurmurHash3, no state, the same in
every process) hashes word n-grams into the first half of ``n_features`` columns and ``char_wb``
n-grams into the second half, so one sparse row holds both. Weights follow scikit-learn's
``TfidfTransformer(smooth_idf=True, sublinear_tf=...)``: ``tf`` (or ``1 + ln tf``) times
``idf = ln((1 + N) / (1 + df)) + 1``, rows scaled to unit L2 norm. The document frequencies are
summed over the train split by Ray tasks (``engine.data.run_fragments``): the texts are streamed,
never gathered.

A row is given to the model as its ``max_terms`` largest weights (``lex_idx``, ``lex_val``),
padded with index 0 / weight 0.0 so that batches stack. Truncated rows are NOT re-normalized:
the kept weights are exactly the full TF-IDF row's, and what is dropped is the smallest part of
it (the default 256 keeps every term of a short text such as a question or an SMS).

``LexicalClassifier`` is an ``nn.EmbeddingBag(n_features, width, mode="sum")`` fed the weights as
``per_sample_weights`` — a sparse matrix product, so a padding slot adds nothing. With
``hidden=[]`` the bag is the whole linear model (width = classes, plus a bias: multinomial
logistic regression on TF-IDF); with ``hidden=[h1, ...]`` the bag is the first layer (width h1),
followed by ReLU / Dropout / Linear blocks. Saved as ``model.safetensors`` + ``config.json``
(``model_type: raybalance-lexical``) next to the vectorizer (``lexical.json`` + ``idf.safetensors``)
so a saved folder featurizes raw text by itself. Nothing is pickled.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

VECTORIZER_JSON = "lexical.json"
IDF_FILE = "idf.safetensors"
BATCH_ROWS = 8192  # texts hashed at once by a document-frequency task (bounds its memory)


# --------------------------------------------------------------------------------------------
# the vectorizer


@dataclass(frozen=True)
class LexicalParams:
    """How texts become hashed n-gram columns. ``word_ngrams`` / ``char_ngrams`` are inclusive
    (lo, hi) ranges or None; with both set each gets half of ``n_features``."""

    n_features: int = 2**18
    word_ngrams: tuple[int, int] | None = (1, 2)
    char_ngrams: tuple[int, int] | None = (2, 4)
    sublinear_tf: bool = True
    max_terms: int = 256
    lowercase: bool = True

    def __post_init__(self) -> None:
        for name in ("word_ngrams", "char_ngrams"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(int(x) for x in v)
                object.__setattr__(self, name, v)
                if len(v) != 2 or not 1 <= v[0] <= v[1]:
                    raise ValueError(f"{name} must be [lo, hi] with 1 <= lo <= hi, got {list(v)}")
        if self.word_ngrams is None and self.char_ngrams is None:
            raise ValueError("set word_ngrams or char_ngrams (both are null)")
        if self.n_features < 2:
            raise ValueError(f"n_features must be >= 2, got {self.n_features}")
        if self.max_terms < 1:
            raise ValueError(f"max_terms must be >= 1, got {self.max_terms}")

    @classmethod
    def from_spec(cls, spec: Any) -> LexicalParams:
        """From a ``ModelSpec`` (lists in the spec become tuples here)."""
        return cls(
            n_features=spec.n_features,
            word_ngrams=tuple(spec.word_ngrams) if spec.word_ngrams else None,
            char_ngrams=tuple(spec.char_ngrams) if spec.char_ngrams else None,
            sublinear_tf=spec.sublinear_tf,
            max_terms=spec.max_terms,
        )

    @property
    def word_features(self) -> int:
        """Columns [0, word_features) hold word n-grams; the rest char n-grams."""
        if self.char_ngrams is None:
            return self.n_features
        if self.word_ngrams is None:
            return 0
        return self.n_features // 2

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("word_ngrams", "char_ngrams"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


@functools.lru_cache(maxsize=8)
def _hashers(params: LexicalParams):
    """The (word, char) ``HashingVectorizer``s of ``params`` (either may be None), per process."""
    from sklearn.feature_extraction.text import HashingVectorizer

    common = dict(alternate_sign=False, norm=None, lowercase=params.lowercase, dtype=np.float64)
    word = char = None
    if params.word_ngrams is not None:
        word = HashingVectorizer(
            analyzer="word",
            ngram_range=params.word_ngrams,
            n_features=params.word_features,
            **common,
        )
    if params.char_ngrams is not None:
        char = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=params.char_ngrams,
            n_features=params.n_features - params.word_features,
            **common,
        )
    return word, char


def _texts(texts: Sequence[Any]) -> list[str]:
    # a null text (a missing value) has no terms
    return ["" if t is None else str(t) for t in texts]


def term_counts(texts: Sequence[Any], params: LexicalParams) -> sp.csr_matrix:
    """Raw n-gram counts, (B, n_features) CSR with sorted column indices."""
    word, char = _hashers(params)
    texts = _texts(texts)
    parts = []
    if word is not None:
        parts.append(word.transform(texts))
    if char is not None:
        parts.append(char.transform(texts))  # hstack puts it after the word columns
    x = parts[0] if len(parts) == 1 else sp.hstack(parts, format="csr")
    x = sp.csr_matrix(x, shape=(len(texts), params.n_features))
    x.sum_duplicates()
    x.sort_indices()
    return x


def document_frequencies(texts: Sequence[Any], params: LexicalParams) -> np.ndarray:
    """How many of ``texts`` hold each column (int64, n_features)."""
    x = term_counts(texts, params)
    return np.bincount(x.indices[x.data > 0], minlength=params.n_features).astype(np.int64)


def smooth_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """scikit-learn's smoothed idf: ln((1 + N) / (1 + df)) + 1, as float32."""
    return (np.log((1.0 + n_docs) / (1.0 + df.astype(np.float64))) + 1.0).astype(np.float32)


def top_terms(x: sp.csr_matrix, max_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``max_terms`` largest entries as (B, max_terms) (idx int64, val float32),
    largest first, ties by column; padded with index 0 / value 0.0."""
    n = x.shape[0]
    idx = np.zeros((n, max_terms), dtype=np.int64)
    val = np.zeros((n, max_terms), dtype=np.float32)
    if x.nnz == 0:
        return idx, val
    rows = np.repeat(np.arange(n), np.diff(x.indptr))
    # stable: ties keep column order (indices are sorted), so the result is deterministic
    order = np.lexsort((x.indices, -x.data, rows))
    pos = np.arange(x.nnz) - x.indptr[rows[order]]
    keep = pos < max_terms
    o = order[keep]
    idx[rows[o], pos[keep]] = x.indices[o]
    val[rows[o], pos[keep]] = x.data[o]
    return idx, val


@dataclass(frozen=True, eq=False)
class Vectorizer:
    """Hashing + TF-IDF with document frequencies from a train split (``fit_vectorizer``)."""

    params: LexicalParams
    idf: np.ndarray  # float32, (n_features,)
    n_docs: int

    def __post_init__(self) -> None:
        idf = np.ascontiguousarray(self.idf, dtype=np.float32)
        if idf.shape != (self.params.n_features,):
            raise ValueError(f"idf has shape {idf.shape}, expected ({self.params.n_features},)")
        object.__setattr__(self, "idf", idf)

    @classmethod
    def from_df(cls, params: LexicalParams, df: np.ndarray, n_docs: int) -> Vectorizer:
        return cls(params, smooth_idf(df, n_docs), int(n_docs))

    def tfidf(self, texts: Sequence[Any]) -> sp.csr_matrix:
        """Full TF-IDF rows, L2-normalized, (B, n_features) float32 CSR."""
        x = term_counts(texts, self.params).astype(np.float64)
        if self.params.sublinear_tf:
            np.log(x.data, out=x.data)
            x.data += 1.0
        x.data *= self.idf[x.indices]
        counts = np.diff(x.indptr)
        rows = np.repeat(np.arange(x.shape[0]), counts)
        norms = np.sqrt(np.bincount(rows, weights=x.data**2, minlength=x.shape[0]))
        x.data /= norms[rows]  # an empty row has no entries to divide
        return x.astype(np.float32)

    def transform(self, texts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(idx (B, max_terms) int64, val (B, max_terms) float32): each row's largest weights."""
        return top_terms(self.tfidf(texts), self.params.max_terms)

    def save(self, folder: str) -> None:
        from safetensors.numpy import save_file

        os.makedirs(folder, exist_ok=True)
        save_file({"idf": self.idf}, os.path.join(folder, IDF_FILE))
        with open(os.path.join(folder, VECTORIZER_JSON), "w") as f:
            json.dump({"params": self.params.to_json(), "n_docs": self.n_docs}, f, indent=2)

    @classmethod
    def load(cls, folder: str) -> Vectorizer:
        from safetensors.numpy import load_file

        with open(os.path.join(folder, VECTORIZER_JSON)) as f:
            meta = json.load(f)
        params = LexicalParams(**meta["params"])
        return cls(params, load_file(os.path.join(folder, IDF_FILE))["idf"], meta["n_docs"])

    @staticmethod
    def exists(folder: str) -> bool:
        return os.path.exists(os.path.join(folder, VECTORIZER_JSON))


def _df_task(source, frags, *, text: str, params: LexicalParams, schema) -> tuple[np.ndarray, int]:
    from engine.data import iter_fragment

    df = np.zeros(params.n_features, dtype=np.int64)
    n = 0
    for frag in frags:
        for table in iter_fragment(source, frag, [text], schema=schema, batch_rows=BATCH_ROWS):
            df += document_frequencies(table.column(text).to_pylist(), params)
            n += table.num_rows
    return df, n


def fit_vectorizer(source, text: str, params: LexicalParams) -> Vectorizer:
    """Document frequencies of the ``text`` column of ``source`` (an ``engine.data.Source``),
    summed by Ray tasks over its fragments; the texts never leave the tasks."""
    from engine.data import read_schema, run_fragments

    schema = read_schema(source) if source.format != "parquet" else None
    task = functools.partial(_df_task, text=text, params=params, schema=schema)
    results = run_fragments(source, task, description="document frequencies")
    df = np.zeros(params.n_features, dtype=np.int64)
    n = 0
    for d, k in results:
        df += d
        n += k
    return Vectorizer.from_df(params, df, n)


# --------------------------------------------------------------------------------------------
# the model


class LexicalClassifier(nn.Module):
    """A hashed-n-gram bag (``EmbeddingBag``, weighted sum) then optional MLP blocks.

    ``hidden=[]``: logits = bag(x) + bias, a linear model whose bag rows start at zero (a column
    never seen in training keeps weight 0). ``hidden=[h1, ...]``: the bag has width h1 and starts
    like ``nn.Linear(n_features, h1)``; ReLU / Dropout / Linear blocks follow.
    """

    def __init__(
        self,
        n_features: int,
        hidden: list[int],
        num_classes: int,
        dropout: float = 0.1,
        vectorizer: Vectorizer | None = None,
    ):
        super().__init__()
        self.config = {
            "n_features": int(n_features),
            "hidden": [int(h) for h in hidden],
            "num_classes": int(num_classes),
            "dropout": float(dropout),
        }
        self.vectorizer = vectorizer  # not a module or tensor: saved beside the weights
        width = hidden[0] if hidden else num_classes
        # sparse gradients: a step touches the rows of the batch's terms, not all n_features
        # (measured 20x faster than a dense gradient + AdamW at 2^18 x 50; see LazyAdamW)
        self.bag = nn.EmbeddingBag(n_features, width, mode="sum", sparse=True)
        self.bias = nn.Parameter(torch.zeros(width))
        if hidden:
            bound = 1 / math.sqrt(n_features)
            nn.init.uniform_(self.bag.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            nn.init.zeros_(self.bag.weight)
        layers: list[nn.Module] = []
        prev = width
        for h in hidden[1:]:
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(prev, h)]
            prev = h
        if hidden:
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(prev, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, lex_idx: torch.Tensor, lex_val: torch.Tensor) -> torch.Tensor:
        h = self.bag(lex_idx, per_sample_weights=lex_val.to(self.bag.weight.dtype)) + self.bias
        return self.net(h)

    def encode(self, texts: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Raw texts -> the forward's inputs, with the saved vectorizer."""
        if self.vectorizer is None:
            raise ValueError("this LexicalClassifier has no vectorizer; load it with load_model")
        idx, val = self.vectorizer.transform(texts)
        return {"lex_idx": torch.as_tensor(idx), "lex_val": torch.as_tensor(val)}


def fit_for_ddp(model: LexicalClassifier, device: torch.device, world: int) -> None:
    """Dense gradients for the bag when several CUDA workers train it: NCCL has no all-reduce
    for sparse tensors (gloo, on CPU, does), so DDP with a sparse bag fails on GPUs."""
    if world > 1 and device.type == "cuda":
        model.bag.sparse = False


# --------------------------------------------------------------------------------------------
# sparse-gradient training


class LazyAdamW(torch.optim.Optimizer):
    """AdamW whose sparse-gradient parameters (the bag) are updated lazily: only the rows a
    step's gradient touches get the moment updates and the decoupled weight decay, with the
    parameter's step count for the bias correction (``torch.optim.SparseAdam``'s laziness, plus
    weight decay). Dense-gradient parameters get exactly ``torch.optim.AdamW``'s update."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        if lr <= 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"bad LazyAdamW settings: lr={lr}, eps={eps}, wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                bc1, bc2 = 1 - b1**step, 1 - b2**step
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    g = p.grad.coalesce()
                    rows, gv = g._indices()[0], g._values()
                    if rows.numel() == 0:
                        continue
                    mr = m[rows].lerp_(gv, 1 - b1)
                    vr = v[rows].mul_(b2).addcmul_(gv, gv, value=1 - b2)
                    m[rows], v[rows] = mr, vr
                    pr = p[rows].mul_(1 - lr * wd)
                    pr.addcdiv_(mr, (vr.sqrt() / math.sqrt(bc2)).add_(eps), value=-lr / bc1)
                    p[rows] = pr
                else:
                    g = p.grad
                    p.mul_(1 - lr * wd)
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, (v.sqrt() / math.sqrt(bc2)).add_(eps), value=-lr / bc1)
        return loss


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (which it refuses):
    the total L2 norm over all gradients, each scaled by min(1, max_norm / norm)."""
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicates summed, so the values' norm is the norm
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total
