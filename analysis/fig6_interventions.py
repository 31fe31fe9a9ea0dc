"""Figure 6: in-context benefit by position. What does switching a mechanism's writes off cost the trained model?

(a) Δ = loss(switch) − loss(none) against the token position, per switch, at the last checkpoint: a thin line
per position (mean over probe sequences), and per position bucket the mean with its 95% bootstrap interval;
(b) Δ over all positions at every probed step (Δ over training), with its interval.
Probe rows: probe "intervene" (hopelab.interventions), metrics loss, seq_loss, seq_bucket_loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.artifacts import FigureOut, Skipped
from analysis.interventions import (
    effects_over_training,
    intervention_effects,
    position_curves,
    switch_name,
    switch_order,
)
from analysis.load import StudyResults
from analysis.select import focus_rows, probe_rows, seeds_note
from analysis.style import (
    DPI,
    SEQ_COLORS,
    display_name,
    new_figure,
    no_rows,
    panel_label,
    paper_style,
    save_figure,
    spread,
)
from analysis.summary import reference_run_name
from hopelab.interventions import PROBE

NUMBER = 6
TITLE = "In-context benefit by position"


def _colors(switches: list[str]) -> dict[str, str]:
    return {s: SEQ_COLORS[i % len(SEQ_COLORS)] for i, s in enumerate(switches)}


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    rows, partial = probe_rows(study, scale, PROBE)
    if rows.empty:
        return Skipped(NUMBER, what, "no intervene probe rows (no in-context memory, or probes off)", scale)
    focus, df = focus_rows(rows, reference_run_name(study, scale))
    name = display_name(focus)
    curves = position_curves(study, scale, focus)
    effects = intervention_effects(study, scale, buckets=True)
    effects = effects[(effects["run_name"] == focus) & effects["bucket_start"].notna()]
    training = effects_over_training(study, scale, focus)
    switches = switch_order(set(curves["switch"]) | set(training["switch"]))
    colors = _colors(switches)
    T = int(curves["position"].max()) + 1 if len(curves) else 0

    with paper_style():
        fig, axes = new_figure(2, panel_w=5.2, panel_h=3.8)
        ax = axes[0, 0]
        if curves.empty:
            no_rows(ax, "per-position loss")
        for s in [s for s in switches if s in set(curves["switch"])]:
            c = curves[curves["switch"] == s].sort_values("position")
            ax.plot(c["position"], c["delta"], color=colors[s], lw=0.6, alpha=0.45)
            b = effects[effects["switch"] == s].sort_values("bucket_start")
            ends = list(b["bucket_start"].iloc[1:]) + [T]
            mid = (b["bucket_start"].to_numpy(dtype=float) + np.asarray(ends, dtype=float) - 1) / 2
            ax.errorbar(mid, b["delta"], yerr=spread(b["delta"], b["delta_lo"], b["delta_hi"]), color=colors[s],
                        marker="o", ms=3.5, lw=1.4, capsize=2, label=switch_name(s))
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        if len(curves):
            ax.legend(title="switch", fontsize=7)
        step = f", step {int(effects['step'].max())}" if len(effects) else ""
        panel_label(ax, "a", f"Δ by position{step}", "token position in the probe sequence",
                    "Δ loss = loss(switch) − loss(as trained)  [nats]")

        ax = axes[0, 1]
        if training.empty:
            no_rows(ax, "intervene")
        for s in [s for s in switches if s in set(training["switch"])]:
            t = training[training["switch"] == s].sort_values("step")
            ax.plot(t["step"], t["delta"], color=colors[s], marker="o", ms=3, label=switch_name(s))
            ax.fill_between(t["step"], t["delta_lo"], t["delta_hi"], color=colors[s], alpha=0.18, lw=0)
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
        if len(training):
            ax.legend(title="switch", fontsize=7)
        panel_label(ax, "b", "Δ over training", "training step", "Δ loss over all positions  [nats]")
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {name}, {scale} scale")
        stem = f"fig{NUMBER}_interventions_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    n_last = int(effects["n"].max()) if len(effects) else 0
    caption = (
        f"In-context benefit of each mechanism of {name} at the {scale} scale, measured inside the trained model: "
        "the same validation sequences evaluated with the mechanism's in-context writes switched off, paired "
        "sequence by sequence with the model as trained (Δ > 0: the mechanism's writes lower the loss). "
        f"(a) Δ by token position at the last checkpoint: thin lines per position, points per position bucket "
        f"with 95% bootstrap intervals over {n_last} sequence(s) (seeds resampled first). "
        "A Δ that rises along the sequence is a benefit that accumulates in context. "
        "(b) Δ over all positions at every probed step, with its interval; before the last checkpoint the probe "
        "follows fewer switches on fewer sequences (wider intervals). "
        f"{seeds_note(df, partial)}"
    )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)
