"""What a check is: a stable name, the title the report shows, and a function from the measurements to an
outcome (status, one-line summary, findings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hopelab.audit.report import CheckResult, Finding

if TYPE_CHECKING:
    from hopelab.audit.passes import Measurements

SKIPPED_NONFINITE = "skipped: the outputs are not finite (check 9)"


@dataclass
class Outcome:
    """How a check went: pass | fail | warn | skipped, a one-line summary, and its findings."""

    status: str
    summary: str
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    name: str  # stable id: CheckResult.name
    title: str  # "5 causality": the report's check column
    judge: Callable[[Measurements], Outcome]

    def run(self, m: Measurements) -> tuple[list[Finding], CheckResult]:
        outcome = self.judge(m)
        return outcome.findings, CheckResult(self.name, self.title, outcome.status, outcome.summary)
