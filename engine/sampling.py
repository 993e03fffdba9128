"""Balanced per-worker batch sampling under DDP: every batch on every worker has the target mix.

    mix = target_mix([2000, 400, 80, 12], power=0.0)           # [0.25, 0.25, 0.25, 0.25]
    batch_class_counts(mix, 30, step=0)                         # [8, 8, 7, 7]; rotates per step

    # map path: each worker holds the labels of the whole train split
    loader = balanced_loader(dataset, labels, 32, power=0.5, seed=0)   # inside ray.train
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader: ...

    # stream path: each worker reads its Ray Data shard
    balancer = StreamBalancer(class_counts, 32, power=0.0, seed=0, rank=rank, world_size=world)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(epochs):
        for batch in balancer.epoch(epoch, shard.iter_batches(batch_format="numpy")): ...

**Target mix.** Class c gets the share p_c ∝ n_c^q (q=0 uniform over the classes that have rows,
q=1 the data's own mix). A batch of B rows holds m_c rows of class c: floor(p_c·B) plus, for
``B - sum(floor)`` of the classes, one extra row (largest-remainder rounding). Which classes get the
extra rows is decided by the remainder *carried over* from earlier steps: at step t the extras go
to the classes with the largest cumulative shortfall ``p_c·B·(t+1) - (extras so far)``, ties
broken in an order that rotates with t. So |m_c - p_c·B| < 1 in every batch, and over T steps each
class's total stays within about one row of p_c·B·T (measured < 1.2 rows; bounded, not growing),
so shares converge to p_c exactly. ``batch_class_counts`` is a pure function of (mix, B, step); it
runs the carry forward from step 0 and caches its state (a random-access call costs at most 128
steps after the first sequential pass).

**Map path** (:class:`BalancedDistributedSampler`). Steps per epoch are
``ceil(num_samples / (num_replicas * batch_size))``, the same on every rank; rank r's batch at
step s has ``batch_class_counts(mix, B, epoch * steps + s)`` rows of each class. For every class,
one permutation of its rows per (seed, epoch, class) is dealt out to the ranks in turn (rank r
takes deal positions r, r+W, r+2W, ...), so ranks never share a row of a class until that class has
used all its rows; a class that runs out is re-permuted (permutation number k = deal position //
class size) and dealt on. Draws go class first, row second — no ``torch.multinomial``, so no 2^24-
row limit. The permutations are keyed pseudo-random bijections (a Feistel network with round keys
from ``np.random.SeedSequence(seed, spawn_key=(tag, epoch, class))``) evaluated only at the deal
positions a rank needs, so an epoch costs O(rows drawn), never an O(class size) shuffle, and
every rank computes the same permutation without communicating. Nothing but (labels, batch_size,
num_replicas, rank, power, seed, num_samples, epoch) decides the indices.

*Ray Train and the sampler.* ``ray.train.torch.prepare_data_loader`` (Ray 2.60, Train V2:
``ray/train/v2/torch/train_loop_utils.py``) replaces the loader's sampler only when
``world_size > 1 and not isinstance(loader.sampler, DistributedSampler)`` — it then builds a new
``DataLoader`` with a plain ``DistributedSampler(dataset, shuffle=...)`` and drops the old sampler
(and any ``batch_sampler``). Because :class:`BalancedDistributedSampler` *is* a
``DistributedSampler``, it is kept as is: not re-created, not wrapped. ``prepare_data_loader`` then
only wraps the loader in ``_WrappedDataLoader`` (moves each batch to ``get_device()``; it copies the
loader's ``__dict__``, so ``prepared.sampler`` is our sampler and ``set_epoch`` reaches it). The
engine may therefore call ``prepare_data_loader(balanced_loader(...))`` with the defaults, or skip
it and move batches to the device itself; ``add_dist_sampler=False`` is not needed. Always call
``loader.sampler.set_epoch(epoch)`` before each epoch, as with torch's sampler.

**Stream path** (:class:`StreamBalancer`). Each worker reads its own shard (``get_dataset_shard``
splits by blocks, so a shard's class mix can drift from the global one). The balancer keeps, per
class, a FIFO buffer of fresh rows (at most ``buffer_rows``) and a reservoir sample of the rows of
that class it has read this epoch (at most ``buffer_rows``, Algorithm R). Each output batch takes
``m_c`` fresh rows of class c when it has them and recycles (draws with replacement from the
reservoir) only the shortfall. It reads the next input batch when (a) it is behind pace — by the
end of step s it has read ``(s+1)/steps`` of the expected shard size ``sum(class_counts)/W``, so
the whole shard is read over the epoch and rows of plentiful classes that do not fit are dropped
evenly over the epoch rather than cut from its end — or (b) a class needed now is short of fresh
rows and the read-ahead (rows read beyond pace, plus one input batch of overshoot) stays within
``buffer_rows / B`` steps' worth of rows: a lead the plentiful classes' full buffers
(``buffer_rows`` rows, ``m_c <= B`` used per step) can carry to the end of the epoch — or (c) a
class needed now has not been seen at all yet (then it reads on without limit). So a class is
recycled only when it has no fresh rows buffered and no more can be read within the budget (or
the stream has ended). Rows that arrive for a full buffer are dropped (still offered to the
reservoir) and counted in ``last_stats``. It emits exactly ``steps_per_epoch`` batches (default
``ceil(sum(class_counts) / (W * B))``, equal on every rank), recycling from the reservoirs when the
stream ends early, and reads what is left of the stream after the last batch so that Ray Data
sees the shard consumed.

*Missing-class rule.* A class with a target share that is still unseen when the worker's stream
ends has no rows on this shard. From that step on, the worker renormalizes the mix over the
classes it has seen (zero share for the missing ones; the rotation continues with that mix) and
logs one warning per epoch naming the missing class indices; ``last_stats["missing"]`` lists them.
A shard with no rows of any class that has a share is an error.

The balancer is deterministic for (seed, epoch, rank) given the same sequence of input batches.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

logger = logging.getLogger(__name__)

__all__ = [
    "BalancedDistributedSampler",
    "StreamBalancer",
    "balanced_loader",
    "batch_class_counts",
    "target_mix",
]

# Domain tags keep the random streams of different uses apart for the same (seed, epoch).
_TAG_CLASS_PERM = 0x6D617031  # map path: the per-class permutations (shared by all ranks)
_TAG_BATCH_ORDER = 0x6D617032  # map path: the order of rows inside one rank's batch
_TAG_STREAM = 0x73747231  # stream path: reservoir, recycling draws and batch order per rank

_ROUNDS = 6  # Feistel rounds of the per-class permutations
_CHUNK_ROWS = 65536  # map path: rows of batches whose indices are computed in one go
_MARK_EVERY = 128  # steps between saved carry states of a schedule
_MAX_SCHEDULES = 32


def _entropy(seed: int) -> int:
    """A non-negative SeedSequence entropy for any int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return int(seed) % (1 << 128)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# the target mix and per-batch class counts


