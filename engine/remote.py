"""Run folders in object storage (``s3://``, ``gs://``, any pyarrow filesystem URI).

A run folder behind a URI is worked on through a *mirror*: a local folder on the machine of the
process that writes it (``mirror_dir``), pulled from the bucket when a stage starts and pushed
back as the stage goes (``Mirror.push``) and when it ends. The mirror holds a marker naming its
URI, so the run-folder object (``engine.rundir.RunDir``) and whoever hands a path to another
node (``durable``) can say where a file lives in the bucket.

Names starting with a dot (a writer's temporary, a lock, the marker) are never pushed. What is
never mirrored lives only in the bucket and is read and written there directly: the
data folders (``splits/``, ``embedded/``, ``resampled/``: Ray tasks on any node read them), and
Ray's own storage (``ray/``: Ray Train and Tune write checkpoints and the search's state there
from whichever node runs the worker). A file is pushed whole (an object store has no partly
written object) and completion records (``COMPLETION``) after everything else, so that a
reader who sees a record sees what it vouches for.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from engine.io import COMPLETION, filesystem_and_path, is_uri, join

log = logging.getLogger(__name__)

MARKER = ".raybalance-remote.json"  # in a mirror's root: its URI, stamps and lazy patterns
LOCK = ".raybalance.lock"  # (engine.rundir's) a writer's hold on a local folder
# never mirrored: read where they are
IN_BUCKET = ("splits", "embedded", "resampled", "crossfit", "ray")


def mirror_dir(uri: str, kind: str = "runs") -> str:
    """The local folder mirroring ``uri`` on this machine (one per URI)."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "raybalance", kind, digest)


def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    return (
        any(p.startswith(".") for p in parts)  # the marker, a lock, a writer's temporary
        or any(p in IN_BUCKET for p in parts[:-1])
        or any(".tmp-" in p for p in parts)
    )


def _stamp(info: pafs.FileInfo) -> list[int]:
    return [info.size, info.mtime_ns or 0]


