"""Plain PyTorch DDP (2 gloo processes) with the engine's balanced sampler and a long-tail loss.

    python examples/ddp_balanced_sampler.py

No Ray here: ``torch.multiprocessing`` starts two processes that join a gloo process group, wrap
a linear model in ``DistributedDataParallel`` and train on 1,000 rows of 4 classes
(800/120/60/20) with ``BalancedDistributedSampler`` (the sampler torch lacks: pytorch#77154) and
``LogitAdjustedLoss``. Asserts, on each rank: every batch holds exactly the class mix
``batch_class_counts`` gives for p_c ∝ n_c^0.5; the two ranks never draw the same row of a
class before that class's rows are used up; the loss equals cross-entropy on the logits
shifted by tau·log(prior), computed by hand.
"""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from engine.losses import LogitAdjustedLoss
from engine.sampling import BalancedDistributedSampler, batch_class_counts, target_mix

COUNTS = [800, 120, 60, 20]
BATCH = 32
POWER = 0.5


def _data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(COUNTS)), COUNTS)
    x = (rng.normal(size=(len(y), 8)) + y[:, None]).astype(np.float32)
    return torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), y


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    dataset, y = _data()
    sampler = BalancedDistributedSampler(y, BATCH, power=POWER, seed=0)  # rank, world: dist's
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    model = DistributedDataParallel(torch.nn.Linear(8, len(COUNTS)))
    loss_fn = LogitAdjustedLoss(COUNTS, tau=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mix = target_mix(COUNTS, POWER)
    prior = torch.as_tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for step, (xb, yb) in enumerate(loader):
            want = batch_class_counts(mix, BATCH, epoch * sampler.steps_per_epoch + step)
            got = np.bincount(yb.numpy(), minlength=len(COUNTS))
            assert (got == want).all(), f"rank {rank} step {step}: {got} != {want}"
            logits = model(xb)
            loss = loss_fn(logits, yb)
            by_hand = torch.nn.functional.cross_entropy(
                logits.detach().double() + torch.log(prior), yb
            )
            assert torch.allclose(loss.detach().double(), by_hand, atol=1e-5)
            opt.zero_grad()
            loss.backward()
            opt.step()
    np.save(os.path.join(out, f"rank{rank}.npy"), np.asarray(list(sampler)))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(2, _free_port(), out), nprocs=2, join=True)
        drawn = [np.load(os.path.join(out, f"rank{r}.npy")) for r in (0, 1)]
    _, y = _data()
    for c, n in enumerate(COUNTS):  # the ranks share no row of a class it has rows to spare
        a, b = (set(d[y[d] == c].tolist()) for d in drawn)
        if len(a) + len(b) <= n:
            assert not a & b, f"class {c}: ranks drew the same rows {sorted(a & b)[:5]}"
    print(f"ok: 2 ranks, balanced batches, {sum(len(d) for d in drawn)} rows in the last epoch")


if __name__ == "__main__":
    main()
