"""Picking rows for a figure: which runs count, which run a mechanism figure shows, seed aggregation.

Means and bands use finished runs only (status done); failed runs are never averaged in. When no run of a
cell has finished yet (a study still running), its running runs are used and the caption says so.
"""

from __future__ import annotations

import pandas as pd

from analysis.load import StudyResults
from analysis.style import run_name_order
from hopelab.run import STATUS_DONE, STATUS_FAILED


def usable_runs(study: StudyResults, scale: str) -> tuple[pd.DataFrame, bool]:
    """(runs whose data enter means at `scale`, whether unfinished runs had to be used for some cell)."""
    runs = study.runs_at(scale)
    runs = runs[runs["status"] != "pending"]
    out, partial = [], False
    for _, cell in runs.groupby("run_name", sort=False):
        done = cell[cell["status"] == STATUS_DONE]
        if len(done):
            out.append(done)
        else:
            live = cell[cell["status"] != STATUS_FAILED]
            if len(live):
                out.append(live)
                partial = True
    return (pd.concat(out) if out else runs.iloc[:0]), partial


def probe_rows(study: StudyResults, scale: str, probe: str) -> tuple[pd.DataFrame, bool]:
    runs, partial = usable_runs(study, scale)
    p = study.probes
    rows = p[(p["scale"] == scale) & (p["probe"] == probe) & p["run_id"].isin(set(runs["run_id"]))]
    return rows, partial


def focus_rows(rows: pd.DataFrame, reference: str | None) -> tuple[str | None, pd.DataFrame]:
    """The run a mechanism figure shows and its rows: the reference (full HOPE, "hope" when the study has
    none) if it has rows, else the first run (paper order) that does."""
    names = set(rows["run_name"].dropna())
    prefer = reference or "hope"
    focus = None if not names else prefer if prefer in names else run_name_order(names)[0]
    return focus, rows[rows["run_name"] == focus]


def seed_band(df: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean over everything but `by` within each seed (layers, parameters), then across seeds:
    columns by + [mean, lo, hi, n_seeds] with lo/hi the min/max over seeds."""
    keys = by + ["seed"]
    per_seed = df.groupby(keys, dropna=False)[value].mean().reset_index()
    agg = per_seed.groupby(by, dropna=False)[value].agg(mean="mean", lo="min", hi="max", n_seeds="count")
    return agg.reset_index()


def last_step_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its own last probed step."""
    if df.empty:
        return df
    last = df.groupby("run_id")["step"].transform("max")
    return df[df["step"] == last]


def config_value(study: StudyResults, scale: str, run_name: str, column: str):
    """A config field of a run name at a scale (the first non-null value over its seeds)."""
    runs = study.runs_at(scale)
    vals = runs.loc[runs["run_name"] == run_name, column].dropna()
    return vals.iloc[0] if len(vals) else None


def seeds_note(df: pd.DataFrame, partial: bool) -> str:
    n = df.groupby("run_name")["seed"].nunique() if len(df) else pd.Series(dtype=int)
    if n.empty:
        return ""
    counts = sorted(set(int(v) for v in n))
    seeds = f"{counts[0]} seed" + ("s" if counts[0] != 1 else "") if len(counts) == 1 else (
        f"{counts[0]}–{counts[-1]} seeds")
    extra = " Includes unfinished runs where a variant has no finished one." if partial else ""
    return f"Lines: mean over {seeds}; bands: min–max over seeds.{extra}"
