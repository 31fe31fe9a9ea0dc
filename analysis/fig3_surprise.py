"""Figure 3: surprise gating. Does the gate ever close?

(a) per-token surprise (the gate's units: ½‖M(k_t) − v̂_t‖², mean over heads) per layer at the last checkpoint
as a box-like summary (box p10–p90, line p50, whiskers min–max) with the configured threshold drawn;
(b) per-token cross-entropy (nats) quantiles beside it; (c) gate pass rate (share of tokens whose surprise
exceeds τ, i.e. that write) against τ; (d) pass rate at each run's configured τ over training (the sweep).
Probe rows: probe "surprise": min, p10, p50, p90, max, mean per layer; gate_pass_rate per layer and
threshold; ce_* (per layer or overall).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.artifacts import FigureOut, Skipped
from analysis.load import StudyResults
from analysis.select import config_value, focus_rows, last_step_rows, probe_rows, seed_band, seeds_note
from analysis.style import (
    DPI,
    band_line,
    display_name,
    new_figure,
    no_rows,
    panel_label,
    paper_style,
    run_colors,
    run_name_order,
    save_figure,
)
from analysis.summary import reference_run_name

NUMBER = 3
TITLE = "Surprise gating"
QUANTILES = ["min", "p10", "p50", "p90", "max"]


def quantile_summary(rows: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """One row per layer (null layer = "all"): p10/p50/p90/mean averaged over seeds, min of min, max of max."""
    names = {prefix + q: q for q in QUANTILES + ["mean"]}
    df = rows[rows["metric"].isin(list(names))].copy()
    if df.empty:
        return pd.DataFrame(columns=["layer"] + QUANTILES + ["mean"])
    df["q"] = df["metric"].map(names)
    df["layer"] = df["layer"].astype("float64")  # NaN = not per layer
    per_seed = df.groupby(["layer", "q", "seed"], dropna=False)["value"].mean().reset_index()
    out = {}
    for q, g in per_seed.groupby("q"):
        agg = {"min": "min", "max": "max"}.get(q, "mean")
        out[q] = g.groupby("layer", dropna=False)["value"].agg(agg)
    return pd.DataFrame(out).reset_index()


def pass_rate_at(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """gate_pass_rate rows at `threshold` (float-tolerant match)."""
    g = rows[rows["metric"] == "gate_pass_rate"]
    return g[np.isclose(g["threshold"].astype(float), threshold, rtol=1e-6, atol=1e-12)]


def _boxes(ax, summary: pd.DataFrame, color: str, all_label: str) -> None:
    """One box per layer of a `quantile_summary`; the row without a layer is labelled `all_label`."""
    labels = [str(int(v)) if not math.isnan(v) else all_label for v in summary["layer"]]
    x = np.arange(len(summary))
    for i, (_, r) in enumerate(summary.iterrows()):
        ax.vlines(i, r["min"], r["max"], color=color, lw=1.2)
        ax.hlines([r["min"], r["max"]], i - 0.12, i + 0.12, color=color, lw=1.2)
        ax.bar(i, r["p90"] - r["p10"], bottom=r["p10"], width=0.55, color=color, alpha=0.35, edgecolor=color)
        ax.hlines(r["p50"], i - 0.275, i + 0.275, color="black", lw=2)
        if not math.isnan(r.get("mean", math.nan)):
            ax.plot(i, r["mean"], marker="D", ms=4, color="white", mec="black", zorder=5)
    ax.set_xticks(x, labels)
    ax.set_xlim(-0.8 if len(x) > 1 else -1.5, len(x) - 0.2 if len(x) > 1 else 1.5)
    lo = summary["min"].min()
    if len(summary) and lo > 0 and summary["max"].max() / lo > 50:
        ax.set_yscale("log")


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    rows, partial = probe_rows(study, scale, "surprise")
    gated = rows.loc[rows["metric"].isin(QUANTILES + ["gate_pass_rate"]), "run_name"].unique()
    rows = rows[rows["run_name"].isin(gated)]  # a Transformer has ce_* rows only
    if rows.empty:
        return Skipped(NUMBER, what, "no surprise probe rows (no gated variant, or probes off)", scale)
    reference = reference_run_name(study, scale)
    focus, df = focus_rows(rows, reference)
    colors = run_colors(study.runs_at(scale)["run_name"].dropna().unique(), reference)
    last = last_step_rows(df)
    tau = config_value(study, scale, focus, "surprise_threshold")
    mode = config_value(study, scale, focus, "surprise_mode")
    if mode == "relative":  # a z-score, not in the surprise's units: no line on the gate-units axes
        tau = None
    name = display_name(focus)

    with paper_style():
        fig, axes = new_figure(2, 2, panel_w=5.0, panel_h=3.6)
        axes = axes.ravel()
        color = colors.get(focus, "#0173B2")

        ax = axes[0]
        s = quantile_summary(last).sort_values("layer")
        if len(s):
            _boxes(ax, s, color, "all")
            if tau is not None and tau > 0:
                ax.axhline(tau, color="#C00000", ls="--", lw=1.5, label=f"threshold τ = {tau:g}")
                ax.legend(loc="lower right")
        else:
            no_rows(ax, "surprise quantile")
        panel_label(ax, "a", "Per-token surprise", "layer", "surprise ½‖M(kₜ) − v̂ₜ‖² (gate units)")

        ax = axes[1]
        ce = quantile_summary(last, prefix="ce_").sort_values("layer")
        if len(ce):
            _boxes(ax, ce, "#555555", "all tokens")
            ax.set_xlabel("layer" if ce["layer"].notna().any() else "")
        else:
            no_rows(ax, "ce_*")
        panel_label(ax, "b", "Per-token LM loss", ylabel="per-token cross-entropy (nats)")

        ax = axes[2]
        gate = last[(last["metric"] == "gate_pass_rate") & (last["threshold"] > 0)]
        if len(gate):
            per_seed = gate.groupby(["threshold", "layer", "seed"], dropna=False)["value"].mean().reset_index()
            per_layer = per_seed.groupby(["threshold", "layer"], dropna=False)["value"].mean().reset_index()
            band = per_layer.groupby("threshold")["value"].agg(mean="mean", lo="min", hi="max").reset_index()
            band_line(ax, band, "threshold", color, alpha=0.2, scale=100, band_label="min–max over layers",
                      marker="o", ms=3.5, label=f"{name}, mean over layers")
            ax.set_xscale("log")
            if tau is not None and tau > 0:
                at = band[np.isclose(band["threshold"], tau)]
                ax.axvline(tau, color="#C00000", ls="--", lw=1.2, label=f"configured τ = {tau:g}")
                if len(at):
                    v = 100 * float(at["mean"].iloc[0])
                    ax.annotate(f"{v:.2f}%", (tau, v), textcoords="offset points", xytext=(6, -14),
                                color="#C00000", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.legend(loc="lower left")
        else:
            no_rows(ax, "gate_pass_rate")
        panel_label(ax, "c", "Gate pass rate vs threshold", "surprise threshold τ (gate units, log scale)",
                    "tokens passing the gate (%)")

        ax = axes[3]
        drawn = 0
        for run_name in run_name_order(rows["run_name"].unique()):
            if config_value(study, scale, run_name, "surprise_mode") == "off":
                continue
            t = config_value(study, scale, run_name, "surprise_threshold")
            if t is None:
                continue
            g = pass_rate_at(rows[rows["run_name"] == run_name], float(t))
            if g.empty:
                continue
            band_line(ax, seed_band(g, ["step"]), "step", colors.get(run_name, "black"), alpha=0.12, scale=100,
                      marker="o", ms=3, ls="-" if "-" not in run_name else "--",
                      label=f"{display_name(run_name)} ("
                      + ("relative" if config_value(study, scale, run_name, "surprise_mode") == "relative"
                         else f"τ={float(t):g}") + ")")
            drawn += 1
        if not drawn:
            no_rows(ax, "pass-rate", "at a configured τ")
        else:
            ax.legend(fontsize=7.5, loc="lower left")
        ax.set_ylim(-2, 102)
        panel_label(ax, "d", "Pass rate over training", "training step", "tokens passing the gate at own τ (%)")
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {name}, {scale} scale")
        stem = f"fig{NUMBER}_surprise_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    step = int(last["step"].max()) if len(last) else None
    mode_txt = f" (surprise mode {mode})" if mode and mode != "absolute" else ""
    caption = (
        f"Surprise gating of {name} at the {scale} scale{mode_txt}, last checkpoint (step {step}) on the fixed "
        "probe batch. (a) per-token surprise ½‖M(k_t) − v̂_t‖² (mean over heads; the quantity the gate compares "
        "with τ) per layer: box p10–p90, black line median, whiskers min–max, diamond mean; dashed red line the "
        "configured threshold. (b) per-token cross-entropy of the language model in nats, same summary. "
        "(c) share of tokens whose surprise exceeds τ (those that write to memory) for a grid of τ, mean over "
        "layers with the min–max band over layers; (d) that share at each run's own configured τ over training, "
        "for every gated variant and threshold-sweep run (dashed). Quantiles p10/p50/p90 and pass rates are "
        f"averaged over seeds; min/max are the extremes over seeds. {seeds_note(df, partial)}"
    )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)