def target_mix(class_counts: Sequence[int], power: float) -> np.ndarray:
    """Target class shares p_c ∝ n_c^power; classes with no rows get 0.

    Args:
        class_counts: rows per class (index = class id), all >= 0, at least one > 0.
        power: q in [0, 1]: 0 = uniform over the classes that have rows, 1 = the natural mix.

    Returns:
        float64 probabilities summing to 1.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise ValueError(f"class_counts must be finite and >= 0, got {list(class_counts)}")
    if not (counts > 0).any():
        raise ValueError("class_counts has no class with rows; nothing to sample")
    power = float(power)
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must be in [0, 1] (0 balanced, 1 natural mix), got {power}")
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** power
    return weights / weights.sum()


class _CarrySchedule:
    """Per-step class counts for one (mix, batch_size): floors plus carried-remainder extras."""

    def __init__(self, mix: np.ndarray, batch_size: int):
        ideal = mix * batch_size
        # The epsilon keeps 2.9999999999 (a float artefact of an exact 3) from losing a row.
        self.base = np.floor(ideal + 1e-9).astype(np.int64)
        frac = np.clip(ideal - self.base, 0.0, None)
        self.extra = int(batch_size - self.base.sum())
        self.frac = frac.tolist()
        self.num_classes = len(mix)
        self.candidates = [c for c in range(self.num_classes) if frac[c] > 1e-12]
        assert 0 <= self.extra <= len(self.candidates), (self.extra, frac)
        self._lock = threading.Lock()
        self._t = 0
        self._cum = [0] * self.num_classes  # extras given in steps [0, _t)
        self._marks: list[tuple[int, ...]] = [tuple(self._cum)]  # state at steps k*_MARK_EVERY

    def _picks(self, t: int, cum: list[int]) -> list[int]:
        frac, n = self.frac, self.num_classes
        ranked = sorted(self.candidates, key=lambda c: (cum[c] - frac[c] * (t + 1), (c - t) % n))
        return ranked[: self.extra]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Class counts for steps [start, stop) as an int64 array of shape (stop - start, C)."""
        out = np.broadcast_to(self.base, (stop - start, self.num_classes)).copy()
        if self.extra == 0 or stop <= start:
            return out
        with self._lock:
            if start < self._t:  # rewind to the last saved state at or before start
                k = start // _MARK_EVERY
                self._t, self._cum = k * _MARK_EVERY, list(self._marks[k])
            while self._t < stop:
                t = self._t
                picks = self._picks(t, self._cum)
                for c in picks:
                    self._cum[c] += 1
                if t >= start:
                    out[t - start, picks] += 1
                self._t = t + 1
                if self._t % _MARK_EVERY == 0 and self._t // _MARK_EVERY == len(self._marks):
                    self._marks.append(tuple(self._cum))
        return out