def remote_files(uri: str) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} of the files under ``uri`` that a mirror holds."""
    fs, root = filesystem_and_path(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    cut = len(root.rstrip("/")) + 1
    return {
        i.path[cut:]: _stamp(i)
        for i in infos
        if i.type == pafs.FileType.File and not _skipped(i.path[cut:])
    }


def local_files(folder: str) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} of the files under ``folder`` that a mirror pushes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if d not in IN_BUCKET and not d.startswith(".")]
        for name in filenames:
            rel = rel_dir + name
            if not _skipped(rel):
                st = os.stat(os.path.join(dirpath, name))
                out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _copy_in(fs: pafs.FileSystem, src: str, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-pull"
    with fs.open_input_stream(src) as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
    os.replace(tmp, dest)


def _prune(root: str, rel_dir: str) -> None:
    """Remove ``root/rel_dir`` and its parents below ``root`` while they are empty."""
    while rel_dir:
        with contextlib.suppress(OSError):  # not empty (or gone)
            os.rmdir(os.path.join(root, rel_dir))
        if os.path.isdir(os.path.join(root, rel_dir)):
            return
        rel_dir = os.path.dirname(rel_dir)


@dataclass
class Mirror:
    """A local mirror of the run folder (or one of its folders) at ``uri``. ``local`` and
    ``remote`` are the stamps of the files as the last pull or push left them on each side
    (kept in the marker, so that the next process pulls only what changed). Files matching
    ``lazy`` (``fnmatch`` patterns of relative paths) are not pulled: whoever needs one
    fetches it (a run's trial checkpoints, needed only to export a trial stopped early)."""

    uri: str
    path: str
    local: dict[str, list[int]] = field(default_factory=dict)
    remote: dict[str, list[int]] = field(default_factory=dict)
    lazy: tuple[str, ...] = ()

    def _save(self) -> None:
        record = {"uri": self.uri, "local": self.local, "remote": self.remote, "lazy": self.lazy}
        tmp = os.path.join(self.path, MARKER + ".tmp-save")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(self.path, MARKER))

    def pull(self) -> list[str]:
        """Make the mirror hold what the bucket holds (files the bucket lacks are removed);
        returns what was copied in."""
        fs, root = filesystem_and_path(self.uri)
        theirs = remote_files(self.uri)
        theirs = {r: st for r, st in theirs.items() if not _matches(r, self.lazy)}
        mine = local_files(self.path)
        for rel in set(mine) - set(theirs):
            if not _matches(rel, self.lazy):  # (a lazy file here was put by this machine)
                os.remove(os.path.join(self.path, rel))
                _prune(self.path, os.path.dirname(rel))
        copied = []
        for rel, stamp in sorted(theirs.items()):
            same = self.remote.get(rel) == stamp and self.local.get(rel) == mine.get(rel)
            if rel not in mine or not same:
                _copy_in(fs, join(root, rel), os.path.join(self.path, rel))
                copied.append(rel)
        self.local, self.remote = local_files(self.path), theirs
        self._save()
        return copied

    def push(self) -> list[str]:
        """Copy to the bucket what changed in the mirror since the last pull or push, completion
        records last, and remove from the bucket what the mirror removed; returns what was
        copied."""
        fs, root = filesystem_and_path(self.uri)
        mine = local_files(self.path)
        changed = [rel for rel, st in mine.items() if self.local.get(rel) != st]
        changed.sort(key=lambda rel: (rel.rpartition("/")[2] in COMPLETION, rel))
        for rel in changed:
            dest = join(root, rel)
            fs.create_dir(dest.rpartition("/")[0], recursive=True)
            with open(os.path.join(self.path, rel), "rb") as src:
                with fs.open_output_stream(dest) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        for rel in set(self.local) - set(mine):
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(join(root, rel))
        self.local, self.remote = mine, remote_files(self.uri)
        self.remote = {r: st for r, st in self.remote.items() if not _matches(r, self.lazy)}
        self._save()
        return changed


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _record(folder: str) -> dict:
    """The marker of the mirror ``folder`` ({} for a plain local folder)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            record = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _load(path: str, uri: str, lazy: tuple[str, ...] | None = None) -> Mirror:
    """The mirror of ``uri`` at ``path`` with its recorded stamps (none when the marker is
    missing or names another URI); ``lazy`` as recorded unless given."""
    record = _record(path)
    if record.get("uri") != uri:
        record = {}
    m = Mirror(uri, path, record.get("local", {}), record.get("remote", {}))
    m.lazy = lazy if lazy is not None else tuple(record.get("lazy", ()))
    return m


def open_mirror(uri: str, kind: str = "runs", lazy: tuple[str, ...] = ()) -> Mirror:
    """The mirror of ``uri`` on this machine, pulled (but files matching ``lazy``)."""
    uri = uri.rstrip("/")
    path = mirror_dir(uri, kind)
    os.makedirs(path, exist_ok=True)
    m = _load(path, uri, lazy)
    m.pull()
    return m


def enclosing(path: str) -> Mirror | None:
    """The mirror that holds the local ``path``, or None."""
    head = os.path.abspath(path)
    while True:
        uri = _record(head).get("uri")
        if uri is not None:
            return _load(head, uri)
        parent = os.path.dirname(head)
        if parent == head:
            return None
        head = parent


def push_enclosing(path: str) -> None:
    """Push the mirror holding ``path`` (nothing for a plain local folder)."""
    m = enclosing(path)
    if m is not None:
        m.push()


def sync_enclosing(path: str) -> None:
    """Push the mirror holding ``path``, then pull what other nodes wrote to its bucket."""
    m = enclosing(path)
    if m is not None:
        m.push()
        m.pull()


@contextlib.contextmanager
def mirrored(uri: str, kind: str = "runs", lazy: tuple[str, ...] = ()) -> Iterator[Mirror]:
    """A pulled mirror of ``uri``, pushed when the block ends, also when it fails (each file in
    the mirror is whole: every writer writes under a temporary name and renames)."""
    m = open_mirror(uri, kind, lazy)
    try:
        yield m
    except BaseException:
        try:
            _load(m.path, m.uri).push()
        except Exception:  # the block's own error is the one to see
            log.exception("pushing %s to %s after a failure failed", m.path, m.uri)
        raise
    _load(m.path, m.uri).push()  # (as its record stands: the block may have pushed meanwhile)


def mirrored_uri(folder: str) -> str | None:
    """The URI whose mirror ``folder`` is, or None for a plain local folder."""
    return _record(folder).get("uri")


def durable(path: str) -> str:
    """``path`` as a process on another node can reach it: inside a mirror, its place in the
    bucket; otherwise ``path`` itself."""
    if is_uri(path):
        return path
    m = enclosing(path)
    if m is None:
        return os.path.abspath(path)
    rel = os.path.relpath(os.path.abspath(path), m.path)
    return m.uri if rel == "." else join(m.uri, rel.replace(os.sep, "/"))


def clear(folder: str) -> None:
    """Empty the local ``folder``, keeping a mirror's marker (the next push removes the files
    from the bucket too)."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name != MARKER:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def remove(path: str) -> None:
    """Remove the folder at ``path`` (local or in a bucket) if it is there."""
    fs, p = filesystem_and_path(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


@contextlib.contextmanager
def local_folder(path: str, lazy: tuple[str, ...] = ()) -> Iterator[str]:
    """``path`` as a local folder to write with plain file operations: a URI's mirror (pushed
    when the block ends; ``lazy``: what it does not pull), else ``path`` made absolute."""
    if not is_uri(path):
        yield os.path.abspath(path)
        return
    with mirrored(path, lazy=lazy) as m:
        yield m.path


def fetch(uri: str) -> str:
    """A local copy of the folder at ``uri`` (a model, an artifact): downloaded once per
    machine for each state of the folder (its files' sizes and times), renamed into place
    whole, so that concurrent processes share it. A local path is returned as it is."""
    if not is_uri(uri):
        return uri
    uri = uri.rstrip("/")
    files = remote_files(uri)
    if not files:
        raise FileNotFoundError(f"{uri} holds no files (is the path right?)")
    state = json.dumps([uri, sorted(files.items())])
    dest = mirror_dir(state, "fetched")  # (no marker inside: an artifact holds listed files only)
    if os.path.isdir(dest):
        return dest
    fs, root = filesystem_and_path(uri)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".fetch-")
    try:
        for rel in files:
            _copy_in(fs, join(root, rel), os.path.join(tmp, rel))
        os.rename(tmp, dest)
    except OSError:
        if not os.path.isdir(dest):  # not a copy that another process placed first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
