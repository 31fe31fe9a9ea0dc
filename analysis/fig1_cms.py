"""Figure 1: CMS dynamics. Do the fast and slow levels of the Continuum Memory System differ?

(a) parameter norm per level over training; (b) inter-checkpoint drift per level; (c) cosine similarity of
the levels' outputs over training (every variant with a CMS); (d) per-layer norms at the last checkpoint.
Probe rows: probe "cms", metrics param_norm, drift_prev (per layer, level), cos_sim (level, level_other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.artifacts import FigureOut, Skipped
from analysis.load import StudyResults
from analysis.select import config_value, focus_rows, last_step_rows, probe_rows, seed_band, seeds_note
from analysis.style import (
    DPI,
    SEQ_COLORS,
    band_line,
    display_name,
    level_name,
    new_figure,
    panel_label,
    paper_style,
    run_colors,
    run_name_order,
    save_figure,
    spread,
)
from analysis.summary import reference_run_name

NUMBER = 1
TITLE = "CMS dynamics"


def _periods(study: StudyResults, scale: str, run_name: str) -> list[int] | None:
    text = config_value(study, scale, run_name, "cms_periods")
    return [int(p) for p in str(text).split(",")] if text else None


def _relative_gap(norms: pd.DataFrame) -> float | None:
    """(norm of the level farthest from level 0) / (level 0's norm) − 1 at the last step, seed/layer means."""
    last = last_step_rows(norms)
    by_level = last.groupby("level")["value"].mean()
    if len(by_level) < 2 or by_level.iloc[0] == 0:
        return None
    rel = by_level / by_level.iloc[0] - 1
    return float(rel.iloc[rel.abs().to_numpy().argmax()])


def _lines_by_level(ax, df: pd.DataFrame, metric: str, n_levels: int, periods) -> None:
    band = seed_band(df[df["metric"] == metric], ["level", "step"])
    for i, (level, g) in enumerate(band.groupby("level")):
        band_line(ax, g.sort_values("step"), "step", SEQ_COLORS[i % len(SEQ_COLORS)], alpha=0.2, marker="o", ms=3.5,
                  label=level_name(int(level), n_levels, periods))
    ax.legend(title="CMS level")


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    rows, partial = probe_rows(study, scale, "cms")
    if rows.empty:
        return Skipped(NUMBER, what, "no CMS probe rows (no run with a CMS, or probes were off)", scale)
    reference = reference_run_name(study, scale)
    focus, df = focus_rows(rows, reference)
    colors = run_colors(study.runs_at(scale)["run_name"].dropna().unique(), reference)
    levels = sorted(int(x) for x in df["level"].dropna().unique())
    n_levels = len(levels)
    periods = _periods(study, scale, focus)
    name = display_name(focus)

    with paper_style():
        fig, axes = new_figure(2, 2, panel_w=5.0, panel_h=3.6)
        axes = axes.ravel()
        ax = axes[0]
        _lines_by_level(ax, df, "param_norm", n_levels, periods)
        gap = _relative_gap(df[df["metric"] == "param_norm"])
        if gap is not None:  # the y axis is zoomed: say how large the gap between levels really is
            ax.text(0.98, 0.04, f"largest gap to the fast level at the last step: {100 * gap:+.2f}%",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")
        panel_label(ax, "a", "Level parameter norms", "training step", "parameter L2 norm (mean over layers)")

        ax = axes[1]
        _lines_by_level(ax, df[df["step"] > 0], "drift_prev", n_levels, periods)  # step 0: no previous
        panel_label(ax, "b", "Inter-checkpoint drift", "training step", "‖θ(t) − θ(t−1)‖₂, mean over layers")

        ax = axes[2]
        cos = rows[rows["metric"] == "cos_sim"]
        pairs = sorted({(int(a), int(b)) for a, b in cos[["level", "level_other"]].dropna().itertuples(index=False)})
        styles = ["-", "--", ":", "-."]
        band = seed_band(cos, ["run_name", "level", "level_other", "step"])
        for run_name in run_name_order(band["run_name"].unique()):
            for j, (a, b) in enumerate(pairs):
                g = band[(band["run_name"] == run_name) & (band["level"] == a) & (band["level_other"] == b)]
                if g.empty:
                    continue
                pair = f" {level_name(a, n_levels)}–{level_name(b, n_levels)}" if len(pairs) > 1 else ""
                band_line(ax, g.sort_values("step"), "step", colors.get(run_name, "black"), alpha=0.15,
                          ls=styles[j % 4], marker="o", ms=3.5, label=display_name(run_name) + pair,
                          lw=2.2 if run_name == focus else 1.3)
        if len(band):
            ax.set_ylim(min(0.0, float(band["lo"].min()) - 0.05), 1.02)
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax.legend(title="variant")
        panel_label(ax, "c", "Fast vs slow output similarity", "training step", "cosine similarity of level outputs")

        ax = axes[3]
        last = last_step_rows(df[df["metric"] == "param_norm"])
        band = seed_band(last, ["layer", "level"])
        layers = sorted(int(x) for x in band["layer"].dropna().unique())
        width = 0.6 / max(n_levels, 1)
        for i, level in enumerate(levels):  # points, not bars: the y axis does not start at 0
            g = band[band["level"] == level].set_index("layer").reindex(layers)
            x = np.arange(len(layers)) + (i - (n_levels - 1) / 2) * width
            ax.errorbar(x, g["mean"], yerr=spread(g["mean"], g["lo"], g["hi"]), color=SEQ_COLORS[i % len(SEQ_COLORS)],
                        marker="o", ms=6, ls="none", capsize=3, label=level_name(level, n_levels, periods))
        if len(band):
            lo, hi = float(band["lo"].min()), float(band["hi"].max())
            pad = max((hi - lo) * 0.3, abs(hi) * 0.002)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(np.arange(len(layers)), [str(layer) for layer in layers])
        ax.legend(title="CMS level")
        panel_label(ax, "d", "Per-layer norms", "layer", "parameter L2 norm at last checkpoint")
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {name}, {scale} scale")

        stem = f"fig{NUMBER}_cms_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    period_txt = f" (update periods C = {', '.join(map(str, periods))} tokens)" if periods else ""
    caption = (
        f"CMS dynamics of {name} at the {scale} scale{period_txt}. (a) L2 norm of each level's parameters "
        "(mean over layers) over training, on a zoomed axis (the annotation gives the relative gap); (b) L2 distance "
        "between consecutive checkpoints per level; (c) cosine "
        "similarity between the outputs of the fast and slow levels on the fixed probe batch (1 = identical "
        "direction), for every run with a CMS; (d) per-layer parameter norms at the last checkpoint (mean over "
        f"seeds, error bars min–max). {seeds_note(df, partial)}"
    )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)

