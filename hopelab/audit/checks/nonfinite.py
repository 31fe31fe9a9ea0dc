"""Check 9, NaN / inf: in any output, loss or gradient the passes computed (`nonfinite`, critical). Checks
4-7 compare outputs and are skipped when the outputs are not finite."""

from __future__ import annotations

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding


def judge(m: Measurements) -> Outcome:
    where = m.nonfinite
    if not where:
        return Outcome("pass", "outputs, losses and gradients are finite")
    return Outcome("fail", "; ".join(where),
                   [Finding("nonfinite", "critical", "NaN or inf in " + "; ".join(where), {"where": where})])


CHECK = Check("nonfinite", "9 NaN / inf", judge)
