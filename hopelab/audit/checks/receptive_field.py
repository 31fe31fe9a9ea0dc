"""Check 4, receptive field: how far back the last position's output depends on the input (pass E, train
mode). A memory model whose last output sees less than half the sequence has no memory across it (critical);
a model without identified memory parameters is not judged (info)."""

from __future__ import annotations

from hopelab.audit.checks.base import SKIPPED_NONFINITE, Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    if m.outputs_unusable:
        return Outcome("skipped", SKIPPED_NONFINITE)
    T, tol = m.ctx.T, m.ctx.tol
    is_memory_model = bool(m.perturbed.memory)
    sw_train = m.sweeps.get("train")
    reach_train, reach_eval = m.reach("train"), m.reach("eval")
    short = reach_train is not None and reach_train < T // 2
    findings = []
    if short:
        findings.append(Finding(
            "receptive_field", "critical" if is_memory_model else "info",
            f"the last position's output depends only on the last {reach_train + 1} input position(s) "
            f"(of {T}): no memory across the sequence"
            + ("" if is_memory_model else " (no memory parameters identified, so not judged)"),
            {"reach_train": reach_train, "reach_eval": reach_eval, "seq_len": T,
             "probed_positions": sw_train.positions if sw_train else [],
             "dependence_train": ({j: float(sw_train.diffs[j][T - 1]) for j in sw_train.positions}
                                  if sw_train else {}),
             "tolerance": tol}))
    summary = f"last output depends on inputs up to {reach_train} positions back in train mode, {reach_eval} in eval"
    return Outcome("fail" if short and is_memory_model else "pass", summary, findings)


CHECK = Check("receptive_field", "4 receptive field", judge)
