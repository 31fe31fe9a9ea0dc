"""Recall under the interventions: does a run's MQAR accuracy survive switching its in-context writes off?

The recall probe measures the probe batch's accuracy again with each write switch a model has
(hopelab.probes.recall, WRITE_SWITCHES; rows tagged with the switch in `component`). Here, per run at its last
probed step: accuracy as trained, accuracy with the switch, and their difference with a 95% interval.

    effects = switch_effects(study, scale, runs)   # per (variant, length, dim, pairs, switch), seeds pooled
    switch_findings(study, scales)                 # one Claim per variant

The interval is Newcombe's hybrid score interval for a difference of two proportions over the answer
positions (Wilson intervals of each side combined), with the answers of every seed of the cell pooled. The two
accuracies are measured on the *same* answers, so they are positively correlated and the interval, which
treats them as independent, is conservative. It exists with one seed, where a t-interval over seeds does not.
"""

from __future__ import annotations

import pandas as pd

from analysis.claims import Claim
from analysis.interventions import SWITCH_NAMES, switch_order
from analysis.load import StudyResults
from analysis.recall import recall_probe_rows, recall_runs, variant_order
from analysis.select import last_step_rows
from analysis.stats import CONFIDENCE, newcombe
from analysis.style import display_name

COLUMNS = ["variant", "length", "dim", "pairs", "switch", "trained", "switched", "answers", "delta", "lo", "hi"]
THRESHOLD = (
    f"recall under an intervention: Δ = accuracy with the switch − as trained, pooled over the seeds' answer "
    f"positions, with a {CONFIDENCE:.0%} Newcombe interval (Wilson intervals of each side; conservative, since both "
    "are measured on the same answers); a run's recall needs its in-context writes when switching them all off "
    "lowers accuracy with the interval below 0, whatever its accuracy as trained"
)


def _overall(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run_id: accuracy and answers at its last probed step (every answer position)."""
    rows = last_step_rows(rows[rows["position"].isna()])
    wide = rows.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")
    return wide.reindex(columns=["accuracy", "answers"])


def switch_effects(study: StudyResults, scale: str, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (variant, length, dim, pairs, switch): accuracy as trained and switched, answers pooled over seeds,
    Δ with its interval. Runs without switch rows (a Transformer) give none."""
    runs = recall_runs(study, scale) if runs is None else runs
    trained = _overall(recall_probe_rows(study, scale)).add_suffix("_t")
    out = []
    all_rows = study.probes
    switches = all_rows.loc[(all_rows["probe"] == "recall") & all_rows["component"].notna(), "component"].unique()
    for switch in switch_order(switches):
        switched = _overall(recall_probe_rows(study, scale, switch)).add_suffix("_s")
        both = runs.join(trained, on="run_id").join(switched, on="run_id")
        both = both.dropna(subset=["accuracy_s", "answers_s"])
        for (variant, length, dim, pairs), g in both.groupby(["variant", "length", "dim", "pairs"]):
            n = float(g["answers_s"].sum())
            if n <= 0:
                continue
            p_t = float((g["accuracy_t"] * g["answers_t"]).sum() / g["answers_t"].sum())
            p_s = float((g["accuracy_s"] * g["answers_s"]).sum() / n)
            lo, hi = newcombe(p_s, p_t, n)
            out.append({"variant": variant, "length": int(length), "dim": int(dim), "pairs": int(pairs),
                        "switch": switch, "trained": p_t, "switched": p_s, "answers": n, "delta": p_s - p_t,
                        "lo": lo, "hi": hi})
    return pd.DataFrame(out, columns=COLUMNS)


def _verdict(g: pd.DataFrame) -> str:
    """What the all-writes-off switch says about where a variant's recall comes from."""
    off = g[g["switch"] == "all_writes_off"]
    if off.empty:
        return ""
    drops = off[off["hi"] < 0]
    if len(drops) == len(off):
        return ": its recall needs its in-context writes"
    if len(drops):
        return (": its recall needs its in-context writes at "
                + ", ".join(f"{p} pairs" for p in sorted(drops["pairs"])) + " only")
    if (off["trained"] <= 1 / off["pairs"]).all():
        return ": it does not recall above guessing (1/pairs), and switching its writes off changes nothing detectable"
    return ": no detectable dependence of its recall on its in-context writes"


def switch_findings(study: StudyResults, scales: list[str]) -> list[Claim]:
    """Per variant with switch rows: each switch's Δ accuracy by number of pairs, and the verdict."""
    out = []
    for scale in scales:
        effects = switch_effects(study, scale)
        for variant in variant_order(effects["variant"]):
            g = effects[effects["variant"] == variant]
            parts, numbers = [], {}
            for switch in switch_order(g["switch"]):
                s = g[g["switch"] == switch].sort_values(["length", "dim", "pairs"])
                items = [f"{r.pairs} pairs {100 * r.trained:.0f}% → {100 * r.switched:.0f}% "
                         f"(Δ {100 * r.delta:+.0f} points [{100 * r.lo:+.0f}, {100 * r.hi:+.0f}])"
                         for r in s.itertuples()]
                numbers.update({(switch, r.length, r.dim, r.pairs): r.delta for r in s.itertuples()})
                parts.append(f"{SWITCH_NAMES.get(switch, switch)}: " + ", ".join(items))
            lengths = ", ".join(f"len {a}, dim {b}" for a, b in sorted({(r.length, r.dim) for r in g.itertuples()}))
            text = (f"Recall under interventions ({display_name(variant)}, {scale}, {lengths}; accuracy as trained → "
                    f"with the switch, at evaluation){_verdict(g)}. " + "; ".join(parts) + ".")
            out.append(Claim(f"recall switches: {variant}", text, numbers))
    return out


def carrier_findings(study: StudyResults, scales: list[str]) -> list[Claim]:
    """Which memory carries recall, across the variants: per switch, at the number of pairs where the switches
    change accuracy most, the variants whose accuracy drops with the switch (interval below 0) and those where it
    does not. A switch that lowers no variant's accuracy does not carry recall at this budget."""
    out = []
    for scale in scales:
        effects = switch_effects(study, scale)
        if effects.empty:
            continue
        for (length, dim), e in effects.groupby(["length", "dim"]):
            pairs = int(e.groupby("pairs")["delta"].agg(lambda d: d.abs().mean()).idxmax())
            e = e[e["pairs"] == pairs]
            parts, numbers = [], {}
            for switch in switch_order(e["switch"]):
                s = e[e["switch"] == switch]
                drops = [r for r in s.itertuples() if r.hi < 0]
                name = SWITCH_NAMES.get(switch, switch)
                said = ", ".join(f"{display_name(r.variant)} {100 * r.delta:+.0f} points [{100 * r.lo:+.0f}, "
                                 f"{100 * r.hi:+.0f}]" for r in sorted(drops, key=lambda r: r.delta))
                rest = [display_name(v) for v in variant_order([r.variant for r in s.itertuples() if r.hi >= 0])]
                verdict = f"{name}: lowers accuracy in {said}" if drops else f"{name}: lowers no variant's accuracy"
                parts.append(verdict + (f" (no detectable drop in {', '.join(rest)})" if rest else ""))
                numbers[switch] = {r.variant: r.delta for r in s.itertuples()}
            text = (f"Which in-context memory carries recall ({scale}, len {length}, dim {dim}, at {pairs} pairs, "
                    f"where the switches change accuracy most): " + "; ".join(parts) + ".")
            out.append(Claim("recall carriers", text, numbers))
    return out
