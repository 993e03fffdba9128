"""The examples under examples/ run as their users would run them, each asserting what it
shows (the class mix of the batches, a loss against its formula, the resampled counts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import job_env

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.integration  # whole scripts in their own processes, as the other end-to-end jobs
@pytest.mark.parametrize(
    "script",
    ["ddp_balanced_sampler.py", "hf_trainer_balanced.py", "ray_train_own_loop.py"],
)
def test_the_example_runs_and_its_checks_hold(script, tmp_path):
    with job_env(tmp_path / "home") as env:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=400,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok: " in proc.stdout
