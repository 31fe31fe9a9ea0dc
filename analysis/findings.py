"""Short findings computed from the numbers: each claim carries its number and interval, and the wording
follows fixed thresholds (stated in the report), never a hard-coded conclusion.

    findings = compute_findings(study, scales)   # list[Claim]; Claim.text is one Markdown bullet
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.claims import Claim, claim
from analysis.comparisons import baselines, effect, fmt_delta, run_row, settings, single_seed
from analysis.intervention_findings import intervention_findings
from analysis.load import StudyResults
from analysis.select import last_step_rows, probe_rows
from analysis.stats import CONFIDENCE, POWER, detectable_effect, fmt_pct, mean_ci, seed_spread
from analysis.style import display_name
from analysis.summary import (
    ablation_run_names,
    ablation_summary,
    gate_operating_points,
    gate_pass_rate,
    parse_overrides,
    reference_run_name,
    references_at,
)
from analysis.thresholds import (  # noqa: F401 - re-exported: the wording's thresholds live there
    COS_DISTINCT,
    COS_REDUNDANT,
    DELTA_EPS,
    EARLY_DRIFT,
    GATE_NOOP,
    GATE_SELECTIVE,
    POSITION_GROWTH,
    THRESHOLDS,
    UNIGRAM_MARGIN,
)
from analysis.within_run import fmt_within, within_run_effect


def _plus_minus(half: float) -> str:
    """" ± 0.012", or nothing when there is no interval (one seed)."""
    return f" ± {half:.3f}" if not math.isnan(half) else ""


_REMOVES = {"hope_no_selfmod": "self-modification", "hope_no_cms": "the CMS", "hope_no_surprise": "the surprise gate"}


def _spreads(study: StudyResults, scales: list[str]) -> dict[str, float]:
    return {scale: seed_spread(study.runs_at(scale)) for scale in scales}


def _within(spread: float) -> str:
    return f"makes no difference beyond the seed-to-seed spread ({spread:.3f} nats)" if not math.isnan(spread) else ""


def _ablation_finding(study: StudyResults, ab: pd.DataFrame, scales: list[str], variant: str,
                      spreads: dict[str, float]) -> Claim | None:
    what = _REMOVES[variant]
    parts, numbers = [], {}
    for scale in scales:
        r = run_row(ab, scale, variant)
        if r is None or math.isnan(r["delta"]):
            continue
        e = effect(r, spreads.get(scale, math.nan))
        verb = {"worse": "hurts", "better": "helps", "none": "makes no detectable difference",
                "within-spread": _within(spreads.get(scale, math.nan)),
                "untested-worse": "raises the loss (untested)", "untested-better": "lowers the loss (untested)",
                "unknown": "cannot be judged"}[e]
        within = single_seed(study, scale, reference_run_name(study, scale), r)
        if within is not None:
            e = f"within-run-{within_run_effect(within)}"
            verb = {"within-run-worse": "raises the loss on the probe sequences",
                    "within-run-better": "lowers the loss on the probe sequences",
                    "within-run-none": "makes no detectable difference on the probe sequences"}[e]
            verb += f" ({fmt_within(within)})"
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
    return claim("CMS levels", "CMS levels: ", parts, numbers)


def _gate_finding(study: StudyResults, scales: list[str]) -> Claim | None:
    parts, numbers = [], {}
    for scale in scales:
        runs = study.runs_at(scale)
        ref = reference_run_name(study, scale)
        tau = runs.loc[runs["run_name"] == ref, "surprise_threshold"].dropna()
        if ref is None or tau.empty:
            continue
        tau = float(tau.iloc[0])
        relative = (runs.loc[runs["run_name"] == ref, "surprise_mode"] == "relative").any()
        rate, rate_min, n = gate_pass_rate(study, scale, ref, tau)
        if math.isnan(rate):
            continue
        word = ("effectively a no-op" if rate >= GATE_NOOP else "selective" if rate <= GATE_SELECTIVE
                else "mildly selective")
        at = f"the relative gate (z-score > {tau:g})" if relative else f"τ = {tau:g}"
        text = (f"at {scale}, {fmt_pct(rate)} of tokens pass at {at} (lowest layer {fmt_pct(rate_min)}, "
                f"n = {n} seed(s)): the gate is {word}")
        rows, _ = probe_rows(study, scale, "surprise")
        last = last_step_rows(rows[(rows["run_name"] == ref) & rows["metric"].isin(["p10", "p50"])])
        if len(last):
            q = last.groupby("metric")["value"].mean()
            if "p10" in q and tau > 0 and not relative:
                text += f"; median surprise {q.get('p50', math.nan):.3g}, p10 {q['p10']:.3g} = {q['p10'] / tau:.3g}×τ"
        parts.append(text)
        numbers[scale] = {"pass_rate": rate, "pass_rate_min_layer": rate_min, "tau": tau}
    return claim("surprise gate", "Surprise gate: ", parts, numbers)


def _gate_closure(study: StudyResults, scales: list[str]) -> Claim | None:
    """For every gated run: could its gate close at all, i.e. is an absolute τ above the smallest surprise?"""
    parts, numbers = [], {}
    for scale in scales:
        ops = gate_operating_points(study, scale)
        if ops.empty:
            continue
        shut, open_ = [], []
        for _, r in ops.iterrows():
            setting = (f"relative, z > {r['surprise_threshold']:g}" if r["surprise_mode"] == "relative"
                       else f"τ = {r['surprise_threshold']:g}")
            floor = "" if math.isnan(r["surprise_min"]) else f", smallest surprise {r['surprise_min']:.3g}"
            item = f"{r['display']} ({setting}{floor}, {fmt_pct(r['pass_rate'])} pass)"
            if r["could_close"] == 0:
                shut.append(item)
            elif r["could_close"] == 1:
                open_.append(item)
            numbers[(scale, r["run_name"])] = {"could_close": r["could_close"], "tau_below_min": r["tau_below_min"],
                                               "surprise_min": r["surprise_min"], "pass_rate": r["pass_rate"]}
        bits = []
        if shut:
            bits.append("the gate could not close (τ below the smallest surprise observed, or every token passed) in "
                        + ", ".join(shut))
        if open_:
            bits.append("it could close in " + ", ".join(open_))
        if bits:
            parts.append(f"at {scale}, " + "; ".join(bits))
    return claim("gate closure", "Gate operating point: ", parts, numbers)


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
    return claim("self-modification dynamics", "Self-modification dynamics (Full HOPE): ", parts, numbers)


def _regime(study: StudyResults, ab: pd.DataFrame, scales: list[str]) -> Claim | None:
    """Where the final losses sit between the unigram and bigram references of the data."""
    parts, numbers = [], {}
    for scale in scales:
        refs = references_at(study, scale)
        d = ab[(ab["scale"] == scale) & (ab["n_done"] > 0)]
        if "unigram" not in refs or d.empty:
            continue
        uni, bi = refs["unigram"], refs.get("bigram", math.nan)
        below = refs["unigram"] - d["mean"]  # nats under the unigram line, per variant
        near = d[below < UNIGRAM_MARGIN]
        gap = d["mean"] - uni  # negative: below the unigram line
        span = f"{gap.min():+.2f}" if len(d) == 1 else f"{gap.min():+.2f} to {gap.max():+.2f}"
        text = f"at {scale}, final loss − unigram reference ({uni:.3f}) = {span} nats".replace("-", "−")
        if not math.isnan(bi):
            above_bi = int((d["mean"] > bi).sum())
            text += f"; {above_bi} of {len(d)} above the bigram reference ({bi:.3f})"
        if len(near) == len(d):
            text += (f": every variant is within {UNIGRAM_MARGIN} nats of unigram, so this comparison measures early "
                     "training (how fast each learns token frequencies), not the architectures")
        elif len(near):
            text += (f": {', '.join(near['display'])} within {UNIGRAM_MARGIN} nats of unigram — comparisons involving "
                     "them measure early training, not the architectures")
        parts.append(text)
        numbers[scale] = {"unigram": uni, "bigram": bi, "below_min": float(below.min()),
                          "below_max": float(below.max()), "n_near_unigram": len(near), "n": len(d)}
    return claim("training regime", "Training regime: ", parts, numbers)


def _seeds(study: StudyResults, ab: pd.DataFrame, scales: list[str], spreads: dict[str, float]) -> Claim | None:
    """With several seeds: the seed-to-seed spread and the minimum detectable effect at each scale."""
    parts, numbers = [], {}
    for scale in scales:
        d = ab[(ab["scale"] == scale) & (ab["n_done"] >= 2)]
        if d.empty or math.isnan(spreads.get(scale, math.nan)):
            continue
        n = int(d["n_done"].min())
        mde = detectable_effect(study.runs_at(scale), reference_run_name(study, scale))
        text = f"at {scale}, n = {n} seeds per cell: seed-to-seed spread {spreads[scale]:.3f} nats"
        if not math.isnan(mde):
            text += (f"; minimum detectable effect {mde:.3f} nats (paired t-test, {CONFIDENCE:.0%} confidence, "
                     f"{POWER:.0%} power): a smaller |Δ| is not evidence of no effect")
        parts.append(text)
        numbers[scale] = {"n": n, "spread": spreads[scale], "mde": mde}
    return claim("seeds", "Seeds: ", parts, numbers)


def _best(ab: pd.DataFrame, scales: list[str]) -> Claim | None:
    parts = []
    for scale in scales:
        d = ab[(ab["scale"] == scale) & (ab["n_done"] > 0)]
        if d.empty:
            continue
        r = d.loc[d["mean"].idxmin()]
        parts.append(f"{scale}: {r['display']} ({r['mean']:.3f}{_plus_minus(r['half'])})")
    return claim("best", "Lowest final validation loss: ", parts)


def _failures(study: StudyResults, scales: list[str]) -> Claim | None:
    from analysis.load import failure_label

    runs = study.runs[study.runs["scale"].isin(scales) & (study.runs["status"] == "failed")]
    if runs.empty:
        return None
    items = [f"{r['run_id']} {failure_label(r)}" for _, r in runs.iterrows()]
    return Claim("failures", f"{len(items)} run(s) failed and are excluded from every mean: " + "; ".join(items)
                   + ".")


def _segments(study: StudyResults, scale: str, run_name: str) -> int:
    """The windows per stream a run name trained on (1: independent windows)."""
    runs = study.runs_at(scale)
    overrides = runs.loc[runs["run_name"] == run_name, "overrides"].dropna()
    found = [(parse_overrides(o) or {}).get("segments", 1) for o in overrides]
    return int(max(found, default=1))


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
        segments = _segments(study, scale, run_name)
        streamed = (f"; expected of the meta-learned initial states (init_*) when streaming: a step trains one "
                    f"window of a {segments}-window stream, and only a stream's first window reaches them"
                    if segments > 1 else "")
        items.append(f"{display_name(run_name)} at {scale}: up to {int(g['value'].max())} parameter tensor(s) "
                     f"{words.get(metric, metric)}{example} in {g['run_id'].nunique()}/{n_runs} run(s){streamed}")
    return Claim("gradient flow", "Gradient flow at the last probed step: " + "; ".join(items) + ".")


def finding_thresholds(findings: list[Claim]) -> list[str]:
    """The thresholds behind the wording of these findings (a recall study's are about accuracy)."""
    from analysis.recall import THRESHOLDS as RECALL_THRESHOLDS
    from analysis.recall_switches import THRESHOLD as SWITCH_THRESHOLD

    return [*RECALL_THRESHOLDS, SWITCH_THRESHOLD] if any(f.topic.startswith("recall") for f in findings) else (
        THRESHOLDS)


def compute_findings(study: StudyResults, scales: list[str] | None = None) -> list[Claim]:
    """A recall study (runs on synthetic MQAR) is judged by recall accuracy, any other by the final loss."""
    from analysis.recall import recall_findings  # they build Claims: imported here, not at the top
    from analysis.recall_switches import carrier_findings, switch_findings

    scales = scales or study.scales
    recall = recall_findings(study, scales)
    if recall:
        out = [*recall, *carrier_findings(study, scales), *switch_findings(study, scales), _failures(study, scales),
               _gradflow(study, scales)]
        return [f for f in out if f is not None]
    ab = ablation_summary(study, scales)
    spreads = _spreads(study, scales)
    out = [
        _regime(study, ab, scales),
        _seeds(study, ab, scales, spreads),
        _ablation_finding(study, ab, scales, "hope_no_selfmod", spreads),
        _selfmod_dynamics(study, scales),
        *intervention_findings(study, scales),
        _ablation_finding(study, ab, scales, "hope_no_cms", spreads),
        _cms_finding(study, scales),
        _ablation_finding(study, ab, scales, "hope_no_surprise", spreads),
        _gate_finding(study, scales),
        _gate_closure(study, scales),
        baselines(study, ab, scales, spreads),
        settings(study, ab, scales, spreads),
        _best(ab, scales),
        _failures(study, scales),
        _gradflow(study, scales),
    ]
    return [f for f in out if f is not None]
