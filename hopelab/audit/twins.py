"""Templates versus dead mechanisms: why a parameter the forward never reads may still matter.

A parameter the forward never reads is a *template* when it has a used twin:
  - a copy: another parameter, buffer or plain tensor attribute of the same number of elements holding exactly
    its values at the parameters as given (`self.memory_init = template.weight.detach().clone()`), or
  - a functional call: a module owning it ran in the forward while none of that module's parameters were read
    (`torch.func.functional_call(self.memory_model, fast_weights, x)`, titans-pytorch's `memory_model`).
Unused parameters without a twin that make up a whole named submodule, or together a large share of the
model (`DEAD_SHARE`), are a *dead mechanism*: the training forward never runs them (e.g. a target generator
that only a separate update routine calls under no_grad).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DEAD_SHARE = 0.25  # unused parameters without a twin holding this share of all values are a dead mechanism


@dataclass
class DeadGroup:
    """Unused parameters without a twin: a whole submodule ("" for bare parameters) and its share."""

    module: str
    params: list[str]
    share: float  # of all parameter values of the model


def find_twins(model: nn.Module, unused: list[str], called: set[str]) -> dict[str, str]:
    """{unused parameter: its twin, in words} for the templates among `unused` (see the module docstring)."""
    named = dict(model.named_parameters())
    unused_set = set(unused)
    candidates = [(n, t) for n, t in named.items() if n not in unused_set]
    candidates += list(model.named_buffers())
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        candidates += [(prefix + k, v) for k, v in vars(mod).items()
                       if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)]
    twins = {}
    for n in unused:
        p = named[n].detach()
        owners = [n.rsplit(".", k)[0] for k in range(1, n.count(".") + 1)]  # innermost first
        ran = next((o for o in owners if o in called
                    and all(q in unused_set for q in named if q.startswith(o + "."))), None)
        if ran is not None:
            twins[n] = f"module {ran!r} ran without reading its own parameters (a functional call)"
            continue
        if p.numel() < 2 or bool((p == p.flatten()[0]).all()):  # constant values are no evidence of a copy
            continue
        for cn, t in candidates:
            if t.numel() == p.numel() and t is not named[n] and torch.equal(t.detach().reshape(p.shape), p):
                twins[n] = f"{cn!r} holds a copy of its values"
                break
    return twins


def dead_groups(model: nn.Module, no_twin: list[str]) -> list[DeadGroup]:
    """The whole submodules (outermost) made only of `no_twin` parameters, then the rest if it is a large share."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values()) or 1
    left = set(no_twin)
    groups = []
    for mod_name, mod in model.named_modules():
        if not mod_name or any(mod_name.startswith(g.module + ".") for g in groups):
            continue
        own = [f"{mod_name}.{k}" for k, _ in mod.named_parameters()]
        if own and all(n in left for n in own):
            groups.append(DeadGroup(mod_name, own, sum(sizes.get(n, 0) for n in own) / total))
            left -= set(own)
    rest = [n for n in no_twin if n in left]
    share = sum(sizes[n] for n in rest) / total
    if rest and share >= DEAD_SHARE:
        groups.append(DeadGroup("", rest, share))
    return groups
