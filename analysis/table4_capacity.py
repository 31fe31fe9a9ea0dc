"""Table 4: recall capacity. Per variant, sequence length and width: the largest number of key-value pairs
solved at >= 90% accuracy (synthetic MQAR), beside the accuracy at every number of pairs tested.
"""

from __future__ import annotations

import pandas as pd

from analysis.artifacts import Skipped, TableOut, latex_table, markdown_table
from analysis.load import StudyResults
from analysis.recall import SOLVED, capacity, recall_cells, recall_runs, variant_order
from analysis.stats import CONFIDENCE, fmt_pm
from analysis.style import display_name

NUMBER = 4
TITLE = "Recall capacity"
STEM = "table4_capacity"


def build(study: StudyResults, scales: list[str] | None = None) -> TableOut | Skipped:
    scales = scales or study.scales
    frames = []
    for scale in scales:
        cells = recall_cells(recall_runs(study, scale))
        if len(cells):
            frames.append((scale, cells, capacity(cells)))
    if not frames:
        return Skipped(NUMBER, f"Table {NUMBER} ({TITLE})", "no finished run on a synthetic MQAR task")
    several = len(frames) > 1
    all_pairs = sorted({int(p) for _, cells, _ in frames for p in cells["pairs"]})
    header = (["Scale"] if several else []) + ["Variant", "len", "dim", "Capacity"] + [f"{p} pairs" for p in all_pairs]
    rows, data = [], []
    for scale, cells, cap in frames:
        for (length, dim), g in cap.groupby(["length", "dim"]):
            for variant in variant_order(g["variant"]):
                r = g[g["variant"] == variant].iloc[0]
                cap_txt = str(int(r["capacity"])) if not pd.isna(r["capacity"]) else f"< {min(all_pairs)}"
                row = ([scale] if several else []) + [display_name(variant), str(length), str(dim), cap_txt]
                for p in all_pairs:
                    c = cells[(cells["variant"] == variant) & (cells["length"] == length) & (cells["dim"] == dim)
                              & (cells["pairs"] == p)]
                    row.append(fmt_pm(100 * c["mean"].iloc[0], 100 * c["half"].iloc[0], digits=1) if len(c) else "—")
                rows.append(row)
                data.append({"scale": scale, **r.to_dict()})
    n = sorted({int(v) for _, cells, _ in frames for v in cells["n"]})
    caption = (f"Recall capacity on synthetic MQAR: the largest number of key-value pairs whose mean exact-match "
               f"accuracy on the answer positions (held-out probe batch, last checkpoint) is ≥ {SOLVED:.0%}; "
               f"\"< {min(all_pairs)}\": no number of pairs tested is solved. Then the accuracy (%) at each number "
               f"of pairs: mean ± half-width of the {CONFIDENCE:.0%} t-interval over seeds (seeds per cell: "
               f"{', '.join(map(str, n))}).")
    align = ["l"] * (1 + several) + ["r"] * (len(header) - 1 - several)
    md = markdown_table(header, rows, align=align)
    tex = latex_table(header, rows, f"{TITLE}. {caption}", "tab:recall", align=align)
    return TableOut(NUMBER, STEM, TITLE, caption, md, tex, pd.DataFrame(data))
