"""The measurement passes: each runs copies of the model a few times and returns what it measured as a
dataclass; the checks (hopelab.audit.checks) only read the results.

Few forwards in all (batch 2, seq_len 64 by default), in this order:

  A  gradients_at_base         base copy, train mode: forward, loss, backward       -> BaseGradients
  B  trace_perturbed_point     generic copy, traced (ForwardTracer + hooks on η/α producers): loss on the
                               last quarter of positions only; the full loss too when some parameter had
                               no gradient in pass A                                -> PerturbedPointTrace
  C  repeat_identical_calls    a second identical call, train and eval              -> RepeatedCalls
  D  batch_coupling            sample 0 replaced, train and eval                    -> BatchCoupling
  E  position_sweep            copies of sample 0, copy j with position j changed,
                               in train (grad on) and eval (no_grad)                -> PositionSweep per mode
  F  parameter_influence       finite differences on parameters without gradient    -> {name: (changes, how)}
  G  gradient_check            directional finite differences vs autograd (float64)  -> GradientCheck
  H  input_reach               one input changed at a time: does it reach the output -> InputReach
  I  next_call                 parameters that only feed writes, judged on a second call when the model
                               keeps state across calls                              -> NextCall

`measure` runs them (pass A in float64 first, float32 when the model fails in float64) and bundles the results
into `Measurements`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from hopelab.audit.context import (
    TOLERANCE,
    AuditContext,
    AuditOptions,
    ModelFailed,
    default_dtype,
    mode_name,
)
from hopelab.audit.passes.calls import (
    BatchCoupling,
    RepeatedCalls,
    batch_coupling,
    repeat_identical_calls,
)
from hopelab.audit.passes.gradcheck import GradientCheck, gradient_check
from hopelab.audit.passes.gradients import (
    BaseGradients,
    PerturbedPointTrace,
    gradients_at_base,
    trace_perturbed_point,
)
from hopelab.audit.passes.influence import parameter_influence
from hopelab.audit.passes.inputs import InputReach, input_reach
from hopelab.audit.passes.next_call import NextCall, next_call
from hopelab.audit.passes.sweep import PositionSweep, position_sweep
from hopelab.audit.target import entry_points, forward_signature
from hopelab.audit.tracing import GRAPH_CUTTING
from hopelab.errors import UserError


@dataclass
class Measurements:
    """Everything the passes measured, for the checks."""

    ctx: AuditContext
    base: BaseGradients  # pass A
    perturbed: PerturbedPointTrace  # pass B
    calls: RepeatedCalls  # pass C
    coupling: BatchCoupling  # pass D
    sweeps: dict[str, PositionSweep]  # pass E, mode -> sweep
    influence: dict[str, tuple[bool, str]]  # pass F, parameter -> (moving it changes the output, how)
    gradcheck: GradientCheck  # pass G
    inputs: InputReach  # pass H
    next_call: NextCall  # pass I
    timings: dict[str, float]  # pass -> seconds
    notes: list[str]  # how the dtype was chosen, budgets that cut a pass short

    @property
    def nonfinite(self) -> list[str]:
        """Where the passes saw NaN / inf, in the order they ran."""
        return (self.base.nonfinite + self.perturbed.nonfinite
                + [f"sweep outputs ({m})" for m, sw in self.sweeps.items() if sw.nonfinite])

    @property
    def outputs_unusable(self) -> bool:
        """NaN / inf outputs: comparing outputs (checks 4-7) means nothing."""
        return (any(w.startswith("output") for w in self.base.nonfinite + self.perturbed.nonfinite)
                or any(sw.nonfinite for sw in self.sweeps.values()))

    def reach(self, mode: str) -> int | None:
        """How far back the last output depends on the input in this mode's sweep (None: no sweep)."""
        sweep = self.sweeps.get(mode)
        return sweep.reach(self.ctx.T, self.ctx.tol) if sweep else None


def measure(model: nn.Module, options: AuditOptions, progress: Callable[[str], None],
            t_start: float) -> Measurements:
    """Run every pass on copies of `model`. `t_start`: when the audit began (pass A's time counts from it)."""
    ctx, base, notes = _first_pass(model, options, progress)
    timings: dict[str, float] = {"pass_a": time.perf_counter() - t_start}

    @contextlib.contextmanager
    def phase(key: str, message: str) -> Iterator[None]:
        progress(message)
        t = time.perf_counter()
        try:
            yield
        except UserError:
            raise
        except Exception as err:  # the model broke under a pass that pass A did not exercise
            raise UserError(f"the model failed during '{message}': {type(err).__name__}: {err}") from err
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t

    with default_dtype(ctx.dtype):
        with phase("pass_b", "pass B: perturbed point, traced, late-position loss"):
            perturbed, train_copy, train_out = trace_perturbed_point(ctx, base)
        with phase("state_batch", "state across calls, batch independence"):
            calls = repeat_identical_calls(ctx, train_copy, train_out)
            coupling = batch_coupling(ctx, calls)
        sweeps = {}
        for train in (True, False):
            with phase("sweeps", f"receptive field and causality sweep ({mode_name(train)})"):
                sweeps[mode_name(train)] = position_sweep(ctx, calls, coupling.other_samples, base.row_numel, train)
        no_grad = [n for n in ctx.trainable if base.grad[n] != "ok" and perturbed.grad_full.get(n) != "ok"]
        with phase("finite_differences", f"finite differences on {len(no_grad)} parameter(s) without gradient"):
            influence, note = parameter_influence(ctx, calls, no_grad)
        with phase("gradient_check", "gradient correctness: directional finite differences vs autograd"):
            gradcheck = gradient_check(ctx)
        with phase("inputs", "does every input reach the output"):
            inputs = input_reach(ctx, calls)
        write_only = [n for n in no_grad if not influence[n][0] and perturbed.accesses.get(n)
                      and not set(perturbed.accesses[n]) <= GRAPH_CUTTING]
        with phase("next_call", f"second call for {len(write_only)} parameter(s) that may only feed writes"):
            second = next_call(ctx, calls, write_only)
    notes += [sw.stopped for sw in sweeps.values() if sw.stopped] + [n for n in (note, second.note) if n]
    return Measurements(ctx, base, perturbed, calls, coupling, sweeps, influence, gradcheck, inputs, second,
                        timings, notes)


def _first_pass(model: nn.Module, options: AuditOptions,
                progress: Callable[[str], None]) -> tuple[AuditContext, BaseGradients, list[str]]:
    """Pass A in the first dtype the model runs in; returns the context, pass A's result and notes on the dtype."""
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    dtypes, notes = options.dtypes(n_params)
    failure = None
    for dt in dtypes:
        with default_dtype(dt):
            try:
                ctx = AuditContext(model, options, dt)
                progress(f"pass A: forward + backward ({str(dt).replace('torch.', '')})")
                return ctx, gradients_at_base(ctx), notes
            except ModelFailed as err:
                failure = str(err)
                if dt == torch.float64 and options.dtype == "auto":
                    notes.append(f"the model does not run in float64 ({failure}); audited in float32 with "
                                 f"tolerance {TOLERANCE[torch.float32]:g}")
    methods = entry_points(model)
    setup = f"; its setup methods: {', '.join(methods[:8])} (call them in --call if training does)" if methods else ""
    raise UserError(f"calling the model failed: {failure} (model.{forward_signature(model)}{setup}; pass "
                    "--call module:fn if it needs more than model(x), --input/--vocab/--seq-len for other inputs)")
