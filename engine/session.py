"""Where the per-worker training loop runs: a Ray Train worker, or one process of its own.

    run_loop(config, TrainSession())                      # inside a TorchTrainer worker
    run_loop(config, TrainSession(torch=False))           # inside a LightGBMTrainer worker
    session = LocalSession(out, metric, datasets)          # one process (a Tune trial's)
    run_loop(config, session); folder, metrics = session.best()

The loop (``engine.train.run_loop``) asks its session for its rank, world size and device, the
model prepared for it (DDP under Ray Train), the train dataset shard (stream mode), the
checkpoint to restore, and hands it each epoch's metrics and checkpoint folder. A
``LocalSession`` skips Ray Train's worker group and placement group: a one-worker Tune trial
trains in the trial's own process, reports to Tune (which persists the checkpoints, so a
restored search resumes the trial), and keeps the best and the last checkpoint in
``out/checkpoints`` for the export.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any


def error_line(error: BaseException | None) -> str | None:
    """The line of an error (often a remote traceback) that says what went wrong."""
    if error is None:
        return None
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:1000]
    return (lines[-1] if lines else type(error).__name__)[:1000]


class TrainingFailed(RuntimeError):
    """Training failed past ``train.max_failures``; the message names the failure and the last
    good checkpoint."""


class TrainSession:
    """The loop inside a Ray Train V2 worker. ``storage``: the run's checkpoint folder (Ray
    Train's experiment folder). ``torch``: a ``TorchTrainer``'s worker (its device, DDP);
    else a ``LightGBMTrainer``'s (the CPU, the model as it is: LightGBM's own network syncs the
    workers' histograms)."""

    def __init__(self, storage: str | None = None, torch: bool = True) -> None:
        import ray.train

        self.storage = storage
        self.torch = torch
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if torch:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
        else:
            import torch as th

            self.device = th.device("cpu")

    def prepare_model(self, model):
        if not self.torch:
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def checkpoint(self):
        """Ray Train's latest checkpoint — or a later one persisted in ``storage`` that Train
        had not registered when a worker died (a report is registered when the controller next
        polls the workers: a death within that moment would redo an epoch)."""
        import ray.train

        registered = ray.train.get_checkpoint()
        if self.storage is None or not os.path.isdir(self.storage):
            return registered
        have = len(_history(registered.path)) if registered is not None else 0
        later = last_complete([os.path.join(self.storage, p) for p in os.listdir(self.storage)])
        if later is None or later[1] <= have:
            return registered
        return ray.train.Checkpoint.from_directory(later[0])

    def epoch_done(self, epoch: int, epochs: int, line: str) -> None:
        """Rank 0's line per epoch, in the worker's log."""
        print(f"[raybalance] epoch {epoch}/{epochs}  {line}", flush=True)

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(folder) if folder is not None else None
        ray.train.report(metrics, checkpoint=ckpt)


