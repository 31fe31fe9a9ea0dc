"""One look for every figure: a stable colour and display name per variant, seaborn's paper context.

Figures are built on `matplotlib.figure.Figure` (no pyplot, no global backend or state), inside
`rc_context(paper_rc())`, and saved as PNG (200 dpi) and PDF by `save_figure`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# Colour-blind-safe (seaborn "colorblind" hues), fixed per variant so every figure agrees.
VARIANT_COLORS: dict[str, str] = {
    "hope": "#0173B2",  # blue
    "hope_no_cms": "#029E73",  # green
    "hope_no_selfmod": "#D55E00",  # vermillion
    "hope_no_surprise": "#CC78BC",  # pink
    "hope_attention": "#56B4E9",  # sky blue
    "titans": "#DE8F05",  # orange
    "transformer": "#404040",  # dark grey
    "transformer_matched": "#949494",  # light grey
}
VARIANT_NAMES: dict[str, str] = {
    "hope": "Full HOPE",
    "hope_no_cms": "No CMS",
    "hope_no_selfmod": "No Self-Mod",
    "hope_no_surprise": "No Surprise",
    "hope_attention": "Hope-Attention",
    "titans": "Titans",
    "transformer": "Transformer",
    "transformer_matched": "Transformer (matched)",
}
VARIANT_ORDER: list[str] = list(VARIANT_NAMES)  # the paper's table order
VARIANT_LINESTYLES: dict[str, str] = {"transformer_matched": "--"}
_EXTRA = ["#CA9161", "#FBAFE4", "#56B4E9", "#ECE133", "#8C613C", "#A1C9F4"]

# Per-component and per-level colours (self-modification components, CMS levels, scales).
COMPONENT_ORDER = ["k", "v", "q", "eta", "alpha", "memory"]
COMPONENT_NAMES = {"k": "m_k", "v": "m_v", "q": "m_q", "eta": "m_η", "alpha": "m_α", "memory": "m_memory"}
SEQ_COLORS = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#FBAFE4", "#949494", "#ECE133",
              "#56B4E9"]  # seaborn "colorblind"
SCALE_COLORS = ["#88CCEE", "#332288", "#44AA99", "#AA4499"]

DPI = 200


TAG_COLORS = ["#56B4E9", "#882255", "#117733", "#CA9161", "#332288", "#FBAFE4", "#999933", "#AA4499", "#44AA99",
              "#8C613C"]  # tagged runs (hope-tau0.01, hope-p4-16): distinct from the variants' colours


def variant_color(name: str) -> str:
    """The fixed colour of a variant (a tagged run name falls back to its variant's colour)."""
    variant = str(name).partition("-")[0]
    return VARIANT_COLORS.get(variant, _EXTRA[sum(map(ord, variant)) % len(_EXTRA)])


def run_colors(run_names, reference: str | None = None) -> dict[str, str]:
    """Colour per run name of one study: a variant keeps its fixed colour, the reference (full HOPE, even when
    tagged) takes hope's, and the other tagged runs get distinct colours in a stable order."""
    out: dict[str, str] = {}
    k = 0
    for name in run_name_order(run_names):
        variant, _, tag = name.partition("-")
        if not tag or name == reference:
            out[name] = variant_color(variant)
        else:
            out[name] = TAG_COLORS[k % len(TAG_COLORS)]
            k += 1
    return out


def display_name(run_name: str) -> str:
    """"Full HOPE", "No CMS", ...; a tagged run keeps its tag: "Full HOPE [tau0.01]"."""
    variant, _, tag = str(run_name).partition("-")
    base = VARIANT_NAMES.get(variant, variant)
    return f"{base} [{tag}]" if tag else base


def run_name_order(run_names) -> list[str]:
    """Untagged variants in the paper's order, then tagged runs and unknown names alphabetically."""
    def key(name: str) -> tuple:
        variant, _, tag = name.partition("-")
        return (bool(tag), VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER),
                variant, tag)

    return sorted({str(n) for n in run_names}, key=key)


def level_name(level: int, n_levels: int, periods: list[int] | None = None) -> str:
    """CMS level 0 is the fastest. "fast (C=8)", "slow (C=32)"; three levels add "mid"."""
    words = {2: ["fast", "slow"], 3: ["fast", "mid", "slow"]}.get(n_levels)
    word = words[level] if words and 0 <= level < len(words) else f"level {level}"
    if periods and 0 <= level < len(periods):
        return f"{word} (C={periods[level]})"
    return word


def paper_rc() -> dict:
    import seaborn as sns  # only where figures are drawn: tables and loading stay light

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.25)}
    rc.update({
        "font.family": "DejaVu Sans",
        "axes.titlesize": 11,
        "axes.titleweight": "bold",
        "axes.labelsize": 10,
        "legend.fontsize": 8.5,
        "legend.frameon": True,
        "legend.framealpha": 0.85,
        "figure.titlesize": 12,
        "figure.titleweight": "bold",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "grid.color": "#e6e6e6",
        "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    })
    return rc


@contextmanager
def paper_style() -> Iterator[None]:
    with matplotlib.rc_context(paper_rc()):
        yield


def new_figure(ncols: int, nrows: int = 1, panel_w: float = 4.2, panel_h: float = 3.3, **kw):
    """A Figure (not pyplot-managed) and its axes array, sized per panel."""
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def panel_label(ax, letter: str, title: str, xlabel: str | None = None, ylabel: str | None = None) -> None:
    """Title a panel "(a) title", and name its axes when given."""
    ax.set_title(f"({letter}) {title}", loc="left")
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)


def band_line(ax, band: pd.DataFrame, x: str, color: str, alpha: float = 0.18, scale: float = 1.0,
              band_label: str | None = None, **line) -> None:
    """`band`'s mean over column `x` as a line, its lo–hi range (min–max over seeds, or over layers) shaded in
    the line's colour. `scale` multiplies y (100 for a percentage); `line` takes ax.plot's keywords."""
    ax.plot(band[x], scale * band["mean"], color=color, **line)
    ax.fill_between(band[x], scale * band["lo"], scale * band["hi"], color=color, alpha=alpha, lw=0,
                    **({"label": band_label} if band_label else {}))


def no_rows(ax, what: str, where: str = "") -> None:
    """Say in the panel that the probes wrote no rows for it (a run without that mechanism, or too early)."""
    ax.text(0.5, 0.5, f"no {what} rows" + (f" {where}" if where else ""), ha="center", transform=ax.transAxes)


def spread(mean, lo, hi) -> np.ndarray:
    """[2, n] error-bar lengths below/above `mean`, never negative (lo == mean up to rounding)."""
    mean, lo, hi = (np.asarray(a, dtype=float) for a in (mean, lo, hi))
    return np.clip(np.vstack([mean - lo, hi - mean]), 0.0, None)


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = DPI) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=dpi)
    fig.savefig(paths[1])
    return paths
