"""engine.session: the scratch folders checkpoints are written in before they are reported."""

from __future__ import annotations

import os

from engine.session import SCRATCH_PREFIX, scratch_folder, sweep_scratch
from tests._procs import ended_pid


def _folder(root, name: str):
    path = root / name
    path.mkdir()
    (path / "history.json").write_text("[]")
    return path


def test_scratch_of_ended_processes_is_swept_and_running_ones_kept(tmp_path):
    dead = _folder(tmp_path, f"{SCRATCH_PREFIX}{ended_pid()}-abc")
    parent = _folder(tmp_path, f"{SCRATCH_PREFIX}{os.getppid()}-def")
    own = _folder(tmp_path, f"{SCRATCH_PREFIX}{os.getpid()}-ghi")
    unnamed = _folder(tmp_path, f"{SCRATCH_PREFIX}x1y2z3")  # not named after a process
    other = _folder(tmp_path, "keep-me")
    assert sweep_scratch(str(tmp_path)) == [str(dead)]
    assert not dead.exists()
    assert all(p.exists() for p in (parent, own, unnamed, other))
    assert sweep_scratch(str(tmp_path / "missing")) == []


def test_a_new_scratch_folder_is_named_after_this_process_and_sweeps_first(tmp_path):
    dead = _folder(tmp_path, f"{SCRATCH_PREFIX}{ended_pid()}-abc")
    where = tmp_path / "nested" / "scratch"
    new = scratch_folder(str(where))  # the folder is made where it is missing
    assert os.path.isdir(new) and os.path.dirname(new) == str(where)
    assert os.path.basename(new).startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    assert dead.exists()  # another folder's leftovers are not this call's
    scratch_folder(str(tmp_path))
    assert not dead.exists()
