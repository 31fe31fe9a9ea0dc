"""The audit's checks, in report order, and `audit()`, which measures a model once and runs every check.

Each check module says what it looks for; `CHECKS` is the one list of them: `audit()` runs them in this order
and the report lists their results in this order. Each finding is named (critical | warning | info) and carries
its evidence; see hopelab.audit.report.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from hopelab.audit.checks import (
    batch_independence,
    causality,
    dead_inputs,
    dead_mechanism,
    eta_alpha,
    eval_vs_train,
    gradient_correctness,
    gradient_flow,
    in_context_grad,
    next_call,
    nonfinite,
    receptive_field,
    zero_gradients,
)
from hopelab.audit.checks.base import Check
from hopelab.audit.checks.flow_table import gradient_flow_table
from hopelab.audit.context import AuditOptions, default_dtype
from hopelab.audit.passes import Measurements, measure
from hopelab.audit.report import AuditReport

CHECKS: tuple[Check, ...] = tuple(module.CHECK for module in (
    gradient_flow,  # 1 parameters without gradient: unused, disconnected, detached, dead
    zero_gradients,  # 2 zero gradients re-checked at a perturbed point
    in_context_grad,  # 3 a late-position loss reaches the memory / η / α parameters
    receptive_field,  # 4 the last output depends on most of the sequence
    causality,  # 5 no output depends on later inputs
    batch_independence,  # 6 samples do not affect each other
    eval_vs_train,  # 7 memory keeps working in eval; no state carried across calls
    eta_alpha,  # 8 η / α stay per token and per sample
    nonfinite,  # 9 NaN / inf
    dead_mechanism,  # 10 unused parameters without a used twin forming a submodule / a large share
    gradient_correctness,  # 11 autograd agrees with finite differences (float64)
    dead_inputs,  # 12 every input reaches the output
    next_call,  # 13 parameters that only feed writes, judged on a second call when state is kept
))


def audit(
    model: nn.Module,
    *,
    vocab: int | None = None,
    seq_len: int = 64,
    batch: int = 2,
    input: str | list[str] = "tokens",
    tokens_per_step: int = 1,
    call: Callable | str | None = None,
    loss: Callable | str | None = None,
    device: str = "cpu",
    seed: int = 0,
    memory_params: list[str] | tuple[str, ...] | str = (),
    dtype: str = "auto",
    target: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> AuditReport:
    """Audit `model` (never modified) and return an AuditReport.

    input: one spec or a list (hopelab.audit.inputs: "tokens", "float:16", "actions=float:3", ...);
    tokens_per_step: N tokens per step on the sequence axis (vision-style models), see hopelab.audit.inputs.
    call: fn(model, x) -> output [B, T, ...] (default model(x)); loss: fn(output, x) -> scalar (default: the
    next-token loss of hopelab.audit.target); both may be given as "module:fn" strings. dtype: "auto"
    (float64 when the model runs in it and has at most 5M parameters, else float32), "float64", "float32".
    """
    t_start = time.perf_counter()
    options = AuditOptions.parse(model, vocab=vocab, seq_len=seq_len, batch=batch, input=input, call=call,
                                 loss=loss, device=device, seed=seed, memory_params=memory_params, dtype=dtype,
                                 tokens_per_step=tokens_per_step)
    m = measure(model, options, progress or (lambda _msg: None), t_start)
    findings, results = [], []
    with default_dtype(m.ctx.dtype):
        for check in CHECKS:
            check_findings, result = check.run(m)
            findings += check_findings
            results.append(result)
        rows = gradient_flow_table(m)
    timings = dict(m.timings, total=time.perf_counter() - t_start)
    return AuditReport(target or type(model).__name__, _settings(m), findings, results, rows,
                       {k: round(v, 3) for k, v in timings.items()}, m.notes)


def _settings(m: Measurements) -> dict:
    """How the audit ran, for the report's header."""
    ctx, options = m.ctx, m.ctx.options
    call = options.call
    return {
        "input": options.inputs.describe(), "batch": ctx.B, "seq_len": ctx.T, "device": ctx.device, "seed": ctx.seed,
        "dtype": str(ctx.dtype).replace("torch.", ""), "tolerance": ctx.tol, "loss": m.base.loss_kind,
        "call": getattr(call, "__name__", "model(x)") if call else "model(x)", "memory_params": options.memory_globs,
        "n_params": sum(p.numel() for p in ctx.base.parameters()),
        "memory_parameters_audited": len(m.perturbed.memory), "eta_alpha_producers": m.perturbed.producer_names,
    }
