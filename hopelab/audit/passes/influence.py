"""Pass F: finite differences on the parameters that got no gradient. Does moving them change the output?

That tells a parameter the forward never uses from one whose value reaches the output through a detached path
(check 1). Group testing within a forward budget: all of them are moved together first; a group that changes
the output is split in halves (starting from the owning modules) until single parameters are reached or the
budget is spent.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from hopelab.audit.context import AuditContext, perturb_, relative_change
from hopelab.audit.passes.calls import RepeatedCalls

FD_BUDGET_S = 6.0  # seconds the finite differences may spend; at least 4 forwards, at most 48


def parameter_influence(ctx: AuditContext, calls: RepeatedCalls, names: list[str]) -> dict[str, tuple[bool, str]]:
    """{parameter: (moving it changes the output, how that was found)} for `names`."""
    influence: dict[str, tuple[bool, str]] = {}
    if not names:
        return influence
    budget = max(4, min(48, int(FD_BUDGET_S / max(ctx.row_cost * ctx.B, 1e-5))))
    changes = _OutputChangeTest(ctx, calls)
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[n.rpartition(".")[0]].append(n)
    queue = list(groups.values())
    if not changes(list(names)):
        return {n: (False, "moving all of them together leaves the output unchanged") for n in names}
    if len(queue) == 1:  # already known to change the output as a whole
        queue = [queue[0][: len(names) // 2], queue[0][len(names) // 2:]] if len(names) > 1 else []
        if not queue:
            influence[names[0]] = (True, "moving it changes the output")
    while queue:
        group = queue.pop(0)
        if changes.forwards >= budget:
            influence.update({n: (True, "attributed by group (forward budget spent)") for n in group})
        elif not changes(group):
            influence.update({n: (False, "moving it leaves the output unchanged") for n in group})
        elif len(group) == 1:
            influence[group[0]] = (True, "moving it changes the output")
        else:
            half = len(group) // 2
            queue[:0] = [group[:half], group[half:]]
    return influence


class _OutputChangeTest:
    """`test(group)`: does moving these parameters (a fresh random step each time) change the train output?"""

    def __init__(self, ctx: AuditContext, calls: RepeatedCalls) -> None:
        self.ctx = ctx
        self.reference = calls.reference[True]
        self.stateful = calls.carries_state(True, ctx.tol)
        self.work = calls.reusable[True]  # moved and restored in place when calls do not carry state
        self.forwards = 0

    def __call__(self, group: list[str]) -> bool:
        ctx = self.ctx
        self.forwards += 1
        gen = torch.Generator().manual_seed(ctx.seed + 2 + self.forwards)
        if self.stateful:  # a fresh copy each time, so no test sees another's state
            m = ctx.copy(ctx.generic)
            params = dict(m.named_parameters())
            perturb_([params[n] for n in group], gen)
            out = ctx.forward(m, ctx.x, train=True, grad=True).detach()
            return relative_change(out, self.reference) > ctx.tol
        named = dict(self.work.named_parameters())
        saved = {n: named[n].detach().clone() for n in group}
        perturb_([named[n] for n in group], gen)
        try:
            out = ctx.forward(self.work, ctx.x, train=True, grad=True).detach()
        finally:
            with torch.no_grad():
                for n in group:
                    named[n].copy_(saved[n])
        return relative_change(out, self.reference) > ctx.tol
