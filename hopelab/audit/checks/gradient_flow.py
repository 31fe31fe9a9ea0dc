"""Check 1, gradient flow: every trainable parameter should get a gradient from the outer loss.

A parameter without one at the base point is re-checked at the perturbed point (pass B; zero there too is
"persistent", check 2 reports the others). The persistent ones are told apart by finite differences (pass F)
and op tracing (pass B):

  disconnected      moving it changes the output, yet no gradient: its value reaches the forward only through
                    detached copies (critical: the outer optimizer can never train it)
  detached_access   read only through graph-cutting ops (detach, .data, item) and no effect (warning)
  dead              used in the forward but never reaches the output (warning); when the model keeps state
                    across calls, pass I judges these on a second call instead (check 13: next_call,
                    next_call_detached, write_only)
  unused            never used in the forward (info: e.g. a template whose copy is the real state)
  dead_mechanism    never used, no used twin, and a whole submodule or a large share of the model
                    (critical, reported by the dead_mechanism check; hopelab.audit.twins tells the two apart)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from hopelab.audit.checks.base import Check, Outcome
from hopelab.audit.passes import Measurements
from hopelab.audit.report import Finding
from hopelab.audit.target import entry_points
from hopelab.audit.tracing import GRAPH_CUTTING
from hopelab.audit.twins import DeadGroup, dead_groups, find_twins


@dataclass
class ParameterGradients:
    """Every trainable parameter sorted by how (or why not) it gets a gradient."""

    status: dict[str, str] = field(default_factory=dict)  # name -> ok | zero_at_init | one of the lists below
    zero_at_init: list[str] = field(default_factory=list)  # zero at the base point only
    persistent: list[str] = field(default_factory=list)  # no gradient at either point: the four lists below
    disconnected: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    detached_access: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    dead_mechanism: list[str] = field(default_factory=list)  # unused, no twin, a whole submodule / large share
    next_call: list[str] = field(default_factory=list)  # only feed writes; the next call's loss reaches them
    next_call_detached: list[str] = field(default_factory=list)  # change the next call's output, no gradient
    write_only: list[str] = field(default_factory=list)  # only feed writes that no call ever reads
    twins: dict[str, str] = field(default_factory=dict)  # unused template -> its used twin, in words
    dead_groups: list[DeadGroup] = field(default_factory=list)


def classify(m: Measurements) -> ParameterGradients:
    """Sort the trainable parameters by pass A's and B's gradients, pass F's influence and pass B's accesses."""
    out = ParameterGradients()
    for n in m.ctx.trainable:
        if m.base.grad[n] == "ok":
            out.status[n] = "ok"
        elif m.perturbed.grad_full.get(n) == "ok":
            out.status[n] = "zero_at_init"
            out.zero_at_init.append(n)
        else:
            out.persistent.append(n)
    for n in out.persistent:
        changes = m.influence.get(n, (False, "not tested"))[0]
        ops = m.perturbed.accesses.get(n, {})
        if changes:
            kind = "disconnected"
        elif not ops:
            kind = "unused"
        elif set(ops) <= GRAPH_CUTTING:
            kind = "detached_access"
        else:
            kind = _NEXT_CALL_KINDS.get(m.next_call.judged.get(n, ""), "dead")
        out.status[n] = kind
        getattr(out, kind).append(n)
    if out.unused:
        out.twins = find_twins(m.ctx.base, out.unused, m.perturbed.called)
        out.dead_groups = dead_groups(m.ctx.base, [n for n in out.unused if n not in out.twins])
        out.dead_mechanism = [n for g in out.dead_groups for n in g.params]
        out.unused = [n for n in out.unused if n not in out.dead_mechanism]
        out.status.update({n: "dead_mechanism" for n in out.dead_mechanism})
    return out


_NEXT_CALL_KINDS = {"grad": "next_call", "detached": "next_call_detached", "never": "write_only"}  # pass I


class _Kind(NamedTuple):
    finding: str  # Finding.check
    severity: str
    title: str  # after the count
    why: str | None = None  # evidence["why"]


# kinds of parameter without gradient, in report order
_KINDS = {
    "disconnected": _Kind(
        "disconnected_params", "critical",
        "parameter(s) change the output but get no gradient (their value reaches the forward only through "
        "detached copies or detached outputs)",
        why="finite difference: moving the parameter changes the output, yet d(loss)/d(param) is None or "
        "exactly zero at both the base and a perturbed point, so the outer optimizer can never train it (e.g. "
        "`.detach().clone()` of an initial state, a detached target)"),
    "detached_access": _Kind(
        "detached_access", "warning",
        "parameter(s) are read in the forward only through graph-cutting ops (detach, .data, item) and do not "
        "affect this output",
        why="diagnostics are harmless; a stale detached copy (taken once, e.g. at reset outside forward) is the "
        "review's bug: pass --call to run the reset as training does"),
    "dead": _Kind(
        "dead_params", "warning",
        "parameter(s) are used in the forward but never reach the output: no gradient (also at a perturbed "
        "point) and moving them changes nothing (e.g. writes made after the last read)"),
    "unused": _Kind(
        "unused_params", "info",
        "parameter(s) are never used in the forward (e.g. a registered template whose copy is the real state)"),
}


def judge(m: Measurements) -> Outcome:
    p = classify(m)
    findings = []
    for kind, k in _KINDS.items():
        names = getattr(p, kind)
        if not names:
            continue
        evidence: dict[str, Any] = {"parameters": _access_evidence(m, names)}
        if k.why:
            evidence["why"] = k.why
        if kind == "unused":
            evidence["twins"] = {n: p.twins[n] for n in names[:24] if n in p.twins}
            evidence.update(reset_hint(m.ctx.base))
        findings.append(Finding(k.finding, k.severity, f"{len(names)} {k.title}", evidence, names))
    n_ok = sum(1 for v in p.status.values() if v in ("ok", "zero_at_init"))
    status = "fail" if p.disconnected else ("warn" if p.detached_access else "pass")
    summary = (f"{n_ok}/{len(m.ctx.trainable)} trainable parameters get a gradient; {len(p.disconnected)} "
               f"disconnected, {len(p.unused)} unused, {len(p.dead_mechanism)} in a dead mechanism, "
               f"{len(p.detached_access)} read only through detached "
               f"copies, {len(p.dead)} dead")
    return Outcome(status, summary, findings)


def reset_hint(model: nn.Module) -> dict[str, str]:
    """For unused parameters: the model's own reset methods may be what puts them to use."""
    resets = entry_points(model, ("reset",))
    if not resets:
        return {}
    return {"hint": f"the model defines {', '.join(resets[:4])}: if training calls a reset before the forward "
                    "(copying parameters into active state), pass --call fn(model, x) that does the same, or "
                    "the audit cannot see what the reset does"}


def _access_evidence(m: Measurements, names: list[str]) -> dict[str, Any]:
    """Per parameter (24 at most): its gradients, the ops that read it, what moving it did."""
    return {n: {"grad_base": m.base.grad[n], "grad_perturbed": m.perturbed.grad_full.get(n),
                "ops_in_forward": m.perturbed.accesses.get(n, {}),
                "finite_difference": m.influence.get(n, (None, ""))[1]}
            for n in names[:24]}


CHECK = Check("gradient_flow", "1 gradient flow (unused vs disconnected)", judge)
