"""Check 7, eval vs train and state across calls (warnings: results depend on how the model is called).

- `eval_memory`: the receptive field (pass E) is at least half the sequence in train mode but shorter in
  eval / no_grad: the memory stops updating in eval.
- `state_across_calls`: two identical calls (pass C) give different outputs: state is carried across calls.
"""

from __future__ import annotations

from hopelab.audit.checks.base import SKIPPED_NONFINITE, Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    if m.outputs_unusable:
        return Outcome("skipped", SKIPPED_NONFINITE)
    T, tol = m.ctx.T, m.ctx.tol
    reach_train, reach_eval = m.reach("train"), m.reach("eval")
    findings, notes = [], []
    if reach_train is not None and reach_eval is not None and reach_eval < T // 2 <= reach_train:
        findings.append(Finding(
            "eval_memory", "warning",
            f"memory stops updating in eval: the receptive field is {reach_train} positions in train mode but "
            f"{reach_eval} in eval / no_grad",
            {"reach_train": reach_train, "reach_eval": reach_eval, "seq_len": T}))
        notes.append("receptive field collapses in eval")
    rel_diff = m.calls.rel_diff
    carried = {mode: v for mode, v in rel_diff.items() if v > tol}
    if carried:
        findings.append(Finding(
            "state_across_calls", "warning",
            f"two identical calls give different outputs ({', '.join(carried)} mode): state is carried across "
            "calls, so results depend on what ran before",
            {"rel_diff_second_call": rel_diff, "tolerance": tol}))
        notes.append("state carried across calls")
    summary = "; ".join(notes) or "eval keeps the train-mode receptive field; calls are independent"
    return Outcome("warn" if notes else "pass", summary, findings)


CHECK = Check("eval_vs_train", "7 eval vs train, state across calls", judge)
