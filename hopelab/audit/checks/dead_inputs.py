"""Check 12, dead inputs: every input the model is given must reach its output (pass H changes one input at
a time, every step of every sample). An input that moves no output is ignored: its embedding or conditioning
encoder is computed and dropped (critical; the input is named, with the modules that read it, whose parameters
check 1 lists as dead or unused)."""

from __future__ import annotations

from hopelab.audit.checks.base import SKIPPED_NONFINITE, Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    if m.outputs_unusable:
        return Outcome("skipped", SKIPPED_NONFINITE)
    reach, tol = m.inputs, m.ctx.tol
    findings = []
    for name, change in reach.change.items():
        if change > tol:
            continue
        readers = reach.readers.get(name, [])
        params = [p for p, _ in m.ctx.base.named_parameters() if any(p.startswith(r + ".") for r in readers)]
        read_by = f"; read by {', '.join(repr(r) for r in readers)}, whose output is dropped" if readers else ""
        findings.append(Finding(
            "input_ignored", "critical",
            f"input {name!r} is ignored: changing it at every step changes no output{read_by}",
            {"input": name, "relative_output_change": change, "tolerance": tol, "read_by": readers,
             "why_critical": "the model is given this input but its output does not depend on it, so "
                             "training cannot learn to use it (an embedding or conditioning encoder whose "
                             "result never reaches the output)"},
            params))
    summary = ", ".join(f"{n}: {v:.1e}" for n, v in reach.change.items())
    return Outcome("fail" if findings else "pass", f"output change when one input changes: {summary}", findings)


CHECK = Check("dead_inputs", "12 dead inputs", judge)
