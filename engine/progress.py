"""Progress of long work on the driver: events on a logger, drawn by the command's handler.

    progress_event("tune", 3, 12, "best val_macro_f1 0.8123 (gbdt)")

The engine emits events (log records of ``PROGRESS_LOGGER``, so the log file keeps them too);
``ProgressHandler`` draws them with rich on a terminal — a bar per task, with the task's text —
and elsewhere (a job log, a pipe) prints one line when a summarized task ends. Without a handler
the events only reach the log file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_LOGGER = "raybalance.progress"


@dataclass(frozen=True)
class Event:
    """``done`` of ``total`` units of ``task``; ``summary``: the task's end is worth a line."""

    task: str
    done: int
    total: int
    text: str = ""
    summary: bool = True


def progress_event(task: str, done: int, total: int, text: str = "", summary: bool = True):
    """Emit one progress event (also a line of the log file)."""
    logging.getLogger(PROGRESS_LOGGER).info(
        "%s %d/%d %s",
        task,
        done,
        total,
        text,
        extra={"progress": Event(task, done, total, text, summary)},
    )


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a pass of ``total`` parts (an unsummarized task)."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress_event(description, min(done, total), total, summary=False)

    progress_event(description, 0, total, summary=False)
    yield advance
    if done < total:
        progress_event(description, total, total, summary=False)


class ProgressHandler(logging.Handler):
    """Draws progress events: rich bars on a terminal (unsummarized ones vanish when done),
    else one line per summarized task when it ends."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__(logging.INFO)
        self.console = console or Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "progress", None)
        if not isinstance(event, Event):
            return
        if not self.console.is_terminal:
            if event.summary and event.done >= event.total:
                self.console.print(f"  {event.task}: {event.done}/{event.total}  {event.text}")
            return
        self._draw(event)

    def _draw(self, e: Event) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[text]}"),
                console=self.console,
            )
            self.progress.start()
            self.tasks = {}
        if e.task not in self.tasks:
            self.tasks[e.task] = self.progress.add_task(e.task, total=e.total, text=e.text)
        tid = self.tasks[e.task]
        self.progress.update(tid, completed=e.done, total=e.total, text=e.text)
        if e.done >= e.total:
            if not e.summary:
                self.progress.remove_task(tid)
            del self.tasks[e.task]
            if not self.tasks:
                self.progress.stop()
                self.progress = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        super().close()
