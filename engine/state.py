"""Training state (optimizer, LR schedule) as safetensors + JSON: checkpoints hold no pickle.

``save_state(obj, folder)`` writes the tensors of a nested ``state_dict`` into
``state.safetensors`` and the rest of its structure into ``state.json`` (each tensor replaced by
its name; dicts stored as key/value pairs so that integer keys, as in an optimizer's ``state``,
come back as integers). ``load_state(folder)`` rebuilds the object.
"""

from __future__ import annotations

import json
import os
from typing import Any

TENSORS = "state.safetensors"
STRUCTURE = "state.json"


def flatten(obj: Any) -> tuple[Any, dict[str, Any]]:
    """(JSON-able structure, {name: tensor}) of a nested state_dict.

    Raises:
        TypeError: a value that is neither a tensor, a container nor a JSON scalar.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(x, dict):
            return {"__dict__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"__tuple__" if isinstance(x, tuple) else "__list__": [walk(v) for v in x]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a training checkpoint: {x!r}")

    return walk(obj), tensors


def unflatten(structure: Any, tensors: dict[str, Any]) -> Any:
    """The inverse of ``flatten``."""
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            return tensors[structure["__tensor__"]]
        if "__dict__" in structure:
            return {
                _hashable(unflatten(k, tensors)): unflatten(v, tensors)
                for k, v in structure["__dict__"]
            }
        if "__tuple__" in structure:
            return tuple(unflatten(v, tensors) for v in structure["__tuple__"])
        if "__list__" in structure:
            return [unflatten(v, tensors) for v in structure["__list__"]]
        raise ValueError(f"unknown entry in a training checkpoint: {sorted(structure)}")
    return structure


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def save_state(obj: Any, folder: str) -> None:
    """Write ``obj`` as ``state.safetensors`` + ``state.json`` into ``folder``."""
    from safetensors.torch import save_file

    structure, tensors = flatten(obj)
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, TENSORS))
    with open(os.path.join(folder, STRUCTURE), "w") as f:
        json.dump(structure, f)


def load_state(folder: str) -> Any:
    """Read what ``save_state`` wrote."""
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(folder, TENSORS))
    with open(os.path.join(folder, STRUCTURE)) as f:
        return unflatten(json.load(f), tensors)
