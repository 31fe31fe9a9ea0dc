"""Table 3: interventions. Δ = loss(switch) − loss(as trained) with its 95% bootstrap interval, per variant and
switch, at each run's last checkpoint (hopelab.interventions; the intervene probe or `hopelab intervene`).

A switch that does not apply to a variant (no such mechanism) has no rows and shows "—".
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.artifacts import Skipped, TableOut, bold, latex_table, markdown_table
from analysis.interventions import intervention_effects, switch_name, switch_order
from analysis.load import StudyResults
from analysis.style import display_name, run_name_order

NUMBER = 3
TITLE = "Interventions"
STEM = "table3_interventions"


def _cell(r) -> str:
    if math.isnan(r["delta"]):
        return "—"
    text = f"{r['delta']:+.4f}"
    if not math.isnan(r["delta_lo"]):
        text += f" [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]"
        if r["delta_lo"] > 0 or r["delta_hi"] < 0:
            text = bold(text)
    return text.replace("-", "−")


def build(study: StudyResults, scales: list[str] | None = None) -> TableOut | Skipped:
    scales = scales or study.scales
    parts = []
    for scale in scales:
        e = intervention_effects(study, scale)
        if len(e):
            parts.append(e.assign(scale=scale))
    if not parts:
        return Skipped(NUMBER, f"Table {NUMBER} ({TITLE})", "no intervene probe rows")
    data = pd.concat(parts, ignore_index=True).drop(columns="bucket_start")
    switches = switch_order(data["switch"])
    header = ["Scale", "Variant", "loss", *[switch_name(s) for s in switches]]
    rows = []
    for scale in scales:
        sel = data[data["scale"] == scale]
        for name in run_name_order(sel["run_name"].unique()):
            r = sel[sel["run_name"] == name]
            by = r.set_index("switch")
            first = r.iloc[0]
            row = [scale, display_name(name), f"{first['loss_none']:.3f}"]
            row += [_cell(by.loc[s]) if s in by.index else "—" for s in switches]
            rows.append(row)
    n_seq = sorted({int(n) for n in data["n"]})
    n_seeds = sorted({int(n) for n in data["n_seeds"]})
    caption = (
        "Δ = loss(switch) − loss(as trained) in nats/token over all positions of the probe sequences, at each run's "
        "last checkpoint; one trained model evaluated on the same validation sequences with and without a "
        "mechanism's in-context writes, paired by sequence (Δ > 0: the writes help). In brackets the 95% percentile "
        f"bootstrap interval over sequences ({'/'.join(map(str, n_seq))} sequences over "
        f"{'/'.join(map(str, n_seeds))} seed(s); seeds resampled first); bold: the interval excludes 0. "
        "loss: the model as trained on the probe set. — : the variant lacks the mechanism (or it was not evaluated)."
    )
    md = markdown_table(header, rows, align=["l", "l"] + ["r"] * (len(header) - 2))
    tex = latex_table(header, rows, f"{TITLE}. {caption}", "tab:interventions", align=["l", "l"] + ["r"] * (
        len(header) - 2))
    return TableOut(NUMBER, STEM, TITLE, caption, md, tex, data)
