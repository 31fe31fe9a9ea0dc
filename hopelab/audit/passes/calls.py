"""Passes C and D: does a second identical call give the same output, and does replacing sample 0 of the
batch change the other samples? Pass C's first outputs are the reference every later pass compares to."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hopelab.audit.context import AuditContext, mode_name, relative_change


@dataclass
class RepeatedCalls:
    """Pass C: two identical calls on one fresh generic copy per mode."""

    rel_diff: dict[str, float]  # mode -> relative difference of the second call's output from the first
    reference: dict[bool, torch.Tensor]  # train? -> the first call's output
    reusable: dict[bool, nn.Module]  # train? -> that copy, reused when calls do not carry state

    def carries_state(self, train: bool, tol: float) -> bool:
        return self.rel_diff[mode_name(train)] > tol

    def run_fresh(self, ctx: AuditContext, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A forward that no earlier forward can influence (a fresh copy if the model keeps state)."""
        m = ctx.copy(ctx.generic) if self.carries_state(train, ctx.tol) else self.reusable[train]
        return ctx.forward(m, x, train=train, grad=train).detach()


@dataclass
class BatchCoupling:
    """Pass D: relative output changes when sample 0 of the batch is replaced (empty with batch 1)."""

    other_samples: dict[str, float] = field(default_factory=dict)  # mode -> change of samples 1..
    sample0: dict[str, float] = field(default_factory=dict)  # mode -> change of sample 0 itself


def repeat_identical_calls(ctx: AuditContext, train_copy: nn.Module, train_out: torch.Tensor) -> RepeatedCalls:
    """Pass C. In train mode the first call is pass B's (its copy and output); eval gets a fresh copy."""
    rel_diff, reference, reusable = {}, {}, {}
    for train in (True, False):
        if train:
            m, first = train_copy, train_out
        else:
            m = ctx.copy(ctx.generic)
            first = ctx.forward(m, ctx.x, train=train, grad=train).detach()
        second = ctx.forward(m, ctx.x, train=train, grad=train).detach()
        rel_diff[mode_name(train)] = relative_change(second, first)
        reference[train] = first
        reusable[train] = m
    return RepeatedCalls(rel_diff, reference, reusable)


def batch_coupling(ctx: AuditContext, calls: RepeatedCalls) -> BatchCoupling:
    """Pass D: replace every position of sample 0; samples 1.. should not change at all."""
    coupling = BatchCoupling()
    if ctx.B < 2:
        return coupling
    T = ctx.T
    x2 = ctx.inputs.perturb(ctx.x, torch.zeros(T, dtype=torch.long), torch.arange(T), ctx.gen)
    for train in (True, False):
        out = calls.run_fresh(ctx, x2, train)
        coupling.other_samples[mode_name(train)] = relative_change(out[1:], calls.reference[train][1:])
        coupling.sample0[mode_name(train)] = relative_change(out[:1], calls.reference[train][:1])
    return coupling
