"""engine.hf: the loss adapter's reductions and the balanced Trainer's checks (the Trainer
itself runs in examples/hf_trainer_balanced.py, tests/test_examples.py)."""

from __future__ import annotations

import pytest
import torch

from engine.hf import hf_loss
from engine.losses import build_loss


def test_the_adapter_takes_the_logits_and_normalizes_by_the_items_of_the_whole_batch():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 2, 2])
    loss = build_loss("weighted_ce", [50, 10, 5], weights=[1.0, 2.0, 4.0])
    fn = hf_loss(loss)
    outputs = {"logits": logits}
    assert torch.allclose(fn(outputs, labels), loss(logits, labels))  # torch's weighted mean
    per = torch.nn.functional.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 2.0, 4.0]), reduction="none"
    )
    assert torch.allclose(fn(outputs, labels, num_items_in_batch=12), per.sum() / 12)
    assert loss.reduction == "mean"  # restored
    assert torch.allclose(fn((logits,), labels), loss(logits, labels))  # tuple outputs
    with pytest.raises(ValueError, match="needs labels"):
        fn(outputs, None)


def test_a_balanced_trainer_refuses_labels_that_do_not_match_the_rows(tmp_path):
    from transformers import TrainingArguments

    from engine.hf import BalancedTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    data = [{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor(0)}] * 4
    with pytest.raises(ValueError, match="class_labels has 3 rows but train_dataset has 4"):
        BalancedTrainer(
            model=torch.nn.Linear(2, 2), args=args, train_dataset=data, class_labels=[0, 1, 0]
        )
