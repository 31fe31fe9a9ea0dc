"""Check 8, η / α collapse: the inner learning rate and decay should be per token and per sample (the paper's
η_t, α_t).

η / α are traced from their producer modules (found by name, hopelab.audit.names) to the output (pass B). A
reduction over the batch axis, or `.item()`, on the way is `eta_alpha_collapse` (critical: it couples the
batch's samples and drops per-token η_t). Producers whose outputs are constant are `eta_alpha_constant`,
per-sequence ones `eta_alpha_per_sequence` (warnings: learned constants are a design choice, not a
correctness bug).
"""

from __future__ import annotations

from typing import Any

import torch

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding

VARIES = 1e-6  # relative std above which an η/α value "varies"


def judge(m: Measurements) -> Outcome:
    trace = m.perturbed
    findings = []
    status = "pass"
    collapsed_by = sorted(set(trace.collapsed) | {p for e in trace.escapes for p in e["producers"]})
    if collapsed_by:
        findings.append(Finding(
            "eta_alpha_collapse", "critical",
            "an inner learning rate / decay is collapsed to one number for the whole batch before the memory "
            "update uses it",
            {"collapsed_reaching_output": trace.collapsed, "python_scalar_escapes": trace.escapes[:8],
             "why_critical": "a batch scalar removes the per-token, per-sample η_t/α_t of the paper and "
                             "couples the samples of a batch (one sequence's update depends on the others)"},
            collapsed_by))
        status = "fail"
    constant, per_seq = {}, {}
    for name, outs in trace.producer_outputs.items():
        info = _variation(outs, m.ctx.B)
        if info["per_token"] is False and info["per_sample"] is False:
            constant[name] = info
        elif info["per_token"] is False:
            per_seq[name] = info
    if constant:
        findings.append(Finding(
            "eta_alpha_constant", "warning",
            f"{len(constant)} η/α producer(s) output the same value for every token and sample",
            {"producers": constant}, list(constant)))
    if per_seq:
        findings.append(Finding(
            "eta_alpha_per_sequence", "warning",
            f"{len(per_seq)} η/α producer(s) give one value per sequence, not per token",
            {"producers": per_seq}, list(per_seq)))
    stuck, at_init = _constant_at_base(m, constant)
    if stuck:
        findings.append(Finding(
            "eta_alpha_constant_by_construction", "critical",
            f"{len(stuck)} η/α producer(s) output one constant for every token and sample at the parameters as "
            "given, and none of their parameters gets a gradient: constant through training, not collapsed",
            {"producers": stuck, "why_critical": "the memory update has no data-dependent rate: η_t / α_t are "
                                                  "the same number for every token, sample and training step"},
            list(stuck)))
        status = "fail"
    if at_init:
        findings.append(Finding(
            "eta_alpha_constant_at_init", "info",
            f"{len(at_init)} η/α producer(s) are constant at the parameters as given only (they vary at a "
            "perturbed point and their parameters get a gradient)", {"producers": at_init}, list(at_init)))
    if status == "pass" and (constant or per_seq):
        status = "warn"
    if not trace.producer_outputs and not collapsed_by:
        return Outcome("skipped", "no η/α producer modules identified by name", findings)
    summary = (f"{len(trace.producer_outputs)} producer(s) traced; {len(collapsed_by)} collapsed to a batch "
               f"scalar, {len(constant)} constant, {len(stuck)} constant by construction (at the given "
               f"parameters), {len(per_seq)} per-sequence")
    return Outcome(status, summary, findings)


def _constant_at_base(m: Measurements, constant_perturbed: dict) -> tuple[dict, dict]:
    """Producers constant at the base point but not at the perturbed one: (stuck, at init only)."""
    stuck, at_init = {}, {}
    params = [n for n, _ in m.ctx.base.named_parameters()]
    for name, outs in m.base.producer_outputs.items():
        info = _variation(outs, m.ctx.B)
        if name in constant_perturbed or info["per_token"] is not False or info["per_sample"] is not False:
            continue
        own = [n for n in params if n.startswith(name + ".")]
        trains = [n for n in own if m.base.grad.get(n) == "ok" or m.perturbed.grad_full.get(n) == "ok"]
        info["parameters"] = {n: m.base.grad.get(n, "frozen") for n in own[:8]}
        (at_init if trains else stuck)[name] = info
    return stuck, at_init


def _variation(outs: list[torch.Tensor], B: int) -> dict[str, Any]:
    """Does a producer's output vary across tokens and across samples?"""
    batched = [_batch_first(o, B) for o in outs if _batch_axis(o, B) is not None]
    if not batched:
        return {"per_token": False, "per_sample": False, "shape": list(outs[0].shape), "note": "no batch axis"}
    scale = max(o.abs().mean().item() for o in batched) + 1e-12
    per_sample = B > 1 and any(o.std(dim=0).max().item() / scale > VARIES for o in batched)
    tok = [o.std(dim=1).max().item() / scale for o in batched if o.ndim >= 2 and o.shape[1] > 1]
    flat = [o.reshape(B, -1) for o in batched]
    if len(flat) > 1 and all(f.shape == flat[0].shape for f in flat):  # one call per token / chunk
        tok.append(torch.stack(flat, 1).std(dim=1).max().item() / scale)
    per_token = any(v > VARIES for v in tok) if tok else None
    return {"per_token": per_token, "per_sample": per_sample, "shape": list(batched[0].shape),
            "calls": len(outs), "mean": float(sum(o.mean().item() for o in batched) / len(batched))}


def _batch_first(o: torch.Tensor, B: int) -> torch.Tensor:
    """The batch axis first and size-1 axes dropped: [H=1, B, T, 1] -> [B, T]."""
    o = o.double().movedim(_batch_axis(o, B), 0)
    return o.reshape(B, *[n for n in o.shape[1:] if n != 1])


def _batch_axis(o: torch.Tensor, B: int) -> int | None:
    """Axis 0 when it has the batch size, else the first axis that does (heads first: [H, B, T, 1])."""
    return next((i for i, n in enumerate(o.shape) if n == B), None)


CHECK = Check("eta_alpha", "8 η/α collapse", judge)
