"""Pass F: finite differences on the parameters that got no gradient. Does moving them change the output?

That tells a parameter the forward never uses from one whose value reaches the output through a detached path
(check 1). Group testing within a budget (`bisect`): all of them are moved together first; a group that changes
the output is split in halves (starting from the owning modules) until single parameters are reached or the
budget is spent: FD_BUDGET_S seconds of wall time, at most FD_MAX_FORWARDS forwards. The first test always
runs; groups left when the budget is spent are attributed as a whole (they change the output together), and
the report's notes say how many.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

from hopelab.audit.context import AuditContext, perturb_, relative_change
from hopelab.audit.passes.calls import RepeatedCalls

FD_BUDGET_S = 6.0  # wall-clock seconds the finite differences may spend (the first test always runs)
FD_MAX_FORWARDS = 48


def parameter_influence(ctx: AuditContext, calls: RepeatedCalls,
                        names: list[str]) -> tuple[dict[str, tuple[bool, str]], str]:
    """({parameter: (moving it changes the output, how that was found)} for `names`, a note if the budget
    stopped the search early)."""
    if not names:
        return {}, ""
    return bisect(names, _OutputChangeTest(ctx, calls), "the output")


def bisect(names: list[str], changes: Callable[[list[str]], bool], what: str,
           budget_s: float | None = None) -> tuple[dict[str, tuple[bool, str]], str]:
    """Group testing: `changes(group)` says whether moving `group` changes `what`; see the module docstring."""
    budget_s = FD_BUDGET_S if budget_s is None else budget_s
    t0 = time.perf_counter()
    influence: dict[str, tuple[bool, str]] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[n.rpartition(".")[0]].append(n)
    queue = list(groups.values())
    forwards = 1
    if not changes(list(names)):
        return {n: (False, f"moving all of them together leaves {what} unchanged") for n in names}, ""
    if len(queue) == 1:  # already known to change the output as a whole
        queue = [queue[0][: len(names) // 2], queue[0][len(names) // 2:]] if len(names) > 1 else []
        if not queue:
            influence[names[0]] = (True, f"moving it changes {what}")
    left = 0
    while queue:
        group = queue.pop(0)
        if forwards >= FD_MAX_FORWARDS or time.perf_counter() - t0 > budget_s:
            influence.update({n: (True, "attributed by group (finite-difference budget spent)") for n in group})
            left += len(group)
            continue
        forwards += 1
        if not changes(group):
            influence.update({n: (False, f"moving it leaves {what} unchanged") for n in group})
        elif len(group) == 1:
            influence[group[0]] = (True, f"moving it changes {what}")
        else:
            half = len(group) // 2
            queue[:0] = [group[:half], group[half:]]
    note = ""
    if left:
        note = (f"finite differences on {what} stopped after {forwards} forwards ({time.perf_counter() - t0:.1f} s, "
                f"budget {budget_s:g} s / {FD_MAX_FORWARDS} forwards): {left} parameter(s) attributed by group")
    return influence, note


class _OutputChangeTest:
    """`test(group)`: does moving these parameters (a fresh random step each time) change the train output?"""

    def __init__(self, ctx: AuditContext, calls: RepeatedCalls) -> None:
        self.ctx = ctx
        self.reference = calls.reference[True]
        self.stateful = calls.carries_state(True, ctx.tol)
        self.work = calls.reusable[True]  # moved and restored in place when calls do not carry state
        self.forwards = 0  # seeds each test's step

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
