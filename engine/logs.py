"""Where the logs go: the terminal keeps the results, a log file keeps everything else.

    route = route_logs(verbose=False)      # before Ray starts
    ray.init(**ray_init_options(route)); after_ray_init(route)
    ...
    unroute(route)                         # the command is over
    keep_logs(route, RunDir(run_dir).logs, "run")   # it succeeded: RUN_DIR/logs/

Quiet (the default): Ray's, Ray Data's, Tune's, Train's and the libraries' log records and
Python warnings go to a log file only; the Ray workers' output stays in their session's log
files (``log_to_driver=False``) and is copied next to that file when the Ray is this process's
own; the ``raybalance`` logger shows its warnings on the terminal. Verbose: every record also on
the terminal, the workers' output too.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TextIO

# the loggers that print to the terminal by their own handlers (propagate=False)
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "transformers", "lightgbm")
VERBOSE_ENV = "RAYBALANCE_VERBOSE"  # read by stages that pick their own verbosity (Tune)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_COPIED_BYTES = 20 << 20  # a Ray session log file larger than this is not copied


@dataclass
class LogRoute:
    """Where this command's records go: ``path`` (a temporary file until ``keep_logs``);
    ``terminal``: the original standard error while ``capture_stderr`` holds file descriptor 2."""

    path: str
    verbose: bool
    handler: logging.Handler
    started: float
    terminal: TextIO | None = None
    saved_fd: int | None = None


def verbose() -> bool:
    """Whether the command runs with ``--verbose``."""
    return os.environ.get(VERBOSE_ENV) == "1"


def route_logs(verbose: bool = False) -> LogRoute:
    """Send every log record and warning to a new temporary log file; on the terminal keep the
    ``raybalance`` logger's warnings (every record with ``verbose``)."""
    fd, path = tempfile.mkstemp(prefix="raybalance-", suffix=".log")
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    logging.captureWarnings(True)  # py.warnings -> root -> the file
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's old reporter obeys verbose=0
    quiet_libraries(handler, verbose)
    return LogRoute(path, verbose, handler, time.time())


def quiet_libraries(handler: logging.Handler, verbose: bool) -> None:
    """The libraries' own terminal handlers: only errors unless ``verbose``; their records also
    to ``handler``. Call again after a library reconfigures its loggers (``ray.init``)."""
    handler.setFormatter(logging.Formatter(LOG_FORMAT))  # ray.init sets its own on "ray"'s
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for h in logger.handlers:
            if _to_terminal(h):
                h.setLevel(logging.INFO if verbose else logging.ERROR)
        if not logger.propagate and handler not in logger.handlers:
            logger.addHandler(handler)


