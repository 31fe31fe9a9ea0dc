"""The report's gradient-flow table: one row per component (the owning module, layer indices folded to `*`),
saying whether its parameters get a gradient (check 1, 2) and whether a late-position loss reaches the memory
ones (check 3)."""

from __future__ import annotations

from collections import defaultdict

from hopelab.audit import names as N
from hopelab.audit.checks.gradient_flow import classify
from hopelab.audit.passes import Measurements
from hopelab.audit.report import FlowRow

GRADIENT_LABELS = {  # parameter status -> the table's wording, in the order a mixed row lists them
    "ok": "yes", "zero_at_init": "zero at init only", "disconnected": "no: detached (changes the output)",
    "detached_access": "no: read only via detached copies", "dead": "no: never reaches the output",
    "unused": "no: never used", "dead_mechanism": "no: never runs (dead mechanism)",
    "next_call": "on the next call (feeds writes)", "next_call_detached": "no: next call only, detached",
    "write_only": "no: feeds writes never read",
    "frozen": "frozen (requires_grad=False)",
}


def gradient_flow_table(m: Measurements) -> list[FlowRow]:
    base, ctx = m.ctx.base, m.ctx
    status = classify(m).status
    late_ok = {n: m.perturbed.grad_late.get(n) == "ok" for n in m.perturbed.memory}
    numel = {n: p.numel() for n, p in base.named_parameters()}
    groups: dict[str, list[str]] = defaultdict(list)
    for n in ctx.trainable + ctx.frozen:
        groups[N.component_of(base, n)].append(n)
    rows = []
    for comp, names in groups.items():
        kinds_per_param = [status.get(n, "frozen") for n in names]
        kinds = sorted(set(kinds_per_param), key=list(GRADIENT_LABELS).index)
        leaves = sorted({n.rpartition(".")[2] for n in names})
        copies = len(names) // max(len(leaves), 1)
        parameters = (f"{N.owner_type(base, names[0])}: {', '.join(leaves)}" + (f" ×{copies}" if copies > 1 else "")
                      + f" ({sum(numel[n] for n in names):,} values)")
        if len(kinds) == 1:
            gradient = GRADIENT_LABELS[kinds[0]]
        else:
            gradient = "; ".join(f"{kinds_per_param.count(kind)}× {GRADIENT_LABELS[kind]}" for kind in kinds)
        memory = [n for n in names if n in late_ok]
        late_bug = any(not late_ok[n] and status.get(n) == "ok" for n in memory)
        state, ok = _row_status(kinds, late_bug)
        rows.append(FlowRow(comp, parameters, gradient, _late_column(memory, late_ok), state, ok))
    return rows


def _late_column(memory: list[str], late_ok: dict[str, bool]) -> str:
    """Does the late-position loss reach this row's memory parameters? —, yes, no or k/n."""
    if not memory:
        return "—"
    reached = sum(late_ok[n] for n in memory)
    if reached == len(memory):
        return "yes"
    if reached == 0:
        return "no"
    return f"{reached}/{len(memory)}"


def _row_status(kinds: list[str], late_bug: bool) -> tuple[str, bool]:
    """The row's verdict, worst first, and whether it is fine."""
    if "disconnected" in kinds:
        return "BUG: used but disconnected", False
    if "dead_mechanism" in kinds:
        return "BUG: dead mechanism (never runs)", False
    if "write_only" in kinds:
        return "BUG: writes never read (also on a second call)", False
    if late_bug:
        return "BUG: not reached through the in-context updates", False
    if "detached_access" in kinds:
        return "suspect: read only via detached copies", False
    if "dead" in kinds:
        return "dead path", False
    if "next_call_detached" in kinds:
        return "suspect: reaches the next call only through detached state", False
    if kinds == ["unused"]:
        return "unused (not a bug by itself)", True
    if kinds == ["frozen"]:
        return "frozen", True
    if "zero_at_init" in kinds:
        return "correct (gated at init)", True
    if "next_call" in kinds:
        return "correct (trained through the next call)", True
    return "correct", True
