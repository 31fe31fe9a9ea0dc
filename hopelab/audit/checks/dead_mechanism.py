"""Check 10, dead mechanisms: parameters the forward never reads, with no used twin, that make up a whole named
submodule or a large share of the model (hopelab.audit.twins). Training never runs that mechanism: it is
critical, unlike a template whose copy (or functional call) is the real state, which check 1 lists as info.
Typical cause: the submodule is called only by a separate update routine (often under no_grad); auditing that
path with `--call module:fn` shows what it does.
"""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.checks.gradient_flow import classify, reset_hint
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    p = classify(m)
    findings = []
    for g in p.dead_groups:
        where = f"submodule {g.module!r}" if g.module else f"{len(g.params)} parameter(s)"
        findings.append(Finding(
            "dead_mechanism", "critical",
            f"{where} ({g.share:.1%} of the parameters) never takes part in the forward and nothing used copies "
            "or calls it: a dead mechanism; audit its update path with --call module:fn",
            {"module": g.module, "share_of_parameters": round(g.share, 4), "parameters": g.params[:24],
             "why_critical": "no parameter of it is read in the forward, no used parameter / buffer holds a copy "
                             "of its values and no module of it runs (a functional call): training never "
                             "runs this mechanism, so it learns nothing",
             **reset_hint(m.ctx.base)},
            g.params))
    if not findings:
        n = len(p.unused)
        return Outcome("pass", f"no dead mechanism ({n} unused parameter(s), {len(p.twins)} with a used twin)")
    summary = ", ".join(f"{g.module or 'bare parameters'} ({g.share:.1%})" for g in p.dead_groups) + " never run"
    return Outcome("fail", summary, findings)


CHECK = Check("dead_mechanism", "10 dead mechanisms (unused, no twin)", judge)
