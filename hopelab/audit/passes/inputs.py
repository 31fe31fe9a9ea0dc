"""Pass H: does each input reach the output? Every step of every sample of one input is changed at a time
(the others kept); an input whose change moves no output is ignored by the model, and the modules that read it
directly (its embedding, its conditioning encoder) are named."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hopelab.audit.context import AuditContext, relative_change
from hopelab.audit.passes.calls import RepeatedCalls


@dataclass
class InputReach:
    change: dict[str, float] = field(default_factory=dict)  # input -> relative output change when it changes
    readers: dict[str, list[str]] = field(default_factory=dict)  # ignored input -> modules called on it


def input_reach(ctx: AuditContext, calls: RepeatedCalls) -> InputReach:
    result = InputReach()
    for name in ctx.inputs.names:
        x2 = ctx.inputs.perturb_input(ctx.x, name, ctx.gen)
        result.change[name] = relative_change(calls.run_fresh(ctx, x2, True), calls.reference[True])
    ignored = [n for n, v in result.change.items() if v <= ctx.tol]
    if ignored:
        result.readers = _readers(ctx, ignored)
    return result


def _readers(ctx: AuditContext, names: list[str]) -> dict[str, list[str]]:
    """{input: the outermost modules whose forward took that input tensor itself as an argument}."""
    tensors = {n: ctx.inputs.tensors(ctx.x)[n] for n in names}
    m = ctx.copy(ctx.generic)
    found: dict[str, list[str]] = {n: [] for n in names}

    def hook(mod_name):
        def pre(_mod, args, kwargs):
            for n, t in tensors.items():
                if any(a is t for a in list(args) + list(kwargs.values())):
                    if not any(mod_name.startswith(r + ".") for r in found[n]):
                        found[n].append(mod_name)
        return pre

    handles = [mod.register_forward_pre_hook(hook(name), with_kwargs=True)
               for name, mod in m.named_modules() if name]
    try:
        with torch.no_grad():
            ctx.forward(m, ctx.x, train=True, grad=False)
    finally:
        for h in handles:
            h.remove()
    return found
