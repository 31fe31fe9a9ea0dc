"""The numbers behind Figure 6, Table 3 and the intervention findings: Δ = loss(switch) − loss(none) of one trained
model, paired by probe sequence, from the intervene probe's rows (hopelab.interventions).

    intervention_effects(study, scale)              one row per (run name, switch) at each run's last probed step
    intervention_effects(study, scale, buckets=True)  the same per position bucket too
    effects_over_training(study, scale, run_name)   one row per (step, switch)
    rise_with_position(study, scale, run_name, switch)  Δ(last bucket) − Δ(first bucket), paired, with interval

Intervals are 95% percentile bootstraps over sequences, seeds resampled first when a cell has several.
"""

from __future__ import annotations

import pandas as pd

from analysis.load import StudyResults
from analysis.select import last_step_rows, probe_rows
from hopelab.interventions import NONE, PROBE, Interval, bootstrap_ci, effects_from_rows

SWITCH_ORDER = ["selfmod_writes_off", "memory_writes_off", "cms_writes_off", "all_writes_off", "gate_open",
                "gate_closed"]
SWITCH_NAMES = {
    "selfmod_writes_off": "SR-Titans writes off", "memory_writes_off": "M_memory writes off",
    "cms_writes_off": "CMS writes off", "all_writes_off": "all writes off", "gate_open": "gate open",
    "gate_closed": "gate closed",
}


def switch_order(switches) -> list[str]:
    """Switches in the paper's order, then the resets and the persistent-CMS switch by name length."""
    have = set(switches) - {NONE}
    resets = sorted((s for s in have if s not in SWITCH_ORDER), key=lambda s: (len(s), s))
    return [s for s in SWITCH_ORDER if s in have] + resets


def switch_name(switch: str) -> str:
    if switch.startswith("reset_every_"):
        return f"reset every {switch.removeprefix('reset_every_')}"
    if switch.startswith("cms_writes_off_from_"):
        return f"CMS levels ≥ {switch.removeprefix('cms_writes_off_from_')} writes off"
    return SWITCH_NAMES.get(switch, switch)


def _rows(study: StudyResults, scale: str) -> tuple[pd.DataFrame, bool]:
    return probe_rows(study, scale, PROBE)


def intervention_effects(study: StudyResults, scale: str, buckets: bool = False) -> pd.DataFrame:
    """Per run name and switch at each run's last probed step: delta, delta_lo, delta_hi, n (sequences over
    seeds), n_seeds, step, loss_none (mean over sequences and seeds); with `buckets`, bucket_start rows too."""
    rows, _ = _rows(study, scale)
    rows = last_step_rows(rows)
    if not buckets:
        rows = rows[rows["metric"] == "seq_loss"]
    cols = ["run_name", "switch", "bucket_start", "delta", "delta_lo", "delta_hi", "n", "n_seeds", "step", "loss_none"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    out = effects_from_rows(rows, by=["run_name"])
    seq = rows[rows["metric"] == "seq_loss"]
    none = seq[seq["component"] == NONE].groupby("run_name")
    out["n_seeds"] = out["run_name"].map(seq.groupby("run_name")["seed"].nunique())
    out["step"] = out["run_name"].map(seq.groupby("run_name")["step"].max())
    out["loss_none"] = out["run_name"].map(none["value"].mean())
    return out[cols]


def effects_over_training(study: StudyResults, scale: str, run_name: str) -> pd.DataFrame:
    """Δ over all positions per (step, switch) of one run name, seeds pooled as the second level."""
    rows, _ = _rows(study, scale)
    rows = rows[(rows["run_name"] == run_name) & (rows["metric"] == "seq_loss")]
    if rows.empty:
        return pd.DataFrame(columns=["step", "switch", "delta", "delta_lo", "delta_hi", "n"])
    return effects_from_rows(rows, by=["step"]).drop(columns="bucket_start")


def position_curves(study: StudyResults, scale: str, run_name: str) -> pd.DataFrame:
    """Mean Δ at every position (over sequences and seeds) per switch at the last probed step: position, switch,
    delta."""
    rows, _ = _rows(study, scale)
    rows = last_step_rows(rows[(rows["run_name"] == run_name) & (rows["metric"] == "loss")])
    if rows.empty:
        return pd.DataFrame(columns=["position", "switch", "delta"])
    mean = rows.groupby(["component", "position"])["value"].mean().unstack("component")  # [T, switches]
    delta = mean.drop(columns=NONE).sub(mean[NONE], axis=0)
    return delta.reset_index().melt(id_vars="position", var_name="switch", value_name="delta")


def rise_with_position(study: StudyResults, scale: str, run_name: str, switch: str) -> tuple[Interval, int, int]:
    """Δ over the last position bucket minus Δ over the first, paired by sequence, at the last probed step:
    (its interval, first bucket start, last bucket start). A rise whose interval excludes 0 is continual
    adaptation along the sequence."""
    rows, _ = _rows(study, scale)
    rows = last_step_rows(rows[(rows["run_name"] == run_name) & (rows["metric"] == "seq_bucket_loss")
                               & rows["component"].isin([NONE, switch])])
    if rows.empty or rows["component"].nunique() < 2:
        return Interval(float("nan"), float("nan"), float("nan"), 0), 0, 0
    wide = rows.pivot_table(index=["seed", "level"], columns=["position", "component"], values="value")
    first, last = wide.columns.levels[0].min(), wide.columns.levels[0].max()
    d = (wide[(last, switch)] - wide[(last, NONE)]) - (wide[(first, switch)] - wide[(first, NONE)])
    d = d.dropna()
    groups = [g.to_numpy() for _, g in d.groupby(level="seed")]
    return bootstrap_ci(groups if len(groups) > 1 else groups[0]), int(first), int(last)
