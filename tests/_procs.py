"""Killing a job for real: start it in a session of its own, wait for a moment in its work,
then SIGKILL the whole process group (the job and every process it started)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float = 300,
    poll: float = 0.5,
) -> None:
    """Run ``cmd`` (output into ``log_path``) until ``ready()`` holds, then kill it.

    Fails the test when the job exits first (with the end of its log) or when ``ready()`` does
    not hold within ``timeout`` seconds (``what``: the moment that never came)."""
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                assert job.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{what} never happened"
                time.sleep(poll)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def ended_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
