"""Figure 2: self-modification. Do the meta-learned initial states move, and does the fast state keep adapting?

(a) drift of each component's meta-learned initial state from its initialisation over training;
(b) relative drift ‖θ_fast − θ_meta‖ / ‖θ_meta‖ per component over training;
(c) the same relative drift by position within the probe sequence at the last checkpoint: a curve that keeps
rising along the sequence is continual in-context adaptation; a flat curve is an initialisation shift.
Probe rows: probe "selfmod", metrics drift_init, rel_drift_meta_fast (position null, or per position).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.artifacts import FigureOut, Skipped
from analysis.load import StudyResults
from analysis.select import focus_rows, last_step_rows, probe_rows, seed_band, seeds_note
from analysis.style import (
    COMPONENT_NAMES,
    COMPONENT_ORDER,
    DPI,
    SEQ_COLORS,
    band_line,
    display_name,
    new_figure,
    no_rows,
    panel_label,
    paper_style,
    save_figure,
)
from analysis.summary import reference_run_name

NUMBER = 2
TITLE = "Self-modification"


def _components(df: pd.DataFrame) -> list[str]:
    have = set(df["component"].dropna())
    return [c for c in COMPONENT_ORDER if c in have] + sorted(have - set(COMPONENT_ORDER))


def _color(component: str) -> str:
    idx = COMPONENT_ORDER.index(component) if component in COMPONENT_ORDER else len(COMPONENT_ORDER)
    return SEQ_COLORS[idx % len(SEQ_COLORS)]


def _by_component(ax, df: pd.DataFrame, x: str, metric: str, log_ok: bool = False) -> bool:
    """Mean over layers per component, band over seeds, and a legend. Y from 0 (distances and ratios), or log
    when `log_ok` and the components span more than 30x. Without rows: says so in the panel, returns False."""
    if df.empty:
        no_rows(ax, metric)
        return False
    band = seed_band(df, ["component", x])
    for comp in _components(df):
        band_line(ax, band[band["component"] == comp].sort_values(x), x, _color(comp), marker="o", ms=3,
                  label=COMPONENT_NAMES.get(comp, comp))
    if log_ok and (band["lo"] > 0).all() and band["hi"].max() / band["lo"].min() > 30:
        ax.set_yscale("log")
    else:  # start at 0 so that "flat" looks flat
        ax.set_ylim(0, 1.15 * max(float(band["hi"].max()), 1e-12))
    ax.legend(title="component", ncol=2)
    return True


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    rows, partial = probe_rows(study, scale, "selfmod")
    if rows.empty:
        return Skipped(NUMBER, what, "no self-modification probe rows (no in-context memory, or probes off)", scale)
    # full HOPE first; "hope_no_selfmod"/"titans" only carry the memory component
    focus, df = focus_rows(rows, reference_run_name(study, scale))
    name = display_name(focus)
    drift = df[df["metric"] == "drift_init"]
    rel = df[(df["metric"] == "rel_drift_meta_fast") & df["position"].isna()]
    pos = last_step_rows(df[(df["metric"] == "rel_drift_meta_fast") & df["position"].notna()])

    with paper_style():
        fig, axes = new_figure(3, panel_w=4.6, panel_h=3.6)
        ax = axes[0, 0]
        _by_component(ax, drift, "step", "drift_init", log_ok=True)
        panel_label(ax, "a", "Meta-state drift from init", "training step", "‖θ_meta − θ_init‖₂, mean over layers")

        ax = axes[0, 1]
        if _by_component(ax, rel, "step", "rel_drift_meta_fast"):
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        panel_label(ax, "b", "Fast state vs meta state", "training step", "‖θ_fast − θ_meta‖ / ‖θ_meta‖")

        ax = axes[0, 2]
        at_step = f", step {int(pos['step'].max())}" if _by_component(ax, pos, "position", "per-position") else ""
        panel_label(ax, "c", f"By position{at_step}", "tokens consumed in the sequence",
                    "‖θ_fast − θ_meta‖ / ‖θ_meta‖")
        fig.suptitle(f"Figure {NUMBER}: {TITLE} — {name}, {scale} scale")
        stem = f"fig{NUMBER}_selfmod_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    caption = (
        f"Self-modification dynamics of {name} at the {scale} scale. (a) L2 distance of each in-context memory's "
        "meta-learned initial state from its initialisation (mean over layers and parameter tensors); a curve "
        "that jumps and then stays flat means the meta-state moved early and then stopped. (b) relative distance "
        "between the fast (in-context) state at the end of the probe sequence and the meta-learned initial state. "
        "(c) the same relative distance at every chunk end along the probe sequence at the last checkpoint: "
        "rising along the sequence = continual adaptation; flat = a one-off shift from the initial state. "
        f"{seeds_note(df, partial)}"
    )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)

