"""Check 13, parameters that only feed writes: used in the forward, they never reach this call's output (a
memory written in one call and read in the next). When the model keeps state across calls, pass I runs two
calls by itself (after the model's reset methods) and judges them on the second output:

  next_call           the second call's loss reaches them: trained through the carried state (info)
  next_call_detached  they change the second output but get no gradient: the carried state is detached, so
                      the outer loss cannot train them (warning)
  write_only          they do not reach the output even on the second call: what they write is never read
                      (critical)

A model that keeps no state leaves them to check 1 ("dead", warning): nothing can read their writes.
"""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.checks.gradient_flow import classify
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding

_FINDINGS = {  # kind -> (severity, title after the count, why)
    "write_only": ("critical", "parameter(s) only feed memory writes that are never read: they do not reach the "
                   "output on this call nor on the next one",
                   "the write goes somewhere no later call reads (e.g. a buffer other than the one the read uses), "
                   "so these parameters never affect the model's output and training cannot shape them"),
    "next_call_detached": ("warning", "parameter(s) only feed memory writes; they change the next call's output "
                           "but get no gradient from it (the carried state is detached)",
                           "the outer loss cannot train what is written; fine for a memory updated by its own "
                           "inner rule, a bug if these parameters are meant to be meta-learned"),
    "next_call": ("info", "parameter(s) only feed memory writes and are trained through the next call (their "
                  "effect appears on the second call's output, with a gradient)", ""),
}


def judge(m: Measurements) -> Outcome:
    nc = m.next_call
    if not nc.candidates:
        return Outcome("pass", "every parameter used in the forward reaches its output on the first call")
    if not nc.stateful:
        return Outcome("skipped", f"{len(nc.candidates)} parameter(s) never reach the output, and the model keeps "
                                  "no state across calls, so no later call can read their writes (check 1)")
    p = classify(m)
    findings = []
    context = {"keeps_state": nc.stateful, "resets_called": nc.resets, "state_argument": nc.state_arg or None}
    for kind, (severity, title, why) in _FINDINGS.items():
        names = getattr(p, kind)
        if names:
            evidence = dict(context, **({"why": why} if why else {}))
            findings.append(Finding(kind, severity, f"{len(names)} {title}", evidence, names))
    counts = {k: len(getattr(p, k)) for k in _FINDINGS}
    summary = (f"model keeps state ({nc.stateful}); second call: {counts['next_call']} trained through it, "
               f"{counts['next_call_detached']} detached, {counts['write_only']} never read")
    status = "fail" if p.write_only else ("warn" if p.next_call_detached else "pass")
    return Outcome(status, summary, findings)


CHECK = Check("next_call", "13 parameters that only feed writes (second call)", judge)
