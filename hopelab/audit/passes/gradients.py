"""Passes A and B: which parameters the loss reaches, at the parameters as given and at a perturbed point,
and what the forward does with them (op tracing, η / α provenance)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from hopelab.audit import names as N
from hopelab.audit.context import AuditContext, ModelFailed, grad_state, is_finite
from hopelab.audit.tracing import ForwardTracer, module_output
from hopelab.errors import UserError


@dataclass
class BaseGradients:
    """Pass A, at the parameters as given: which parameters the loss reaches."""

    grad: dict[str, str]  # trainable parameter -> ok | zero | none
    nonfinite: list[str]  # where NaN / inf showed up
    loss_kind: str  # which loss ran (for the report's settings)
    row_numel: int  # output elements per sequence (sizes the sweep's batches)
    producer_outputs: dict[str, list[torch.Tensor]]  # η / α producer -> its outputs at the base point


@dataclass
class PerturbedPointTrace:
    """Pass B, at the generic copy: gradients of the full and the late-position loss, and the forward's trace."""

    grad_full: dict[str, str]  # parameter -> ok | zero | none, full loss (pass A's when every gradient was ok)
    grad_late: dict[str, str]  # the same for a loss on the last quarter of positions only
    accesses: dict[str, dict[str, int]]  # parameter -> op -> count, in the forward
    producer_names: list[str]  # modules whose name says they produce η / α
    producer_outputs: dict[str, list[torch.Tensor]]  # producer -> its outputs, one per call
    collapsed: dict[str, str]  # producer -> op that folded its batch axis, on the way to the output
    escapes: list[dict]  # η / α values turned into Python numbers
    memory: dict[str, str]  # memory / η / α parameter -> why it is one (hopelab.audit.names)
    nonfinite: list[str]
    called: set[str]  # modules whose forward ran (also through torch.func.functional_call)


def gradients_at_base(ctx: AuditContext) -> BaseGradients:
    """Pass A, base copy: forward + loss + backward. Any failure here is the model's (or the call's) problem."""
    m = ctx.copy(ctx.base)
    records: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = _record_outputs(m, N.producer_modules(m), records)
    try:
        out = ctx.forward(m, ctx.x, train=True, grad=True)
        loss = ctx.loss_of(out, ctx.x)
        grads = ctx.grads(loss, m)
    except UserError:
        raise
    except Exception as err:
        raise ModelFailed(f"{type(err).__name__}: {err}") from err
    finally:
        for h in handles:
            h.remove()
    nonfinite = []
    if not is_finite(out):
        nonfinite.append("output (base parameters)")
    if not is_finite(loss):
        nonfinite.append("loss (base parameters)")
    bad = [n for n, g in grads.items() if not is_finite(g)]
    if bad:
        nonfinite.append(f"gradients of {len(bad)} parameter(s) (base), e.g. {bad[0]}")
    return BaseGradients({n: grad_state(g) for n, g in grads.items()}, nonfinite, ctx.loss_kind, out[0].numel(),
                         dict(records))


def _record_outputs(m: nn.Module, names: list[str], records: dict[str, list[torch.Tensor]], tracer=None):
    """Forward hooks keeping a copy of each named module's output (labelled for `tracer` when given)."""
    modules = dict(m.named_modules())
    handles = []
    for name in names:
        def hook(_mod, _inp, out, _name=name):
            t = module_output(out)
            if t is not None:
                if tracer is not None:
                    tracer.label(t, _name)
                records[_name].append(t.detach().clone())
        handles.append(modules[name].register_forward_hook(hook))
    return handles


def trace_perturbed_point(ctx: AuditContext,
                          base: BaseGradients) -> tuple[PerturbedPointTrace, nn.Module, torch.Tensor]:
    """Pass B, generic copy, traced. Also returns that copy and its output: pass C calls it a second time."""
    m = ctx.copy(ctx.generic)
    producer_names = N.producer_modules(m)
    out, tracer, producer_outputs, called = _traced_forward(ctx, m, producer_names)
    memory = N.memory_parameters(m, ctx.options.memory_globs, producer_names)
    T = ctx.T
    late = torch.zeros(1, T, *([1] * (out.ndim - 2)), dtype=torch.bool, device=out.device)  # [1, T, 1...]
    late[:, T - max(1, T // 4):] = True
    loss_late = ctx.loss_of(torch.where(late, out, out.detach()), ctx.x)
    # the full loss at this point matters only for parameters without a gradient at the base point
    need_full = any(v != "ok" for v in base.grad.values())
    g_late = ctx.grads(loss_late, m, retain=need_full)
    nonfinite = []
    if need_full:
        try:
            g_full = ctx.grads(ctx.loss_of(out, ctx.x), m)
        except RuntimeError:  # a graph that cannot be walked twice: forward again for the full loss
            m2 = ctx.copy(ctx.generic)
            g_full = ctx.grads(ctx.loss_of(ctx.forward(m2, ctx.x, train=True, grad=True), ctx.x), m2)
        grad_full = {n: grad_state(g) for n, g in g_full.items()}
        bad = [n for n, g in g_full.items() if not is_finite(g)]
        if bad:
            nonfinite.append(f"gradients of {len(bad)} parameter(s) (perturbed), e.g. {bad[0]}")
    else:
        grad_full = dict(base.grad)
    if not is_finite(out):
        nonfinite.append("output (perturbed parameters)")
    trace = PerturbedPointTrace(
        grad_full=grad_full, grad_late={n: grad_state(g) for n, g in g_late.items()},
        accesses={n: dict(c) for n, c in tracer.accesses.items()}, producer_names=producer_names,
        producer_outputs=producer_outputs, collapsed=tracer.collapsed_in(out), escapes=tracer.escapes,
        memory=memory, nonfinite=nonfinite, called=called)
    return trace, m, out.detach()


def _traced_forward(ctx: AuditContext, m: nn.Module, producer_names: list[str]):
    """Forward `m` under a ForwardTracer, labelling and recording every η / α producer's output, and noting
    which modules ran."""
    tracer = ForwardTracer({id(p): (n, p) for n, p in m.named_parameters()}, ctx.B)
    records: dict[str, list[torch.Tensor]] = defaultdict(list)
    modules = dict(m.named_modules())
    called: set[str] = set()
    handles = [mod.register_forward_pre_hook(lambda _mod, _inp, _name=name: called.add(_name))
               for name, mod in modules.items() if name]
    handles += _record_outputs(m, producer_names, records, tracer)
    try:
        with tracer:
            out = ctx.forward(m, ctx.x, train=True, grad=True)
    finally:
        for h in handles:
            h.remove()
    return out, tracer, dict(records), called
