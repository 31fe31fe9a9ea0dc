"""Check 2, all-zero gradients: a gradient that is exactly zero at the parameters as given is re-checked at a
randomly perturbed copy. Zero there too is persistent (check 1 says why); zero at the given point only is
`zero_grad_at_init` (info: a zero-initialised gate, not a bug). Frozen parameters (requires_grad=False) are
listed here too: they get no gradient by choice and are not audited.
"""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.checks.gradient_flow import classify
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    p = classify(m)
    findings = []
    if p.zero_at_init:
        findings.append(Finding(
            "zero_grad_at_init", "info",
            f"{len(p.zero_at_init)} parameter(s) have a zero gradient at initialisation only (e.g. behind a "
            "zero-initialised gate); it becomes non-zero at a perturbed point",
            {"parameters": {n: {"grad_base": m.base.grad[n], "grad_perturbed": m.perturbed.grad_full[n]}
                            for n in p.zero_at_init[:24]}},
            p.zero_at_init))
    frozen = m.ctx.frozen
    if frozen:
        findings.append(Finding("frozen_params", "info",
                                f"{len(frozen)} parameter(s) have requires_grad=False and were not audited",
                                {}, list(frozen)))
    summary = (f"{len(p.zero_at_init)} zero only at init (resolved at a perturbed point), {len(p.persistent)} "
               f"persistently without gradient ({len(p.dead)} of them on a dead path)")
    return Outcome("warn" if p.dead else "pass", summary, findings)


CHECK = Check("zero_gradients", "2 all-zero gradients (re-checked at a perturbed point)", judge)
