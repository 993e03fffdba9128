"""The ensemble artifact: written whole, verified before anything in it is loaded.

    write_artifact(spec.data, refs, fit, thresholds, "runs/x/ensemble", label_map,
                   embed=spec.embed, run_name=spec.name)
    art = load_artifact("runs/x/ensemble")                 # hashes checked, pickles refused

Layout and trust rules: see ``engine.ensemble``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from engine.combining import Combination
from engine.config import DataSpec, EmbedSpec, build_section
from engine.data import LABEL_MAP_JSON, LabelMap
from engine.io import sha256_file
from engine.remote import fetch
from engine.scoring import ModelRef

FORMAT = "raybalance-ensemble/1"
MODEL_FORMAT = "raybalance-model/1"  # one trained model folder (train/best, a trial's best)
MANIFEST = "manifest.json"
THRESHOLDS = "thresholds.json"
SIGNATURE = "signature.json"  # HMAC-SHA256 of manifest.json under the user's key
KEY_ENV = "RAYBALANCE_ARTIFACT_KEY_FILE"  # a file holding that key
ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt")  # weights, configs, tokenizer vocab


# --------------------------------------------------------------------------------------------
# signing: the manifest (which holds every other file's hash) under a key the user holds


def artifact_key() -> bytes | None:
    """The key in the file ``$RAYBALANCE_ARTIFACT_KEY_FILE``; None when the variable is unset."""
    path = os.environ.get(KEY_ENV)
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise ValueError(f"{KEY_ENV}={path}: cannot read the key ({e.strerror})") from None
    if len(key) < 16:
        raise ValueError(
            f"{KEY_ENV}={path}: the key has {len(key)} byte(s); use at least 16 random bytes "
            f"(e.g. `openssl rand -hex 32 > {path}`)"
        )
    return key


def _mac(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def sign_manifest(folder: str, key: bytes | None = None) -> bool:
    """Write ``folder/signature.json`` — the HMAC-SHA256 of ``folder/manifest.json`` under
    ``key`` (default: ``artifact_key()``); returns whether it signed (no key: nothing)."""
    key = key if key is not None else artifact_key()
    if key is None:
        return False
    with open(os.path.join(folder, MANIFEST), "rb") as f:
        sig = signature_of(f.read(), key)
    tmp = os.path.join(folder, SIGNATURE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(sig, f, indent=2)
    os.replace(tmp, os.path.join(folder, SIGNATURE))
    return True


def signature_of(manifest: bytes, key: bytes) -> dict[str, str]:
    """``signature.json``'s content for the manifest's bytes under ``key``."""
    return {
        "alg": "hmac-sha256",
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "hmac": _mac(key, manifest),
    }


def check_signature(folder: str, key: bytes) -> None:
    """That ``folder/manifest.json`` is signed with ``key``, else a ValueError saying why."""
    path = os.path.join(folder, SIGNATURE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{folder} is not signed, and {KEY_ENV} is set: only artifacts signed with that "
            f"key are used. Rebuild it with the key set, or sign a folder you trust with "
            f"`raybalance sign {folder}`"
        )
    try:
        with open(path) as f:
            mac = json.load(f).get("hmac")
    except (OSError, ValueError, AttributeError):
        mac = None
    with open(os.path.join(folder, MANIFEST), "rb") as f:
        body = f.read()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, body)):
        raise ValueError(
            f"{os.path.join(folder, MANIFEST)} does not match {SIGNATURE} under the key in "
            f"{KEY_ENV}: the manifest was changed after it was signed, or another key signed "
            "it — rebuild the artifact"
        )


# --------------------------------------------------------------------------------------------
# the artifact


def _files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return sorted(out)


def versions() -> dict[str, str]:
    import ray
    import safetensors
    import torch
    import transformers

    from engine import __version__

    return {
        "raybalance": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def _save_encoder(embed: EmbedSpec, folder: str) -> None:
    """The frozen encoder (weights + tokenizer) as a ``save_pretrained`` folder."""
    from engine.embed import load_encoder

    tokenizer, model = load_encoder(embed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_artifact(
    data: DataSpec,
    members: Sequence[ModelRef],
    fit: Combination,
    thresholds: Any,
    out_dir: str,
    label_map: LabelMap,
    extra: dict[str, Any] | None = None,
    *,
    embed: EmbedSpec | None = None,
    run_name: str = "",
) -> str:
    """Write the ensemble artifact to ``out_dir`` (replaced atomically); returns its path.

    ``data``: the columns the members read; ``embed``: the frozen encoder that members reading
    embeddings need (saved into the artifact); ``run_name``: recorded in the manifest."""
    from engine.io import filesystem_and_path, replace_dir, temp_dir_beside

    fs, root = filesystem_and_path(out_dir)
    tmp = temp_dir_beside(fs, root)
    try:
        entries = []
        for ref in members:
            rel = f"members/{ref.name}"
            shutil.copytree(fetch(ref.dir), os.path.join(tmp, rel))
            entries.append({**asdict(ref), "dir": rel})
        encoder = None
        if any(r.inputs == "embedding" for r in members):
            if embed is None:
                raise ValueError("members read embeddings of the text: pass the embed spec")
            _save_encoder(embed, os.path.join(tmp, "encoder"))
            encoder = {**asdict(embed), "model": "encoder"}
        with open(os.path.join(tmp, LABEL_MAP_JSON), "w") as f:
            json.dump(label_map.to_json(), f, indent=2)
        with open(os.path.join(tmp, THRESHOLDS), "w") as f:
            json.dump(thresholds.to_json(), f, indent=2)
        bad = [p for p in _files(tmp) if not p.endswith(ALLOWED_SUFFIXES)]
        if bad:
            raise ValueError(
                f"member folders hold files of a kind an artifact may not carry: {bad[:5]}; "
                "models must be saved as safetensors + JSON"
            )
        features = data.features
        manifest = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": run_name,
            "versions": versions(),
            "columns": {
                "label": data.label,
                "text": data.text,
                "features": features if not isinstance(features, tuple) else list(features),
            },
            "embed": encoder,
            "members": entries,
            "weights": fit.weights,
            "member_temperatures": fit.member_temperatures,
            "temperature": fit.temperature,
            "stacker": fit.stacker,
            "val_nll": fit.val_nll,
            "thresholds": THRESHOLDS,
            "label_map": LABEL_MAP_JSON,
            "extra": extra or {},
            "files": {p: sha256_file(os.path.join(tmp, p)) for p in _files(tmp)},
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, allow_nan=False)
        sign_manifest(tmp)
        replace_dir(fs, tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_model_manifest(
    folder: str,
    data: DataSpec,
    embed: EmbedSpec | None,
    *,
    run_name: str = "",
    trained_as: str = "",
    max_length: int = 128,
) -> None:
    """``folder/manifest.json`` for one trained model (``train/best``, a trial's ``best``): the
    columns it reads, the encoder of its embeddings, and every file's sha256 — so that
    ``raybalance predict`` can use it with the checks an ensemble gets."""
    manifest = {
        "format": MODEL_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": run_name,
        "data": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(data).items()},
        "embed": asdict(embed) if embed is not None else None,
        "trained_as": trained_as,
        "max_length": max_length,
        "files": {
            p: sha256_file(os.path.join(folder, p))
            for p in _files(folder)
            if p not in (MANIFEST, SIGNATURE)
        },
    }
    tmp = os.path.join(folder, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, allow_nan=False)
    if os.path.exists(os.path.join(folder, SIGNATURE)):  # never beside another manifest
        os.remove(os.path.join(folder, SIGNATURE))
    os.replace(tmp, os.path.join(folder, MANIFEST))
    sign_manifest(folder)


def artifact_from_model(path: str, out_dir: str) -> str:
    """A one-member ensemble artifact in ``out_dir`` (argmax, temperature 1) from a model folder
    with a ``write_model_manifest`` manifest, verified first; returns ``out_dir``."""
    from engine.scoring import model_ref
    from engine.thresholds import Thresholds

    path = os.path.abspath(path)
    manifest = verify_artifact(path, MODEL_FORMAT)
    data = build_section(DataSpec, manifest["data"])
    embed = build_section(EmbedSpec, manifest["embed"]) if manifest.get("embed") else None
    with open(os.path.join(path, LABEL_MAP_JSON)) as f:
        label_map = LabelMap.from_json(json.load(f))
    ref = model_ref(
        data,
        "m1",
        path,
        source=path,
        trained_as=str(manifest.get("trained_as", "")),
        max_length=int(manifest.get("max_length", 128)),
    )
    one = Combination([1.0], 1.0, None, None)  # nothing fitted: no val NLL
    argmax = Thresholds("argmax", None, None, "macro_f1", None, None)
    return write_artifact(
        data, [ref], one, argmax, out_dir, label_map, embed=embed, run_name=manifest.get("run", "")
    )


@dataclass(frozen=True)
class Artifact:
    """A verified ensemble artifact (see the module docstring)."""

    path: str
    manifest: dict[str, Any]
    label_map: LabelMap
    thresholds: Any  # engine.thresholds.Thresholds
    members: list[ModelRef]
    embed: EmbedSpec | None
    embed_files: dict[str, str] | None = None  # the encoder's {file: sha256} (one in a bucket)

    @property
    def weights(self) -> list[float]:
        return list(self.manifest["weights"])

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    @property
    def member_temperatures(self) -> list[float] | None:
        ts = self.manifest.get("member_temperatures")
        return None if ts is None else [float(t) for t in ts]

    def combine_args(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "temperature": self.temperature,
            "member_temperatures": self.member_temperatures,
            "stacker": self.manifest.get("stacker"),
            "thresholds": self.thresholds.to_json(),
        }


def manifest_format(path: str) -> str | None:
    """The ``format`` of ``path/manifest.json`` (None when there is none or it does not read)."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def verify_artifact(path: str, format: str = FORMAT, *, signed: bool = True) -> dict[str, Any]:
    """Check ``path`` against its manifest without loading anything else; returns it.

    With ``$RAYBALANCE_ARTIFACT_KEY_FILE`` set, the manifest must also carry a valid
    signature under that key (``check_signature``; ``signed=False`` skips it, to sign): without
    one, whoever can write the folder can rewrite the manifest and its hashes together.

    Raises:
        ValueError: no manifest, another format, a file of a refused kind (e.g. a pickle), a
            file the manifest does not list, a listed file missing, a hash mismatch, or (with
            a key) a missing or wrong signature.
    """
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist: give the folder `raybalance run` or train wrote")
    if not os.path.isfile(mpath):
        raise ValueError(
            f"{path} is not an ensemble artifact or a trained model: it has no {MANIFEST} "
            "(build one with `raybalance run`, or give RUN_DIR/train/best)"
        )
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath} is not valid JSON ({e}); rebuild the artifact") from None
    key = artifact_key() if signed else None
    if key is not None:
        check_signature(path, key)
    if not isinstance(manifest, dict) or manifest.get("format") != format:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{mpath}: format {got!r} is not {format!r}; rebuild the artifact")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ValueError(f"{mpath} lists no file hashes; rebuild the artifact")
    present = [p for p in _files(path) if p not in (MANIFEST, SIGNATURE)]
    refused = [p for p in present if not p.endswith(ALLOWED_SUFFIXES)]
    if refused:
        raise ValueError(
            f"{path} holds {refused[:5]}: an artifact may hold only safetensors, JSON and "
            "tokenizer vocabulary files, and nothing else is ever loaded (pickles are refused); "
            "remove them or rebuild the artifact"
        )
    unlisted = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if unlisted or missing:
        raise ValueError(
            f"{path} does not match its manifest: files not listed {unlisted[:5]}, listed but "
            f"missing {missing[:5]}; the artifact was changed after it was written — rebuild it"
        )
    for rel, digest in listed.items():
        if sha256_file(os.path.join(path, rel)) != digest:
            raise ValueError(
                f"{os.path.join(path, rel)}: sha256 does not match {MANIFEST}; the artifact was "
                "changed after it was written — rebuild it or restore the file"
            )
    return manifest


