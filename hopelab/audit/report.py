"""The audit's result: findings, per-check status, the gradient-flow table, and its three renderings
(rich terminal summary, JSON, Markdown)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
_ICON = {"critical": "🔴", "warning": "🟡", "info": "🔵"}
_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skipped": "dim", "info": "cyan"}


@dataclass
class Finding:
    """One named finding. `check` is a stable id (see CHECKS in hopelab.audit.checks)."""

    check: str
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    """How one of the nine checks went: pass | fail | warn | info | skipped, with a one-line summary."""

    name: str
    title: str
    status: str
    summary: str


@dataclass
class FlowRow:
    """One row of the gradient-flow table (the review's section 6): a module prefix, layers folded to `*`."""

    component: str
    parameters: str  # what the parameters are: "Linear: weight, bias ×2 (4 tensors, 2,112 values)"
    gradient: str  # gets a gradient from the outer loss? "yes" / "no: ..." / "zero at init only"
    late_loss: str  # memory parameters only: does a loss on the last quarter of positions reach them?
    status: str  # "correct" / "BUG: ..." / "unused" ...
    ok: bool


@dataclass
class AuditReport:
    target: str
    settings: dict[str, Any]
    findings: list[Finding]
    checks: list[CheckResult]
    gradient_flow: list[FlowRow]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # --- verdict --------------------------------------------------------------------------------------
    def by_severity(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def has(self, check: str, severity: Severity | None = None) -> bool:
        return any(f.check == check and (severity is None or f.severity == severity) for f in self.findings)

    @property
    def critical(self) -> list[Finding]:
        return self.by_severity("critical")

    @property
    def exit_code(self) -> int:
        """0: no critical finding; 1: at least one critical finding."""
        return 1 if self.critical else 0

    @property
    def verdict(self) -> str:
        n_crit, n_warn = len(self.critical), len(self.by_severity("warning"))
        if n_crit:
            return f"FAIL: {n_crit} critical finding(s), {n_warn} warning(s)"
        if n_warn:
            return f"PASS with {n_warn} warning(s)"
        return "PASS"

    # --- renderings -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _finite(
            {
                "target": self.target,
                "verdict": self.verdict,
                "exit_code": self.exit_code,
                "settings": self.settings,
                "counts": {s: len(self.by_severity(s)) for s in SEVERITIES},
                "checks": [asdict(c) for c in self.checks],
                "findings": [asdict(f) for f in self.findings],
                "gradient_flow": [asdict(r) for r in self.gradient_flow],
                "timings_s": self.timings,
                "notes": self.notes,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            f"# hopelab audit: `{self.target}`",
            "",
            f"**Verdict: {self.verdict}** (exit code {self.exit_code})",
            "",
            f"Input `{s.get('input')}`, batch {s.get('batch')}, sequence length {s.get('seq_len')}, "
            f"dtype {s.get('dtype')} (tolerance {s.get('tolerance'):g}), device {s.get('device')}, "
            f"seed {s.get('seed')}; loss: {s.get('loss')}; {s.get('n_params', 0):,} parameters.",
            "",
            "## Findings",
            "",
        ]
        if not self.findings:
            lines.append("No findings.")
        for f in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
            lines.append(f"### {_ICON[f.severity]} {f.severity.upper()} · `{f.check}` · {f.title}")
            lines.append("")
            if f.params:
                shown = ", ".join(f"`{p}`" for p in f.params[:12])
                more = f" and {len(f.params) - 12} more" if len(f.params) > 12 else ""
                lines += [f"Parameters: {shown}{more}", ""]
            if f.evidence:
                lines += ["```json", json.dumps(_finite(f.evidence), indent=2, ensure_ascii=False), "```", ""]
        lines += ["## Checks", "", "| Check | Status | Summary |", "|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.title} (`{c.name}`) | {c.status} | {_md(c.summary)} |")
        lines += [
            "",
            "## Gradient-flow audit",
            "",
            "| Component | Parameters | Gradients from outer loss? | Late-position loss reaches it? | Status |",
            "|---|---|---|---|---|",
        ]
        for r in self.gradient_flow:
            mark = "✅" if r.ok else "❌"
            lines.append(
                f"| `{r.component}` | {_md(r.parameters)} | {mark} {_md(r.gradient)} | {_md(r.late_loss)} | "
                f"{'**' + _md(r.status) + '**' if not r.ok else _md(r.status)} |"
            )
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.timings:
            total = self.timings.get("total", sum(self.timings.values()))
            lines += ["", f"Audit wall time: {total:.1f} s."]
        return "\n".join(lines) + "\n"

    def render(self, console=None) -> None:
        """The rich terminal summary: verdict, findings, checks, gradient-flow table."""
        from rich.console import Console
        from rich.panel import Panel
        from rich.table import Table

        console = console or Console()
        style = "bold red" if self.exit_code else ("yellow" if self.by_severity("warning") else "bold green")
        console.print(Panel(f"[{style}]{self.verdict}[/]", title=f"hopelab audit · {self.target}", expand=False))

        # names are never cut: long ones wrap inside their cell (overflow="fold") instead of ending in "…"
        checks = Table(title="Checks", show_lines=False)
        for col in ("check", "status", "summary"):
            checks.add_column(col, overflow="fold")
        for c in self.checks:
            checks.add_row(c.title, f"[{_STATUS_STYLE.get(c.status, '')}]{c.status}[/]", c.summary)
        console.print(checks)

        if self.findings:
            tab = Table(title="Findings")
            for col in ("severity", "check", "finding", "params"):
                tab.add_column(col, overflow="fold")
            for f in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
                params = "\n".join(f.params[:4]) + (f"\n(+{len(f.params) - 4})" if len(f.params) > 4 else "")
                tab.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", f.check, f.title, params)
            console.print(tab)

        flow = Table(title="Gradient-flow audit")
        for col in ("component", "parameters", "gradient from outer loss?", "late-position loss?", "status"):
            flow.add_column(col, overflow="fold")
        for r in self.gradient_flow:
            mark = "[green]✓[/]" if r.ok else "[bold red]✗[/]"
            st = r.status if r.ok else f"[bold red]{r.status}[/]"
            flow.add_row(r.component, r.parameters, f"{mark} {r.gradient}", r.late_loss, st)
        console.print(flow)
        for n in self.notes:
            console.print(f"[dim]note: {n}[/]")
        if self.timings:
            console.print(f"[dim]audit wall time {self.timings.get('total', 0.0):.1f} s[/]")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
