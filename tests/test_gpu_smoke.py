"""The GPU check's non-CUDA parts on CPU: every loss, fit and the plain loop of an MLP and a
tiny transformer, the scoring pool, and a stopped trial's export scoring as the fitted model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.integration
def test_the_gpu_smoke_check_runs_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, "benchmarks/gpu_smoke.py", "--device", "cpu", "--quick"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    from engine.config import LOSS_NAMES

    assert set(report["losses"]) == set(LOSS_NAMES)
    assert all(v["finite"] for v in report["losses"].values())
    for kind in ("fit_mlp", "fit_transformer"):
        assert report[kind]["engine_samples_per_s"] > 0, report[kind]
    assert report["fit_transformer"]["plain_samples_per_s"] > 0
    assert report["scoring_and_export"]["max_abs_diff"] < 1e-3
    assert report["scoring_and_export"]["rows"] > 100


def test_the_gpu_scripts_are_executable_and_name_the_check():
    for name in ("gpu_smoke.sh", "gpu_wheels.sh"):
        path = ROOT / "benchmarks" / name
        assert path.stat().st_mode & 0o111, name
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, name
    assert "benchmarks/gpu_smoke.py" in (ROOT / "benchmarks" / "gpu_smoke.sh").read_text()
