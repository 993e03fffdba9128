"""Progress events: drawn as one line per finished summarized task off a terminal, nothing for
the passes that are not summarized; ``progress_bar`` ends its task."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from engine.progress import PROGRESS_LOGGER, ProgressHandler, progress_bar, progress_event


def _handler() -> tuple[ProgressHandler, io.StringIO]:
    buf = io.StringIO()
    handler = ProgressHandler(Console(file=buf, force_terminal=False, width=200))
    logging.getLogger(PROGRESS_LOGGER).addHandler(handler)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    return handler, buf


def test_off_a_terminal_only_finished_summarized_tasks_print_a_line():
    handler, buf = _handler()
    try:
        for e in range(1, 4):
            progress_event("train", e, 3, f"val macro-F1 0.{e}")
        with progress_bar("split: write", total=4) as advance:
            advance(2)
            advance(2)
    finally:
        logging.getLogger(PROGRESS_LOGGER).removeHandler(handler)
    assert buf.getvalue().splitlines() == ["  train: 3/3  val macro-F1 0.3"]


def test_on_a_terminal_a_bar_is_drawn_and_closed(caplog):
    buf = io.StringIO()
    handler = ProgressHandler(Console(file=buf, force_terminal=True, width=120))
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
            progress_event("tune", 1, 2, "best val_macro_f1 0.5")
            assert handler.progress is not None
            progress_event("tune", 2, 2, "best val_macro_f1 0.7")
    finally:
        logger.removeHandler(handler)
    assert handler.progress is None  # every task ended: the bar stopped
    assert "best val_macro_f1 0.7" in buf.getvalue()
    assert [r.getMessage() for r in caplog.records][-1].startswith("tune 2/2")
