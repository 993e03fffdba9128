"""The job spec: YAML + --set -> frozen dataclasses, with errors naming file, key and reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.config import (
    DataSpec,
    JobSpec,
    SpecError,
    SplitSpec,
    build_section,
    dump_spec,
    load_spec,
    parse_override,
)

CONFIGS = sorted((Path(__file__).parent.parent / "jobs" / "configs").glob("*.yaml"))


def test_defaults_make_a_complete_spec_without_a_file():
    spec = load_spec(None, ["data.path=d", "data.text=t"])
    assert isinstance(spec, JobSpec)
    assert spec.run_dir == "runs/run"
    assert spec.split == SplitSpec(val=0.1, test=0.2, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.split.val = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, value",
    [
        ("split.val=0.1", 0.1),
        ("data.text=null", None),
        ("data.features=[a, b]", ["a", "b"]),
        ("resample.sampling_strategy=not majority", "not majority"),
        ("data.path=s3://bucket/x=1/y", "s3://bucket/x=1/y"),
        ("resample.sampling_strategy={0: 10, 1: 20}", {0: 10, 1: 20}),
    ],
)
def test_set_values_are_parsed_as_yaml(text, value):
    _, parsed = parse_override(text)
    assert parsed == value


def test_overrides_apply_in_order_over_the_file(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: a\ndata: {path: x, text: t}\nsplit: {seed: 1}\n")
    spec = load_spec(cfg, ["split.seed=5", "data.text=null", "data.features=[f1, f2]"])
    assert spec.name == "a" and spec.split.seed == 5
    assert spec.data.text is None and spec.data.features == ["f1", "f2"]
    assert spec.run_dir == "runs/a"


@pytest.mark.parametrize(
    "yaml_text, key, reason",
    [
        ("data: {pth: x}", "data.pth", "unknown key"),
        ("split: {val: 1.5}", "split.val", "must be in [0, 1)"),
        ("split: {val: 0.5, test: 0.5}", "split.test", "val + test must be < 1"),
        ("split: {seed: abc}", "split.seed", "must be int"),
        ("split: {seed: 1.5}", "split.seed", "must be int"),
        ("train: {epochs: 0}", "train.epochs", "must be >= 1"),
        ("loss: {name: hinge}", "loss.name", "must be one of"),
        ("data: {text: t, features: [a]}", "data.features", "either data.text"),
        ("data: {features: [label]}", "data.features", "also listed as a feature"),
        ("data: {drop_null_labels: maybe}", "data.drop_null_labels", "must be bool"),
        ("split: 3", "split", "must be a mapping"),
        ("model: {hidden: [64, 0]}", "model.hidden", ">= 1"),
        ("stats: {weights: {a: -1}}", "stats.weights.a", "must be > 0"),
        ("thresholds: {objective: target_recall}", "thresholds.target", "needs a target"),
    ],
)
def test_bad_files_fail_with_file_key_and_reason(tmp_path, yaml_text, key, reason):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(cfg)
    msg = str(info.value)
    assert info.value.key == key
    assert msg.startswith(f"{cfg}: {key}: ")
    assert reason in msg


def test_set_errors_blame_the_override(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("name: ok\n")
    with pytest.raises(SpecError, match=r"^--set: split\.seed: must be int"):
        load_spec(cfg, ["split.seed=x"])
    with pytest.raises(SpecError, match="needs KEY=VALUE"):
        load_spec(None, ["split.seed"])
    with pytest.raises(SpecError, match="is not a section"):
        load_spec(cfg, ["name.x=1"])


def test_file_level_errors(tmp_path):
    with pytest.raises(SpecError, match="config file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)


def test_ints_widen_to_floats_but_bools_are_not_numbers():
    assert build_section(SplitSpec, {"val": 0, "test": 0}).val == 0.0
    with pytest.raises(SpecError, match="must be float"):
        build_section(SplitSpec, {"val": True})


def test_sections_round_trip_through_plain_dicts():
    spec = load_spec(None, ["data.features=[a, b]", "split.seed=7", "loss.weights={x: 2}"])
    rebuilt = build_section(JobSpec, dataclasses.asdict(spec))
    assert rebuilt == spec
    assert build_section(DataSpec, dataclasses.asdict(spec.data)) == spec.data
    assert "seed: 7" in dump_spec(spec)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_says_how_to_run_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# raybalance ") and path.name in first
    spec = load_spec(path)
    assert spec.data.path and (spec.data.text or spec.data.features)


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


def test_yaml_tags_that_would_run_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: x\ndata: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8"
    )
    with pytest.raises(SpecError, match="python/object/apply") as e:
        load_spec(job)
    assert str(job) in str(e.value) and "not valid YAML" in str(e.value)
    with pytest.raises(SpecError, match="python/object/apply") as e:
        load_spec(None, [f"data.path=!!python/object/apply:os.system ['touch {marker}']"])
    assert "data.path" in str(e.value) and "is not valid YAML" in str(e.value)
    assert not marker.exists()


def test_exponent_floats_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    """YAML 1.1 reads 5e-5 as a string; a learning rate is written that way."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train:\n  lr: 3e-4\ntune:\n  search_space:\n    train.lr: {loguniform: [1e-5, 1E-3]}\n"
    )
    spec = load_spec(cfg, ["train.weight_decay=1e-2", "model.C=+2.5e1"])
    assert spec.train.lr == pytest.approx(3e-4) and spec.train.weight_decay == pytest.approx(0.01)
    assert spec.model.C == pytest.approx(25.0)
    assert spec.tune.search_space["train.lr"] == {"loguniform": [1e-5, 1e-3]}
    assert load_spec(None, ["data.label=e5", "name=5e"]).data.label == "e5"  # not numbers


def test_gbdt_and_combiner_settings_are_checked_and_left_out_of_records_at_defaults():
    from engine.config import spec_record

    for bad, key in (
        ("model.num_leaves=1", "num_leaves"),
        ("model.feature_fraction=0", "feature_fraction"),
        ("model.feature_fraction=1.5", "feature_fraction"),
        ("ensemble.combiner=median", "combiner"),
    ):
        with pytest.raises(SpecError, match=key):
            load_spec(None, [bad])
    plain = spec_record(load_spec(None, []))
    assert "num_leaves" not in plain["model"] and "combiner" not in plain["ensemble"]
    set_ = spec_record(load_spec(None, ["model.num_leaves=15", "ensemble.combiner=auto"]))
    assert set_["model"]["num_leaves"] == 15 and set_["ensemble"]["combiner"] == "auto"
