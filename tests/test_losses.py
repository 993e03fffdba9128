"""Imbalance losses: each against a float64 reference formula, gradcheck, modules, identities.

The references below are written from the papers' formulas with numpy in float64 (log-softmax
by hand), independently of ``engine.losses``; torch's own ``F.cross_entropy`` checks the
reduction and ``ignore_index`` semantics.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine.losses as L
from engine.losses import (
    LOSSES,
    BalancedSoftmaxLoss,
    BinaryFocalLoss,
    CELoss,
    ClassBalancedLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    WeightedCELoss,
    balanced_softmax,
    binary_focal,
    build_loss,
    ce,
    class_balanced,
    class_balanced_weights,
    focal,
    ldam,
    ldam_margins,
    logit_adjusted,
)

SEEDS = (0, 1, 2)
CLASSES = (2, 5, 50)
REDUCTIONS = ("mean", "sum", "none")
IGNORE = -100


def make_batch(seed: int, c: int, n: int = 64, ignore_index: int = IGNORE):
    """Random float64 logits, targets with ~15 % ignored, long-tailed counts, class weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(n, c))
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.15] = ignore_index
    y[0] = c - 1 if ignore_index != c - 1 else 0  # never all ignored
    y[1] = ignore_index  # always some ignored
    counts = np.sort(rng.integers(1, 5000, c))[::-1].copy()
    counts[-1] = 1
    weights = rng.uniform(0.1, 3.0, c)
    return x, y, counts, weights


def tensors(x: np.ndarray, y: np.ndarray, dtype: torch.dtype = torch.float64):
    return torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# float64 references (numpy)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_reduce(loss, y, sample_w, reduction: str, ignore_index: int):
    valid = y != ignore_index
    w = valid.astype(np.float64) if sample_w is None else np.where(valid, sample_w, 0.0)
    per = np.where(valid, loss * w, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / w.sum()


def np_true_logp(x, y, ignore_index):
    safe = np.where(y != ignore_index, y, 0)
    return np_log_softmax(x)[np.arange(len(y)), safe], safe


def ref_ce(x, y, w=None, reduction="mean", ignore_index=IGNORE):
    logp, safe = np_true_logp(x, y, ignore_index)
    return np_reduce(-logp, y, None if w is None else w[safe], reduction, ignore_index)


def ref_focal(x, y, alpha, gamma, reduction="mean", ignore_index=IGNORE):
    logp, safe = np_true_logp(x, y, ignore_index)
    p = np.exp(logp)
    loss = -((1 - p) ** gamma) * logp
    return np_reduce(loss, y, None if alpha is None else alpha[safe], reduction, ignore_index)


def ref_cb_weights(counts, beta):
    n = np.asarray(counts, dtype=np.float64)
    w = (1 - beta) / (1 - beta**n)
    return w / w.sum() * len(n)


def ref_margins(counts, max_margin):
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=np.float64)))  # the authors' code
    return m * (max_margin / m.max())


def ref_ldam(x, y, counts, w, max_margin, s, reduction="mean", ignore_index=IGNORE):
    m = ref_margins(counts, max_margin)
    xm = x.copy()
    for i, t in enumerate(y):
        if t != ignore_index:
            xm[i, t] -= m[t]
    return ref_ce(s * xm, y, w, reduction, ignore_index)


def ref_binary_focal(x, t, alpha, gamma, reduction="mean", ignore_index=IGNORE):
    valid = t != ignore_index
    tt = np.where(valid, t, 0).astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    bce = tt * np.logaddexp(0, -x) + (1 - tt) * np.logaddexp(0, x)
    p_t = p * tt + (1 - p) * (1 - tt)
    loss = bce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * tt + (1 - alpha) * (1 - tt)) * loss
    return np_reduce(loss, t, None, reduction, ignore_index)


# --------------------------------------------------------------------------------------------
# every loss against its reference