class LocalSession:
    """The loop in this process (rank 0 of 1). Inside a Tune trial it reports to Tune and
    restores from Tune's checkpoint; it keeps the best (by ``metric``) and the last
    checkpoint under ``out/checkpoints``."""

    def __init__(
        self,
        out: str,
        metric: str,
        datasets: dict[str, Any] | None = None,
        device: Any = None,
        tune: bool = True,
        resume: bool = False,
    ) -> None:
        import torch

        self.rank, self.world = 0, 1
        self.device = device if device is not None else torch.device("cpu")
        self.out, self.metric, self.tune, self.resume = out, metric, tune, resume
        self.datasets = datasets or {}
        self.kept = kept_checkpoints(out)  # (folder, metrics): a resumed trial's earlier ones
        # checkpoints are written here, beside where they are kept: keeping one is a rename
        self.scratch = os.path.join(out, "checkpoints", ".tmp")

    def prepare_model(self, model):
        return model.to(self.device)

    def dataset_shard(self, name: str):
        return self.datasets[name]

    def checkpoint(self):
        """Tune's checkpoint of a restored trial; outside Tune, on a retry (``resume``), the
        latest checkpoint this process kept."""
        if self.tune:
            import ray.tune

            return ray.tune.get_checkpoint()
        if not (self.resume and self.kept):
            return None
        import ray.train

        latest = max(self.kept, key=lambda k: int(k[1]["epoch"]))
        return ray.train.Checkpoint.from_directory(latest[0])

    def epoch_done(self, epoch: int, epochs: int, line: str) -> None:
        """A Tune trial's line goes to its worker's log; in the command's own process it is a
        progress event (a bar on the terminal, a line of the log file)."""
        if self.tune:
            print(f"[raybalance] epoch {epoch}/{epochs}  {line}", flush=True)
            return
        from engine.progress import progress_event

        progress_event("train", epoch, epochs, line)

    def report(self, metrics: dict[str, Any], folder: str | None) -> None:
        if self.tune:
            import ray.tune

            ckpt = ray.tune.Checkpoint.from_directory(folder) if folder is not None else None
            ray.tune.report(metrics, checkpoint=ckpt)
        if folder is not None:
            self._keep(metrics, folder)

    def _score(self, metrics: dict[str, Any]) -> float:
        v = metrics.get(self.metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return -math.inf
        return -v if self.metric == "val_loss" else v

    def _keep(self, metrics: dict[str, Any], folder: str) -> None:
        """Keep ``folder`` (moved: the loop writes a new one each epoch) as this epoch's
        checkpoint, after Tune has persisted its own copy."""
        dest = os.path.join(self.out, "checkpoints", f"epoch-{int(metrics['epoch']):05d}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(folder, dest)
        self.kept.append((dest, dict(metrics)))
        best = max(self.kept, key=lambda k: self._score(k[1]))
        keep = {best[0], dest}
        for path, _ in self.kept:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        self.kept = [k for k in self.kept if k[0] in keep]
        if self.tune:  # a trial's folder in a bucket: what it keeps is there if it is stopped
            from engine.remote import push_enclosing

            push_enclosing(self.out)

    def best(self) -> tuple[str, dict[str, Any]]:
        """(folder, metrics) of the best checkpoint this session reported."""
        if not self.kept:
            raise RuntimeError("training reported no checkpoint")
        return max(self.kept, key=lambda k: self._score(k[1]))


SCRATCH_PREFIX = "rb-ckpt-"  # + the writing process's pid + "-": a checkpoint being written


def scratch_folder(where: str | None = None) -> str:
    """A new folder for one checkpoint (``where``, default the node's temporary folder), named
    after this process. The loop removes each one once reported; a worker killed in between
    leaves its last one behind, so the folders of processes no longer running are removed
    first (``sweep_scratch``)."""
    import tempfile

    if where is not None:
        os.makedirs(where, exist_ok=True)
    sweep_scratch(where or tempfile.gettempdir())
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=where)


def sweep_scratch(folder: str) -> list[str]:
    """Remove the checkpoint scratch folders in ``folder`` whose writing process has ended;
    returns them. Folders of running processes (this one included) are kept."""
    import re

    gone = []
    pattern = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = pattern.match(name)
        path = os.path.join(folder, name)
        if match and os.path.isdir(path) and not _running(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


CHECKPOINT_FILES = "checkpoint.json"  # {relative path: size} of every other file, written last


def write_file_list(folder: str) -> None:
    """``folder/checkpoint.json``: the size of every file in ``folder``. A checkpoint is
    complete when all of them are there at those sizes — whatever order a copy to storage
    wrote them in, so a copy cut short (a failed persist) is never taken for one."""
    import json

    sizes = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            sizes[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    with open(os.path.join(folder, CHECKPOINT_FILES), "w") as f:
        json.dump(sizes, f)


def is_complete(folder: str) -> bool:
    """Whether every file ``folder/checkpoint.json`` lists is there at its size."""
    import json

    try:
        with open(os.path.join(folder, CHECKPOINT_FILES)) as f:
            sizes = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(sizes, dict) or "history.json" not in sizes:
        return False
    for rel, size in sizes.items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
    return True


def _history(folder: str) -> list[dict[str, Any]]:
    """The history of a complete checkpoint folder (``is_complete``), else []."""
    import json

    if not is_complete(folder):
        return []
    try:
        with open(os.path.join(folder, "history.json")) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def last_complete(folders: list[str]) -> tuple[str, int] | None:
    """(folder, epochs) of the complete checkpoint with the longest history among
    ``folders``; None when none is complete."""
    found = [(len(h), f) for f in folders if (h := _history(f))]
    if not found:
        return None
    epochs, folder = max(found)
    return folder, epochs


def remove_partial(storage: str) -> list[str]:
    """Remove the checkpoint folders in ``storage`` that a failed persist left incomplete;
    returns them."""
    if not os.path.isdir(storage):
        return []
    gone = []
    for name in sorted(os.listdir(storage)):
        path = os.path.join(storage, name)
        if name.startswith("checkpoint_") and os.path.isdir(path) and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def kept_checkpoints(out: str, root: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The checkpoints an earlier attempt of this trial kept in ``out/checkpoints`` (or in
    ``root``, a copy of that folder), each with its history's last row."""
    import json

    root = root or os.path.join(out, "checkpoints")
    kept = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        history = os.path.join(root, name, "history.json")
        if os.path.exists(history):
            with open(history) as f:
                rows = json.load(f)
            if rows:
                kept.append((os.path.join(root, name), rows[-1]))
    return kept
