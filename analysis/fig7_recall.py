"""Figure 7: in-context recall (synthetic MQAR). (a) exact-match accuracy on the answer positions against the
number of key-value pairs, one line per variant, for each (sequence length, width) the study ran; (b) accuracy
against the distance back to the key, at the number of pairs where the variants differ most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.artifacts import FigureOut, Skipped
from analysis.interventions import SWITCH_NAMES
from analysis.load import StudyResults
from analysis.recall import SOLVED, accuracy_by_distance, recall_cells, recall_runs, variant_order
from analysis.recall_switches import switch_effects
from analysis.select import seed_band
from analysis.stats import CONFIDENCE
from analysis.style import DPI, display_name, new_figure, panel_label, paper_style, save_figure, spread, variant_color

NUMBER = 7
TITLE = "In-context recall"


def _interval(g):
    """Error bars: the 95% t-interval over seeds, or min–max where a cell has one seed (then lo = hi = mean)."""
    half = g["half"].to_numpy(dtype=float)
    lo = np.where(np.isnan(half), g["lo"], g["mean"] - half)
    hi = np.where(np.isnan(half), g["hi"], g["mean"] + half)
    return spread(g["mean"], lo, hi)


def render_scale(study: StudyResults, scale: str, out_dir: Path, dpi: int = DPI) -> FigureOut | Skipped:
    what = f"Figure {NUMBER} ({TITLE}, {scale})"
    runs = recall_runs(study, scale)
    if runs.empty:
        return Skipped(NUMBER, what, "no finished run on a synthetic MQAR task with recall probe rows", scale)
    cells = recall_cells(runs)
    groups = sorted({(int(length), int(dim)) for length, dim in zip(cells["length"], cells["dim"])})
    variants = variant_order(cells["variant"])
    # panel (b): the largest group, at the pairs whose variant means spread most (ties: fewer pairs)
    length, dim = groups[-1]
    main = cells[(cells["length"] == length) & (cells["dim"] == dim)]
    spreads = main.groupby("pairs")["mean"].agg(lambda v: v.max() - v.min())
    pairs_b = int(spreads.idxmax())
    by_dist = accuracy_by_distance(study, scale, runs)
    by_dist = by_dist[(by_dist["length"] == length) & (by_dist["dim"] == dim) & (by_dist["pairs"] == pairs_b)]
    effects = switch_effects(study, scale, runs)
    effects = effects[(effects["length"] == length) & (effects["dim"] == dim)]
    # panel (c): at the pairs where the switches change accuracy most (mean |Δ|; ties: fewer pairs)
    pairs_c = int(effects.groupby("pairs")["delta"].agg(lambda d: d.abs().mean()).idxmax()) if len(effects) else 0
    effects = effects[effects["pairs"] == pairs_c]

    with paper_style():
        fig, axes = new_figure(len(groups) + 1 + (not effects.empty), panel_w=4.4, panel_h=3.5)
        axes = axes.ravel()
        for i, (g_len, g_dim) in enumerate(groups):
            ax = axes[i]
            sel = cells[(cells["length"] == g_len) & (cells["dim"] == g_dim)]
            for variant in variants:
                g = sel[sel["variant"] == variant].sort_values("pairs")
                if g.empty:
                    continue
                ax.errorbar(g["pairs"], 100 * g["mean"], yerr=100 * _interval(g), color=variant_color(variant),
                            marker="o", ms=4, capsize=2.5, lw=1.5, label=display_name(variant))
            pairs = sorted(sel["pairs"].unique())
            ax.plot(pairs, [100 / p for p in pairs], color="#999999", ls=":", lw=1, label="1/pairs")
            ax.axhline(100 * SOLVED, color="#bbbbbb", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_xticks(pairs, [str(int(p)) for p in pairs])
            ax.set_ylim(-3, 103)
            panel_label(ax, chr(ord("a") + i), f"len {g_len}, dim {g_dim}", "key-value pairs", "accuracy (%)")
        axes[0].legend(fontsize=7.5)
        ax = axes[len(groups)]
        for variant in variants:
            v = by_dist[by_dist["variant"] == variant]
            if v.empty:
                continue
            b = seed_band(v, ["distance"]).sort_values("distance")
            ax.errorbar(b["distance"], 100 * b["mean"], yerr=100 * spread(b["mean"], b["lo"], b["hi"]),
                        color=variant_color(variant), marker="o", ms=4, capsize=2.5, lw=1.5,
                        label=display_name(variant))
        ax.set_xscale("log", base=2)
        edges = sorted({int(d) for d in by_dist["distance"]})
        if edges:
            ax.set_xticks(edges, [str(d) for d in edges])
        ax.set_ylim(-3, 103)
        panel_label(ax, chr(ord("a") + len(groups)), f"by distance, {pairs_b} pairs (len {length}, dim {dim})",
                    "distance back to the key (tokens, bucket [d, 2d))", "accuracy (%)")
        if not effects.empty:
            _switch_panel(axes[len(groups) + 1], chr(ord("a") + len(groups) + 1), effects, pairs_c, length, dim)
        fig.suptitle(f"Figure {NUMBER}: {TITLE} (MQAR) — {scale} scale")
        stem = f"fig{NUMBER}_recall_{scale}"
        paths = save_figure(fig, out_dir, stem, dpi)

    n_seeds = sorted({int(n) for n in cells["n"]})
    letters = ", ".join(f"({chr(ord('a') + i)})" for i in range(len(groups)))
    caption = (
        f"In-context recall on synthetic MQAR at the {scale} scale: exact-match accuracy on the answer positions "
        "(the query keys) of the held-out probe batch at the last checkpoint. "
        f"{letters} accuracy against the number of key-value pairs per sequence length and width; error bars: "
        f"{CONFIDENCE:.0%} t-interval over seeds (min–max with one seed); dotted: 1/pairs, the accuracy of "
        f"guessing among the sequence's values; dashed: {SOLVED:.0%}, the capacity threshold. "
        f"({chr(ord('a') + len(groups))}) accuracy against the distance from the query back to its key, in "
        f"power-of-two buckets, at {pairs_b} pairs (where the variants' means differ most); error bars min–max over "
        f"seeds. Seeds per cell: {', '.join(map(str, n_seeds))}; the probe batch holds batch-size sequences, each "
        "with one answer per query."
    )
    if not effects.empty:
        caption += (
            f" ({chr(ord('a') + len(groups) + 1)}) at {pairs_c} pairs (where the switches change accuracy most), "
            "accuracy as trained (grey) and with each "
            "in-context write switch on at evaluation (hopelab.interventions), seeds' answers pooled; error bars: "
            f"the {CONFIDENCE:.0%} Newcombe interval of Δ placed on the switched accuracy. A drop under all writes off "
            "means the recall comes from in-context memory."
        )
    return FigureOut(NUMBER, stem, f"{TITLE} ({scale})", caption, paths, scale)


def _switch_panel(ax, letter: str, effects, pairs: int, length: int, dim: int) -> None:
    """Grouped bars per variant: accuracy as trained, then with each switch (Δ interval as error bar)."""
    variants = variant_order(effects["variant"])
    switches = [s for s in SWITCH_NAMES if s in set(effects["switch"])]
    width = 0.8 / (len(switches) + 1)
    shades = ["#4c72b0", "#dd8452", "#c44e52", "#8172b2", "#937860", "#da8bc3"]
    for i, variant in enumerate(variants):
        e = effects[effects["variant"] == variant].set_index("switch")
        ax.bar(i, 100 * e["trained"].iloc[0], width, color="#bbbbbb", label="as trained" if i == 0 else None)
        for j, switch in enumerate(switches):
            if switch not in e.index:
                continue
            r = e.loc[switch]
            err = [[100 * (r["delta"] - r["lo"])], [100 * (r["hi"] - r["delta"])]]
            ax.bar(i + (j + 1) * width, 100 * r["switched"], width, yerr=err, capsize=2, color=shades[j % 6],
                   label=SWITCH_NAMES[switch] if i == 0 else None)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(variants))], [display_name(v) for v in variants],
                  rotation=20, fontsize=7.5)
    ax.axhline(100 / pairs, color="#999999", ls=":", lw=1)
    ax.set_ylim(0, 103)
    ax.legend(fontsize=7)
    panel_label(ax, letter, f"write switches, {pairs} pairs", None, "accuracy (%)")
