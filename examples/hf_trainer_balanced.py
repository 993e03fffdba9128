"""A Hugging Face Trainer with the engine's focal loss and balanced batches, on tiny data.

    python examples/hf_trainer_balanced.py

A tiny randomly initialized BERT classifies 3 classes of token sequences (480 / 96 / 24 rows);
``BalancedTrainer`` draws every batch with the uniform class mix and ``hf_loss`` computes the
focal loss on the model's logits. Asserts: every batch holds the mix
``engine.sampling.batch_class_counts`` gives, and the loss the Trainer used equals the focal
formula computed by hand on the same logits.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from engine.hf import BalancedTrainer, hf_loss
from engine.losses import build_loss
from engine.sampling import batch_class_counts, target_mix

COUNTS = [480, 96, 24]
BATCH = 16


class Rows(torch.utils.data.Dataset):
    """Token sequences whose class shows in one token: class c puts token 10 + c at position 1."""

    def __init__(self, labels: np.ndarray, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.ids = rng.integers(20, 100, size=(len(labels), 12))
        self.ids[:, 0] = 1
        self.ids[:, 1] = 10 + labels
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.as_tensor(self.ids[i]),
            "labels": torch.as_tensor(int(self.labels[i])),
        }


def main() -> None:
    torch.manual_seed(0)
    labels = np.repeat(np.arange(3), COUNTS)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    focal = build_loss("focal", COUNTS, gamma=2.0)
    seen: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
    compute = hf_loss(focal)

    def recording_loss(outputs, labels, num_items_in_batch=None):
        value = compute(outputs, labels, num_items_in_batch=num_items_in_batch)
        seen.append((labels.cpu().numpy(), outputs["logits"].detach().cpu(), value.detach()))
        return value

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=1e-3,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = BalancedTrainer(
            model=model,
            args=args,
            train_dataset=Rows(labels),
            compute_loss_func=recording_loss,
            class_labels=labels,
            balance_power=0.0,
        )
        trainer.train()

    mix = target_mix(COUNTS, 0.0)
    for step, (y, _, _) in enumerate(seen):
        want = batch_class_counts(mix, BATCH, step)
        got = np.bincount(y, minlength=3)
        assert (got == want).all(), f"step {step}: batch classes {got}, expected {want}"
    # the loss the Trainer trained on is the focal formula on those logits
    y, logits, value = seen[-1]
    p = torch.softmax(logits.double(), dim=1)[torch.arange(len(y)), torch.as_tensor(y)]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert torch.allclose(value.double(), expected, atol=1e-5), (float(value), float(expected))
    print(f"ok: {len(seen)} balanced batches, last focal loss {float(value):.4f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