# name -> (function under test, reference); each takes (x, y, counts, weights, reduction, ignore)
Case = tuple[Callable, Callable]
CASES: dict[str, Case] = {
    "ce": (
        lambda x, y, n, w, r, i: ce(x, y, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ce(x, y, None, r, i),
    ),
    "weighted_ce": (
        lambda x, y, n, w, r, i: L.weighted_ce(x, y, torch.tensor(w), reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ce(x, y, w, r, i),
    ),
    "focal": (
        lambda x, y, n, w, r, i: focal(x, y, gamma=2.0, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_focal(x, y, None, 2.0, r, i),
    ),
    "focal_alpha": (
        lambda x, y, n, w, r, i: focal(x, y, w, gamma=1.5, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_focal(x, y, w, 1.5, r, i),
    ),
    "class_balanced_ce": (
        lambda x, y, n, w, r, i: class_balanced(x, y, n, beta=0.999, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ce(x, y, ref_cb_weights(n, 0.999), r, i),
    ),
    "class_balanced_focal": (
        lambda x, y, n, w, r, i: class_balanced(
            x, y, n, beta=0.99, base="focal", gamma=2.0, reduction=r, ignore_index=i
        ),
        lambda x, y, n, w, r, i: ref_focal(x, y, ref_cb_weights(n, 0.99), 2.0, r, i),
    ),
    "logit_adjusted": (
        lambda x, y, n, w, r, i: logit_adjusted(x, y, n, tau=1.5, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ce(x + 1.5 * np.log(n / n.sum()), y, None, r, i),
    ),
    "balanced_softmax": (
        lambda x, y, n, w, r, i: balanced_softmax(x, y, n, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ce(x + np.log(n), y, None, r, i),
    ),
    "ldam": (
        lambda x, y, n, w, r, i: ldam(x, y, n, reduction=r, ignore_index=i),
        lambda x, y, n, w, r, i: ref_ldam(x, y, n, None, 0.5, 30.0, r, i),
    ),
    "ldam_weighted": (
        lambda x, y, n, w, r, i: ldam(
            x, y, n, w, max_margin=0.3, scale=10.0, reduction=r, ignore_index=i
        ),
        lambda x, y, n, w, r, i: ref_ldam(x, y, n, w, 0.3, 10.0, r, i),
    ),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_formula(case, seed, c, reduction):
    x, y, counts, w = make_batch(seed, c)
    fn, ref = CASES[case]
    xt, yt = tensors(x, y)
    got = fn(xt, yt, counts, w, reduction, IGNORE)
    expected = ref(x, y, counts, w, reduction, IGNORE)
    assert got.dtype == torch.float64
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    if reduction == "none":
        assert (got[yt == IGNORE] == 0).all()


@pytest.mark.parametrize("case", list(CASES))
def test_custom_ignore_index_that_is_a_class(case):
    x, y, counts, w = make_batch(7, 5)
    y[y == IGNORE] = 2  # class 2 is now the ignored value
    fn, ref = CASES[case]
    for reduction in REDUCTIONS:
        got = fn(*tensors(x, y), counts, w, reduction, 2)
        np.testing.assert_allclose(got.numpy(), ref(x, y, counts, w, reduction, 2), rtol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_all_targets_ignored(case):
    """As F.cross_entropy: mean is nan, sum is 0, none is all zeros."""
    x, _, counts, w = make_batch(3, 5, n=8)
    xt, yt = tensors(x, np.full(8, IGNORE))
    fn, _ = CASES[case]
    assert torch.isnan(fn(xt, yt, counts, w, "mean", IGNORE))
    assert fn(xt, yt, counts, w, "sum", IGNORE) == 0
    assert (fn(xt, yt, counts, w, "none", IGNORE) == 0).all()
    assert torch.isnan(F.cross_entropy(xt, yt))  # the torch behaviour mirrored


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck(case, reduction):
    x, y, counts, w = make_batch(11, 4, n=6)
    xt, yt = tensors(x * 0.5, y)
    xt.requires_grad_(True)
    fn, _ = CASES[case]
    assert torch.autograd.gradcheck(lambda z: fn(z, yt, counts, w, reduction, IGNORE), (xt,))


@pytest.mark.parametrize("case", list(CASES))
def test_ignored_rows_get_no_gradient(case):
    x, y, counts, w = make_batch(5, 5, n=16)
    xt, yt = tensors(x, y)
    xt.requires_grad_(True)
    CASES[case][0](xt, yt, counts, w, "mean", IGNORE).backward()
    assert (xt.grad[yt == IGNORE] == 0).all()
    assert (xt.grad[yt != IGNORE].abs().sum(1) > 0).all()


# --------------------------------------------------------------------------------------------
# binary focal


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 2.0), (0.7, 0.5), (0.5, 0.0)])
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_focal_matches_reference(seed, alpha, gamma, reduction):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=3.0, size=64)
    t = rng.integers(0, 2, 64)
    t[rng.random(64) < 0.15] = IGNORE
    t[0] = 1
    expected = ref_binary_focal(x, t, alpha, gamma, reduction)
    xt, tt = torch.tensor(x), torch.tensor(t)
    got = binary_focal(xt, tt, alpha=alpha, gamma=gamma, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    col = binary_focal(xt[:, None], tt[:, None], alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(col, got)  # (N, 1) is the same as (N,)
    module = BinaryFocalLoss(alpha, gamma, reduction=reduction)
    torch.testing.assert_close(module(xt[:, None], tt), got)
    if reduction == "none":
        assert (got[tt == IGNORE] == 0).all()


def test_binary_focal_gamma0_no_alpha_is_bce_and_gradcheck():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=32), requires_grad=True)
    t = torch.tensor(rng.integers(0, 2, 32))
    bce = F.binary_cross_entropy_with_logits(x, t.double())
    torch.testing.assert_close(binary_focal(x, t, alpha=None, gamma=0.0), bce)
    t[:4] = IGNORE
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda z, r=reduction: binary_focal(z, t, alpha=0.25, gamma=2.0, reduction=r), (x,)
        )


def test_binary_focal_rejects_bad_input():
    x, t = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        binary_focal(x, t)
    with pytest.raises(ValueError, match="alpha"):
        binary_focal(x[:, 0], t, alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        binary_focal(x[:, 0], t, gamma=-1.0)


# --------------------------------------------------------------------------------------------
# identities


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("seed, c", [(0, 2), (1, 5), (2, 50)])
def test_identities(seed, c, reduction):
    x, y, counts, w = make_batch(seed, c)
    xt, yt = tensors(x, y)
    kw = {"reduction": reduction}
    wt = torch.tensor(w)
    plain = ce(xt, yt, **kw)
    close = torch.testing.assert_close
    # ce and weighted_ce are torch's cross-entropy, ignore_index included
    close(plain, F.cross_entropy(xt, yt, reduction=reduction))
    close(L.weighted_ce(xt, yt, wt, **kw), F.cross_entropy(xt, yt, weight=wt, reduction=reduction))
    # focal with gamma 0 is (weighted) cross-entropy; alpha of ones is no alpha
    close(focal(xt, yt, wt, gamma=0.0, **kw), L.weighted_ce(xt, yt, wt, **kw))
    close(focal(xt, yt, None, gamma=0.0, **kw), plain)
    close(focal(xt, yt, torch.ones(c, dtype=torch.float64), **kw), focal(xt, yt, None, **kw))
    # logit adjustment: tau 0 is CE, tau 1 is balanced softmax
    close(logit_adjusted(xt, yt, counts, tau=0.0, **kw), plain)
    close(balanced_softmax(xt, yt, counts, **kw), logit_adjusted(xt, yt, counts, tau=1.0, **kw))
    # class-balanced with beta 0 weighs every class 1: CE (and unweighted focal)
    close(class_balanced(xt, yt, counts, beta=0.0, **kw), plain)
    close(
        class_balanced(xt, yt, counts, beta=0.0, base="focal", gamma=2.0, **kw),
        focal(xt, yt, None, gamma=2.0, **kw),
    )
    # class-balanced is weighted CE / alpha-focal with its weights
    cbw = class_balanced_weights(counts, 0.999)
    close(class_balanced(xt, yt, counts, beta=0.999, **kw), L.weighted_ce(xt, yt, cbw, **kw))
    # ldam with zero margin and scale 1 is CE
    close(ldam(xt, yt, counts, max_margin=1e-300, scale=1.0, **kw), plain)


def test_weighted_ce_matches_torch_module_with_custom_ignore_index():
    x, y, _, w = make_batch(4, 5)
    y[y == IGNORE] = 7
    xt, yt = tensors(x, y)
    wt = torch.tensor(w)
    for reduction in REDUCTIONS:
        torch_loss = torch.nn.CrossEntropyLoss(weight=wt, ignore_index=7, reduction=reduction)
        ours = WeightedCELoss(w, reduction=reduction, ignore_index=7).double()
        torch.testing.assert_close(ours(xt, yt), torch_loss(xt, yt))
        torch.testing.assert_close(
            L.weighted_ce(xt, yt, wt, reduction=reduction, ignore_index=7), torch_loss(xt, yt)
        )


def test_class_balanced_weights():
    counts = np.array([900, 60, 30, 7, 3])
    for beta in (0.0, 0.9, 0.999, 0.9999):
        w = class_balanced_weights(counts, beta)
        assert w.dtype == torch.float64
        np.testing.assert_allclose(w.numpy(), ref_cb_weights(counts, beta), rtol=1e-12)
        assert np.isclose(w.sum().item(), len(counts))
    assert torch.equal(class_balanced_weights(counts, 0.0), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(counts, 1.0)


def test_class_balanced_weights_agree_with_engine_stats():
    from engine.stats import class_weights

    counts = np.array([900, 60, 30, 7, 3])
    for beta in (0.9, 0.999, 0.9999):
        np.testing.assert_allclose(
            class_balanced_weights(counts, beta).numpy(),
            class_weights(counts, "effective_number", beta),
            rtol=1e-12,
        )


# --------------------------------------------------------------------------------------------
# LDAM


def test_ldam_margins():
    counts = np.array([10000, 400, 81, 16, 1])
    m = ldam_margins(counts, 0.5).numpy()
    assert m.max() == pytest.approx(0.5) and m.argmax() == 4  # the rarest class
    const = m * counts**0.25  # m ∝ n^{-1/4}
    np.testing.assert_allclose(const, const[0], rtol=1e-12)
    np.testing.assert_allclose(m, [0.5 / 10, 0.5 / (400**0.25), 0.5 / 3, 0.5 / 2, 0.5])
    np.testing.assert_allclose(ldam_margins(counts, 0.3).numpy(), ref_margins(counts, 0.3))
    with pytest.raises(ValueError, match="max_margin"):
        ldam_margins(counts, 0.0)


@pytest.mark.parametrize("drw_epoch", [0, 3])
def test_ldam_drw_switches_exactly_at_drw_epoch(drw_epoch):
    x, y, counts, _ = make_batch(0, 5)
    xt, yt = tensors(x, y, torch.float32)
    module = LDAMLoss(counts, max_margin=0.5, scale=30.0, drw_epoch=drw_epoch)
    drw = ref_cb_weights(counts, 0.9999)  # the authors' beta
    np.testing.assert_allclose(module.drw_weight.numpy(), drw, rtol=1e-6)
    assert module.drw_weight.sum().item() == pytest.approx(5)
    unweighted = ldam(xt, yt, counts)
    weighted = ldam(xt, yt, counts, drw)
    assert not torch.allclose(unweighted, weighted)
    for epoch in range(drw_epoch + 3):
        module.set_epoch(epoch)
        if epoch < drw_epoch:
            assert module.weight is None and not module.drw_active
            torch.testing.assert_close(module(xt, yt), unweighted)
        else:
            assert module.weight is module.drw_weight and module.drw_active
            torch.testing.assert_close(module(xt, yt), weighted)
    module.set_epoch(0)  # a restarted schedule turns it off again when drw_epoch > 0
    assert (module.weight is None) == (drw_epoch > 0)


def test_ldam_without_drw_epoch_never_reweighs():
    module = LDAMLoss([10, 5, 1])
    for epoch in (0, 10, 1000):
        module.set_epoch(epoch)
        assert module.weight is None


def test_ldam_rejects_bad_parameters():
    with pytest.raises(ValueError, match="scale"):
        LDAMLoss([3, 2], scale=0.0)
    with pytest.raises(ValueError, match="drw_epoch"):
        LDAMLoss([3, 2], drw_epoch=-1)


# --------------------------------------------------------------------------------------------
# modules


def modules_and_functions(counts, w):
    """(module, the same loss as a function of (logits, targets, reduction)) per loss."""
    return {
        "ce": (CELoss, lambda x, y, **k: ce(x, y, **k)),
        "weighted_ce": (
            lambda **k: WeightedCELoss(w, **k),
            lambda x, y, **k: L.weighted_ce(x, y, w, **k),
        ),
        "focal": (
            lambda **k: FocalLoss(w, 1.5, **k),
            lambda x, y, **k: focal(x, y, w, gamma=1.5, **k),
        ),
        "focal_no_alpha": (
            lambda **k: FocalLoss(None, 2.0, **k),
            lambda x, y, **k: focal(x, y, **k),
        ),
        "class_balanced": (
            lambda **k: ClassBalancedLoss(counts, 0.99, "focal", 1.0, **k),
            lambda x, y, **k: class_balanced(x, y, counts, beta=0.99, base="focal", gamma=1.0, **k),
        ),
        "logit_adjusted": (
            lambda **k: LogitAdjustedLoss(counts, 0.7, **k),
            lambda x, y, **k: logit_adjusted(x, y, counts, tau=0.7, **k),
        ),
        "balanced_softmax": (
            lambda **k: BalancedSoftmaxLoss(counts, **k),
            lambda x, y, **k: balanced_softmax(x, y, counts, **k),
        ),
        "ldam": (
            lambda **k: LDAMLoss(counts, 0.4, 20.0, None, **k),
            lambda x, y, **k: ldam(x, y, counts, max_margin=0.4, scale=20.0, **k),
        ),
        "ldam_drw": (
            lambda **k: LDAMLoss(counts, 0.4, 20.0, 0, 0.999, **k),
            lambda x, y, **k: ldam(
                x, y, counts, ref_cb_weights(counts, 0.999), max_margin=0.4, scale=20.0, **k
            ),
        ),
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", CLASSES)
def test_module_equals_function(c, reduction):
    x, y, counts, w = make_batch(c, c)
    y[y == IGNORE] = 1
    xt, yt = tensors(x, y, torch.float32)
    for name, (make_module, fn) in modules_and_functions(counts, w).items():
        module = make_module(reduction=reduction, ignore_index=1)
        module.set_epoch(0)
        got = module(xt, yt)
        torch.testing.assert_close(got, fn(xt, yt, reduction=reduction, ignore_index=1), msg=name)


EXPECTED_BUFFERS = {
    "ce": set(),
    "weighted_ce": {"weight"},
    "focal": {"alpha"},
    "focal_no_alpha": set(),
    "class_balanced": {"counts", "weight"},
    "logit_adjusted": {"counts", "log_prior"},
    "balanced_softmax": {"counts", "log_counts"},
    "ldam": {"counts", "margins", "drw_weight"},
    "ldam_drw": {"counts", "margins", "drw_weight"},
}


def test_state_dict_carries_buffers_and_they_move():
    counts, w = np.array([50, 20, 5, 1]), np.array([0.5, 1.0, 2.0, 4.0])
    for name, (make_module, _) in modules_and_functions(counts, w).items():
        module = make_module()
        state = module.state_dict()
        assert set(state) == EXPECTED_BUFFERS[name], name
        assert dict(module.named_buffers()).keys() == state.keys()
        assert not list(module.parameters())
        fresh = make_module()
        for v in fresh.buffers():
            v.zero_()
        fresh.load_state_dict(state)
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
        module.to(torch.float64)  # .to() converts (and on a device moves) the buffers
        assert all(b.dtype == torch.float64 for b in module.buffers()), name
        module.to("meta")
        assert all(b.device.type == "meta" for b in module.buffers()), name
    buffers = dict(ClassBalancedLoss(counts, 0.9).named_buffers())
    assert torch.equal(buffers["counts"], torch.tensor(counts, dtype=torch.float32))
    np.testing.assert_allclose(buffers["weight"].numpy(), ref_cb_weights(counts, 0.9), rtol=1e-6)


def test_every_module_has_set_epoch():
    for name, cls in LOSSES.items():
        assert callable(cls.set_epoch), name
    module = FocalLoss()
    module.set_epoch(5)  # a no-op
    assert module.gamma == 2.0


# --------------------------------------------------------------------------------------------
# build_loss


COUNTS = [900, 60, 30, 7, 3]
WEIGHTS = [0.2, 1.0, 2.0, 5.0, 9.0]


def test_registry_names():
    assert list(LOSSES) == [
        "ce",
        "weighted_ce",
        "focal",
        "class_balanced",
        "logit_adjusted",
        "balanced_softmax",
        "ldam",
    ]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_build_loss_gives_finite_scalar(name, dtype):
    module = build_loss(name, COUNTS, weights=WEIGHTS, epochs=5)
    assert isinstance(module, LOSSES[name])
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 0, 0, 1, IGNORE, 2, 0, 0, 3, 0, 0])
    x.requires_grad_(True)
    for epoch in range(5):
        module.set_epoch(epoch)
        loss = module(x, y)
        assert loss.shape == () and torch.isfinite(loss), (name, epoch)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_build_loss_passes_parameters():
    x, y, counts, w = make_batch(1, 5)
    xt, yt = tensors(x, y)
    close = torch.testing.assert_close

    def built(name, **kw):
        return build_loss(name, counts.tolist(), weights=w.tolist(), **kw).double()(xt, yt)

    close(built("ce"), ce(xt, yt))
    close(built("weighted_ce"), L.weighted_ce(xt, yt, w))
    close(built("focal", gamma=1.0), focal(xt, yt, w, gamma=1.0))
    close(build_loss("focal", counts).double()(xt, yt), focal(xt, yt))  # no weights: no alpha
    close(
        built("class_balanced", beta=0.99, base="focal", gamma=0.5),
        class_balanced(xt, yt, counts, beta=0.99, base="focal", gamma=0.5),
    )
    close(built("logit_adjusted", tau=2.0), logit_adjusted(xt, yt, counts, tau=2.0))
    close(built("balanced_softmax"), balanced_softmax(xt, yt, counts))
    close(
        built("ldam", max_margin=0.2, scale=5.0, drw_epoch=3),
        ldam(xt, yt, counts, max_margin=0.2, scale=5.0),
    )
    loss = build_loss("ldam", counts, drw_epoch=None, epochs=10)
    assert loss.drw_epoch == 8 and loss.beta == 0.9999
    assert build_loss("ldam", counts, epochs=3).drw_epoch == 2
    assert build_loss("ldam", counts, drw_epoch=0).weight is not None
    assert build_loss("ce", counts, ignore_index=3).ignore_index == 3


def test_build_loss_errors():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'.*'ce'.*'balanced_softmax'.*'ldam'"):
        build_loss("hinge", COUNTS)
    with pytest.raises(ValueError, match="set loss.weights"):
        build_loss("weighted_ce", COUNTS)
    with pytest.raises(ValueError, match=r"classes \[1, 3\]"):
        build_loss("logit_adjusted", [5, 0, 3, 0])
    for name in LOSSES:
        with pytest.raises(ValueError, match=r"classes \[2\]"):
            build_loss(name, [5, 4, 0], weights=[1, 1, 1], epochs=5)
    with pytest.raises(ValueError, match="epochs"):
        build_loss("ldam", COUNTS)
    with pytest.raises(ValueError, match="5 values, one per class"):
        build_loss("weighted_ce", COUNTS, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        build_loss("focal", COUNTS, weights=[1.0, -2.0, 1, 1, 1])
    with pytest.raises(ValueError, match="base"):
        build_loss("class_balanced", COUNTS, base="hinge")
    with pytest.raises(ValueError, match="beta"):
        build_loss("class_balanced", COUNTS, beta=1.0)


def test_function_argument_errors():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="reduction"):
        ce(x, y, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        focal(x, y, gamma=-1.0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        focal(x[:, 0], y)
    with pytest.raises(ValueError, match="targets"):
        ce(x, y[:3])
    with pytest.raises(ValueError, match="3 classes"):
        logit_adjusted(x, y, [1, 2])
    with pytest.raises(ValueError, match="3 classes"):
        L.weighted_ce(x, y, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"classes \[0\]"):
        balanced_softmax(x, y, torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="base"):
        class_balanced(x, y, [1, 2, 3], base="dice")


def test_module_docstring_example_runs():
    result = doctest.testmod(L, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_loss_registry_and_the_spec_name_the_same_losses():
    from engine.config import LOSS_NAMES

    assert sorted(LOSSES) == sorted(LOSS_NAMES)
