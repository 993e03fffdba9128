"""The engine's losses and balanced sampler inside a Hugging Face ``Trainer``.

    from engine.hf import BalancedTrainer, hf_loss
    from engine.losses import build_loss

    loss = build_loss("focal", class_counts, gamma=2.0)           # any of engine.losses.LOSSES
    trainer = BalancedTrainer(
        model=model, args=args, train_dataset=train,
        compute_loss_func=hf_loss(loss),                           # the loss, not the model's
        class_labels=train["labels"], balance_power=0.0,           # every batch balanced
    )
    trainer.train()

``hf_loss`` turns a loss module into the ``compute_loss_func`` the ``Trainer`` calls with the
model's outputs and the labels (transformers#15450: class weights and custom losses without
subclassing). With ``num_items_in_batch`` (passed by the ``Trainer`` when it accumulates
gradients) the per-sample losses are summed and divided by it, so accumulated steps weigh every
sample alike; otherwise the loss module's own reduction applies (for weighted losses, torch's
weighted mean).

``BalancedTrainer`` (or ``BalancedSamplerMixin`` on your own ``Trainer`` subclass) draws the
training batches with ``engine.sampling.BalancedDistributedSampler``: each batch of
``per_device_train_batch_size`` rows has the class mix p_c ∝ n_c^power. Under several
processes (``torchrun`` / accelerate) the sampler yields one sequence of balanced batches and
accelerate deals whole batches to the processes, so every process's batches stay balanced
(accelerate#2865). The hook is the ``Trainer``'s ``_get_train_sampler``, the method its own
documentation points to for custom samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer

from engine.sampling import BalancedDistributedSampler

__all__ = ["BalancedSamplerMixin", "BalancedTrainer", "hf_loss"]


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        return outputs["logits"]
    return outputs[0]


def hf_loss(loss: nn.Module) -> Callable[..., torch.Tensor]:
    """A ``Trainer(compute_loss_func=...)`` computing ``loss`` on the model's logits."""

    def compute_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None):
        if labels is None:
            raise ValueError("compute_loss_func needs labels: the batches have no 'labels'")
        logits = _logits(outputs)
        fn = loss.to(logits.device)
        if num_items_in_batch is None:
            return fn(logits, labels)
        reduction, fn.reduction = fn.reduction, "none"
        try:
            per_sample = fn(logits, labels)
        finally:
            fn.reduction = reduction
        return per_sample.sum() / torch.as_tensor(num_items_in_batch, device=logits.device)

    return compute_loss


class BalancedSamplerMixin:
    """Put before ``Trainer`` in the bases: the training batches come from
    ``BalancedDistributedSampler`` over ``class_labels`` (the class index of every training
    row, in the dataset's order)."""

    def __init__(
        self,
        *args: Any,
        class_labels: Sequence[int] | np.ndarray,
        balance_power: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.class_labels = np.asarray(class_labels)
        self.balance_power = float(balance_power)
        n = len(self.train_dataset) if self.train_dataset is not None else None
        if n is not None and n != len(self.class_labels):
            raise ValueError(
                f"class_labels has {len(self.class_labels)} rows but train_dataset has {n}; "
                "give the class index of every training row, in order"
            )

    def _get_train_sampler(self, train_dataset: Any = None) -> BalancedDistributedSampler:
        return BalancedDistributedSampler(
            self.class_labels,
            self.args.per_device_train_batch_size,
            num_replicas=1,  # one sequence of balanced batches; accelerate deals them out
            rank=0,
            power=self.balance_power,
            seed=self.args.seed,
        )


class BalancedTrainer(BalancedSamplerMixin, Trainer):
    """``transformers.Trainer`` with balanced training batches (``BalancedSamplerMixin``)."""
