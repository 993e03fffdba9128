"""Losses for class-imbalanced classification: pure functions, thin modules, a registry.

    >>> import torch
    >>> from engine.losses import LOSSES, build_loss, logit_adjusted
    >>> counts = [900, 60, 30, 7, 3]
    >>> logits, targets = torch.randn(8, 5), torch.tensor([0, 0, 1, 2, 3, 4, 0, -100])
    >>> loss_fn = build_loss("ldam", counts, epochs=10)  # deferred re-weighting from epoch 8
    >>> loss_fn.set_epoch(0)  # every loss has set_epoch; only LDAM uses it
    >>> loss_fn(logits, targets).shape
    torch.Size([])
    >>> logit_adjusted(logits, targets, counts, tau=1.0, reduction="none").shape
    torch.Size([8])
    >>> sorted(LOSSES)
    ['balanced_softmax', 'ce', 'class_balanced', 'focal', 'ldam', 'logit_adjusted', 'weighted_ce']

Each loss is a pure function of ``(logits (N, C), targets (N,) int64, class tensors, parameters)``
and a thin ``nn.Module`` that holds its class tensors (counts, priors, weights, margins) as
buffers, so ``.to(device)`` moves them and ``state_dict()`` carries them. Every module has
``set_epoch(epoch)`` (a no-op except for LDAM's deferred re-weighting) so that a training loop
can call it whatever the loss. Nothing here imports the rest of ``engine``.

Reductions follow ``torch.nn.functional.cross_entropy`` exactly, for every loss:

- ``reduction="none"``: the per-sample loss, times the class weight ``w[y_i]`` when the loss has
  per-class weights; 0 at positions whose target is ``ignore_index``.
- ``"sum"``: the sum of those values.
- ``"mean"``: with per-class weights, the *weighted* mean ``Σ w[y_i]·l_i / Σ w[y_i]`` over the
  non-ignored samples (as ``F.cross_entropy(weight=...)``); without, the plain mean over the
  non-ignored samples. When every target is ignored the mean is ``nan``, as in torch.

Normalization choices where the papers' code differs:

- ``focal`` with ``alpha``: alpha is a per-class weight, so the mean is the alpha-weighted mean
  ``Σ alpha[y]·l / Σ alpha[y]``; with ``gamma=0`` the loss is exactly ``weighted_ce(weight=alpha)``
  under every reduction. (Lin et al. normalize by the number of anchors instead; the two differ
  by the batch-dependent factor ``Σ alpha[y_i] / N``.)
- ``binary_focal`` follows ``torchvision.ops.sigmoid_focal_loss``: alpha is a balance factor
  (``alpha`` for positives, ``1 - alpha`` for negatives) and the mean is the plain mean over the
  non-ignored elements.
- ``class_balanced``: the effective-number weights ``(1-β)/(1-β^n_c)`` are normalized to sum to
  C (Cui et al.) and are then ``weighted_ce``'s weight or ``focal``'s alpha, so the mean is the
  weighted mean above (Cui et al.'s code divides the focal sum by N).
- ``ldam``: as the authors' code, ``F.cross_entropy(s·(z - m_y·onehot(y)), y, weight)``, so its
  mean is torch's weighted mean when the DRW weights are on.

Class counts must all be positive: a zero count gives a log prior of -inf (logit adjustment,
balanced softmax), an infinite LDAM margin and an undefined class-balanced weight. The pure
functions check counts given as sequences, arrays or CPU tensors; counts already on an
accelerator are not checked there (that would synchronize every step), the modules check them
once when built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction: TypeAlias = Literal["mean", "sum", "none"]
Counts: TypeAlias = Tensor | Sequence[int] | Sequence[float] | np.ndarray
Weights: TypeAlias = Tensor | Sequence[float] | np.ndarray

REDUCTIONS = ("mean", "sum", "none")
BASES = ("ce", "focal")
LDAM_DRW_BETA = 0.9999  # Cao et al.'s deferred re-weighting uses effective numbers with this β

__all__ = [
    "LOSSES",
    "BalancedSoftmaxLoss",
    "BinaryFocalLoss",
    "CELoss",
    "ClassBalancedLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "WeightedCELoss",
    "balanced_softmax",
    "binary_focal",
    "build_loss",
    "ce",
    "class_balanced",
    "class_balanced_weights",
    "focal",
    "ldam",
    "ldam_margins",
    "logit_adjusted",
]

# --------------------------------------------------------------------------------------------
# checks and shared pieces


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction; use one of {REDUCTIONS}"
        )


def _check_inputs(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must have shape (N,) = ({logits.shape[0]},), got {tuple(targets.shape)}"
        )


def _check_counts(counts: np.ndarray) -> None:
    """Raise ValueError unless ``counts`` is a non-empty vector of finite positive numbers."""
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError(f"class counts must be a non-empty vector, got shape {counts.shape}")
    bad = np.flatnonzero(~(np.isfinite(counts) & (counts > 0)))
    if len(bad):
        raise ValueError(
            f"class counts must be positive: classes {bad.tolist()[:20]} have counts "
            f"{counts[bad].tolist()[:20]} (a zero count has a log prior of -inf); every class "
            "needs training rows"
        )


def _counts_array(counts: Counts) -> np.ndarray:
    """Counts as a checked float64 numpy vector (moves a device tensor to the CPU)."""
    if isinstance(counts, Tensor):
        counts = counts.detach().cpu().numpy()
    n = np.asarray(counts, dtype=np.float64)
    _check_counts(n)
    return n


def _calc_dtype(device: torch.device) -> torch.dtype:
    """Class statistics are computed in float64 (β^n near 1 needs it), except on MPS."""
    return torch.float32 if device.type == "mps" else torch.float64


def _counts_tensor(counts: Counts, logits: Tensor) -> Tensor:
    """Counts on ``logits.device`` in the calculation dtype; checked unless on an accelerator."""
    if isinstance(counts, Tensor) and counts.device.type != "cpu":
        n = counts.to(_calc_dtype(counts.device))
    else:
        n = torch.as_tensor(_counts_array(counts), dtype=_calc_dtype(logits.device))
    n = n.to(logits.device)
    if n.shape != logits.shape[1:]:
        raise ValueError(
            f"class counts have shape {tuple(n.shape)}; logits have {logits.shape[1]} classes"
        )
    return n


def _work_dtype(logits: Tensor) -> torch.dtype:
    """The dtype class adjustments are added in: at least float32 (half logits are promoted)."""
    return torch.promote_types(logits.dtype, torch.float32)


def _class_vector(values: Weights, logits: Tensor, what: str) -> Tensor:
    """A per-class vector (weights, alpha) as a tensor of ``logits``' dtype and device."""
    v = torch.as_tensor(values, dtype=logits.dtype, device=logits.device)
    if v.shape != logits.shape[1:]:
        raise ValueError(
            f"{what} has shape {tuple(v.shape)}; logits have {logits.shape[1]} classes"
        )
    return v


