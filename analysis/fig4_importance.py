"""Figure 4: component importance. Δ final loss vs full HOPE per variant, per scale, and across scales.

One panel per scale (horizontal bars: Δ with its 95% interval over seeds, dots the per-seed differences when
paired), then a panel comparing the scales side by side. The numbers are Table 1's (analysis.summary).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from analysis.artifacts import FigureOut, Skipped
from analysis.load import StudyResults
from analysis.recall import is_recall_study
from analysis.stats import CONFIDENCE, PAIRED, losses_by_seed
from analysis.style import (
    DPI,
    SCALE_COLORS,
    display_name,
    new_figure,
    panel_label,
    paper_style,
    run_colors,
    run_name_order,
    save_figure,
)
from analysis.summary import ablation_summary

NUMBER = 4
TITLE = "Component importance"
STEM = "fig4_importance"


def _err(r) -> float:
    return (r["delta_hi"] - r["delta_lo"]) / 2 if not math.isnan(r["delta_lo"]) else 0.0


def render_all(study: StudyResults, out_dir: Path, scales: list[str], dpi: int = DPI) -> FigureOut | Skipped:
    """One figure across every scale."""
    if is_recall_study(study):
        return Skipped(NUMBER, f"Figure {NUMBER} ({TITLE})", "a recall study: its losses are on different tasks "
                       "(Table 4 and Figure 7 compare the variants)")
    data = ablation_summary(study, scales)
    if data.empty or not data["reference"].any():
        return Skipped(NUMBER, f"Figure {NUMBER} ({TITLE})", "no Full HOPE run to compare against")
    refs = dict(zip(data.loc[data["reference"], "scale"], data.loc[data["reference"], "run_name"]))
    data = data[~data["reference"] & data["delta"].notna()]
    if data.empty:
        return Skipped(NUMBER, f"Figure {NUMBER} ({TITLE})", "no finished variant besides Full HOPE")
    scales = [s for s in scales if (data["scale"] == s).any()]
    colors = run_colors(list(data["run_name"]) + list(refs.values()), refs.get(scales[0]))
    names = run_name_order(data["run_name"].unique())
    n_panels = len(scales) + (1 if len(scales) > 1 else 0)
    letters = "abcdefgh"

    with paper_style():
        fig, axes = new_figure(n_panels, panel_w=4.4 if n_panels > 1 else 5.2,
                               panel_h=max(2.8, 0.45 * len(names) + 1.2))
        axes = axes.ravel()
        for i, scale in enumerate(scales):
            ax = axes[i]
            d = data[data["scale"] == scale].set_index("run_name")
            present = [n for n in names if n in d.index]
            y = np.arange(len(present))[::-1]
            for yi, name in zip(y, present):
                r = d.loc[name]
                ax.barh(yi, r["delta"], xerr=_err(r), color=colors[name], alpha=0.85, capsize=3,
                        height=0.65)
                if r["test"] == PAIRED:  # per-seed differences
                    base = losses_by_seed(study.runs, scale, refs[scale])
                    other = losses_by_seed(study.runs, scale, name)
                    diff = (other - base).dropna()
                    ax.scatter(diff, np.full(len(diff), yi), s=10, color="black", zorder=4, lw=0)
                hi = r["delta"] + _err(r)
                lo = r["delta"] - _err(r)
                x_txt, ha = (hi, "left") if r["delta"] >= 0 else (lo, "right")
                ax.text(x_txt, yi, f" {r['delta']:+.3f} ", va="center", ha=ha, fontsize=8)
            ax.axvline(0, color="black", lw=0.9)
            ax.set_yticks(y, [display_name(n) for n in present])
            lo = min(0.0, float((data["delta"] - data.apply(_err, axis=1)).min()))
            hi = max(0.0, float((data["delta"] + data.apply(_err, axis=1)).max()))
            pad = 0.22 * (hi - lo or 1.0)
            ax.set_xlim(lo - pad, hi + pad)  # one x range for every scale panel: comparable at a glance
            ax.grid(axis="y", visible=False)
            panel_label(ax, letters[i], f"{scale} scale", xlabel="Δ final val loss vs Full HOPE (nats)")

        if len(scales) > 1:
            ax = axes[len(scales)]
            width = 0.8 / len(scales)
            x = np.arange(len(names))
            for j, scale in enumerate(scales):
                d = data[data["scale"] == scale].set_index("run_name").reindex(names)
                err = d.apply(lambda r: _err(r) if not math.isnan(r["delta"]) else 0.0, axis=1)
                ax.bar(x + (j - (len(scales) - 1) / 2) * width, d["delta"], width=width, yerr=err, capsize=2,
                       color=SCALE_COLORS[j % len(SCALE_COLORS)], label=scale)
            ax.axhline(0, color="black", lw=0.9)
            ax.set_xticks(x, [display_name(n) for n in names], rotation=35, ha="right")
            ax.legend(title="scale")
            ax.grid(axis="x", visible=False)
            panel_label(ax, letters[len(scales)], "Across scales", ylabel="Δ final val loss vs Full HOPE (nats)")
        # one line across several panels; two short ones over a single panel, which is narrower than the title
        what = "Δ = variant − Full HOPE (positive = worse than Full HOPE)"
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {what}" if n_panels > 1 else
                     f"Figure {NUMBER}: {TITLE}\nΔ = variant − Full HOPE (+: worse)")
        paths = save_figure(fig, out_dir, STEM, dpi)

    caption = (
        "Component importance: difference in final validation loss between each variant and Full HOPE at the "
        "same scale (positive = the variant is worse, i.e. what it removes or replaces helps). Error bars: "
        f"{CONFIDENCE:.0%} t-interval over seeds (paired by seed when both have the same finished seeds, Welch "
        "otherwise; none with one seed); black dots: per-seed differences (paired cells). "
        + ("The last panel sets the scales side by side. " if len(scales) > 1 else "")
        + "Failed runs are excluded (Table 1 lists them)."
    )
    return FigureOut(NUMBER, STEM, TITLE, caption, paths, None)
