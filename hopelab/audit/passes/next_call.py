"""Pass I: parameters that only feed writes, judged on a second call.

A parameter the forward uses that never reaches this call's output (check 1's "dead") may feed a memory write
that the *next* call reads. When the model keeps state across calls, the audit runs two calls by itself and
judges those parameters on the second call's output. A model keeps state when
  - a second identical call gives another output (pass C), or
  - the forward changes a buffer or a tensor attribute of some module (`self.memory = new`), or
  - the forward returns a state and takes one back (`out, state = model(x)`; `model(x, state=state)`): the
    second call gets it through that argument (default call only).
Both calls run in train mode with gradients on one fresh generic copy, after the reset methods the model
defines (no-argument `reset*()`), so they start as a training step would. Each parameter is then
  grad      reached by the second call's loss: trained through the carried state
  detached  moving it changes the second call's output, but no gradient reaches it
  never     neither: whatever it writes is never read
The finite differences here take a large step (randn · (rms(p) + 1)): a write that is read at all changes the
second output far above the tolerance, also in float32, while one that is never read leaves it exactly as is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hopelab.audit.context import AuditContext, grad_state, is_finite, relative_change
from hopelab.audit.passes.calls import RepeatedCalls
from hopelab.audit.passes.influence import bisect

STATE_WORDS = ("state", "cache", "memory", "mem", "past", "hidden", "carry")  # forward args a state goes back in


@dataclass
class NextCall:
    candidates: list[str] = field(default_factory=list)  # used, never reaching this call's output
    stateful: str = ""  # how the model keeps state across calls ("" when it does not)
    resets: list[str] = field(default_factory=list)  # reset methods run before the first call
    state_arg: str = ""  # the forward argument a returned state went back through
    judged: dict[str, str] = field(default_factory=dict)  # parameter -> grad | detached | never
    note: str = ""  # the finite differences' budget, when it stopped them


def next_call(ctx: AuditContext, calls: RepeatedCalls, candidates: list[str]) -> NextCall:
    result = NextCall(candidates=list(candidates))
    if not candidates:
        return result
    m = ctx.copy(ctx.generic)
    result.resets = run_resets(m)
    before = tensor_state(m)
    first, _ = ctx.call_raw(m, ctx.x, train=True, grad=True)
    changed = sorted(k for k, v in tensor_state(m).items() if k not in before or not _same(before[k], v))
    arg, state = returned_state(ctx, m, first)
    how = []
    if calls.carries_state(True, ctx.tol):
        how.append("a second identical call gives another output")
    if changed:
        how.append(f"the forward changes {', '.join(changed[:4])}" + (" ..." if len(changed) > 4 else ""))
    if arg:
        how.append(f"the forward returns a state (passed back as {arg}=)")
    result.stateful, result.state_arg = "; ".join(how), arg
    if not how:
        return result
    extra = {arg: state} if arg else {}
    out = ctx.forward(m, ctx.x, train=True, grad=True, **extra)
    try:
        grads = ctx.grads(ctx.loss_of(out, ctx.x), m)
    except RuntimeError:  # a graph the model freed between calls: finite differences decide alone
        grads = {}
    reached = [n for n in candidates if grad_state(grads.get(n)) == "ok"]
    result.judged = {n: "grad" for n in reached}
    rest = [n for n in candidates if n not in reached]
    if rest:
        test = _SecondOutputChange(ctx, out.detach())
        influence, result.note = bisect(rest, test, "the second call's output")
        result.judged.update({n: "detached" if influence[n][0] else "never" for n in rest})
    return result


def run_resets(m: nn.Module) -> list[str]:
    """Call every no-argument `reset*()` method the model's own classes define (torch's excluded), outermost
    module first; returns `Class.method()` for those that ran."""
    ran = []
    for mod in m.modules():
        cls = type(mod)
        if cls.__module__.startswith("torch."):
            continue
        for attr in sorted(dir(cls)):
            fn = getattr(mod, attr, None)
            if "reset" not in attr.lower() or attr.startswith("__") or hasattr(nn.Module, attr) or not callable(fn):
                continue
            try:
                if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                       for p in inspect.signature(fn).parameters.values()):
                    continue
                with torch.no_grad():
                    fn()
            except Exception:  # a reset that fails without arguments is not ours to run
                continue
            ran.append(f"{cls.__name__}.{attr}()")
    return ran


def tensor_state(m: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer and tensor attribute (also inside lists / tuples / dicts) of every module, detached."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in m.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for k, v in list(mod._buffers.items()) + [(k, v) for k, v in vars(mod).items() if not k.startswith("_")]:
            for key, t in _tensors_in(prefix + k, v):
                out[key] = t.detach()
    return out


def _tensors_in(key: str, v: Any):
    if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
        yield key, v
    elif isinstance(v, (list, tuple)):
        for i, item in enumerate(v):
            yield from _tensors_in(f"{key}[{i}]", item)
    elif isinstance(v, dict):
        for k, item in v.items():
            yield from _tensors_in(f"{key}[{k!r}]", item)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def returned_state(ctx: AuditContext, m: nn.Module, result: Any) -> tuple[str, Any]:
    """(forward argument, state) when the default call returned a state that forward takes back; else ("", None)."""
    if ctx.options.call is not None or not isinstance(result, (tuple, list, dict)):
        return "", None
    try:
        params = list(inspect.signature(m.forward).parameters)
    except (TypeError, ValueError):
        return "", None
    arg = next((p for p in params[1:] if any(w in p.lower() for w in STATE_WORDS)
                and p not in ctx.inputs.names), "")
    if not arg:
        return "", None
    if isinstance(result, dict):
        key = next((k for k in result if any(w in str(k).lower() for w in STATE_WORDS)), None)
        return (arg, result[key]) if key is not None else ("", None)
    rest = [v for i, v in enumerate(result) if i > 0]
    return (arg, rest[0]) if len(rest) == 1 and rest[0] is not None else ("", None)


class _SecondOutputChange:
    """`test(group)`: does moving these parameters change the second of two calls (fresh copy, resets first)?"""

    def __init__(self, ctx: AuditContext, reference: torch.Tensor) -> None:
        self.ctx, self.reference, self.tests = ctx, reference, 0

    def __call__(self, group: list[str]) -> bool:
        ctx = self.ctx
        self.tests += 1
        m = ctx.copy(ctx.generic)
        params = dict(m.named_parameters())
        gen = torch.Generator().manual_seed(ctx.seed + 11 + self.tests)
        with torch.no_grad():  # a large step: a write that is read at all must show, also in float32
            for n in group:
                p = params[n]
                step = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
                p.add_(step * (p.detach().double().pow(2).mean().sqrt().item() + 1.0))
        run_resets(m)
        first, _ = ctx.call_raw(m, ctx.x, train=True, grad=True)
        arg, state = returned_state(ctx, m, first)
        out = ctx.forward(m, ctx.x, train=True, grad=True, **({arg: state} if arg else {})).detach()
        return not is_finite(out) or relative_change(out, self.reference) > ctx.tol