def capture_stderr(route: LogRoute) -> TextIO | None:
    """Point file descriptor 2 at the log file — what Ray's C++ core, child processes and
    libraries write to standard error lands there — and return a stream on the original
    standard error for the command's own lines. Nothing is done (None) when ``sys.stderr`` is
    not the process's own (a test captures it)."""
    if sys.stderr is not sys.__stderr__:
        return None
    sys.stderr.flush()
    route.saved_fd = os.dup(2)
    fd = os.open(route.path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    route.terminal = os.fdopen(os.dup(route.saved_fd), "w", buffering=1, encoding="utf-8")
    return route.terminal


def release_stderr(route: LogRoute) -> None:
    """Give file descriptor 2 back to the original standard error."""
    if route.saved_fd is None:
        return
    sys.stderr.flush()
    os.dup2(route.saved_fd, 2)
    os.close(route.saved_fd)
    route.saved_fd = None
    if route.terminal is not None:
        route.terminal.close()
        route.terminal = None


def unroute(route: LogRoute) -> None:
    """Detach and close the log file's handler and give standard error back (the command is
    over)."""
    release_stderr(route)
    for name in ("", *LIBRARY_LOGGERS):
        logging.getLogger(name).removeHandler(route.handler)
    route.handler.close()
    logging.captureWarnings(False)


def _to_terminal(h: logging.Handler) -> bool:
    """A handler that prints to standard output or error (Ray's writes to whatever
    ``sys.stderr`` is when it emits)."""
    if type(h).__name__ == "PlainRayHandler":
        return True
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return not isinstance(h, logging.FileHandler) and getattr(h, "stream", None) in streams


def ray_init_options(route: LogRoute | None) -> dict:
    """Route the ``ray`` logger (set up when Ray is imported) before ``ray.init``, and return
    its keywords: the workers' output reaches this terminal only when verbose."""
    import ray  # noqa: F401 - its import adds the ray logger's terminal handler

    loud = route is None or route.verbose
    if route is not None:
        quiet_libraries(route.handler, loud)
    return {"log_to_driver": loud, "logging_level": logging.INFO}


def after_ray_init(route: LogRoute) -> None:
    """``ray.init`` sets the ``ray`` logger again and Ray Data adds its own: re-route them, and
    turn Ray Data's progress bars off unless verbose."""
    import ray.data

    quiet_libraries(route.handler, route.verbose)
    if not route.verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False


def session_logs_dir() -> str | None:
    """The log folder of the Ray this process started (None when connected to a cluster, whose
    logs are on its nodes)."""
    try:
        import ray

        node = ray._private.worker._global_node  # no public accessor in Ray 2.60
        if node is None or not ray.is_initialized() or not node.head:
            return None
        return node.get_logs_dir_path()
    except (AttributeError, ImportError):
        return None


def keep_logs(route: LogRoute, folder: str | None, command: str) -> str | None:
    """After ``unroute``: move this command's log file into ``folder`` (a run's logs folder;
    kept only when the run folder holding it is local and exists) with the embedded Ray's
    session logs beside it, else delete it; returns where the log is kept."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(route.started))
    if folder is not None and "://" in folder:
        return _upload_logs(route, folder, command, stamp)
    parent = os.path.dirname(folder) if folder else None
    if folder is None or not os.path.isdir(parent):
        os.remove(route.path)  # no run folder to keep it in (predict, stats without --out)
        return None
    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, f"{command}-{stamp}.log")
    shutil.move(route.path, dest)
    ray_logs = session_logs_dir()
    if ray_logs:
        _copy_session_logs(ray_logs, os.path.join(folder, f"ray-{stamp}"))
    return dest


def _upload_logs(route: LogRoute, folder: str, command: str, stamp: str) -> str | None:
    """``keep_logs`` for a run folder in a bucket: the log and the session logs copied into
    ``folder`` (when the run folder is there), then the local log removed."""
    import tempfile

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder.rstrip("/"))
    run_root = root.rpartition("/")[0]
    try:
        if fs.get_file_info(run_root).type != pafs.FileType.Directory:
            return None  # no run folder to keep it in
        dest = f"{folder.rstrip('/')}/{command}-{stamp}.log"
        with tempfile.TemporaryDirectory(prefix="raybalance-logs-") as tmp:
            shutil.copyfile(route.path, os.path.join(tmp, os.path.basename(dest)))
            ray_logs = session_logs_dir()
            if ray_logs:
                _copy_session_logs(ray_logs, os.path.join(tmp, f"ray-{stamp}"))
            pafs.copy_files(tmp, folder.rstrip("/"))
        return dest
    finally:
        os.remove(route.path)


def _copy_session_logs(src: str, dest: str) -> None:
    """The session's top-level ``*.out``, ``*.err`` and ``*.log`` files, each below
    ``MAX_COPIED_BYTES`` (the workers' output among them)."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for path in sorted(glob.glob(os.path.join(src, "*"))):
        if path.endswith((".out", ".err", ".log")) and os.path.isfile(path):
            if os.path.getsize(path) <= MAX_COPIED_BYTES:
                shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