_SCHEDULES: OrderedDict[tuple[bytes, int], _CarrySchedule] = OrderedDict()
_SCHEDULES_LOCK = threading.Lock()


def _schedule(mix: np.ndarray, batch_size: int) -> _CarrySchedule:
    key = (mix.tobytes(), batch_size)
    with _SCHEDULES_LOCK:
        sched = _SCHEDULES.get(key)
        if sched is None:
            sched = _SCHEDULES[key] = _CarrySchedule(mix, batch_size)
            while len(_SCHEDULES) > _MAX_SCHEDULES:
                _SCHEDULES.popitem(last=False)
        else:
            _SCHEDULES.move_to_end(key)
        return sched


def _check_mix(mix: np.ndarray | Sequence[float]) -> np.ndarray:
    m = np.asarray(mix, dtype=np.float64)
    if m.ndim != 1 or m.size == 0 or not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError(f"mix must be a non-empty 1-D array of shares >= 0, got {mix!r}")
    total = m.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"mix must sum to 1 (use target_mix), got sum {total}")
    return np.ascontiguousarray(m)


def _step_counts(mix: np.ndarray, batch_size: int, start: int, stop: int) -> np.ndarray:
    return _schedule(mix, batch_size).rows(start, stop)


def batch_class_counts(mix: np.ndarray, batch_size: int, step: int) -> np.ndarray:
    """Rows of each class in the batch at global ``step``: rotated largest-remainder rounding.

    Each count is floor(p_c·B) or that plus one, they sum to ``batch_size``, and the extra rows
    go to the classes whose remainder has been shortchanged most over steps 0..step (ties in an
    order rotating with ``step``), so over many steps the mean count of class c tends to p_c·B.
    """
    m = _check_mix(mix)
    b = _positive_int(batch_size, "batch_size")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return _step_counts(m, b, int(step), int(step) + 1)[0]


# --------------------------------------------------------------------------------------------
# map path


