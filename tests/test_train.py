"""Training end to end on real Ray Train (2 CPUs): MLP on digits-LT, tiny BERT on TREC-6,
both sampler paths, 2 workers, a worker that dies mid-epoch, and the exported best model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from engine.config import load_spec
from engine.evaluate import evaluate_split
from engine.models import load_model
from engine.prepare import prepare
from engine.session import SCRATCH_PREFIX, sweep_scratch
from engine.train import fit
from jobs import cli
from tests._procs import ended_pid

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    assert cli.main(["datasets", "make", "digits_lt10", "--out", str(out)]) == 0
    return out


def _spec(digits, run_dir, *extra):
    return load_spec(
        ROOT / "jobs/configs/digits_lt100.yaml",
        [
            f"data.path={digits}",
            f"run_dir={run_dir}",
            "model.kind=mlp",
            "model.hidden=[64]",
            "train.lr=0.003",
            "train.batch_size=32",
            "train.epochs=3",
            *extra,
        ],
    )


def _check_run(result, epochs: int):
    history = json.loads(Path(result.run_dir, "train", "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(epochs))
    for row in history:
        assert {"train_loss", "val_macro_f1", "val_balanced_accuracy", "val_recall"} <= set(row)
    model, lm = load_model(result.best_dir)
    assert len(lm) == 10
    return history, model


@pytest.mark.slow
def test_mlp_two_workers_balanced_map_sampler_learns(ray_local, digits, tmp_path):
    spec = _spec(
        digits,
        tmp_path / "run",
        "train.num_workers=2",
        "sampler.kind=balanced",
        "loss.name=logit_adjusted",
        "train.epochs=4",
    )
    prepare(spec)
    result = fit(spec)
    history, model = _check_run(result, 4)
    assert history[-1]["val_macro_f1"] > 0.6  # 10 digit classes: chance is 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = max(row["val_macro_f1"] for row in history)
    assert result.best["val_macro_f1"] == pytest.approx(best)
    assert all(0 <= row["val_minority_recall"] <= 1 for row in history)
    by_recall = _spec(digits, tmp_path / "run", "train.metric=val_minority_recall")
    assert by_recall.train.precision_floor == 0.5
    m = evaluate_split(spec, result.best_dir, "test")
    assert 0.3 < m["macro_f1"] <= 1 and len(m["tail"]) == 3 and 0 <= m["tail_recall"] <= 1
    with pytest.raises(ValueError, match="holds a finished training run"):
        fit(spec)
    other = _spec(digits, tmp_path / "run", "split.seed=5")
    with pytest.raises(ValueError, match="prepared with another split spec"):
        fit(other, overwrite=True)


@pytest.mark.slow
def test_stream_mode_with_class_balanced_focal(ray_local, digits, tmp_path):
    spec = _spec(
        digits,
        tmp_path / "run",
        "sampler.kind=balanced",
        "sampler.mode=stream",
        "loss.name=class_balanced",
        "loss.base=focal",
        "train.epochs=2",
    )
    prepare(spec)
    result = fit(spec)
    history, model = _check_run(result, 2)
    assert all(row["steps"] > 0 for row in history)
    # tabular features: standardized by default, on the streamed train rows
    _check_standardization(model, Path(result.run_dir) / "splits" / "train")


def _check_standardization(model, train_dir: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    x = np.stack(pq.read_table(train_dir, columns=["features"]).column(0).to_numpy(False))
    x = x.astype(np.float64)
    assert model.config["standardize"] is True
    assert np.allclose(model.shift.numpy(), x.mean(0), atol=1e-4)
    varies = x.std(0) > 0
    assert np.allclose(model.scale.numpy()[varies], 1 / x.std(0)[varies], rtol=1e-4)
    assert (model.scale.numpy()[~varies] == 1).all()


def _record_starts(marker: str):
    def hook(e: int, s: int, r: int) -> None:
        if s == 0 and r == 0:
            with open(marker + ".starts", "a") as f:
                f.write(f"{e}\n")

    return hook


def _exit_once(epoch: int, step: int, rank: int, marker: str):
    """A step hook that makes worker ``rank`` exit at (``epoch``, ``step``) once (``marker``
    records that it did, so the restarted worker goes on)."""

    record = _record_starts(marker)

    def hook(e: int, s: int, r: int) -> None:
        record(e, s, r)  # where each epoch of rank 0 starts, across restarts
        if (e, s, r) == (epoch, step, rank) and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(f"worker {r} exited at epoch {e} step {s}\n")
            os._exit(1)

    return hook


@pytest.mark.slow
def test_a_worker_that_dies_mid_epoch_is_replaced_and_training_resumes(ray_local, digits, tmp_path):
    spec = _spec(digits, tmp_path / "run", "train.num_workers=2", "train.max_failures=1")
    prepare(spec)
    marker = tmp_path / "died"
    # the scratch checkpoint a worker killed while reporting would leave on its node
    left = Path(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{ended_pid()}-left")
    (left / "model").mkdir(parents=True)
    result = fit(spec, step_hook=_exit_once(epoch=1, step=3, rank=1, marker=str(marker)))
    assert marker.exists()  # the worker really exited once
    assert not left.exists()  # the workers' next checkpoints swept it
    assert sweep_scratch(tempfile.gettempdir()) == []  # and left none of their own
    # resumed from the checkpoint after epoch 0: epoch 1 ran again, epoch 0 did not
    starts = [int(x) for x in Path(str(marker) + ".starts").read_text().split()]
    assert starts == [0, 1, 1, 2], starts
    history, model = _check_run(result, 3)
    kept = [p for p in Path(result.run_dir, "train", "ray").rglob("checkpoint_*") if p.is_dir()]
    # CheckpointConfig(num_to_keep=2), plus the one the restart resumed from when the worker
    # died before Train had registered it (engine.session.TrainSession.checkpoint)
    assert 1 <= len(kept) <= 3, kept
    _check_standardization(model, Path(result.run_dir) / "splits" / "train")  # materialized path
    # the checkpoints it resumed from hold no pickle: safetensors + JSON only
    files = [p for p in Path(result.run_dir).rglob("*") if p.is_file()]
    states = [p for p in files if p.name == "state.safetensors"]
    assert states and all(p.parent.name == "train_state" for p in states)
    assert not [p for p in files if p.suffix in (".pt", ".pkl", ".pickle", ".bin")]
    x = torch.randn(2, 64)
    model.eval()
    assert model(x).shape == (2, 10)


def _storage_failing_once(marker: str):
    """A local filesystem for Ray Train's checkpoints whose copy of the second checkpoint
    fails with ENOSPC after one of its files was written (a real partial folder on disk);
    ``marker`` records the folder, so the retried copy goes through. Built in a function so
    that it is shipped to the worker by value."""
    import errno

    import pyarrow.fs as pafs

    class Handler(pafs.FileSystemHandler):
        def __init__(self):
            self.fs = pafs.LocalFileSystem()

        def __getattr__(self, name):  # the rest of the handler: LocalFileSystem's own
            return getattr(self.fs, name)

        def __reduce__(self):
            return (Handler, ())

        def __eq__(self, other):
            return isinstance(other, Handler)

        def __ne__(self, other):
            return not self == other

        def get_type_name(self):
            return "failing-local"

        def normalize_path(self, path):
            return self.fs.normalize_path(path)

        def get_file_info(self, paths):
            return self.fs.get_file_info(paths)

        def get_file_info_selector(self, selector):
            return self.fs.get_file_info(selector)

        def create_dir(self, path, recursive):
            self.fs.create_dir(path, recursive=recursive)

        def delete_dir(self, path):
            self.fs.delete_dir(path)

        def delete_dir_contents(self, path, missing_dir_ok=False):
            self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

        def delete_root_dir_contents(self):
            raise OSError("refused")

        def delete_file(self, path):
            self.fs.delete_file(path)

        def move(self, src, dest):
            self.fs.move(src, dest)

        def copy_file(self, src, dest):
            self.fs.copy_file(src, dest)

        def open_input_stream(self, path):
            return self.fs.open_input_stream(path)

        def open_input_file(self, path):
            return self.fs.open_input_file(path)

        def open_append_stream(self, path, metadata):
            return self.fs.open_append_stream(path, metadata=metadata)

        def open_output_stream(self, path, metadata):
            parts = path.split("/")
            folder = next((p for p in parts if p.startswith("checkpoint_")), None)
            if folder is not None and not os.path.exists(marker):
                root = path[: path.index(folder) + len(folder)]
                seen = os.path.dirname(root)
                ckpts = sorted(p for p in os.listdir(seen) if p.startswith("checkpoint_"))
                written = [f for _, _, fs in os.walk(root) for f in fs]
                if ckpts.index(folder) == 1 and written:
                    with open(marker, "w") as f:
                        f.write(root)
                    raise OSError(errno.ENOSPC, "No space left on device (injected)", path)
            return self.fs.open_output_stream(path, metadata=metadata)

    return pafs.PyFileSystem(Handler())


@pytest.mark.slow
def test_a_checkpoint_that_fails_to_persist_restarts_from_the_last_complete_one(
    ray_local, digits, tmp_path
):
    from engine.session import is_complete

    spec = _spec(digits, tmp_path / "run", "train.num_workers=1", "train.max_failures=1")
    prepare(spec)
    marker = tmp_path / "failed"
    result = fit(
        spec,
        step_hook=_record_starts(str(marker)),
        storage_filesystem=_storage_failing_once(str(marker)),
    )
    partial = Path(marker.read_text())  # the copy really failed, halfway
    assert partial.name.startswith("checkpoint_")
    # the epoch whose checkpoint failed ran again, from the last complete checkpoint
    starts = [int(x) for x in Path(str(marker) + ".starts").read_text().split()]
    assert starts == [0, 1, 1, 2], starts
    _check_run(result, 3)
    assert not partial.exists()  # the half-written folder is gone
    kept = sorted(p for p in partial.parent.glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2 and all(is_complete(str(p)) for p in kept), kept  # num_to_keep=2


@pytest.mark.slow
def test_train_command_prepares_then_fine_tunes_a_transformer(ray_local, tmp_path, capsys):
    data = tmp_path / "trec6"
    assert cli.main(["datasets", "make", "trec6", "--out", str(data)]) == 0
    run = tmp_path / "run"
    args = ["train", "--set", f"data.path={data}", "--set", "data.text=text"]
    args += ["--set", f"run_dir={run}", "--set", "model.path=tiny", "--set", "model.max_length=24"]
    args += ["--set", "train.epochs=2", "--set", "train.lr=0.001", "--set", "loss.name=focal"]
    args += ["--set", "loss.weights=inverse_sqrt", "--set", "train.batch_size=64"]
    assert cli.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "running prepare first" in out and str(run / "train" / "best") in out
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "train" / "best")
    tok = AutoTokenizer.from_pretrained(run / "train" / "best")
    assert model.config.num_labels == 6 and "ABBR" in model.config.label2id
    enc = tok(["What is the capital of France ?"], return_tensors="pt")
    assert model(**enc).logits.shape == (1, 6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["map", "stream"])
def test_one_worker_in_this_process_trains_as_a_torch_trainer_worker(
    ray_local, digits, tmp_path, mode
):
    """The same seed gives the same model and metrics with or without a worker group."""
    from engine.train import fit_in_process

    spec = _spec(
        digits,
        tmp_path / "run",
        "train.num_workers=1",
        "sampler.kind=balanced",
        f"sampler.mode={mode}",
    )
    prepare(spec)
    trainer = fit(spec, out_dir=str(tmp_path / "trainer"))
    local = fit_in_process(spec, out_dir=str(tmp_path / "local"), tune=False)
    assert len(local.metrics) == len(trainer.metrics) == 3
    for a, b in zip(trainer.metrics, local.metrics):
        for key in ("train_loss", "val_loss", "val_macro_f1", "val_balanced_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    assert local.best["epoch"] == trainer.best["epoch"]
    m_trainer, _ = load_model(trainer.best_dir)
    m_local, _ = load_model(local.best_dir)
    for x, y in zip(m_trainer.state_dict().values(), m_local.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5)
    assert json.loads((tmp_path / "local" / "metrics.json").read_text()) == local.metrics
    assert not (tmp_path / "local" / "checkpoints").exists()  # only best/ and metrics.json stay
    with pytest.raises(ValueError, match="holds a finished training run"):
        fit_in_process(spec, out_dir=str(tmp_path / "local"), tune=False)


def _exit_always(epoch: int):
    def hook(e: int, s: int, r: int) -> None:
        if e == epoch and s == 0 and r == 0:
            os._exit(1)

    return hook


@pytest.mark.slow
def test_failing_past_max_failures_names_the_failure_and_a_checkpoint_that_loads(
    ray_local, digits, tmp_path, capsys
):
    from engine.session import TrainingFailed
    from jobs.common import run_main

    spec = _spec(digits, tmp_path / "run", "train.num_workers=1", "train.max_failures=0")
    prepare(spec)
    with pytest.raises(TrainingFailed) as e:
        fit(spec, step_hook=_exit_always(epoch=1))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training failed after 0 restart(s)")
    assert "the last good checkpoint (after epoch 1) is " in msg
    model_dir = msg.rsplit(" is ", 1)[1]
    model, label_map = load_model(model_dir)
    assert len(label_map) == 10 and model(torch.randn(2, 64)).shape == (2, 10)

    def job(argv):
        raise e.value

    assert run_main(job, []) == 2  # the CLI prints it as one line, no traceback
    assert "error: training failed after 0 restart(s)" in capsys.readouterr().err


def _raise_once(epoch: int, calls: list):
    def hook(e: int, s: int, r: int) -> None:
        calls.append((e, s))
        if e == epoch and s == 0 and calls.count((e, s)) == 1:
            raise RuntimeError("injected fault")

    return hook


@pytest.mark.slow
def test_one_cpu_worker_trains_in_this_process_and_retries_from_its_latest_checkpoint(
    ray_local, digits, tmp_path
):
    from engine.session import TrainingFailed
    from engine.train import train_model

    spec = _spec(digits, tmp_path / "run", "train.num_workers=1", "train.max_failures=1")
    prepare(spec)
    calls: list = []
    result = train_model(spec, step_hook=_raise_once(epoch=2, calls=calls))
    assert [r["epoch"] for r in result.metrics] == [0, 1, 2]
    # the retry resumed at epoch 2 from the checkpoint after epoch 1: epochs 0 and 1 ran once
    assert calls.count((0, 0)) == 1 and calls.count((1, 0)) == 1 and calls.count((2, 0)) == 2
    assert not (tmp_path / "run" / "train" / "ray").exists()  # no Ray Train run
    load_model(result.best_dir)
    spec0 = _spec(digits, tmp_path / "run", "train.num_workers=1", "train.max_failures=0")
    failed = r"after 0 restart\(s\).*injected fault.*after epoch 2"
    with pytest.raises(TrainingFailed, match=failed):
        train_model(spec0, overwrite=True, step_hook=_raise_once(epoch=2, calls=[]))


@pytest.mark.slow
def test_an_mlp_with_the_default_learning_rate_learns_a_binary_tabular_set(
    ray_local, tmp_path, capsys
):
    """train.lr left null: the MLP's own default, not a transformer's 5e-5."""
    data = tmp_path / "page_blocks0"
    assert cli.main(["datasets", "make", "page_blocks0", "--out", str(data)]) == 0
    run = tmp_path / "run"
    sets = [
        f"data.path={data}",
        "data.label=label",
        f"data.features=[{', '.join(f'f{i}' for i in range(10))}]",
        f"run_dir={run}",
        "model.kind=mlp",
        "loss.name=focal",
        "sampler.kind=balanced",
        "train.num_workers=2",
        "train.epochs=6",
    ]
    args = ["train"]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0, capsys.readouterr().err
    history = json.loads((run / "train" / "metrics.json").read_text())
    assert history[0]["lr"] > 1e-4  # the MLP default (3e-3 after warm-up), not 5e-5
    assert max(row["val_macro_f1"] for row in history) > 0.75  # 0.60 with lr 5e-5


def test_a_standalone_fit_sizes_its_workers_by_the_nodes():
    from engine.config import TrainSpec
    from engine.train import _cpus_per_worker, check_gpu_workers, worker_cpu_cap

    shipped = [{"CPU": 4.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert worker_cpu_cap(shipped, use_gpu=True) == 4.0
    assert worker_cpu_cap(shipped, use_gpu=False) == 4.0
    assert worker_cpu_cap([{"CPU": 8.0, "GPU": 4.0}], use_gpu=True) == 2.0
    one_gpu = TrainSpec(use_gpu=True, num_workers=1)
    assert _cpus_per_worker(one_gpu, streaming=False, nodes=shipped) == 4.0  # not 8: no node
    assert _cpus_per_worker(TrainSpec(num_workers=2), False, nodes=shipped) == 4.0
    with pytest.raises(ValueError, match="need 4 GPUs; the cluster has 2"):
        check_gpu_workers(shipped, TrainSpec(use_gpu=True, num_workers=4))


def test_an_exported_transformer_carries_its_tokenizer_and_manifest(tmp_path):
    """A stopped trial's export is a checkpoint's ``model/`` folder made whole: without the
    tokenizer, loading the folder gives an empty tokenizer and every word becomes unknown."""
    from transformers import AutoTokenizer

    from engine.config import load_spec
    from engine.data import LabelMap
    from engine.models import build_transformer, load_tokenizer
    from engine.train import complete_model_folder

    spec = load_spec(None, ["model.kind=transformer", "model.path=tiny", "data.text=text"])
    model = build_transformer(spec.model, LabelMap.from_values("label", "int", [0, 1]))
    folder = tmp_path / "best"
    model.save_pretrained(folder)
    complete_model_folder(str(folder), spec)
    want = load_tokenizer(spec.model)
    got = AutoTokenizer.from_pretrained(folder)
    text = "which river is the longest"
    assert got(text)["input_ids"] == want(text)["input_ids"]
    assert got.unk_token_id not in got(text)["input_ids"][1:-1]
    assert json.loads((folder / "manifest.json").read_text())["format"] == "raybalance-model/1"


def test_one_and_two_workers_train_the_same_samples_per_step(ray_local, digits, tmp_path):
    """``train.batch_size`` is the global batch: two workers take 16 rows each where one takes
    32, so both make the same number of steps of the same size (and the loss is every
    worker's)."""
    rows = {}
    for n in (1, 2):
        spec = _spec(digits, tmp_path / f"run{n}", f"train.num_workers={n}", "train.epochs=1")
        prepare(spec)
        rows[n] = fit(spec).metrics[0]
    assert rows[1]["steps"] == rows[2]["steps"] > 1
    assert rows[1]["samples_per_step"] == pytest.approx(rows[2]["samples_per_step"], rel=0.05)
    assert rows[2]["samples_per_step"] <= 32 and rows[2]["train_loss"] > 0
    with pytest.raises(ValueError, match="not a multiple of train.num_workers=3"):
        _spec(digits, tmp_path / "run3", "train.num_workers=3")


@pytest.mark.slow
def test_a_restored_run_trains_the_same_weights_as_an_uninterrupted_one(
    ray_local, digits, tmp_path
):
    """Two workers, map mode, dropout on: killed mid-epoch and restored, or run straight
    through, or run again — the same weights (the sampler and dropout draw from seed and
    epoch, and the restore takes the newest checkpoint)."""
    extra = ("train.num_workers=2", "model.dropout=0.2", "train.max_failures=1")
    runs = {}
    for name, hook in (
        ("straight", None),
        ("again", None),
        ("killed", _exit_once(epoch=1, step=3, rank=1, marker=str(tmp_path / "died"))),
    ):
        spec = _spec(digits, tmp_path / name, *extra)
        prepare(spec)
        runs[name] = fit(spec, step_hook=hook)
    assert (tmp_path / "died").exists()
    weights = {k: load_model(r.best_dir)[0].state_dict() for k, r in runs.items()}
    for name in ("again", "killed"):
        assert runs[name].best["epoch"] == runs["straight"].best["epoch"]
        for key, value in weights["straight"].items():
            assert torch.allclose(value, weights[name][key], atol=1e-6), (name, key)


@pytest.mark.parametrize(
    "kind, sets, workers, gpu, shards",
    [
        ("linear", ["train.num_workers=2", "train.use_gpu=true"], 1, False, False),
        ("gbdt", ["train.num_workers=2", "train.use_gpu=true"], 2, False, True),
        ("gbdt", [], 1, False, False),
        ("mlp", ["train.num_workers=2", "train.use_gpu=true"], 2, True, False),
        ("mlp", ["train.num_workers=2", "sampler.mode=stream"], 2, False, True),
        ("linear", ["sampler.mode=stream"], 1, False, False),
    ],
)
def test_each_kind_trains_where_it_can(kind, sets, workers, gpu, shards):
    """linear: one solve in one process; gbdt: CPU workers, several of them reading their own
    shards (a LightGBMTrainer); the torch kinds as asked."""
    from engine.train import sharded, trained_spec

    spec = trained_spec(load_spec(None, [f"model.kind={kind}", "data.features=[f0]", *sets]))
    assert (spec.train.num_workers, spec.train.use_gpu, sharded(spec)) == (workers, gpu, shards)