def _reduce(loss: Tensor, valid: Tensor, sample_weight: Tensor | None, reduction: str) -> Tensor:
    """Reduce per-sample losses like ``F.cross_entropy`` (see the module docstring).

    Args:
        loss: Per-sample losses (finite at ignored positions too).
        valid: Boolean mask of the non-ignored samples.
        sample_weight: ``w[y_i]`` per sample, or None for unweighted.
        reduction: "mean", "sum" or "none".
    """
    w = valid.to(loss.dtype) if sample_weight is None else sample_weight * valid
    per = torch.where(valid, loss * w, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / w.sum()


def class_balanced_weights(counts: Counts, beta: float) -> Tensor:
    """Effective-number class weights of Cui et al. (2019), normalized to sum to C.

    ``w_c = (1 - β) / (1 - β^{n_c})``, then ``w · C / Σ w``; β = 0 gives all ones and β → 1
    approaches inverse frequency. Computed in float64 (on the counts' device when a tensor).

    Reference: Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of
    Samples", CVPR 2019.

    Args:
        counts: Positive class counts, shape (C,).
        beta: Hyperparameter in [0, 1).

    Returns:
        The weights, shape (C,), float64 (float32 on MPS).
    """
    if not 0 <= beta < 1:
        raise ValueError(f"class-balanced weights need beta in [0, 1), got {beta}")
    if isinstance(counts, Tensor) and counts.device.type != "cpu":
        n = counts.to(_calc_dtype(counts.device))
    else:
        n = torch.as_tensor(_counts_array(counts), dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(beta, n)) if beta > 0 else torch.ones_like(n)
    return w * (len(n) / w.sum())


def ldam_margins(counts: Counts, max_margin: float = 0.5) -> Tensor:
    """LDAM's label-distribution-aware margins: ``m_c ∝ n_c^{-1/4}``, largest = ``max_margin``.

    Reference: Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019.

    Args:
        counts: Positive class counts, shape (C,).
        max_margin: The margin of the rarest class (the authors' ``max_m``, 0.5).

    Returns:
        The margins, shape (C,), float64 (float32 on MPS).
    """
    if not max_margin > 0:
        raise ValueError(f"ldam needs max_margin > 0, got {max_margin}")
    if isinstance(counts, Tensor) and counts.device.type != "cpu":
        n = counts.to(_calc_dtype(counts.device))
    else:
        n = torch.as_tensor(_counts_array(counts), dtype=torch.float64)
    m = n.pow(-0.25)
    return m * (max_margin / m.max())


# --------------------------------------------------------------------------------------------
# pure functions


def ce(
    logits: Tensor,
    targets: Tensor,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Plain softmax cross-entropy, ``-log softmax(z)_y`` (``F.cross_entropy``).

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64; ``ignore_index`` marks samples to skip.
        reduction: "mean", "sum" or "none" (see the module docstring).
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    return F.cross_entropy(logits, targets, reduction=reduction, ignore_index=ignore_index)


def weighted_ce(
    logits: Tensor,
    targets: Tensor,
    weight: Weights,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Class-weighted cross-entropy, ``-w[y] · log softmax(z)_y``; the mean is weighted.

    Cost-sensitive re-weighting as in King & Zeng (2001) and scikit-learn's ``class_weight``;
    identical to ``F.cross_entropy(logits, targets, weight=weight)``.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        weight: Per-class weights, shape (C,).
        reduction: "mean" (``Σ w[y_i] l_i / Σ w[y_i]``), "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    w = _class_vector(weight, logits, "weight")
    return F.cross_entropy(
        logits, targets, weight=w, reduction=reduction, ignore_index=ignore_index
    )


def focal(
    logits: Tensor,
    targets: Tensor,
    alpha: Weights | None = None,
    *,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Multi-class softmax focal loss, ``-alpha[y] · (1 - p_y)^γ · log p_y``.

    Reference: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection",
    ICCV 2017.

    ``alpha`` is a per-class weight, so ``reduction="mean"`` is the alpha-weighted mean
    ``Σ alpha[y_i] l_i / Σ alpha[y_i]`` (the plain mean when ``alpha`` is None): with
    ``gamma=0`` this is exactly ``weighted_ce(logits, targets, alpha)`` for every reduction.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        alpha: Per-class weights, shape (C,), or None.
        gamma: Focusing parameter, >= 0 (0 gives cross-entropy).
        reduction: "mean", "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    if not gamma >= 0:
        raise ValueError(f"focal needs gamma >= 0, got {gamma}")
    valid = targets != ignore_index
    safe = targets.masked_fill(~valid, 0)
    logp = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -logp
    if gamma != 0:
        loss = loss * (-torch.expm1(logp)).pow(gamma)  # 1 - p, accurate when p is near 1
    w = None if alpha is None else _class_vector(alpha, logits, "alpha").to(loss.dtype)[safe]
    return _reduce(loss, valid, w, reduction)


def binary_focal(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Binary sigmoid focal loss, as ``torchvision.ops.sigmoid_focal_loss``.

    ``l = -alpha_t · (1 - p_t)^γ · log p_t`` with ``p = sigmoid(z)``, ``p_t = p`` for a positive
    and ``1 - p`` for a negative, ``alpha_t = alpha`` for a positive and ``1 - alpha`` for a
    negative (no alpha factor when ``alpha`` is None). ``reduction="mean"`` is the plain mean
    over the non-ignored elements, as torchvision (alpha is a balance factor, not a class weight).

    Reference: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection",
    ICCV 2017.

    Args:
        logits: Shape (N,) or (N, 1).
        targets: Shape (N,) or (N, 1), values in {0, 1} (soft targets in [0, 1] also work) or
            ``ignore_index``.
        alpha: Weight of the positives in [0, 1], or None.
        gamma: Focusing parameter, >= 0.
        reduction: "mean", "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if not gamma >= 0:
        raise ValueError(f"binary_focal needs gamma >= 0, got {gamma}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"binary_focal needs alpha in [0, 1] or None, got {alpha}")
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if logits.ndim != 1 or targets.shape != logits.shape:
        raise ValueError(
            f"binary_focal takes logits and targets of shape (N,) or (N, 1), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    valid = targets != ignore_index
    t = torch.where(valid, targets, 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    if gamma != 0:
        p = torch.sigmoid(logits)
        p_t = p * t + (1 - p) * (1 - t)
        loss = loss * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _reduce(loss, valid, None, reduction)


def class_balanced(
    logits: Tensor,
    targets: Tensor,
    counts: Counts,
    *,
    beta: float = 0.999,
    base: Literal["ce", "focal"] = "ce",
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Class-balanced loss: ``base`` re-weighted by the inverse effective number of samples.

    The weights ``(1-β)/(1-β^{n_c})``, normalized to sum to C (``class_balanced_weights``), are
    ``weighted_ce``'s weight (``base="ce"``) or ``focal``'s alpha (``base="focal"``, with
    ``gamma``). ``beta=0`` gives plain CE (or unweighted focal).

    Reference: Cui, Jia, Lin, Song, Belongie, "Class-Balanced Loss Based on Effective Number of
    Samples", CVPR 2019.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        counts: Positive training counts per class, shape (C,).
        beta: Effective-number hyperparameter in [0, 1) (paper: 0.9, 0.99, 0.999, 0.9999).
        base: "ce" or "focal".
        gamma: Focal's focusing parameter (``base="focal"`` only).
        reduction: "mean" (weighted mean), "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``.
    """
    if base not in BASES:
        raise ValueError(f"class_balanced base must be one of {BASES}, got {base!r}")
    _check_inputs(logits, targets)
    n = _counts_tensor(counts, logits)
    w = class_balanced_weights(n, beta).to(logits.dtype)
    if base == "ce":
        return weighted_ce(logits, targets, w, reduction=reduction, ignore_index=ignore_index)
    return focal(logits, targets, w, gamma=gamma, reduction=reduction, ignore_index=ignore_index)


def _shifted_ce(
    logits: Tensor, targets: Tensor, shift: Tensor, reduction: str, ignore_index: int
) -> Tensor:
    """Cross-entropy of ``logits + shift`` (a per-class shift, broadcast over the batch)."""
    z = logits.to(_work_dtype(logits)) + shift.to(_work_dtype(logits))
    return F.cross_entropy(z, targets, reduction=reduction, ignore_index=ignore_index)


def logit_adjusted(
    logits: Tensor,
    targets: Tensor,
    counts: Counts,
    *,
    tau: float = 1.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Logit-adjusted loss: cross-entropy of ``z + τ · log π`` with the class prior ``π``.

    ``π = counts / Σ counts``. ``tau=0`` is plain CE; ``tau=1`` is ``balanced_softmax``. At
    inference the raw logits are used (the adjustment lives only in the loss).

    Reference: Menon, Jayasumana, Rawat, Jain, Veit, Kumar, "Long-tail learning via logit
    adjustment", ICLR 2021.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        counts: Positive training counts per class, shape (C,).
        tau: Temperature of the adjustment (paper: 1).
        reduction: "mean", "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``; promoted to at least float32.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    n = _counts_tensor(counts, logits)
    return _shifted_ce(logits, targets, tau * (n / n.sum()).log(), reduction, ignore_index)


def balanced_softmax(
    logits: Tensor,
    targets: Tensor,
    counts: Counts,
    *,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Balanced softmax: cross-entropy of ``z + log n`` (the class counts).

    Adding ``log n`` or ``log π`` is the same loss (softmax is shift-invariant), so this equals
    ``logit_adjusted`` with ``tau=1``.

    Reference: Ren, Yu, Ma, Zhao, Yi, Li, "Balanced Meta-Softmax for Long-Tailed Visual
    Recognition", NeurIPS 2020.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        counts: Positive training counts per class, shape (C,).
        reduction: "mean", "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``; promoted to at least float32.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    n = _counts_tensor(counts, logits)
    return _shifted_ce(logits, targets, n.log(), reduction, ignore_index)


def _ldam_from_margins(
    logits: Tensor,
    targets: Tensor,
    margins: Tensor,
    weight: Tensor | None,
    scale: float,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    dtype = _work_dtype(logits)
    valid = targets != ignore_index
    safe = targets.masked_fill(~valid, 0)
    onehot = F.one_hot(safe, logits.shape[1]).to(dtype) * valid.unsqueeze(1)
    z = logits.to(dtype) - margins.to(dtype)[safe].unsqueeze(1) * onehot
    w = None if weight is None else weight.to(device=logits.device, dtype=dtype)
    return F.cross_entropy(
        scale * z, targets, weight=w, reduction=reduction, ignore_index=ignore_index
    )


def ldam(
    logits: Tensor,
    targets: Tensor,
    counts: Counts,
    weight: Weights | None = None,
    *,
    max_margin: float = 0.5,
    scale: float = 30.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """LDAM loss: ``F.cross_entropy(s · (z - m_y · onehot(y)), y, weight)``.

    The true-class logit is lowered by the margin ``m_y ∝ n_y^{-1/4}`` (``ldam_margins``, the
    largest equal to ``max_margin``), then every logit is scaled by ``s``, as in the authors'
    code. ``weight`` is the per-class weight (None before deferred re-weighting starts; see
    ``LDAMLoss`` for the DRW schedule).

    Reference: Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019.

    Args:
        logits: Shape (N, C).
        targets: Class indices, shape (N,), int64.
        counts: Positive training counts per class, shape (C,).
        weight: Per-class weights, shape (C,), or None.
        max_margin: The rarest class's margin (paper: 0.5).
        scale: The logit scale ``s`` (paper: 30).
        reduction: "mean" (weighted mean when ``weight`` is given), "sum" or "none".
        ignore_index: Target value that contributes neither loss nor gradient.

    Returns:
        A scalar, or shape (N,) for ``reduction="none"``; promoted to at least float32.
    """
    _check_reduction(reduction)
    _check_inputs(logits, targets)
    if not scale > 0:
        raise ValueError(f"ldam needs scale > 0, got {scale}")
    n = _counts_tensor(counts, logits)
    margins = ldam_margins(n, max_margin)
    w = None if weight is None else _class_vector(weight, logits, "weight")
    return _ldam_from_margins(logits, targets, margins, w, scale, reduction, ignore_index)


# --------------------------------------------------------------------------------------------
# modules


def _buffer(values: np.ndarray | Tensor) -> Tensor:
    """A float32 buffer from float64 values (computed in float64, stored portable)."""
    return torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float32).clone()


class _ImbalanceLoss(nn.Module):
    """Common base: ``reduction`` and ``ignore_index``, and a no-op ``set_epoch``."""

    def __init__(self, *, reduction: Reduction = "mean", ignore_index: int = -100) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the (0-based) epoch about to start; a no-op for this loss."""

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class CELoss(_ImbalanceLoss):
    """Module form of ``ce`` (plain cross-entropy)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ce(logits, targets, reduction=self.reduction, ignore_index=self.ignore_index)


class WeightedCELoss(_ImbalanceLoss):
    """Module form of ``weighted_ce``; buffer ``weight`` (C,).

    Args:
        weight: Per-class weights, shape (C,), finite and >= 0.
        reduction: "mean", "sum" or "none".
        ignore_index: Target value to skip.
    """

    weight: Tensor

    def __init__(
        self, weight: Weights, *, reduction: Reduction = "mean", ignore_index: int = -100
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        self.register_buffer("weight", _buffer(_check_weights(weight, None, "weight")))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return weighted_ce(
            logits, targets, self.weight, reduction=self.reduction, ignore_index=self.ignore_index
        )


class FocalLoss(_ImbalanceLoss):
    """Module form of ``focal``; buffer ``alpha`` (C,) when given.

    Args:
        alpha: Per-class weights, shape (C,), or None.
        gamma: Focusing parameter, >= 0.
        reduction: "mean" (alpha-weighted mean), "sum" or "none".
        ignore_index: Target value to skip.
    """

    alpha: Tensor | None

    def __init__(
        self,
        alpha: Weights | None = None,
        gamma: float = 2.0,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        if not gamma >= 0:
            raise ValueError(f"focal needs gamma >= 0, got {gamma}")
        self.gamma = float(gamma)
        a = None if alpha is None else _buffer(_check_weights(alpha, None, "alpha"))
        self.register_buffer("alpha", a)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal(
            logits,
            targets,
            self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {super().extra_repr()}"


class BinaryFocalLoss(_ImbalanceLoss):
    """Module form of ``binary_focal`` (not in ``LOSSES``, which are multi-class).

    Args:
        alpha: Weight of the positives in [0, 1], or None.
        gamma: Focusing parameter, >= 0.
        reduction: "mean", "sum" or "none".
        ignore_index: Target value to skip.
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        if not gamma >= 0:
            raise ValueError(f"binary_focal needs gamma >= 0, got {gamma}")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"binary_focal needs alpha in [0, 1] or None, got {alpha}")
        self.alpha = alpha
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return binary_focal(
            logits,
            targets,
            alpha=self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"


class ClassBalancedLoss(_ImbalanceLoss):
    """Module form of ``class_balanced``; buffers ``counts`` and ``weight`` (C,).

    Args:
        counts: Positive training counts per class, shape (C,).
        beta: Effective-number hyperparameter in [0, 1).
        base: "ce" or "focal".
        gamma: Focal's focusing parameter (``base="focal"`` only).
        reduction: "mean" (weighted mean), "sum" or "none".
        ignore_index: Target value to skip.
    """

    counts: Tensor
    weight: Tensor

    def __init__(
        self,
        counts: Counts,
        beta: float = 0.999,
        base: Literal["ce", "focal"] = "ce",
        gamma: float = 2.0,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        if base not in BASES:
            raise ValueError(f"class_balanced base must be one of {BASES}, got {base!r}")
        if not gamma >= 0:
            raise ValueError(f"focal needs gamma >= 0, got {gamma}")
        n = _counts_array(counts)
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        self.register_buffer("counts", _buffer(n))
        self.register_buffer("weight", _buffer(class_balanced_weights(n, beta)))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        kw = {"reduction": self.reduction, "ignore_index": self.ignore_index}
        if self.base == "ce":
            return weighted_ce(logits, targets, self.weight.to(logits.dtype), **kw)
        return focal(logits, targets, self.weight.to(logits.dtype), gamma=self.gamma, **kw)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, base={self.base!r}, gamma={self.gamma}, {super().extra_repr()}"


class LogitAdjustedLoss(_ImbalanceLoss):
    """Module form of ``logit_adjusted``; buffers ``counts`` and ``log_prior`` (C,).

    Args:
        counts: Positive training counts per class, shape (C,).
        tau: Temperature of the adjustment.
        reduction: "mean", "sum" or "none".
        ignore_index: Target value to skip.
    """

    counts: Tensor
    log_prior: Tensor

    def __init__(
        self,
        counts: Counts,
        tau: float = 1.0,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        n = _counts_array(counts)
        self.tau = float(tau)
        self.register_buffer("counts", _buffer(n))
        self.register_buffer("log_prior", _buffer(np.log(n / n.sum())))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        shift = self.tau * self.log_prior
        return _shifted_ce(logits, targets, shift, self.reduction, self.ignore_index)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, {super().extra_repr()}"


class BalancedSoftmaxLoss(_ImbalanceLoss):
    """Module form of ``balanced_softmax``; buffers ``counts`` and ``log_counts`` (C,).

    Args:
        counts: Positive training counts per class, shape (C,).
        reduction: "mean", "sum" or "none".
        ignore_index: Target value to skip.
    """

    counts: Tensor
    log_counts: Tensor

    def __init__(
        self, counts: Counts, *, reduction: Reduction = "mean", ignore_index: int = -100
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        n = _counts_array(counts)
        self.register_buffer("counts", _buffer(n))
        self.register_buffer("log_counts", _buffer(np.log(n)))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        return _shifted_ce(logits, targets, self.log_counts, self.reduction, self.ignore_index)


class LDAMLoss(_ImbalanceLoss):
    """Module form of ``ldam`` with deferred re-weighting (DRW).

    Buffers ``counts``, ``margins`` (``ldam_margins``) and ``drw_weight`` (the effective-number
    weights with ``beta``, normalized to sum to C). Before ``drw_epoch`` the loss is unweighted;
    from ``set_epoch(drw_epoch)`` on it uses ``drw_weight``. ``drw_epoch=None`` never re-weighs.
    The authors use β = 0.9999 and start DRW at epoch 160 of 200.

    Reference: Cao, Wei, Gaidon, Arechiga, Ma, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019.

    Args:
        counts: Positive training counts per class, shape (C,).
        max_margin: The rarest class's margin.
        scale: The logit scale ``s``.
        drw_epoch: First (0-based) epoch with re-weighting, or None for none.
        beta: Effective-number β of the DRW weights.
        reduction: "mean", "sum" or "none".
        ignore_index: Target value to skip.
    """

    counts: Tensor
    margins: Tensor
    drw_weight: Tensor

    def __init__(
        self,
        counts: Counts,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = LDAM_DRW_BETA,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        if not scale > 0:
            raise ValueError(f"ldam needs scale > 0, got {scale}")
        if drw_epoch is not None and drw_epoch < 0:
            raise ValueError(f"ldam needs drw_epoch >= 0 or None, got {drw_epoch}")
        n = _counts_array(counts)
        self.max_margin, self.scale, self.beta = float(max_margin), float(scale), float(beta)
        self.drw_epoch = drw_epoch
        self.register_buffer("counts", _buffer(n))
        self.register_buffer("margins", _buffer(ldam_margins(n, max_margin)))
        self.register_buffer("drw_weight", _buffer(class_balanced_weights(n, beta)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Switch the DRW weights on when ``epoch >= drw_epoch`` (off before)."""
        self.epoch = int(epoch)

    @property
    def drw_active(self) -> bool:
        """Whether the current epoch uses the re-weighting."""
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    @property
    def weight(self) -> Tensor | None:
        """The per-class weights in use now: ``drw_weight`` once DRW is on, else None."""
        return self.drw_weight if self.drw_active else None

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_inputs(logits, targets)
        return _ldam_from_margins(
            logits,
            targets,
            self.margins,
            self.weight,
            self.scale,
            self.reduction,
            self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (
            f"max_margin={self.max_margin}, scale={self.scale}, drw_epoch={self.drw_epoch}, "
            f"beta={self.beta}, epoch={self.epoch}, {super().extra_repr()}"
        )


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CELoss,
    "weighted_ce": WeightedCELoss,
    "focal": FocalLoss,
    "class_balanced": ClassBalancedLoss,
    "logit_adjusted": LogitAdjustedLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
    "ldam": LDAMLoss,
}


# --------------------------------------------------------------------------------------------
# builder


def _check_weights(weights: Weights, k: int | None, what: str) -> np.ndarray:
    """Per-class weights as a float64 vector: finite, >= 0, not all zero, length ``k``."""
    if isinstance(weights, Tensor):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (k is not None and len(w) != k):
        want = "a vector" if k is None else f"{k} values, one per class"
        raise ValueError(f"{what} must be {want}; got shape {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all() and (w > 0).any()):
        raise ValueError(f"{what} must be finite, >= 0 and not all 0: {w.tolist()[:20]}")
    return w


def build_loss(
    name: str,
    class_counts: Sequence[int],
    *,
    weights: Sequence[float] | None = None,
    gamma: float = 2.0,
    beta: float = 0.999,
    tau: float = 1.0,
    base: str = "ce",
    max_margin: float = 0.5,
    scale: float = 30.0,
    drw_epoch: int | None = None,
    epochs: int | None = None,
    ignore_index: int = -100,
) -> nn.Module:
    """Build the loss module ``LOSSES[name]`` from the training class counts and parameters.

    Args:
        name: A key of ``LOSSES``.
        class_counts: Training rows per class in class-index order; all must be positive.
        weights: Per-class weights in class-index order (already resolved from a scheme):
            required by ``weighted_ce``, focal's optional alpha, ignored by the other losses.
        gamma: Focal's focusing parameter (``focal``, ``class_balanced`` over focal).
        beta: Effective-number β of ``class_balanced``.
        tau: Logit-adjustment temperature of ``logit_adjusted``.
        base: ``class_balanced``'s base loss, "ce" or "focal".
        max_margin: ``ldam``'s largest margin.
        scale: ``ldam``'s logit scale.
        drw_epoch: ``ldam``'s first re-weighted epoch; None means ``int(0.8 * epochs)``.
        epochs: The number of training epochs (needed by ``ldam`` when ``drw_epoch`` is None).
        ignore_index: Target value to skip.

    Returns:
        The module; call ``set_epoch(epoch)`` at the start of every epoch.

    Raises:
        ValueError: For an unknown name, a zero (or negative) class count, missing or
            mis-shaped weights, or bad parameters.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {list(LOSSES)}")
    counts = _counts_array(class_counts)
    k = len(counts)
    w = None if weights is None else _check_weights(weights, k, "loss.weights")
    kw = {"ignore_index": ignore_index}
    if name == "ce":
        return CELoss(**kw)
    if name == "weighted_ce":
        if w is None:
            raise ValueError(
                "loss 'weighted_ce' needs per-class weights: set loss.weights (a class-weight "
                "scheme such as 'inverse' or 'effective_number', or {label: weight})"
            )
        return WeightedCELoss(w, **kw)
    if name == "focal":
        return FocalLoss(w, gamma, **kw)
    if name == "class_balanced":
        if base not in BASES:
            raise ValueError(f"class_balanced base must be one of {BASES}, got {base!r}")
        return ClassBalancedLoss(counts, beta, base, gamma, **kw)
    if name == "logit_adjusted":
        return LogitAdjustedLoss(counts, tau, **kw)
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(counts, **kw)
    # ldam
    if drw_epoch is None:
        if epochs is None or epochs < 1:
            raise ValueError(
                "loss 'ldam' with drw_epoch=None starts re-weighting at int(0.8 * epochs): pass "
                f"epochs >= 1 (got {epochs}) or set loss.drw_epoch"
            )
        drw_epoch = int(0.8 * epochs)
    return LDAMLoss(counts, max_margin, scale, drw_epoch, LDAM_DRW_BETA, **kw)
