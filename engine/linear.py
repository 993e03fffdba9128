"""The ``linear`` model kind: multinomial logistic regression solved exactly by scikit-learn,
its weights then set into the engine's own model without hidden layers (an MLP head over
standardized features, or the lexical n-gram bag), so that export, scoring, ensembling and
``raybalance predict`` treat it as any other member.

    X = design_matrix(core, arrays)                  # dense (standardized) or sparse CSR
    w, b = fit_logistic(X, y, num_classes, C, class_weights)
    set_linear(core, w, b)
    for C, w, b in fit_path(X, y, num_classes, [0.01, 0.1, 1, 10], class_weights): ...

An exact convex solve reaches the optimum that a few epochs of AdamW at a sampled rate do not;
its regularization ``C`` is chosen on val from a grid (``fit_path``, warm-started) unless set.

Past memory (``model.solver: sgd``, or ``auto`` when the train rows' design matrix would exceed
``SGD_ABOVE_BYTES``) the same objective is approached by averaged SGD over streamed batches
(``sgd_path``: scikit-learn's ``SGDClassifier.partial_fit`` with the log loss, one-vs-rest, a
constant step whose running average is the fit, its
L2 strength ``alpha = 1 / (C n)`` — LogisticRegression's objective divided by ``C n`` —, one
model per C fed by the same passes), never holding more than a batch:

    for C, w, b in sgd_path(lambda: batches, core, num_classes, Cs, weights, rows): ...
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

ABSENT_BIAS = -30.0  # the logit bias of a class with no training rows: never predicted
MAX_ITER = 500
TOL = 1e-4  # scikit-learn's default
SGD_ABOVE_BYTES = 2 << 30  # solver auto: SGD once the train rows' design would pass this
SGD_EPOCHS = 10  # passes over the streamed train rows
SGD_ETA = 0.01  # the constant step of averaged SGD (the average is what converges)
SGD_BATCH = 4096  # rows per streamed batch


def design_bytes(rows: int, val_arrays: dict[str, np.ndarray]) -> int:
    """The bytes of the train rows' design matrix (float64; sparse n-grams: value + index per
    term), its row width read off the val rows' arrays."""
    if "features" in val_arrays:
        return rows * int(val_arrays["features"].shape[1]) * 8
    return rows * int(val_arrays["lex_idx"].shape[1]) * 16


def choose_solver(solver: str, rows: int, val_arrays: dict[str, np.ndarray]) -> str:
    """``lbfgs`` or ``sgd`` (``model.solver``, checked by the spec): ``solver`` itself, or for
    ``auto`` SGD past ``SGD_ABOVE_BYTES``."""
    if solver != "auto":
        return solver
    return "sgd" if design_bytes(rows, val_arrays) > SGD_ABOVE_BYTES else "lbfgs"


def design_matrix(core: torch.nn.Module, arrays: dict[str, np.ndarray]):
    """The rows as the model sees them: the standardized features of an MLP head (float64),
    or the TF-IDF n-gram weights of a lexical model as a CSR matrix (n_features columns)."""
    if "features" in arrays:
        x = np.asarray(arrays["features"], dtype=np.float64)
        if hasattr(core, "shift"):
            x = (x - core.shift.double().numpy()) * core.scale.double().numpy()
        return x
    import scipy.sparse as sp

    idx = np.asarray(arrays["lex_idx"], dtype=np.int64)
    val = np.asarray(arrays["lex_val"], dtype=np.float64)
    n, width = idx.shape
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    x = sp.csr_matrix((val.ravel(), idx.ravel(), indptr), shape=(n, core.config["n_features"]))
    x.sum_duplicates()  # padding (weight 0) and repeated buckets
    return x


