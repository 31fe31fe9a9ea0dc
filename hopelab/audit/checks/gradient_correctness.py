"""Check 11, gradient correctness: autograd's gradient should be the derivative of the loss the forward
computes. Pass G compares it with central finite differences along random directions in float64
(hopelab.audit.passes.gradcheck states the step and tolerance). A mismatch is `wrong_gradient` (critical):
the optimizer follows a gradient of some other function. Typical causes: activation checkpointing that
re-runs a stateful memory update during backward (the recompute reads memory that has since changed and
writes it again), a stop-gradient / detach inside the forward, or a custom autograd.Function with a wrong
backward. The per-group errors say which parameters' gradients are off.
"""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.passes.gradcheck import GRADCHECK_STEP, GRADCHECK_TOL
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    gc = m.gradcheck
    if gc.skipped:
        return Outcome("skipped", f"skipped: {gc.skipped}")
    summary = (f"{len(gc.directions)} random directions over {gc.n_params} parameter tensors: largest relative "
               f"error {gc.max_error:.1e} (tolerance {GRADCHECK_TOL:g}, central step {GRADCHECK_STEP:g}, float64)")
    if not gc.failed:
        return Outcome("pass", summary)
    bad = {g: r for g, r in gc.groups.items() if r["rel_error"] > GRADCHECK_TOL}
    finding = Finding(
        "wrong_gradient", "critical",
        f"autograd's gradient is not the derivative of the loss: relative error up to {gc.max_error:.2%} along "
        f"random directions (tolerance {GRADCHECK_TOL:g}); {len(bad)} parameter group(s) off",
        {"directions": gc.directions, "groups": gc.groups, "groups_not_checked_budget": gc.unchecked_groups,
         "tolerance": GRADCHECK_TOL, "step": GRADCHECK_STEP,
         "why_critical": "the optimizer follows the gradient of another function; common causes: activation "
                         "checkpointing re-running a stateful memory update during backward, a detach / "
                         "stop-gradient inside the forward, a custom autograd.Function's backward"},
        sorted(bad))
    return Outcome("fail", summary, [finding])


CHECK = Check("gradient_correctness", "11 gradient correctness (finite differences)", judge)
