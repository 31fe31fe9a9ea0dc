"""Comparisons of one run name against the reference run (Full HOPE) in the findings: the effect of a Δ row
(over seeds, or with one seed the within-run interval on the shared probe sequences), and the findings that
compare the baselines and the settings of a study (its tagged runs) with the reference."""

from __future__ import annotations

import math

import pandas as pd

from analysis.claims import Claim, claim
from analysis.load import StudyResults
from analysis.stats import CONFIDENCE, NO_TEST, fmt_p
from analysis.style import display_name, run_name_order
from analysis.summary import reference_run_name
from analysis.thresholds import DELTA_EPS
from analysis.within_run import fmt_within, within_run_delta, within_run_effect
from hopelab.interventions import Interval


def fmt_count(n: float) -> str:
    """37034 -> "37.0k", 19.0e6 -> "19.0M"."""
    if n is None or math.isnan(n):
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def effect(r: pd.Series, spread: float = math.nan) -> str:
    """"worse" | "better" | "none" | "within-spread" | "untested-worse" | "untested-better" | "unknown" for a Δ
    row; `spread` is the seed-to-seed spread at its scale (NaN with one seed)."""
    if r is None or math.isnan(r["delta"]):
        return "unknown"
    if r["test"] == NO_TEST or math.isnan(r["delta_lo"]):
        if abs(r["delta"]) <= DELTA_EPS:
            return "none"
        return "untested-worse" if r["delta"] > 0 else "untested-better"
    if r["delta_lo"] <= 0 <= r["delta_hi"]:
        return "none"
    if not math.isnan(spread) and abs(r["delta"]) <= spread:
        return "within-spread"  # the interval excludes 0, but the Δ is smaller than seeds differ by
    return "worse" if r["delta_lo"] > 0 else "better"


def fmt_delta(r: pd.Series) -> str:
    """"Δ = +0.316 nats (95% CI [+0.290, +0.342], p = 0.003, paired t-test by seed, n = 3/3)"."""
    s = f"Δ = {r['delta']:+.3f} nats"
    if r["test"] == NO_TEST or math.isnan(r["delta_lo"]):
        return s + f" (single seed, no interval; n = {int(r['n_done'])})"
    p = fmt_p(r["p"])
    p = f"p {p[0]} {p[1:]}" if p.startswith("<") else f"p = {p}"
    return (s + f" ({CONFIDENCE:.0%} CI [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}], {p}, "
            f"{r['test']}, n = {int(r['n_done'])})")


def run_row(ab: pd.DataFrame, scale: str, run_name: str) -> pd.Series | None:
    sel = ab[(ab["scale"] == scale) & (ab["run_name"] == run_name)]
    return sel.iloc[0] if len(sel) and sel.iloc[0]["n_done"] > 0 else None


def single_seed(study: StudyResults, scale: str, base: str | None, r: pd.Series) -> Interval | None:
    """With one seed (no interval over seeds): the within-run interval of `r`'s run against `base`, if any."""
    if base is None or not (r["test"] == NO_TEST or math.isnan(r["delta_lo"])):
        return None
    return within_run_delta(study, scale, base, r["run_name"])


def versus(study: StudyResults, scale: str, ref: str, r: pd.Series, spread: float, ref_label: str) -> str:
    """Which of run `r` and the reference `ref` is better: from the Δ over seeds, or, with one seed, from the
    within-run interval on the shared probe sequences (`ref_label` names the reference in the words)."""
    name = display_name(r["run_name"])
    within = single_seed(study, scale, ref, r)
    if within is not None:
        word = {"worse": f"{ref_label} is lower on the probe sequences",
                "better": f"{name} is lower on the probe sequences",
                "none": "no detectable difference on the probe sequences"}[within_run_effect(within)]
        return f"{word}, {fmt_within(within)}"
    return {"worse": f"{ref_label} is better", "better": f"{name} is better", "none": "no detectable difference",
            "within-spread": "no difference beyond the seed spread",
            "untested-worse": f"{ref_label} is lower (untested)", "untested-better": f"{name} is lower (untested)",
            "unknown": "?"}[effect(r, spread)]


def baselines(study: StudyResults, ab: pd.DataFrame, scales: list[str], spreads: dict[str, float]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        ref = reference_run_name(study, scale)
        base = run_row(ab, scale, ref) if ref else None
        for name in ("transformer", "transformer_matched", "titans"):
            r = run_row(ab, scale, name)
            if r is None or math.isnan(r["delta"]):
                continue
            params = ""
            if base is not None and not math.isnan(r["n_params"]) and not math.isnan(base["n_params"]):
                params = f", {fmt_count(r['n_params'])} vs {fmt_count(base['n_params'])} parameters"
            word = versus(study, scale, ref, r, spreads.get(scale, math.nan), "Full HOPE")
            parts.append(f"{scale}: {display_name(name)} {fmt_delta(r)}{params} — {word}")
            numbers[(scale, name)] = r["delta"]
    return claim("baselines", "Baselines vs Full HOPE (Δ = baseline − HOPE): ", parts, numbers)


def settings(study: StudyResults, ab: pd.DataFrame, scales: list[str], spreads: dict[str, float]) -> Claim | None:
    """Each tagged run (a setting of the study: CMS levels, an lr, an optimizer) against the reference run,
    over seeds or, with one seed, on the shared probe sequences."""
    parts, numbers = [], {}
    for scale in scales:
        ref = reference_run_name(study, scale)
        if ref is None:
            continue
        for name in run_name_order(ab.loc[ab["scale"] == scale, "run_name"].unique()):
            r = run_row(ab, scale, name)
            if name == ref or "-" not in name or r is None or math.isnan(r["delta"]):
                continue
            word = versus(study, scale, ref, r, spreads.get(scale, math.nan), display_name(ref))
            parts.append(f"{scale}: {display_name(name)} {fmt_delta(r)} — {word}")
            numbers[(scale, name)] = r["delta"]
    lead = ("Settings vs the reference run (Δ = setting − reference; the study's tagged runs against its untagged "
            "or default one): ")
    return claim("settings", lead, parts, numbers)