def fit_logistic(
    x: Any,
    y: np.ndarray,
    num_classes: int,
    C: float,
    class_weights: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(W (K, D), b (K,)) of an L2-penalized multinomial logistic regression on ``x, y``
    (lbfgs, scikit-learn's tolerance, at most ``MAX_ITER`` steps; sparse n-grams are solved
    over the columns their rows use), rows weighted by their class's weight. Two classes give
    one coefficient row, set as the second class's (softmax of [0, z] = the sigmoid of z); a
    class absent from ``y`` gets zero weights and a bias it never wins with."""
    return next(fit_path(x, y, num_classes, [C], class_weights))[1:]


def fit_path(
    x: Any,
    y: np.ndarray,
    num_classes: int,
    Cs: Sequence[float],
    class_weights: list[float] | None = None,
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """(C, W, b) for each of ``Cs`` in increasing order, each solve warm-started from the one
    before (as ``fit_logistic``)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    width = x.shape[1]
    y = np.asarray(y, dtype=np.int64)
    sw = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)[y]
    used = None
    if hasattr(x, "indices"):  # sparse n-grams: a column no row uses keeps weight 0 (L2)
        used = np.unique(x.indices)
        x = x[:, used]
    clf = LogisticRegression(max_iter=MAX_ITER, tol=TOL, warm_start=True)
    for C in sorted(float(c) for c in Cs):
        clf.set_params(C=C)
        with warnings.catch_warnings():
            # the solve stops at MAX_ITER: close to the optimum, and still the best fit at hand
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y, sample_weight=sw)
        yield (C, *_weights(clf, used, num_classes, width))


def sgd_path(
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    core: torch.nn.Module,
    num_classes: int,
    Cs: Sequence[float],
    class_weights: list[float] | None,
    rows: int,
    epochs: int = SGD_EPOCHS,
    seed: int = 0,
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """(C, W, b) for each of ``Cs`` in increasing order: averaged SGD on the log loss over
    ``epochs`` passes of ``batches()`` (each call a fresh pass of label + input arrays), rows
    weighted by their class's weight, ``alpha = 1 / (C rows)``. A class no batch held gets zero
    weights and a bias it never wins with."""
    from sklearn.linear_model import SGDClassifier

    classes = np.arange(num_classes)
    cw = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    Cs = sorted(float(c) for c in Cs)
    models = [
        SGDClassifier(
            loss="log_loss",
            alpha=1.0 / (C * max(rows, 1)),
            learning_rate="constant",
            eta0=SGD_ETA,
            average=True,
            random_state=seed,
        )
        for C in Cs
    ]
    seen = np.zeros(num_classes, dtype=bool)
    width = None
    for _ in range(epochs):
        for batch in batches():
            y = np.asarray(batch["label"], dtype=np.int64)
            if not len(y):
                continue
            x = design_matrix(core, batch)
            width = x.shape[1]
            seen[y] = True
            sw = None if cw is None else cw[y]
            for m in models:
                m.partial_fit(x, y, classes=classes, sample_weight=sw)
    if width is None:
        raise ValueError("the SGD path read no train rows: the train split is empty")
    for C, m in zip(Cs, models):
        w, b = _weights(m, None, num_classes, width)
        w[~seen], b[~seen] = 0.0, ABSENT_BIAS
        yield C, w, b


def _weights(clf, used, num_classes: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    coef = clf.coef_
    if used is not None:  # back to every column: the unused ones keep weight 0
        coef = np.zeros((len(clf.coef_), width))
        coef[:, used] = clf.coef_
    w = np.zeros((num_classes, width))
    b = np.full(num_classes, ABSENT_BIAS)
    present = clf.classes_.astype(np.int64)
    if len(present) == 1:  # one class only: predict it everywhere
        b[present[0]] = 0.0
    elif len(present) == 2:
        w[present[1]] = coef[0]
        b[present[0]], b[present[1]] = 0.0, clf.intercept_[0]
    else:
        w[present] = coef
        b[present] = clf.intercept_
    return w, b


def set_linear(core: torch.nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    """Put ``w, b`` into a model without hidden layers (MLP head or lexical bag)."""
    with torch.no_grad():
        if hasattr(core, "bag"):
            core.bag.weight.copy_(torch.as_tensor(w.T, dtype=core.bag.weight.dtype))
            core.bias.copy_(torch.as_tensor(b, dtype=core.bias.dtype))
            return
        layer = core.net[-1]
        layer.weight.copy_(torch.as_tensor(w, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(b, dtype=layer.bias.dtype))


def weighted_log_loss(core: torch.nn.Module, x: Any, y: np.ndarray, weights) -> float:
    """The fitted model's mean cross-entropy on its training rows (class-weighted)."""
    w = core.bag.weight.detach().double().numpy().T if hasattr(core, "bag") else None
    if w is None:
        layer = core.net[-1]
        w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    else:
        b = core.bias.detach().double().numpy()
    z = np.asarray(x @ w.T) + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    sw = np.ones(len(y)) if weights is None else np.asarray(weights)[y]
    return float((nll * sw).sum() / sw.sum())
