"""Short findings computed from the numbers: each claim carries its number and interval, and the wording
follows fixed thresholds (stated in the report), never a hard-coded conclusion.

    findings = compute_findings(study, scales)   # list[Claim]; Claim.text is one Markdown bullet
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.interventions import intervention_effects, rise_with_position, switch_name, switch_order
from analysis.load import StudyResults
from analysis.select import last_step_rows, probe_rows
from analysis.stats import CONFIDENCE, NO_TEST, fmt_p, fmt_pct, mean_ci
from analysis.style import display_name
from analysis.summary import ablation_run_names, ablation_summary, gate_pass_rate, reference_run_name

# Thresholds that turn numbers into words (listed in the report).
DELTA_EPS = 0.01  # nats: with one seed (no interval), |Δ| at or below this is "no difference"
COS_REDUNDANT = 0.7  # cosine similarity of CMS level outputs at or above: levels largely redundant
COS_DISTINCT = 0.3  # at or below: levels differentiated
GATE_NOOP = 0.99  # gate pass rate at the configured τ at or above: the gate is effectively a no-op
GATE_SELECTIVE = 0.90  # at or below: the gate is selective
POSITION_GROWTH = 0.20  # relative drift at the last position / first position − 1 above: continual adaptation
EARLY_DRIFT = 0.80  # meta-state drift at the first checkpoint / last: "moved early, then flat" at or above
INIT_SHIFT_DRIFT = 0.05  # meta-state drift from init / its norm at or above: the initial state moved a lot

THRESHOLDS = [
    f"an effect of removing/replacing a mechanism counts when the {CONFIDENCE:.0%} interval of Δ excludes 0 "
    f"(with a single seed: when |Δ| > {DELTA_EPS} nats, marked as untested)",
    f"CMS levels are called redundant when the cosine similarity of their outputs is ≥ {COS_REDUNDANT}, "
    f"differentiated when ≤ {COS_DISTINCT}",
    f"the surprise gate is called a no-op when ≥ {GATE_NOOP:.0%} of tokens pass at the configured τ, selective "
    f"when ≤ {GATE_SELECTIVE:.0%}",
    f"the fast state is called continually adapting when its relative drift from the meta-state grows by more "
    f"than {POSITION_GROWTH:.0%} from the first to the last chunk of the probe sequence; otherwise a one-off "
    "(initialisation) shift",
    f"the meta-state is said to move early when ≥ {EARLY_DRIFT:.0%} of its final drift from initialisation is "
    "reached at the first checkpoint",
    "interventions (Table 3, Figure 6): a switch counts when the 95% bootstrap interval of Δ = loss(switch) − "
    "loss(as trained) over the probe sequences (seeds resampled first) excludes 0; self-modification is called "
    "continual adaptation only when Δ(SR-Titans writes off) > 0 with its interval excluding 0 and Δ over the last "
    "position bucket exceeds Δ over the first (the paired interval of the difference excludes 0); an "
    f"initialisation shift when Δ's interval includes 0 while the meta-learned initial states moved from their "
    f"initialisation by ≥ {INIT_SHIFT_DRIFT:.0%} of their norm",
]


@dataclass
class Claim:
    """One finding of the report: its Markdown sentence and the numbers it rests on."""

    topic: str
    text: str
    numbers: dict = field(default_factory=dict)


def fmt_count(n: float) -> str:
    """37034 -> "37.0k", 19.0e6 -> "19.0M"."""
    if n is None or math.isnan(n):
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def effect(r: pd.Series) -> str:
    """"worse" | "better" | "none" | "untested-worse" | "untested-better" | "unknown" for a Δ row."""
    if r is None or math.isnan(r["delta"]):
        return "unknown"
    if r["test"] == NO_TEST or math.isnan(r["delta_lo"]):
        if abs(r["delta"]) <= DELTA_EPS:
            return "none"
        return "untested-worse" if r["delta"] > 0 else "untested-better"
    if r["delta_lo"] > 0:
        return "worse"
    if r["delta_hi"] < 0:
        return "better"
    return "none"


def fmt_delta(r: pd.Series) -> str:
    """"Δ = +0.316 nats (95% CI [+0.290, +0.342], p = 0.003, paired t-test by seed, n = 3/3)"."""
    s = f"Δ = {r['delta']:+.3f} nats"
    if r["test"] == NO_TEST or math.isnan(r["delta_lo"]):
        return s + f" (single seed, no interval; n = {int(r['n_done'])})"
    p = fmt_p(r["p"])
    p = f"p {p[0]} {p[1:]}" if p.startswith("<") else f"p = {p}"
    return (s + f" ({CONFIDENCE:.0%} CI [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}], {p}, "
            f"{r['test']}, n = {int(r['n_done'])})")


def _plus_minus(half: float) -> str:
    """" ± 0.012", or nothing when there is no interval (one seed)."""
    return f" ± {half:.3f}" if not math.isnan(half) else ""


def _claim(topic: str, lead: str, parts: list[str], numbers: dict | None = None) -> Claim | None:
    """One sentence: `lead` then the parts joined by "; "; None when there is nothing to say."""
    return Claim(topic, lead + "; ".join(parts) + ".", numbers or {}) if parts else None


def _row(ab: pd.DataFrame, scale: str, run_name: str) -> pd.Series | None:
    sel = ab[(ab["scale"] == scale) & (ab["run_name"] == run_name)]
    return sel.iloc[0] if len(sel) and sel.iloc[0]["n_done"] > 0 else None


_REMOVES = {"hope_no_selfmod": "self-modification", "hope_no_cms": "the CMS", "hope_no_surprise": "the surprise gate"}


def _ablation_finding(ab: pd.DataFrame, scales: list[str], variant: str) -> Claim | None:
    what = _REMOVES[variant]
    parts, numbers = [], {}
    for scale in scales:
        r = _row(ab, scale, variant)
        if r is None or math.isnan(r["delta"]):
            continue
        e = effect(r)
        verb = {"worse": "hurts", "better": "helps", "none": "makes no detectable difference",
                "untested-worse": "raises the loss (untested)", "untested-better": "lowers the loss (untested)",
                "unknown": "cannot be judged"}[e]
        parts.append(f"at {scale}, removing {what} {verb}: {fmt_delta(r)}")
        numbers[scale] = {"delta": r["delta"], "lo": r["delta_lo"], "hi": r["delta_hi"], "p": r["p"], "effect": e}
    if not parts:
        return None
    text = "; ".join(parts) + "."
    hurt = [s for s in scales if s in numbers and numbers[s]["effect"] in ("worse", "untested-worse")]
    if len(hurt) >= 2 and numbers[hurt[0]]["delta"] > 0:
        ratio = numbers[hurt[-1]]["delta"] / numbers[hurt[0]]["delta"]
        text += f" Its cost changes ×{ratio:.1f} from {hurt[0]} to {hurt[-1]}."
        numbers["ratio"] = ratio
    return Claim(what, text[0].upper() + text[1:], numbers)


def _cms_similarity(study: StudyResults, scale: str, run_name: str):
    """(MeanCI over seeds of the mean cos sim over layers and level pairs, step) at the last checkpoint."""
    rows, _ = probe_rows(study, scale, "cms")
    rows = rows[(rows["run_name"] == run_name) & (rows["metric"] == "cos_sim")]
    if rows.empty:
        return None
    last = last_step_rows(rows)
    per_seed = last.groupby("seed")["value"].mean()
    return mean_ci(per_seed), int(last["step"].max())


def _cos_word(cos: float) -> str:
    return ("largely redundant" if cos >= COS_REDUNDANT else "differentiated" if cos <= COS_DISTINCT
            else "partly redundant")


def _cms_finding(study: StudyResults, scales: list[str]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        ref = reference_run_name(study, scale)
        got = _cms_similarity(study, scale, ref) if ref else None
        if got is None:
            continue
        m, step = got
        text = (f"at {scale}, cosine similarity of fast vs slow level outputs = {m.mean:.3f}{_plus_minus(m.half)} "
                f"(step {step}, mean over layers, n = {m.n} seed{'s' if m.n != 1 else ''}): {_cos_word(m.mean)}")
        numbers[scale] = {"cos_sim": m.mean, "half": m.half}
        # other CMS settings of full HOPE (e.g. a periods study: hope-p4-16, hope-p8-8)
        others = [n for n in ablation_run_names(study, scale) if n != ref and n.partition("-")[0] == "hope"]
        extra = []
        for name in sorted(others):
            o = _cms_similarity(study, scale, name)
            if o is not None:
                extra.append(f"{display_name(name)} {o[0].mean:.3f}{_plus_minus(o[0].half)} ({_cos_word(o[0].mean)})")
                numbers[(scale, name)] = o[0].mean
        if extra:
            text += "; other settings: " + ", ".join(extra)
        parts.append(text)
    return _claim("CMS levels", "CMS levels: ", parts, numbers)


def _gate_finding(study: StudyResults, scales: list[str]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        runs = study.runs_at(scale)
        ref = reference_run_name(study, scale)
        tau = runs.loc[runs["run_name"] == ref, "surprise_threshold"].dropna()
        if ref is None or tau.empty:
            continue
        tau = float(tau.iloc[0])
        rate, rate_min, n = gate_pass_rate(study, scale, ref, tau)
        if math.isnan(rate):
            continue
        word = ("effectively a no-op" if rate >= GATE_NOOP else "selective" if rate <= GATE_SELECTIVE
                else "mildly selective")
        text = (f"at {scale}, {fmt_pct(rate)} of tokens pass at τ = {tau:g} (lowest layer {fmt_pct(rate_min)}, "
                f"n = {n} seed(s)): the gate is {word}")
        rows, _ = probe_rows(study, scale, "surprise")
        last = last_step_rows(rows[(rows["run_name"] == ref) & rows["metric"].isin(["p10", "p50"])])
        if len(last):
            q = last.groupby("metric")["value"].mean()
            if "p10" in q and tau > 0:
                text += f"; median surprise {q.get('p50', math.nan):.3g}, p10 {q['p10']:.3g} = {q['p10'] / tau:.3g}×τ"
        parts.append(text)
        numbers[scale] = {"pass_rate": rate, "pass_rate_min_layer": rate_min, "tau": tau}
    return _claim("surprise gate", "Surprise gate: ", parts, numbers)


def _selfmod_dynamics(study: StudyResults, scales: list[str]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        rows, _ = probe_rows(study, scale, "selfmod")
        rows = rows[rows["run_name"] == reference_run_name(study, scale)]
        if rows.empty:
            continue
        bits, num = [], {}
        rel = last_step_rows(rows[(rows["metric"] == "rel_drift_meta_fast") & rows["position"].isna()])
        if len(rel):
            m = mean_ci(rel.groupby("seed")["value"].mean())
            bits.append(f"fast state differs from the meta-state by {m.mean:.3f}{_plus_minus(m.half)} (relative L2, "
                        "mean over components)")
            num["rel_drift"] = m.mean
        pos = last_step_rows(rows[(rows["metric"] == "rel_drift_meta_fast") & rows["position"].notna()])
        if len(pos) and pos["position"].nunique() >= 2:
            by_pos = pos.groupby("position")["value"].mean().sort_index()
            first, lastv = float(by_pos.iloc[0]), float(by_pos.iloc[-1])
            growth = lastv / first - 1 if first > 0 else math.nan
            word = ("continual adaptation along the sequence" if growth > POSITION_GROWTH
                    else "a one-off shift (initialisation-like), not continual adaptation")
            bits.append(f"from token {int(by_pos.index[0])} to {int(by_pos.index[-1])} it goes {first:.3f} → "
                        f"{lastv:.3f} ({100 * growth:+.0f}%): {word}")
            num["position_growth"] = growth
        drift = rows[(rows["metric"] == "drift_init") & (rows["step"] > 0)]  # step 0: zero by definition
        if drift["step"].nunique() >= 2:
            per_step = drift.groupby("step")["value"].mean().sort_index()
            frac = float(per_step.iloc[0] / per_step.iloc[-1]) if per_step.iloc[-1] > 0 else math.nan
            word = "it moved early, then stayed" if frac >= EARLY_DRIFT else "it kept moving during training"
            bits.append(f"the meta-state's drift from init at the first checkpoint (step {int(per_step.index[0])}) is "
                        f"{100 * frac:.0f}% of its final value: {word}")
            num["early_drift_fraction"] = frac
        if bits:
            parts.append(f"at {scale}, " + "; ".join(bits))
            numbers[scale] = num
    return _claim("self-modification dynamics", "Self-modification dynamics (Full HOPE): ", parts, numbers)


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
    return _claim("self-modification (intervention)", "Self-modification, intervened (Full HOPE): ", parts, numbers)


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
    return _claim("interventions", "In-context benefit of each mechanism (Full HOPE, Table 3): ", parts, numbers)


def intervention_findings(study: StudyResults, scales: list[str] | None = None) -> list[Claim]:
    """The findings that rest on the interventions' intervals (Table 3, Figure 6)."""
    scales = scales or study.scales
    effects = {scale: intervention_effects(study, scale) for scale in scales}
    out = [_selfmod_intervention(study, scales, effects), _in_context_benefit(study, scales, effects)]
    return [f for f in out if f is not None]


