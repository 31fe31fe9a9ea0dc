"""Check 6, batch independence: replacing sample 0 must not change the other samples' outputs (pass D, train
and eval). Shared state or statistics across the batch is critical; BatchNorm coupling in train mode only is a
warning."""

from __future__ import annotations

from torch import nn

from hopelab.audit.checks.base import SKIPPED_NONFINITE, Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    if m.outputs_unusable:
        return Outcome("skipped", SKIPPED_NONFINITE)
    if m.ctx.B < 2:
        return Outcome("skipped", "batch 1: nothing to compare")
    tol, other = m.ctx.tol, m.coupling.other_samples
    coupled = {mode: v for mode, v in other.items() if v > tol}
    findings = []
    if coupled:
        has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.ctx.base.modules())
        severity = "warning" if set(coupled) == {"train"} and has_bn else "critical"
        findings.append(Finding(
            "batch_independence", severity,
            f"changing sample 0 changes the other samples' outputs ({', '.join(coupled)} mode): "
            "state or statistics shared across the batch"
            + (" (BatchNorm in train mode)" if severity == "warning" else ""),
            {"rel_change_other_samples": other, "rel_change_sample0": m.coupling.sample0, "tolerance": tol}))
    summary = ("samples 1.. change by " + ", ".join(f"{v:.1e} ({mode})" for mode, v in other.items())
               + " when sample 0 changes")
    return Outcome("fail" if coupled else "pass", summary, findings)


CHECK = Check("batch_independence", "6 batch independence", judge)
