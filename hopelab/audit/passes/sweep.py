"""Pass E: the perturbation sweep. For each probed position j, change input position j of sample 0 and record
how much every output position changes; one mode (train or eval) per sweep.

The probes run as rows of one batch (sample 0 first, then one perturbed copy per position) when the model keeps
its samples apart; otherwise, or when sample 0 alone in such a batch does not reproduce sample 0 of the
original batch, one sequence per forward. Each sweep has a time budget (planned from the measured forward
cost, and enforced on the wall clock one by one); positions 0, 1, T/2 and T-1 are planned and at least 8 in
all are always probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

import torch

from hopelab.audit.context import AuditContext, is_finite, mode_name, relative_change
from hopelab.audit.inputs import Batch
from hopelab.audit.passes.calls import RepeatedCalls

SWEEP_BUDGET_S = 6.0  # seconds each sweep (train, eval) may spend; at least 8 positions are always probed
_MAX_ROW_ELEMS = 16_000_000  # output elements per batched forward
_ONE_BY_ONE_POSITIONS = 16  # positions probed when every probe needs its own forward
_MIN_POSITIONS = 8  # probed even when the budget is spent


@dataclass
class PositionSweep:
    """diffs[j] = per-position relative change of the output when input position j changes."""

    positions: list[int]
    diffs: dict[int, torch.Tensor]  # j -> [T]
    batched: bool  # all probes ran as rows of one batch
    nonfinite: bool = False
    stopped: str = ""  # why fewer positions were probed than planned ("" when all were)

    def reach(self, T: int, tol: float) -> int:
        """How far back the last position's output depends on the input (0 = only its own token)."""
        deps = [j for j in self.positions if j < T - 1 and self.diffs[j][T - 1] > tol]
        return T - 1 - min(deps) if deps else 0

    def violations(self, tol: float) -> list[dict]:
        """Perturbed positions j that changed some output before j."""
        out = []
        for j in self.positions:
            before = self.diffs[j][:j]
            if j > 0 and before.numel() and before.max().item() > tol:
                bad = (before > tol).nonzero().flatten()
                out.append({"perturbed_position": j, "earliest_changed": int(bad[0]),
                            "n_changed": int(bad.numel()), "max_rel_change": float(before.max())})
        return out

    def largest_noncausal(self) -> float:
        vals = [self.diffs[j][:j].max().item() for j in self.positions if j > 0]
        return max(vals) if vals else 0.0


def position_sweep(ctx: AuditContext, calls: RepeatedCalls, coupling: dict[str, float], row_numel: int,
                   train: bool) -> PositionSweep:
    """Pass E in one mode. `coupling`: pass D's change of samples 1.. per mode (batch-coupled: one by one)."""
    coupled = coupling.get(mode_name(train), 0.0) > ctx.tol
    positions = _positions(ctx, int(SWEEP_BUDGET_S / max(ctx.row_cost, 1e-5)))
    x0 = ctx.inputs.rows(ctx.x, slice(0, 1))
    probes = _probes(ctx, x0, positions)
    nonfinite = False
    if not coupled:
        diffs, nonfinite = _batched_diffs(ctx, calls, x0, positions, probes, row_numel, train)
        if diffs is not None:
            return PositionSweep(positions, diffs, batched=True, nonfinite=nonfinite)
    # one sequence per forward: batch-coupled or row-nondeterministic models
    if len(positions) > _ONE_BY_ONE_POSITIONS:
        positions = _positions(ctx, _ONE_BY_ONE_POSITIONS)
    probes = _probes(ctx, x0, positions)
    ref = calls.run_fresh(ctx, x0, train)
    scale = ref.double().pow(2).mean().sqrt().item()
    diffs = {}
    t0 = perf_counter()
    for j, xp in zip(positions, probes):
        if len(diffs) >= _MIN_POSITIONS and perf_counter() - t0 > SWEEP_BUDGET_S:
            break  # the budget is spent: judge the positions probed so far
        out = calls.run_fresh(ctx, xp, train)
        nonfinite |= not is_finite(out)
        diffs[j] = _per_position(out, ref, scale)[0]
    stopped = ""
    if len(diffs) < len(positions):
        stopped = (f"the {mode_name(train)} sweep probed {len(diffs)} of {len(positions)} positions one by one "
                   f"within its {SWEEP_BUDGET_S:g} s budget")
    return PositionSweep(sorted(diffs), diffs, batched=False, nonfinite=nonfinite, stopped=stopped)


def _positions(ctx: AuditContext, budget_rows: int) -> list[int]:
    """Every position if the budget allows, else 0, 1, T/2, T-1 and random others (at least 8 in all)."""
    T = ctx.T
    if budget_rows >= T:
        return list(range(T))
    n = max(_MIN_POSITIONS, budget_rows)
    fixed = sorted({0, 1, T // 2, T - 1})
    rest = [j for j in torch.randperm(T, generator=ctx.gen).tolist() if j not in fixed][: n - len(fixed)]
    return sorted(set(fixed) | set(rest))


def _probes(ctx: AuditContext, x0: Batch, positions: list[int]) -> list[Batch]:
    """One copy of sample 0 per position, with that position changed."""
    return [ctx.inputs.perturb(x0, torch.zeros(1, dtype=torch.long), torch.tensor([j]), ctx.gen) for j in positions]


def _per_position(out: torch.Tensor, ref: torch.Tensor, scale: float) -> torch.Tensor:
    """Largest change per (row, position), relative to the reference's RMS: [R, T]."""
    d = (out - ref).abs()
    return d.reshape(d.shape[0], d.shape[1], -1).amax(-1).double() / (scale + 1e-30)  # [R, T]


def _batched_diffs(ctx: AuditContext, calls: RepeatedCalls, x0: Batch, positions: list[int],
                   probes: list[Batch], row_numel: int, train: bool):
    """Probes as rows of same-shape batches (sample 0 leads the first). Returns (diffs, nonfinite); diffs is
    None when sample 0 in such a batch differs from sample 0 of the original batch."""
    rows = max(2, min(len(probes) + 1, _MAX_ROW_ELEMS // max(row_numel, 1)))
    diffs: dict[int, torch.Tensor] = {}
    nonfinite = False
    done = 0
    while done < len(probes):
        chunk = probes[done: done + rows - (1 if done == 0 else 0)]
        lead = [x0] if done == 0 else []
        xs = ctx.inputs.cat(lead + chunk + [x0] * (rows - len(lead) - len(chunk)))  # same shape every time
        out = calls.run_fresh(ctx, xs, train)
        nonfinite |= not is_finite(out)
        if done == 0:
            ref = out[:1]
            scale = ref.double().pow(2).mean().sqrt().item()
            if relative_change(ref, calls.reference[train][:1]) > ctx.tol:
                return None, nonfinite
        d = _per_position(out[len(lead): len(lead) + len(chunk)], ref, scale)
        for k, j in enumerate(positions[done: done + len(chunk)]):
            diffs[j] = d[k]
        done += len(chunk)
    return diffs, nonfinite
