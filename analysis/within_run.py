"""Within-run intervals: two variants' losses compared sequence by sequence, for a study with one seed.

Every run's intervention probe evaluates its last checkpoint, as trained (switch `none`), on the same fixed
held-out probe set (hopelab.interventions.probe_set: 64 validation sequences at tiny, the same for every variant
and seed of a study). Pairing two runs' per-sequence losses gives Δ per sequence; its percentile bootstrap over
sequences (seeds resampled first when there are several) is an interval with one seed, where a t-interval
over seeds does not exist.

What it does and does not say: it measures whether *these two trained models* differ on these sequences beyond
the sequences' own spread. A second seed of either could differ by more (seed-to-seed variation is not in it),
so a finding resting on it says so.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import StudyResults
from analysis.select import last_step_rows
from hopelab.interventions import NONE, PROBE, Interval, bootstrap_ci

CAVEAT = "a within-run interval: seed-to-seed variation is not in it"


def sequence_losses(study: StudyResults, scale: str, run_name: str) -> pd.DataFrame:
    """Per (seed, sequence): the loss as trained at the run's last probed step. Columns seed, level, value."""
    p = study.probes
    rows = p[(p["scale"] == scale) & (p["probe"] == PROBE) & (p["metric"] == "seq_loss") & (p["component"] == NONE)]
    rows = rows[rows["run_name"] == run_name]
    if rows.empty:
        return pd.DataFrame(columns=["seed", "level", "value"])
    rows = pd.concat([last_step_rows(g) for _, g in rows.groupby("seed")])
    return rows[["seed", "level", "value"]]


def within_run_delta(study: StudyResults, scale: str, base: str, other: str) -> Interval | None:
    """Δ = loss(other) − loss(base), paired by (seed, sequence), with its bootstrap interval; None when either
    run has no per-sequence rows (e.g. a run made before the intervention probe existed)."""
    a, b = sequence_losses(study, scale, base), sequence_losses(study, scale, other)
    if a.empty or b.empty:
        return None
    both = a.merge(b, on=["seed", "level"], suffixes=("_base", "_other"))
    if both.empty:
        return None
    groups = [(g["value_other"] - g["value_base"]).to_numpy(dtype=float) for _, g in both.groupby("seed")]
    got = bootstrap_ci(groups[0] if len(groups) == 1 else groups)
    return None if math.isnan(got.lo) else got


def within_run_effect(d: Interval) -> str:
    """"worse" | "better" | "none" from the interval alone."""
    return "worse" if d.lo > 0 else "better" if d.hi < 0 else "none"


def fmt_within(d: Interval) -> str:
    return f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] nats over {d.n} probe sequences; {CAVEAT}"

