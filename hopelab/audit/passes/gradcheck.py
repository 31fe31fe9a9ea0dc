"""Pass G: is autograd's gradient the derivative of the loss? Directional finite differences in float64.

At the generic copy, for a few random directions d over every parameter that gets a gradient (each
parameter's part scaled like the generic step: randn · (rms(p) + 0.01)):

    autograd    a = Σ_p ⟨∂L/∂p, d_p⟩
    central FD  f = (L(θ + h d) − L(θ − h d)) / 2h,   h = 1e-5
    error       |f − a| / max(|f|, |a|, ‖g‖‖d‖ / √n)   against GRADCHECK_TOL = 1e-6
                (‖g‖‖d‖ / √n: the typical size of a random projection of the n-element gradient, so a direction
                nearly orthogonal to the gradient is not judged on rounding alone)

In float64 the central difference is good to ~1e-9 relative here (truncation h² ~ 1e-10, rounding
1e-16 / h ~ 1e-11 of the loss), far below the 0.4-0.75% seen when activation checkpointing re-runs a stateful
memory update during backward. When a direction fails, one direction per parameter group (the gradient-flow
table's rows) says where. Every loss evaluation runs on a fresh copy, so state carried across calls cannot
pose as a gradient error. Skipped in float32 (its rounding is above the tolerance).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from hopelab.audit import names as N
from hopelab.audit.context import AuditContext

GRADCHECK_TOL = 1e-6  # relative error between autograd and the central difference
GRADCHECK_STEP = 1e-5  # h
GRADCHECK_BUDGET_S = 4.0  # seconds for the per-group search after a failure; the first 3 directions always run
N_DIRECTIONS = 3


@dataclass
class GradientCheck:
    """Pass G's result: one row per direction, and per group when a direction failed."""

    skipped: str = ""  # why it did not run ("" when it ran)
    directions: list[dict] = field(default_factory=list)  # {"autograd", "finite_difference", "rel_error"}
    groups: dict[str, dict] = field(default_factory=dict)  # component -> the same, after a failure
    n_params: int = 0  # parameter tensors the directions covered
    unchecked_groups: int = 0  # groups left when the budget was spent

    @property
    def max_error(self) -> float:
        return max((d["rel_error"] for d in self.directions), default=0.0)

    @property
    def failed(self) -> bool:
        return self.max_error > GRADCHECK_TOL


def gradient_check(ctx: AuditContext, budget_s: float = GRADCHECK_BUDGET_S) -> GradientCheck:
    if ctx.dtype != torch.float64:
        return GradientCheck(skipped=f"the model runs in {str(ctx.dtype).replace('torch.', '')}; finite "
                                     "differences need float64")
    m = ctx.copy(ctx.generic)
    loss = ctx.loss_of(ctx.forward(m, ctx.x, train=True, grad=True), ctx.x)
    grads = {n: g.detach() for n, g in ctx.grads(loss, m).items() if g is not None and bool(g.ne(0).any())}
    if not grads:
        return GradientCheck(skipped="no parameter gets a gradient")
    gen = torch.Generator().manual_seed(ctx.seed + 5)
    params = dict(ctx.generic.named_parameters())

    def compare(names: list[str]) -> dict:
        d = {n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64).to(params[n])
             * (params[n].detach().double().pow(2).mean().sqrt().item() + 0.01) for n in names}
        a = sum((grads[n] * d[n]).sum().item() for n in names)
        g_norm = sum(grads[n].pow(2).sum().item() for n in names) ** 0.5
        d_norm = sum(d[n].pow(2).sum().item() for n in names) ** 0.5
        scale = g_norm * d_norm / max(sum(d[n].numel() for n in names), 1) ** 0.5 + 1e-30
        f = (_loss_at(ctx, d, GRADCHECK_STEP) - _loss_at(ctx, d, -GRADCHECK_STEP)) / (2 * GRADCHECK_STEP)
        return {"autograd": a, "finite_difference": f, "rel_error": abs(f - a) / max(abs(f), abs(a), scale)}

    result = GradientCheck(n_params=len(grads))
    result.directions = [compare(list(grads)) for _ in range(N_DIRECTIONS)]
    if result.failed:
        groups: dict[str, list[str]] = defaultdict(list)
        for n in grads:
            groups[N.component_of(ctx.base, n)].append(n)
        t0 = time.perf_counter()
        for k, (comp, names) in enumerate(groups.items()):
            if time.perf_counter() - t0 > budget_s:
                result.unchecked_groups = len(groups) - k
                break
            result.groups[comp] = compare(names)
    return result


def _loss_at(ctx: AuditContext, d: dict[str, torch.Tensor], h: float) -> float:
    """The loss of a fresh generic copy moved by h·d."""
    m = ctx.copy(ctx.generic)
    named = dict(m.named_parameters())
    with torch.no_grad():
        for n, dn in d.items():
            named[n].add_(dn, alpha=h)
    return ctx.loss_of(ctx.forward(m, ctx.x, train=True, grad=True), ctx.x).item()
