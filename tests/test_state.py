"""Training state as safetensors + JSON: optimizer and LR-schedule states round-trip exactly,
an optimizer restored from them takes the same next step, and no pickle is written."""

from __future__ import annotations

import os

import pytest
import torch

from engine.lexical import LazyAdamW
from engine.state import flatten, load_state, save_state, unflatten


def _trained(opt_cls, steps: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = opt_cls(model.parameters(), lr=0.01, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, LazyAdamW])
def test_optimizer_and_schedule_round_trip_and_resume_the_same_step(opt_cls, tmp_path):
    model, opt, sched = _trained(opt_cls)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    save_state(state, str(tmp_path / "s"))
    assert sorted(os.listdir(tmp_path / "s")) == ["state.json", "state.safetensors"]
    back = load_state(str(tmp_path / "s"))
    assert _equal(back, state)
    assert all(isinstance(k, int) for k in back["optimizer"]["state"])  # int keys kept

    # a fresh optimizer loaded from the files takes exactly the step the original takes
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(model.state_dict())
    opt2 = opt_cls(model2.parameters(), lr=0.01, weight_decay=0.01)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight) and torch.equal(model.bias, model2.bias)


def test_tuples_nested_lists_and_scalars_survive_and_objects_are_refused():
    obj = {"a": (1, 2.5, None), "b": [[True, "x"]], 3: {"t": torch.arange(3)}}
    structure, tensors = flatten(obj)
    assert _equal(unflatten(structure, tensors), obj)
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten({"f": object()})