def _inside(root: str, rel: Any, key: str) -> str:
    """``root/rel`` when it is a folder inside the artifact (no absolute path, no ``..``, no
    link out), else a ValueError naming the manifest key: the verified files are all that
    may ever be loaded."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise ValueError(
            f"{os.path.join(root, MANIFEST)}: {key}={rel!r} must be a folder inside the "
            "artifact; rebuild the artifact"
        )
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
        raise ValueError(
            f"{os.path.join(root, MANIFEST)}: {key}={rel!r} points outside the artifact; "
            "rebuild the artifact"
        )
    if not os.path.isdir(full):
        raise ValueError(f"{os.path.join(root, MANIFEST)}: {key}={rel!r} is not a folder in it")
    return full


def load_artifact(path: str) -> Artifact:
    """Verify and read an artifact's manifest, label map and thresholds (models load later,
    in the scoring actors, from the verified folders)."""
    from engine.thresholds import Thresholds

    path = os.path.abspath(path)
    manifest = verify_artifact(path)
    with open(os.path.join(path, LABEL_MAP_JSON)) as f:
        label_map = LabelMap.from_json(json.load(f))
    with open(os.path.join(path, THRESHOLDS)) as f:
        thresholds = Thresholds.from_json(json.load(f))
    members = [
        ModelRef(**{**m, "dir": _inside(path, m["dir"], f"members[{i}].dir")})
        for i, m in enumerate(manifest["members"])
    ]
    embed = None
    if manifest.get("embed"):
        model = _inside(path, manifest["embed"]["model"], "embed.model")
        embed = build_section(EmbedSpec, {**manifest["embed"], "model": model})
    if len(manifest["weights"]) != len(members):
        raise ValueError(f"{path}: {len(members)} members but {len(manifest['weights'])} weights")
    _check_stacker(path, manifest.get("stacker"), len(members), len(label_map))
    return Artifact(path, manifest, label_map, thresholds, members, embed)


def _check_stacker(path: str, stacker: Any, members: int, classes: int) -> None:
    """A manifest's stacker must cover the members it groups and the label map's classes."""
    if stacker is None:
        return
    groups = stacker.get("groups") if isinstance(stacker, dict) else None
    ok = isinstance(groups, list) and all(
        isinstance(g, list) and g and all(isinstance(i, int) and 0 <= i < members for i in g)
        for g in groups
    )
    coef = np.asarray(stacker.get("coef", []), dtype=np.float64) if ok else np.empty(0)
    ok = ok and coef.shape == (classes, classes * len(groups))
    ok = ok and len(stacker.get("intercept", [])) == classes
    if not ok:
        raise ValueError(
            f"{path}: the manifest's stacker does not fit its {members} members and {classes} "
            "classes (groups of member indices, coef (K, K·groups), intercept (K,)); rebuild it"
        )
