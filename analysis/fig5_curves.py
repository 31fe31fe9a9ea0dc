"""Figure 5: training curves per scale. (a) the whole run; (b) a zoom on the final quarter of the steps;
(c) validation loss at the checkpoints; dashed grey lines in (a) and (c): the data's unigram and bigram
references (Table 1). Mean over finished seeds with a min–max band; failed runs are drawn
thin and dotted up to the step where they failed (×), never averaged in. Threshold-sweep runs are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.artifacts import FigureOut, Skipped
from analysis.load import StudyResults
from analysis.select import seed_band, usable_runs
from analysis.style import (
    DPI,
    VARIANT_LINESTYLES,
    band_line,
    display_name,
    new_figure,
    panel_label,
    paper_style,
    run_colors,
    save_figure,
    spread,
)
from analysis.summary import REFERENCE_NAMES, ablation_run_names, reference_run_name, references_at
from hopelab.run import STATUS_DONE, STATUS_FAILED

NUMBER = 5
TITLE = "Training curves"
ZOOM = 0.25  # panel (b) shows the last quarter of the steps


def smooth_window(max_step: int) -> int:
    return max(1, int(round(max_step / 50)))


def _smoothed(df: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per run, a trailing rolling mean of the finite values over `window` logged steps."""
    out = []
    for _, g in df.groupby("run_id"):
        g = g.sort_values("step")
        g = g[np.isfinite(g["value"].astype(float))]
        g = g.assign(value=g["value"].rolling(window, min_periods=1).mean())
        out.append(g)
    return pd.concat(out) if out else df.iloc[:0]


def _band(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and min–max over the runs (one per seed) of a cell's smoothed curves, per step."""
    return df.groupby("step")["value"].agg(mean="mean", lo="min", hi="max").reset_index()


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    m = study.metrics
    m = m[(m["scale"] == scale)]
    names = ablation_run_names(study, scale)
    colors = run_colors(study.runs_at(scale)["run_name"].dropna().unique(), reference_run_name(study, scale))
    train = m[(m["metric"] == "train_loss") & m["run_name"].isin(names)]
    if train.empty:
        return Skipped(NUMBER, what, "no train_loss rows in metrics.parquet", scale)
    runs, partial = usable_runs(study, scale)
    runs_all = study.runs_at(scale)
    failed_ids = set(runs_all.loc[runs_all["status"] == STATUS_FAILED, "run_id"])
    use_ids = set(runs["run_id"])
    max_step = int(train["step"].max())
    window = smooth_window(max_step)
    sm = _smoothed(train, window)
    val = m[(m["metric"] == "val_loss") & m["run_name"].isin(names) & m["run_id"].isin(use_ids)]
    has_val = len(val) > 0
    zoom_from = int(max_step * (1 - ZOOM))

    with paper_style():
        fig, axes = new_figure(3 if has_val else 2, panel_w=4.6, panel_h=3.6)
        axes = axes.ravel()
        zoom_vals = []
        for name in names:
            color = colors[name]
            ls = VARIANT_LINESTYLES.get(name, "-")
            cell = sm[sm["run_name"] == name]
            mean_part = cell[cell["run_id"].isin(use_ids)]
            unfinished = not runs[(runs["run_name"] == name) & (runs["status"] == STATUS_DONE)].shape[0]
            label = display_name(name) + (" (unfinished)" if unfinished and len(mean_part) else "")
            if len(mean_part):
                b = _band(mean_part)
                for ax in axes[:2]:
                    band_line(ax, b, "step", color, ls="--" if unfinished else ls, lw=1.6, label=label)
                zoom_vals.append(b[b["step"] >= zoom_from][["lo", "hi"]])
            for run_id in sorted(set(cell["run_id"]) & failed_ids):
                g = cell[cell["run_id"] == run_id]
                for ax in axes[:2]:
                    ax.plot(g["step"], g["value"], color=color, lw=0.8, ls=":")
                fs = runs_all.loc[runs_all["run_id"] == run_id, "failed_step"].dropna()
                x_fail = int(fs.iloc[0]) if len(fs) else int(g["step"].max())
                y_fail = float(g["value"].iloc[-1]) if len(g) else np.nan
                for ax in axes[:2]:
                    ax.plot([x_fail], [y_fail], marker="X", ms=9, mew=1, mec="black", color=color, ls="none",
                            zorder=6)
                axes[0].annotate(f"seed {int(runs_all.loc[runs_all['run_id'] == run_id, 'seed'].iloc[0])} failed",
                                 (x_fail, y_fail), textcoords="offset points", xytext=(4, 8), fontsize=7.5,
                                 color=color)
            if has_val:
                v = val[val["run_name"] == name]
                if len(v):
                    b = seed_band(v, ["step"])
                    axes[2].errorbar(b["step"], b["mean"], yerr=spread(b["mean"], b["lo"], b["hi"]),
                                     color=color, ls=ls, marker="o", ms=3.5, capsize=2, lw=1.3)
        refs = references_at(study, scale)
        for ax in [axes[0]] + ([axes[2]] if has_val else []):
            for name, value in refs.items():  # validation-split references, dashed
                ax.axhline(value, color="#606060", lw=0.9, ls="--", zorder=1)
                ax.annotate(REFERENCE_NAMES[name].replace(" (reference)", f" {value:.2f}"), (1.0, value),
                            xycoords=("axes fraction", "data"), xytext=(-3, 2), textcoords="offset points",
                            ha="right", va="bottom", fontsize=7, color="#606060")
        ax = axes[0]
        ax.legend(ncol=1, fontsize=7.5)
        panel_label(ax, "a", "Whole run", "training step", f"train loss (nats/token, {window}-step mean)")
        ax = axes[1]
        ax.set_xlim(zoom_from, max_step)
        if zoom_vals:
            z = pd.concat(zoom_vals)
            lo, hi = float(z["lo"].min()), float(z["hi"].max())
            pad = 0.06 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        panel_label(ax, "b", f"Final {int(ZOOM * 100)}% of steps", "training step", "train loss (nats/token)")
        if has_val:
            panel_label(axes[2], "c", "Validation loss", "training step", "validation loss (nats/token)")
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {scale} scale")
        stem = f"fig{NUMBER}_curves_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    n_failed = len(set(train["run_id"]) & failed_ids)
    caption = (
        f"Training curves at the {scale} scale. (a) training loss over the whole run and (b) over the final "
        f"{int(ZOOM * 100)}% of the steps (from step {zoom_from}), each run smoothed by a trailing {window}-step "
        "mean; line = mean over finished seeds, band = min–max over seeds."
        + (" (c) validation loss at the checkpoints, error bars min–max over seeds." if has_val else "")
        + (f" Dotted: {n_failed} failed run(s) up to the failure (× marks the step); not averaged in."
           if n_failed else "")
        + (" Dashed: a variant with no finished run yet (its running runs)." if partial else "")
        + (" Grey dashed lines in (a)" + (" and (c)" if has_val else "") + ": the unigram and bigram "
           "cross-entropy of the validation split (fit on train), the floor a model of token frequencies or of "
           "the previous token reaches." if refs else "")
    )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)

