"""Table 2: surprise-threshold sweep. hope runs whose surprise gate differs (run names hope-tau<τ>, hope-relative).

Per gate setting: the realised gate pass rate at the run's last checkpoint (from probes), final validation loss
and Δ vs full HOPE at its default gate (with interval and test when there are seeds), and the smallest
surprise the run showed: an absolute τ below it means the gate could not close.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.artifacts import Skipped, TableOut, bold, latex_table, markdown_table
from analysis.load import StudyResults
from analysis.stats import CONFIDENCE, NO_TEST, fmt_p, fmt_pct, fmt_pm
from analysis.summary import sweep_summary

NUMBER = 2
TITLE = "Surprise threshold sweep"
STEM = "table2_sweep"


def build(study: StudyResults, scales: list[str] | None = None) -> TableOut | Skipped:
    scales = scales or study.scales
    frames = [sweep_summary(study, s) for s in scales]
    frames = [f for f in frames if len(f)]
    if not frames:
        return Skipped(NUMBER, f"Table {NUMBER} ({TITLE})",
                       "no threshold sweep: no tagged hope run with a different surprise_threshold")
    data = pd.concat(frames, ignore_index=True)
    multi = bool((data["n_done"] >= 2).any())
    several = data["scale"].nunique() > 1
    header = (["Scale"] if several else []) + ["Threshold τ", "Run", "Realised pass rate", "min over layers",
                                                "Final loss", "Δ vs Full HOPE"] + (["p"] if multi else []) + [
        "Smallest surprise"]
    rows, notes = [], []
    for scale, g in data.groupby("scale", sort=False):
        best = g.loc[g["n_done"] > 0, "mean"].min()
        for _, r in g.iterrows():
            if r["gate_off"]:
                tau = "gate off"
            else:
                tau = f"{r['surprise_threshold']:g}" + (" (relative)" if r["surprise_mode"] == "relative" else "")
                tau += " (default)" if r["reference"] else ""
            mark = "†" * (len(notes) + 1) if r["excluded"] else ""
            if r["excluded"]:
                notes.append(f"{mark} {scale} / {r['display']}: " + "; ".join(r["excluded"]) + " — excluded.")
            if r["n_done"]:
                loss = fmt_pm(r["mean"], r["half"])
                loss = (bold(loss) if math.isclose(r["mean"], best) else loss) + mark
            else:
                loss = r["status"] + mark
            if r["reference"]:
                delta, p = "(ref.)", ""
            else:
                half = (r["delta_hi"] - r["delta_lo"]) / 2
                delta = fmt_pm(r["delta"], half, signed=True)
                p = fmt_p(r["p"])
            floor = "—" if math.isnan(r["surprise_min"]) else f"{r['surprise_min']:.3g}"
            floor += " > τ: could not close" if r["tau_below_min"] else ""
            row = ([scale] if several else []) + [tau, r["run_name"], fmt_pct(r["pass_rate"]),
                                                  fmt_pct(r["pass_rate_min_layer"]), loss, delta]
            row += ([p] if multi else []) + [floor]
            rows.append(row)

    tests = sorted(set(data.loc[~data["reference"], "test"]) - {NO_TEST})
    where = ", ".join(data["scale"].unique())
    caption = (f"Surprise threshold sweep of Full HOPE ({where} scale). Final validation loss (nats/token); "
               "Δ = run − Full HOPE at its default τ (positive = worse); best loss in bold. A relative τ is a "
               "z-score of the surprise, not in the gate's absolute units; \"gate off\" is the No Surprise variant. ")
    if multi:
        caption += f"Mean ± half-width of the {CONFIDENCE:.0%} t-interval over seeds; p: two-sided " + (
            " / ".join(tests) if tests else "test") + ". "
    caption += ("Realised pass rate: share of probe-batch tokens the run's gate let write to memory at the last "
                "checkpoint, mean over layers and seeds, and the lowest layer. Smallest surprise: the minimum "
                "per-token surprise the probe saw (over layers and seeds); an absolute τ below it could not close "
                "the gate for any token.")
    data = data.assign(excluded=data["excluded"].map(" | ".join))
    align = ["l"] * (2 + several) + ["r"] * (len(header) - 3 - several) + ["l"]
    md = markdown_table(header, rows, align=align)
    if notes:
        md += "\n\n" + "\n".join(f"{n}  " for n in notes)
    tex = latex_table(header, rows, f"{TITLE}. {caption}", "tab:sweep", notes=notes,
                      align=align)
    return TableOut(NUMBER, STEM, TITLE, caption, md, tex, data)

