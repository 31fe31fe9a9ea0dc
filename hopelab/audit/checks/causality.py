"""Check 5, causality: changing input position j must not change any output before j (pass E, train and eval;
every j, or a budgeted sample). Float64 with tolerance 1e-10 finds leaks that float32 rounding hides (e.g. a
causal mask clamped to 1e-7 instead of 0)."""

from __future__ import annotations

from hopelab.audit.checks.base import SKIPPED_NONFINITE, Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    if m.outputs_unusable:
        return Outcome("skipped", SKIPPED_NONFINITE)
    tol, dtype = m.ctx.tol, m.ctx.dtype
    sw_train = m.sweeps.get("train")
    sweeps = [(mode, m.sweeps.get(mode)) for mode in ("train", "eval")]
    violations = [dict(v, mode=mode) for mode, sw in sweeps if sw for v in sw.violations(tol)]
    largest = max((sw.largest_noncausal() for _, sw in sweeps if sw), default=0.0)
    findings = []
    if violations:
        findings.append(Finding(
            "causality", "critical",
            f"future tokens change earlier outputs ({len(violations)} perturbed position(s) over train/eval; "
            f"largest relative change "
            f"{largest:.2e}, tolerance {tol:g} in {str(dtype).replace('torch.', '')})",
            {"violations": violations[:32], "tolerance": tol, "dtype": str(dtype),
             "one_forward_for_all_probes": sw_train.batched if sw_train else None,
             "probed_positions": sw_train.positions if sw_train else []}))
    summary = (f"{len(sw_train.positions) if sw_train else 0} positions probed per mode; largest change before "
               f"the perturbed position {largest:.1e} (tolerance {tol:g})")
    return Outcome("fail" if violations else "pass", summary, findings)


CHECK = Check("causality", "5 causality", judge)
