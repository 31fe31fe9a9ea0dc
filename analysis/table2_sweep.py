"""Table 2: surprise-threshold sweep. hope runs whose surprise_threshold differs (run names hope-tau<τ>).

Per threshold: final validation loss, Δ vs full HOPE at its default threshold (with interval and test when
there are seeds), and the gate pass rate at that run's own threshold at its last checkpoint (from probes).
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
    header = (["Scale"] if several else []) + ["Threshold τ", "Run", "Final loss", "Δ vs Full HOPE"] + (
        ["p"] if multi else []) + ["Gate pass rate at τ", "min over layers"]
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
            row = ([scale] if several else []) + [tau, r["run_name"], loss, delta] + ([p] if multi else [])
            row += [fmt_pct(r["pass_rate"]), fmt_pct(r["pass_rate_min_layer"])]
            rows.append(row)

    tests = sorted(set(data.loc[~data["reference"], "test"]) - {NO_TEST})
    where = ", ".join(data["scale"].unique())
    caption = (f"Surprise threshold sweep of Full HOPE ({where} scale). Final validation loss (nats/token); "
               "Δ = run − Full HOPE at its default τ (positive = worse); best loss in bold. A relative τ is a "
               "z-score of the surprise, not in the gate's absolute units; \"gate off\" is the No Surprise variant. ")
    if multi:
        caption += f"Mean ± half-width of the {CONFIDENCE:.0%} t-interval over seeds; p: two-sided " + (
            " / ".join(tests) if tests else "test") + ". "
    caption += ("Gate pass rate: share of probe-batch tokens whose surprise exceeds the run's own τ (tokens "
                "that write to memory) at the last checkpoint, mean over layers and seeds, and the lowest layer.")
    data = data.assign(excluded=data["excluded"].map(" | ".join))
    md = markdown_table(header, rows, align=["l"] * (2 + several) + ["r"] * (len(header) - 2 - several))
    if notes:
        md += "\n\n" + "\n".join(f"{n}  " for n in notes)
    tex = latex_table(header, rows, f"{TITLE}. {caption}", "tab:sweep", notes=notes,
                      align=["l"] * (2 + several) + ["r"] * (len(header) - 2 - several))
    return TableOut(NUMBER, STEM, TITLE, caption, md, tex, data)

