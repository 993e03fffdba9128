"""Filesystem helpers: resolving local paths and URIs, and writing artifacts atomically.

Every artifact is written under a temporary name and renamed into place when complete, so a crash
never leaves a half-written file that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in str(path)


def filesystem_and_path(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return the pyarrow filesystem and the path inside it for a local path or a URI."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def path_exists(path: str | os.PathLike) -> bool:
    """Whether a local path or a URI names a file or folder."""
    fs, p = filesystem_and_path(path)
    return exists(fs, p)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rstrip("/").rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def write_atomic(
    path: str | os.PathLike, write: Callable[[Any, str], None], fs: pafs.FileSystem | None = None
) -> str:
    """Write one file through ``write(fs, tmp_path)`` and rename it to ``path`` when complete.

    With ``fs`` given, ``path`` is a path inside that filesystem; otherwise a local path or URI.
    """
    fs, p = (fs, str(path)) if fs is not None else filesystem_and_path(path)
    parent = p.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = _tmp_name(p)
    try:
        write(fs, tmp)
        fs.move(tmp, p)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_file(tmp)
        raise
    return p


def write_bytes_atomic(
    path: str | os.PathLike, data: bytes, fs: pafs.FileSystem | None = None
) -> str:
    def _write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(data)

    return write_atomic(path, _write, fs)


def write_json_atomic(path: str | os.PathLike, obj: Any, fs: pafs.FileSystem | None = None) -> str:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode(), fs)


def json_digest(*parts: Any) -> str:
    """A short stable digest of JSON-able ``parts`` (keys sorted; other values by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    fs, p = filesystem_and_path(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def write_parquet_atomic(path: str | os.PathLike, table: pa.Table, **kwargs: Any) -> str:
    def _write(fs: pafs.FileSystem, tmp: str) -> None:
        pq.write_table(table, tmp, filesystem=fs, **kwargs)

    return write_atomic(path, _write)


# the files that vouch for a folder (each library's completion record): in an object store,
# where a folder moves file by file, they move (and a mirror pushes them) after the rest
COMPLETION = (
    "_manifest.json",  # engine.split
    "_embed.json",  # engine.embed
    "_complete.json",  # engine.prepare's embeddings
    "stats.json",  # engine.resample, written last
    "metrics.json",  # a trained folder
    "manifest.json",  # an artifact, a model folder
    "signature.json",
    "results.parquet",  # a search
    "pipeline.json",
    "run.json",
    "_predict.json",
)


def move_dir(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Move the folder ``src`` to ``dst``: one rename on a local filesystem; in an object
    store (no folder rename) file by file, completion records last."""
    if fs.type_name == "local":
        fs.move(src, dst)
        return
    infos = fs.get_file_info(pafs.FileSelector(src, recursive=True))
    cut = len(src.rstrip("/")) + 1
    files = sorted(
        (i.path[cut:] for i in infos if i.type == pafs.FileType.File),
        key=lambda rel: (rel.rpartition("/")[2] in COMPLETION, rel),
    )
    for rel in files:
        fs.move(join(src, rel), join(dst, rel))
    fs.delete_dir(src)


def replace_dir(fs: pafs.FileSystem, tmp_dir: str, final_dir: str) -> None:
    """Move a completed temporary folder into place, replacing an older one if present.

    The old folder is first moved aside, so that at every moment either the old or the new
    complete folder is at ``final_dir`` (in an object store, where folders move file by file,
    the completion record that readers check moves last).
    """
    old = None
    if exists(fs, final_dir):
        old = _tmp_name(final_dir) + ".old"
        move_dir(fs, final_dir, old)
    move_dir(fs, tmp_dir, final_dir)
    if old is not None:
        fs.delete_dir(old)


def writer_temp_dir(fs: pafs.FileSystem, final_dir: str) -> str:
    """A reserved temporary name beside ``final_dir`` (its parent created) that does not exist
    yet: Ray Data's writer in CREATE mode creates the folder itself and refuses one that
    exists (names without a write UUID need a mode other than APPEND)."""
    parent = final_dir.rstrip("/").rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = temp_dir_beside(fs, final_dir)
    fs.delete_dir(tmp)
    return tmp


def clear_stale_temps(fs: pafs.FileSystem, final_dir: str) -> list[str]:
    """Remove the temporary folders (and moved-aside old copies) that a killed writer of
    ``final_dir`` left beside it; returns their paths. A run directory has one writer at a time
    (``RunDir.lock``), so any such folder is a dead writer's."""
    head, _, tail = final_dir.rstrip("/").rpartition("/")
    if not head:
        return []
    prefix = f".{tail}.tmp-"
    gone = []
    for info in fs.get_file_info(pafs.FileSelector(head, allow_not_found=True)):
        if info.base_name.startswith(prefix):
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
            gone.append(info.path)
    return gone


def temp_dir_beside(fs: pafs.FileSystem, final_dir: str) -> str:
    clear_stale_temps(fs, final_dir)
    tmp = _tmp_name(final_dir)
    fs.create_dir(tmp, recursive=True)
    return tmp
