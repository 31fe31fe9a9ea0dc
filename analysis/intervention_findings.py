"""Findings that rest on the interventions' intervals (Table 3, Figure 6): what each in-context mechanism
contributes inside the trained model, and whether self-modification is continual adaptation or an
initialisation shift (the dissection study's section 4.3)."""

from __future__ import annotations

import math

import pandas as pd

from analysis.claims import Claim, claim
from analysis.interventions import intervention_effects, rise_with_position, switch_name, switch_order
from analysis.load import StudyResults
from analysis.select import last_step_rows, probe_rows
from analysis.stats import CONFIDENCE
from analysis.style import display_name, run_name_order
from analysis.summary import reference_run_name
from hopelab.interventions.switches import CMS_FROM_PREFIX

INIT_SHIFT_DRIFT = 0.05  # meta-state drift from init / its norm at or above: the initial state moved a lot


def fmt_interval(delta: float, lo: float, hi: float, n: int) -> str:
    """"Δ = +0.0123 nats (95% CI [+0.0101, +0.0145], n = 192 sequences)"."""
    if math.isnan(lo):
        return f"Δ = {delta:+.4f} nats (no interval, n = {n})"
    return f"Δ = {delta:+.4f} nats ({CONFIDENCE:.0%} CI [{lo:+.4f}, {hi:+.4f}], n = {n} sequences)"


def _meta_drift(study: StudyResults, scale: str, run_name: str) -> float:
    """‖θ_meta − θ_init‖ / ‖θ_meta‖ of the SR-Titans memories at the last probed step, mean over layers,
    components and seeds (nan without selfmod rows)."""
    rows, _ = probe_rows(study, scale, "selfmod")
    last = last_step_rows(rows[(rows["run_name"] == run_name) & rows["metric"].isin(["drift_init", "norm"])])
    if last.empty:
        return math.nan
    wide = last.pivot_table(index=["seed", "layer", "component"], columns="metric", values="value")
    if not {"drift_init", "norm"} <= set(wide.columns):
        return math.nan
    return float((wide["drift_init"] / wide["norm"]).mean())


def _selfmod_intervention(study: StudyResults, scales: list[str], effects: dict[str, pd.DataFrame]) -> Claim | None:
    """Initialisation shift or continual adaptation (the dissection study's section 4.3), answered inside the
    trained model: the SR-Titans writes switched off at evaluation, by position."""
    parts, numbers = [], {}
    switch = "selfmod_writes_off"
    for scale in scales:
        ref, e = reference_run_name(study, scale), effects[scale]
        sel = e[(e["run_name"] == ref) & (e["switch"] == switch)] if ref and len(e) else None
        if sel is None or sel.empty:
            continue
        r = sel.iloc[0]
        rise, first, last = rise_with_position(study, scale, ref, switch)
        drift = _meta_drift(study, scale, ref)
        helps = r["delta_lo"] > 0
        rises = rise.lo > 0
        if helps and rises:
            verdict = "continual adaptation"
        elif not (r["delta_lo"] > 0 or r["delta_hi"] < 0) and drift >= INIT_SHIFT_DRIFT:
            verdict = "an initialisation shift"
        elif helps:
            verdict = "an in-context benefit that does not grow along the sequence (neither continual adaptation "\
                      "nor a pure initialisation shift)"
        elif r["delta_hi"] < 0:
            verdict = "in-context writes that hurt the trained model"
        else:
            verdict = "no detectable effect of the in-context writes, and a meta-state that barely moved"
        rise_txt = (f"Δ from the first position bucket (t ≥ {first}) to the last (t ≥ {last}) changes by "
                    f"{rise.mean:+.4f}" + (f" [{rise.lo:+.4f}, {rise.hi:+.4f}]" if not math.isnan(rise.lo) else ""))
        drift_txt = f"; the meta-state moved {100 * drift:.0f}% of its norm from init" if not math.isnan(drift) else ""
        parts.append(f"at {scale} (step {int(r['step'])}), switching the SR-Titans writes off costs "
                     f"{fmt_interval(r['delta'], r['delta_lo'], r['delta_hi'], int(r['n']))}; {rise_txt}{drift_txt}: "
                     f"{verdict}")
        numbers[scale] = {"delta": r["delta"], "lo": r["delta_lo"], "hi": r["delta_hi"], "rise": rise.mean,
                          "rise_lo": rise.lo, "rise_hi": rise.hi, "meta_drift": drift, "verdict": verdict}
    return claim("self-modification (intervention)", "Self-modification, intervened (Full HOPE): ", parts, numbers)


def _in_context_benefit(study: StudyResults, scales: list[str], effects: dict[str, pd.DataFrame]) -> Claim | None:
    """What each switch costs full HOPE at the last checkpoint (Table 3's reference row)."""
    parts, numbers = [], {}
    for scale in scales:
        ref, e = reference_run_name(study, scale), effects[scale]
        e = e[e["run_name"] == ref] if len(e) else e
        if e.empty:
            continue
        bits = []
        for s in switch_order(e["switch"]):
            r = e[e["switch"] == s].iloc[0]
            counts = "" if math.isnan(r["delta_lo"]) else (" (counts)" if r["delta_lo"] > 0 or r["delta_hi"] < 0
                                                             else " (not detectable)")
            bits.append(f"{switch_name(s)} {r['delta']:+.4f} [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]{counts}")
            numbers[(scale, s)] = r["delta"]
        parts.append(f"at {scale}, Δ loss in nats with 95% CI: " + "; ".join(bits))
    return claim("interventions", "In-context benefit of each mechanism (Full HOPE, Table 3): ", parts, numbers)


def _persistent_levels(scales: list[str], effects: dict[str, pd.DataFrame]) -> Claim | None:
    """Whether the CMS levels slower than a window (trained on streams) carry anything the model reads: every run
    with the switch cms_writes_off_from_R, the Δ of freezing those levels alone."""
    parts, numbers = [], {}
    for scale in scales:
        e = effects[scale]
        e = e[e["switch"].str.startswith(CMS_FROM_PREFIX)] if len(e) else e
        bits = []
        for name in run_name_order(e["run_name"].unique()):
            r = e[e["run_name"] == name].iloc[0]
            read = ("read" if r["delta_lo"] > 0 else "hurt" if r["delta_hi"] < 0 else "no detectable effect")
            delta = fmt_interval(r["delta"], r["delta_lo"], r["delta_hi"], int(r["n"]))
            bits.append(f"{display_name(r['run_name'])}: {delta} ({read})")
            numbers[(scale, r["run_name"])] = {"delta": r["delta"], "lo": r["delta_lo"], "hi": r["delta_hi"]}
        if bits:
            period = e["switch"].iloc[0].removeprefix(CMS_FROM_PREFIX)
            parts.append(f"at {scale}, freezing the levels of period ≥ {period} tokens (a window or more: only a "
                         f"later window reads what they write) at evaluation, the faster levels writing: "
                         + "; ".join(bits))
    lead = ("Persistent CMS levels (read = the model uses what its slow levels wrote in earlier windows: Δ > 0, "
            "interval above 0; hurt: the model is better without those writes): ")
    return claim("persistent CMS levels", lead, parts, numbers)


def intervention_findings(study: StudyResults, scales: list[str] | None = None) -> list[Claim]:
    """The findings that rest on the interventions' intervals (Table 3, Figure 6)."""
    scales = scales or study.scales
    effects = {scale: intervention_effects(study, scale) for scale in scales}
    out = [_selfmod_intervention(study, scales, effects), _in_context_benefit(study, scales, effects),
           _persistent_levels(scales, effects)]
    return [f for f in out if f is not None]
