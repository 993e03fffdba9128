"""Where the logs go: the libraries' records to the command's log file, not the terminal; the
file kept in ``RUN_DIR/logs/`` with the embedded Ray's session logs, or removed."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.logs import _to_terminal, keep_logs, quiet_libraries, route_logs, unroute


def test_library_records_reach_the_file_not_the_terminal(tmp_path, capfd):
    import ray  # noqa: F401 - its import adds the ray logger's terminal handler

    route = route_logs(verbose=False)
    try:
        quiet_libraries(route.handler, route.verbose)
        logging.getLogger("ray.data").info("an execution plan")
        logging.getLogger("ray").warning("token authentication is enabled")
        logging.getLogger("raybalance").info("ours, for the file")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
    finally:
        unroute(route)
    printed = capfd.readouterr()
    assert "execution plan" not in printed.err + printed.out
    assert "token authentication" not in printed.err + printed.out
    text = Path(route.path).read_text()
    for line in ("an execution plan", "token authentication", "ours, for the file", "a library's"):
        assert line in text
    logging.captureWarnings(False)


def test_the_log_is_kept_in_the_run_folder_or_removed(tmp_path):
    route = route_logs(verbose=False)
    logging.getLogger("raybalance").info("kept")
    run = tmp_path / "run"
    run.mkdir()
    unroute(route)
    kept = keep_logs(route, str(run / "logs"), "prepare")
    assert kept is not None and kept.startswith(str(run / "logs" / "prepare-"))
    assert "kept" in Path(kept).read_text()
    logging.captureWarnings(False)

    route = route_logs(verbose=False)
    unroute(route)
    assert (
        keep_logs(route, str(tmp_path / "absent" / "logs"), "prepare") is None
    )  # no folder: none made
    assert not (tmp_path / "absent").exists()
    import os

    assert not os.path.exists(route.path)
    logging.captureWarnings(False)


def test_verbose_keeps_the_terminal_handlers():
    import ray  # noqa: F401 - its import adds the ray logger's terminal handler

    def levels() -> list[int]:
        return [h.level for h in logging.getLogger("ray").handlers if _to_terminal(h)]

    route = route_logs(verbose=True)
    try:
        assert levels() and all(level <= logging.INFO for level in levels())
    finally:
        unroute(route)
    route = route_logs(verbose=False)
    try:
        assert all(level >= logging.ERROR for level in levels())
    finally:
        unroute(route)
    logging.captureWarnings(False)
