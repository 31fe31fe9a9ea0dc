"""Check 3, gradient through the in-context updates: a loss on the last quarter of positions must reach every
memory initial state and η / α producer that the full loss reaches. If it does not, the memory's state is
detached somewhere along the sequence (e.g. between chunks), so the outer loss cannot train what the memory
does early in the sequence.

Which parameters count as memory / η / α: hopelab.audit.names (`initial_states()`, --memory-params, names).
"""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    memory, T = m.perturbed.memory, m.ctx.T
    grad_full, grad_late = m.perturbed.grad_full, m.perturbed.grad_late
    if not memory:
        return Outcome("skipped", "no memory / η / α parameters identified (names, initial_states(), "
                                  "--memory-params)")
    first_late = T - max(1, T // 4)
    unreached = [n for n in memory if n in grad_full and grad_full[n] == "ok" and grad_late.get(n) != "ok"]
    findings = []
    if unreached:
        findings.append(Finding(
            "in_context_grad", "critical",
            f"a loss on the last quarter of positions does not reach {len(unreached)} memory / η / α "
            "parameter(s) that the full loss does reach: the gradient does not flow through the "
            "in-context updates (state detached between chunks?)",
            {"late_positions": [first_late, T - 1],
             "parameters": {n: {"why_audited": memory[n], "grad_full_loss": grad_full[n],
                                "grad_late_loss": grad_late.get(n)} for n in unreached[:24]}},
            unreached))
    no_grad_at_all = [n for n in memory if grad_full.get(n) != "ok"]
    summary = (f"{len(memory) - len(unreached) - len(no_grad_at_all)}/{len(memory)} memory/η/α parameters "
               f"reached by a loss on positions ≥ {first_late}"
               + (f"; {len(no_grad_at_all)} get no gradient at all (check 1)" if no_grad_at_all else ""))
    return Outcome("fail" if unreached else "pass", summary, findings)


CHECK = Check("in_context_grad", "3 gradient through in-context updates", judge)