class BalancedDistributedSampler(DistributedSampler):
    """Row indices for this rank, ``batch_size`` at a time, every batch with the target mix.

    A ``DistributedSampler`` subclass so that ``ray.train.torch.prepare_data_loader`` keeps it.
    Attributes follow torch's meaning: ``num_samples`` is the number of indices this rank yields
    per epoch (``steps_per_epoch * batch_size``) and ``total_size`` that times ``num_replicas``;
    the constructor's ``num_samples`` argument (rows in one epoch over all ranks, default
    ``len(labels)``) is kept as ``epoch_rows``.

    Args:
        labels: class index (>= 0) of every row of the train split, the same on every rank.
        batch_size: rows per batch on each rank (the DataLoader's batch_size must match).
        num_replicas: world size (default: ``torch.distributed``'s).
        rank: this worker's rank (default: ``torch.distributed``'s).
        power: q of the target mix p_c ∝ n_c^q.
        seed: seeds the permutations; with the epoch, the only source of randomness.
        num_samples: rows per epoch over all ranks (default ``len(labels)``).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        power: float = 0.0,
        seed: int = 0,
        num_samples: int | None = None,
    ):
        y = np.asarray(labels)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise ValueError(f"labels must be class indices >= 0, got {lo}")
        batch_size = _positive_int(batch_size, "batch_size")
        super().__init__(
            y, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self._entropy = _entropy(seed)
        self.batch_size = batch_size
        self.power = float(power)
        self.epoch_rows = (
            len(y) if num_samples is None else _positive_int(num_samples, "num_samples")
        )
        self.steps_per_epoch = math.ceil(self.epoch_rows / (self.num_replicas * batch_size))
        self.num_samples = self.steps_per_epoch * batch_size
        self.total_size = self.num_samples * self.num_replicas

        self.class_counts, self._rows = _rows_by_class(y, hi + 1)
        self.mix = target_mix(self.class_counts, self.power)
        self._active = [int(c) for c in np.flatnonzero(self.mix > 0)]

    def __iter__(self) -> Iterator[int]:
        w, r, b, steps = self.num_replicas, self.rank, self.batch_size, self.steps_per_epoch
        epoch = int(self.epoch)
        drawn = dict.fromkeys(self._active, 0)  # per class: draws so far by each rank
        keys = {
            c: np.random.SeedSequence(
                self._entropy, spawn_key=(_TAG_CLASS_PERM, epoch, c)
            ).generate_state(_ROUNDS, np.uint64)
            for c in self._active
        }
        order_rng = np.random.default_rng(
            np.random.SeedSequence(self._entropy, spawn_key=(_TAG_BATCH_ORDER, epoch, r))
        )
        chunk = max(1, _CHUNK_ROWS // b)  # steps evaluated together (vectorized)
        for s0 in range(0, steps, chunk):
            s1 = min(steps, s0 + chunk)
            plan = _step_counts(self.mix, b, epoch * steps + s0, epoch * steps + s1)
            per_class = []
            for c in self._active:
                counts = plan[:, c]
                total = int(counts.sum())
                pos = (drawn[c] + np.arange(total, dtype=np.int64)) * w + r  # deal positions
                drawn[c] += total
                rows = self._rows[c]
                cycle, off = np.divmod(pos, len(rows))
                picked = rows[_permute(off, len(rows), keys[c], cycle)]
                per_class.append(np.split(picked, np.cumsum(counts)[:-1]))
            for i in range(s1 - s0):
                batch = np.concatenate([parts[i] for parts in per_class])
                order_rng.shuffle(batch)
                yield from batch.tolist()


def _rows_by_class(y: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(rows per class, row positions of each class in increasing order) for labels ``y``."""
    index = np.int32 if len(y) < 2**31 else np.int64
    if num_classes <= 8:  # a few linear scans beat a sort
        rows = [np.flatnonzero(y == c).astype(index) for c in range(num_classes)]
        counts = np.array([len(x) for x in rows], dtype=np.int64)
        return counts, rows
    small = np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else y.dtype
    ys = y.astype(small, copy=False)
    order = np.argsort(ys, kind="stable").astype(index)  # radix sort for small ints
    counts = np.bincount(ys, minlength=num_classes).astype(np.int64)
    return counts, np.split(order, np.cumsum(counts)[:-1])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _permute(off: np.ndarray, n: int, keys: np.ndarray, cycle: np.ndarray) -> np.ndarray:
    """Position ``off[i]`` of permutation number ``cycle[i]`` of ``range(n)``.

    Each (keys, cycle) picks a pseudo-random permutation: a balanced Feistel network over the
    smallest even-bit domain >= n with round keys mixed from ``keys`` (a SeedSequence state) and
    the cycle number, restricted to [0, n) by cycle walking (apply again until inside; at most
    4x the domain, so a few passes). Evaluated lazily per position: no O(n) shuffle per epoch.
    """
    if n == 1:
        return np.zeros(len(off), dtype=np.int64)
    bits = max(2, (n - 1).bit_length())
    half = np.uint64((bits + 1) // 2)
    mask = np.uint64((1 << int(half)) - 1)
    salt = _mix64((cycle.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    round_keys = _mix64(keys[None, :] ^ salt[:, None])  # (len(off), rounds)
    x = off.astype(np.uint64)
    todo = np.arange(len(x))
    while len(todo):
        left, right = x[todo] >> half, x[todo] & mask
        k = round_keys[todo]
        for i in range(k.shape[1]):
            left, right = right, left ^ (_mix64(right ^ k[:, i]) & mask)
        x[todo] = (left << half) | right
        todo = todo[x[todo] >= np.uint64(n)]
    return x.astype(np.int64)


def _world() -> tuple[int, int]:
    """(world size, rank) from Ray Train when inside a training function, else torch / (1, 0)."""
    try:
        import ray.train

        ctx = ray.train.get_context()
        return int(ctx.get_world_size()), int(ctx.get_world_rank())
    except (RuntimeError, DeprecationWarning):  # not a Ray Train worker: fall back below
        ctx = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def balanced_loader(
    dataset: torch.utils.data.Dataset,
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    power: float = 0.0,
    seed: int = 0,
    **loader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose batches carry the target class mix on every Ray Train worker.

    World size and rank come from ``ray.train.get_context()`` inside a training function
    (``torch.distributed`` or 1/0 elsewhere). The sampler is a ``DistributedSampler`` subclass,
    so ``ray.train.torch.prepare_data_loader`` keeps it (see the module docstring). Call
    ``loader.sampler.set_epoch(epoch)`` before each epoch.

    Args:
        dataset: map-style dataset; ``dataset[i]`` is row ``i`` of ``labels``.
        labels: class index of every row (whole train split, same on every worker).
        batch_size: rows per batch on each worker.
        power, seed: as :class:`BalancedDistributedSampler`.
        **loader_kwargs: more DataLoader arguments (``collate_fn``, ``num_workers``, ...); not
            ``sampler``, ``batch_sampler``, ``shuffle``, ``drop_last`` or ``batch_size``.
    """
    fixed = ("sampler", "batch_sampler", "shuffle", "drop_last", "batch_size")
    clash = [k for k in fixed if k in loader_kwargs]
    if clash:
        raise TypeError(f"balanced_loader sets {', '.join(clash)} itself; do not pass them")
    if hasattr(dataset, "__len__") and len(dataset) != len(labels):
        raise ValueError(f"dataset has {len(dataset)} rows but labels has {len(labels)}")
    world, rank = _world()
    sampler = BalancedDistributedSampler(
        labels, batch_size, num_replicas=world, rank=rank, power=power, seed=seed
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=False,
        **loader_kwargs,
    )


# --------------------------------------------------------------------------------------------
# stream path


def _take_rows(batch: dict[str, np.ndarray], idx: np.ndarray | slice) -> dict[str, np.ndarray]:
    """A copy of some rows (never a view: a view would keep the whole input block alive)."""
    return {k: np.array(v[idx], copy=True) for k, v in batch.items()}


class _ClassStore:
    """Fresh FIFO buffer plus reservoir sample of one class's rows."""

    def __init__(self, buffer_rows: int, reservoir_rows: int):
        self.cap, self.res_cap = buffer_rows, reservoir_rows
        self.chunks: deque[dict[str, np.ndarray]] = deque()
        self.fresh = 0  # rows in the fresh buffer
        self.seen = 0  # rows of this class read this epoch
        self.res: dict[str, np.ndarray] | None = None
        self.res_n = 0

    def add(self, rows: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> int:
        """Offer ``n`` rows: reservoir first, then the fresh buffer; returns rows dropped."""
        self._reserve(rows, n, rng)
        room = self.cap - self.fresh
        keep = min(room, n)
        if keep > 0:
            self.chunks.append(rows if keep == n else _take_rows(rows, slice(0, keep)))
            self.fresh += keep
        return n - keep

    def _reserve(self, rows: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> None:
        need = min(self.res_cap, self.seen + n)
        size = 0 if self.res is None else len(next(iter(self.res.values())))
        if need > size:  # grow by doubling up to res_cap: rare classes stay small
            size = min(self.res_cap, max(need, 2 * size))
            old = self.res or {}
            self.res = {}
            for k, v in rows.items():
                dtype = old[k].dtype if k in old else _storable(v.dtype)
                self.res[k] = np.empty((size, *v.shape[1:]), dtype=dtype)
                if k in old:
                    self.res[k][: self.res_n] = old[k][: self.res_n]
        pos = self.seen + np.arange(n, dtype=np.int64)  # 0-based index of each row in the class
        direct = pos < self.res_cap
        later = np.flatnonzero(~direct)
        slot = rng.integers(0, pos[later] + 1) if len(later) else np.empty(0, np.int64)
        hit = slot < self.res_cap
        src = np.concatenate([np.flatnonzero(direct), later[hit]])
        dst = np.concatenate([pos[direct], slot[hit]])
        if len(dst) > 1:  # a slot hit twice keeps the later row (Algorithm R)
            _, last = np.unique(dst[::-1], return_index=True)
            keep = len(dst) - 1 - last
            src, dst = src[keep], dst[keep]
        for k, v in rows.items():
            store = self.res[k]
            if store.dtype != v.dtype and store.dtype != object:
                wider = np.result_type(store.dtype, v.dtype)
                if wider != store.dtype:
                    store = self.res[k] = store.astype(_storable(wider))
            store[dst] = v[src]
        self.seen += n
        self.res_n = min(self.res_cap, self.seen)

    def take_fresh(self, k: int) -> list[dict[str, np.ndarray]]:
        out = []
        while k > 0:
            chunk = self.chunks[0]
            n = len(next(iter(chunk.values())))
            if n <= k:
                out.append(self.chunks.popleft())
            else:
                out.append(_take_rows(chunk, slice(0, k)))
                self.chunks[0] = _take_rows(chunk, slice(k, None))  # frees the taken rows
                n = k
            k -= n
            self.fresh -= n
        return out

    def recycle(self, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.res is not None and self.res_n > 0
        idx = rng.integers(0, self.res_n, size=k)
        return {key: v[idx] for key, v in self.res.items()}


def _storable(dtype: np.dtype) -> np.dtype:
    # Fixed-width strings would truncate longer later values; keep them as Python objects.
    return np.dtype(object) if dtype.kind in "USO" else dtype


class _EpochState:
    """One epoch of a ``StreamBalancer``: the class stores, the counts, the batch mix (which
    loses the classes a shard never shows) and the read-ahead pace."""

    def __init__(self, bal: StreamBalancer, epoch: int, res_rng, draw_rng, order_rng):
        k, cap = bal.num_classes, bal.buffer_rows
        self.bal, self.epoch, self.k, self.cap = bal, epoch, k, cap
        self.res_rng, self.draw_rng, self.order_rng = res_rng, draw_rng, order_rng
        self.stores = [_ClassStore(cap, bal.reservoir_rows) for _ in range(k)]
        self.read = np.zeros(k, np.int64)
        self.fresh_out = np.zeros(k, np.int64)
        self.recycled = np.zeros(k, np.int64)
        self.dropped = np.zeros(k, np.int64)
        self.mix = bal.mix
        self.active = self.mix > 0
        self.missing: list[int] = []
        self.columns: list[str] | None = None
        self.exhausted_at: int | None = None
        # Read-ahead lead a full buffer can carry: cap rows cover cap / B steps at worst.
        self.per_step = bal._expected_rows / bal.steps_per_epoch
        self.budget = cap * self.per_step / bal.batch_size
        self.last_rows = 0  # size of the latest input batch (one read may overshoot by that much)

    def ingest(self, batch: dict[str, np.ndarray]) -> None:
        y = self.bal._labels(batch)
        self.last_rows = len(y)
        if self.columns is None:
            self.columns = list(batch)
        elif sorted(batch) != sorted(self.columns):
            raise ValueError(f"input batch columns {sorted(batch)} differ from {self.columns}")
        batch = {c: np.asarray(batch[c]) for c in self.columns}
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            self.read[c] += len(idx)
            if not self.active[c]:  # a class without a share is never emitted
                self.dropped[c] += len(idx)
                continue
            store = self.stores[c]
            self.dropped[c] += store.add(_take_rows(batch, idx), len(idx), self.res_rng)
            assert store.fresh <= self.cap
            self.bal.peak_buffer_rows = max(self.bal.peak_buffer_rows, store.fresh)
            self.bal.peak_reservoir_rows = max(self.bal.peak_reservoir_rows, store.res_n)

    def _enough(self, s: int, m: np.ndarray) -> bool:
        """Whether step ``s`` can be emitted without reading more."""
        total_read = int(self.read.sum())
        if total_read < math.ceil((s + 1) * self.per_step):
            return False
        short = m > np.array([st.fresh for st in self.stores])
        if not short.any():
            return True
        unseen = short & (np.array([st.seen for st in self.stores]) == 0)
        pace = math.ceil((s + 1) * self.per_step)
        # read-ahead budget spent: recycle the short classes
        return not unseen.any() and total_read >= pace + self.budget - self.last_rows

    def fill(self, s: int, m: np.ndarray, it) -> bool:
        """Read until step ``s`` (counts ``m``) can be emitted or the input ends; returns
        whether the mix changed (the input ended without some class)."""
        while not self._enough(s, m):
            batch = next(it, None)
            if batch is None:
                self.exhausted_at = s
                return self._drop_unseen()
            self.ingest(batch)
        return False

    def _drop_unseen(self) -> bool:
        unseen = [int(c) for c in np.flatnonzero(self.active) if self.stores[c].seen == 0]
        if not unseen:
            return False
        if len(unseen) == int(self.active.sum()):
            raise ValueError(
                f"rank {self.bal.rank}: the input stream of epoch {self.epoch} has no "
                "rows of any class with a target share; cannot emit batches"
            )
        self.missing = unseen
        mix = np.where(np.isin(np.arange(self.k), unseen), 0.0, self.mix)
        self.mix = mix / mix.sum()
        self.active = self.mix > 0
        logger.warning(
            "StreamBalancer rank %d epoch %d: no rows of class(es) %s in this "
            "worker's shard; renormalizing the batch mix over the classes seen",
            self.bal.rank,
            self.epoch,
            ", ".join(str(c) for c in unseen),
        )
        return True

    def finish(self, it) -> dict[str, Any]:
        """Read what is left (so Ray Data sees the shard consumed); the epoch's counts."""
        unused = np.array([st.fresh for st in self.stores])  # buffered but never emitted
        for batch in it:
            counts = np.bincount(self.bal._labels(batch), minlength=self.k)[: self.k]
            self.read += counts
            unused += counts
        return {
            "read": self.read.tolist(),
            "fresh": self.fresh_out.tolist(),
            "recycled": self.recycled.tolist(),
            "dropped": self.dropped.tolist(),
            "unused": unused.tolist(),
            "missing": self.missing,
            "mix": self.mix.tolist(),
            "exhausted_at": self.exhausted_at,
            "steps": self.bal.steps_per_epoch,
        }


class StreamBalancer:
    """Re-batches one worker's Ray Data shard into batches with the target class mix.

    See the module docstring for the reading, recycling and missing-class rules. Memory is
    bounded by the buffers: at most ``buffer_rows`` fresh rows plus ``buffer_rows`` reservoir
    rows per class, plus one input and one output batch.

    Attributes:
        mix: the target mix.
        steps_per_epoch: batches per epoch (the same on every rank).
        peak_buffer_rows: most fresh rows one class buffer ever held (<= ``buffer_rows``).
        peak_reservoir_rows: most rows one class reservoir ever held (<= ``buffer_rows``).
        last_stats: per-class row counts of the last finished epoch: ``read``, ``fresh``
            (emitted for the first time), ``recycled`` (drawn from the reservoir), ``dropped``
            (arrived at a full buffer, or the class has no share), ``unused`` (still buffered
            after the last step, or read after it), so read = fresh + dropped + unused; plus
            ``missing`` (classes renormalized away), ``mix`` (the mix in force at the end of the
            epoch), ``exhausted_at`` (the step at which the stream ended, or None) and ``steps``.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        batch_size: int,
        *,
        power: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
        buffer_rows: int = 4096,
        label_key: str = "label",
    ):
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.mix = target_mix(self.class_counts, power)
        self.num_classes = len(self.mix)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.world_size = _positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank must be an int, got {rank!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank}")
        self.rank = int(rank)
        total = int(self.class_counts.sum())
        self.steps_per_epoch = (
            max(1, math.ceil(total / (self.world_size * self.batch_size)))
            if steps_per_epoch is None
            else _positive_int(steps_per_epoch, "steps_per_epoch")
        )
        self.buffer_rows = _positive_int(buffer_rows, "buffer_rows")
        self.reservoir_rows = self.buffer_rows
        self.label_key = label_key
        self._entropy = _entropy(seed)
        self._expected_rows = total / self.world_size
        self.peak_buffer_rows = 0
        self.peak_reservoir_rows = 0
        self.last_stats: dict[str, Any] | None = None

    def epoch(
        self, epoch: int, batches: Iterable[dict[str, np.ndarray]]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield exactly ``steps_per_epoch`` balanced batches built from ``batches``.

        Args:
            epoch: the epoch number (with seed and rank, it seeds every draw).
            batches: this worker's shard as numpy dict batches, each holding ``label_key``.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        return self._run(int(epoch), iter(batches))

    def _labels(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.label_key not in batch:
            raise ValueError(
                f"input batch has no label column {self.label_key!r} (columns: {sorted(batch)}); "
                "set label_key"
            )
        y = np.asarray(batch[self.label_key])
        if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
            raise TypeError(
                f"column {self.label_key!r} must hold integer class indices, got {y.dtype} "
                f"with shape {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            bad = y[(y < 0) | (y >= self.num_classes)][0]
            raise ValueError(
                f"label {bad} in column {self.label_key!r} is outside [0, {self.num_classes}) "
                f"(class_counts has {self.num_classes} classes)"
            )
        return y

    def _run(self, epoch: int, it: Iterator[dict[str, np.ndarray]]) -> Iterator[dict]:
        steps = self.steps_per_epoch
        ss = np.random.SeedSequence(self._entropy, spawn_key=(_TAG_STREAM, epoch, self.rank))
        st = _EpochState(self, epoch, *(np.random.default_rng(s) for s in ss.spawn(3)))
        for s in range(steps):
            step = epoch * steps + s
            m = _step_counts(st.mix, self.batch_size, step, step + 1)[0]
            if st.exhausted_at is None and st.fill(s, m, it):
                m = _step_counts(st.mix, self.batch_size, step, step + 1)[0]
            yield self._emit(
                m, st.stores, st.columns, st.draw_rng, st.order_rng, st.fresh_out, st.recycled
            )
        self.last_stats = st.finish(it)

    def _emit(
        self,
        m: np.ndarray,
        stores: list[_ClassStore],
        columns: list[str] | None,
        draw_rng: np.random.Generator,
        order_rng: np.random.Generator,
        fresh_out: np.ndarray,
        recycled: np.ndarray,
    ) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for c in np.flatnonzero(m):
            st, need = stores[c], int(m[c])
            got = min(need, st.fresh)
            if got:
                parts.extend(st.take_fresh(got))
                fresh_out[c] += got
            if need > got:
                assert st.res_n > 0, f"class {c} has a share but no rows were seen"
                parts.append(st.recycle(need - got, draw_rng))
                recycled[c] += need - got
        assert columns is not None
        out = {col: np.concatenate([p[col] for p in parts]) for col in columns}
        order = order_rng.permutation(len(out[columns[0]]))
        return {col: v[order] for col, v in out.items()}