def _baselines(study: StudyResults, ab: pd.DataFrame, scales: list[str]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        ref = reference_run_name(study, scale)
        base = _row(ab, scale, ref) if ref else None
        for name in ("transformer", "transformer_matched", "titans"):
            r = _row(ab, scale, name)
            if r is None or math.isnan(r["delta"]):
                continue
            e = effect(r)
            word = {"worse": "Full HOPE is better", "better": f"{display_name(name)} is better",
                    "none": "no detectable difference", "untested-worse": "Full HOPE is lower (untested)",
                    "untested-better": f"{display_name(name)} is lower (untested)", "unknown": "?"}[e]
            params = ""
            if base is not None and not math.isnan(r["n_params"]) and not math.isnan(base["n_params"]):
                params = f", {fmt_count(r['n_params'])} vs {fmt_count(base['n_params'])} parameters"
            parts.append(f"{scale}: {display_name(name)} {fmt_delta(r)}{params} — {word}")
            numbers[(scale, name)] = r["delta"]
    return _claim("baselines", "Baselines vs Full HOPE (Δ = baseline − HOPE): ", parts, numbers)


def _best(ab: pd.DataFrame, scales: list[str]) -> Claim | None:
    parts = []
    for scale in scales:
        d = ab[(ab["scale"] == scale) & (ab["n_done"] > 0)]
        if d.empty:
            continue
        r = d.loc[d["mean"].idxmin()]
        parts.append(f"{scale}: {r['display']} ({r['mean']:.3f}{_plus_minus(r['half'])})")
    return _claim("best", "Lowest final validation loss: ", parts)


def _failures(study: StudyResults, scales: list[str]) -> Claim | None:
    from analysis.load import failure_label

    runs = study.runs[study.runs["scale"].isin(scales) & (study.runs["status"] == "failed")]
    if runs.empty:
        return None
    items = [f"{r['run_id']} {failure_label(r)}" for _, r in runs.iterrows()]
    return Claim("failures", f"{len(items)} run(s) failed and are excluded from every mean: " + "; ".join(items)
                   + ".")


def _gradflow(study: StudyResults, scales: list[str]) -> Claim | None:
    p = study.probes
    g = p[p["scale"].isin(scales) & (p["probe"] == "gradflow") & p["metric"].isin(["n_grad_none", "n_grad_zero"])]
    if g.empty:
        return None
    last = last_step_rows(g)
    bad = last[last["value"] > 0]
    if bad.empty:
        return Claim("gradient flow", "Gradient flow: every parameter of every run received a non-zero gradient "
                                        "at the last probed step.")
    words = {"n_grad_none": "without a gradient", "n_grad_zero": "with an all-zero gradient"}
    flags = {"n_grad_none": "grad_is_none", "n_grad_zero": "grad_is_zero"}
    per_param = last_step_rows(p[p["scale"].isin(scales) & (p["probe"] == "gradflow")
                                 & p["metric"].isin(list(flags.values()))])
    per_param = per_param[per_param["value"] > 0]
    items = []
    for (scale, run_name, metric), g in bad.groupby(["scale", "run_name", "metric"]):
        # out of the runs that have gradflow rows at all
        n_runs = last.loc[(last["scale"] == scale) & (last["run_name"] == run_name), "run_id"].nunique()
        names = per_param[(per_param["scale"] == scale) & (per_param["run_name"] == run_name)
                          & (per_param["metric"] == flags.get(metric))]["param"].dropna().unique()
        example = f" (e.g. {', '.join(sorted(names)[:2])})" if len(names) else ""
        items.append(f"{display_name(run_name)} at {scale}: up to {int(g['value'].max())} parameter tensor(s) "
                     f"{words.get(metric, metric)}{example} in {g['run_id'].nunique()}/{n_runs} run(s)")
    return Claim("gradient flow", "Gradient flow at the last probed step: " + "; ".join(items) + ".")


def finding_thresholds(findings: list[Claim]) -> list[str]:
    """The thresholds behind the wording of these findings (a recall study's are about accuracy)."""
    from analysis.recall import THRESHOLDS as RECALL_THRESHOLDS

    return RECALL_THRESHOLDS if any(f.topic.startswith("recall") for f in findings) else THRESHOLDS


def compute_findings(study: StudyResults, scales: list[str] | None = None) -> list[Claim]:
    """A recall study (runs on synthetic MQAR) is judged by recall accuracy, any other by the final loss."""
    from analysis.recall import recall_findings  # it builds Claims: imported here, not at the top

    scales = scales or study.scales
    recall = recall_findings(study, scales)
    if recall:
        out = [*recall, _failures(study, scales), _gradflow(study, scales)]
        return [f for f in out if f is not None]
    ab = ablation_summary(study, scales)
    out = [
        _ablation_finding(ab, scales, "hope_no_selfmod"),
        _selfmod_dynamics(study, scales),
        *intervention_findings(study, scales),
        _ablation_finding(ab, scales, "hope_no_cms"),
        _cms_finding(study, scales),
        _ablation_finding(ab, scales, "hope_no_surprise"),
        _gate_finding(study, scales),
        _baselines(study, ab, scales),
        _best(ab, scales),
        _failures(study, scales),
        _gradflow(study, scales),
    ]
    return [f for f in out if f is not None]
