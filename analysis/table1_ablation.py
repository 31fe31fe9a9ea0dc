"""Table 1: component ablation. Final validation loss per variant and scale, Δ vs full HOPE, best in bold.

With more than one seed: mean ± 95% t-interval, and a two-sided t-test of each Δ (paired by seed when both
cells have the same finished seeds, Welch otherwise; the caption says which). Failed runs are listed under the
table and excluded from the means; a cell whose runs all failed shows e.g. "failed (loss is NaN at step 120)".
Two last rows give the unigram and bigram references of the data (hopelab.data.references), when recorded.
"""

from __future__ import annotations

import math

from analysis.artifacts import Skipped, TableOut, bold, latex_table, markdown_table
from analysis.load import StudyResults
from analysis.recall import is_recall_study
from analysis.stats import CONFIDENCE, NO_TEST, PAIRED, WELCH, fmt_p, fmt_pm
from analysis.style import display_name
from analysis.summary import REFERENCE_NAMES, ablation_summary, references_at

NUMBER = 1
TITLE = "Component ablation"
STEM = "table1_ablation"
_TEST_MARK = {PAIRED: "ᵖ", WELCH: "ʷ", NO_TEST: ""}


def _steps_text(study: StudyResults, scales: list[str]) -> str:
    parts = []
    for scale in scales:
        steps = study.runs_at(scale)["steps"].dropna().unique()
        if len(steps):
            parts.append(f"{scale}: {', '.join(str(int(s)) for s in sorted(steps))} steps")
    return "; ".join(parts)


def build(study: StudyResults, scales: list[str] | None = None) -> TableOut | Skipped:
    scales = scales or study.scales
    if is_recall_study(study):
        return Skipped(NUMBER, f"Table {NUMBER} ({TITLE})", "a recall study: its losses are on different tasks "
                       "(Table 4 and Figure 7 compare the variants)")
    data = ablation_summary(study, scales)
    if data.empty:
        return Skipped(NUMBER, f"Table {NUMBER} ({TITLE})", "no runs to compare")
    multi = bool((data["n_done"] >= 2).any())
    tests = sorted(set(data.loc[~data["reference"], "test"]) - {NO_TEST})
    mixed = len(tests) > 1

    header = ["Variant"]
    for scale in scales:
        header += [f"{scale} loss", f"{scale} Δ"] + ([f"{scale} p"] if multi else [])
    names = list(dict.fromkeys(data.sort_values("reference", ascending=False, kind="stable")["run_name"]))
    notes, marks = [], {}
    for _, r in data.iterrows():
        if r["excluded"]:
            mark = "†" * (len(marks) + 1) if len(marks) < 3 else f"[{len(marks) + 1}]"
            marks[(r["scale"], r["run_name"])] = mark
            n_txt = f"mean over the other {r['n_done']} seed(s)" if r["n_done"] else "no finished seed"
            notes.append(f"{mark} {r['scale']} / {r['display']}: " + "; ".join(r["excluded"])
                         + f" — excluded ({n_txt}).")

    best = {s: data[(data["scale"] == s) & (data["n_done"] > 0)]["mean"].min() for s in scales}
    rows = []
    for name in names:
        row = [display_name(name)]
        for scale in scales:
            sel = data[(data["scale"] == scale) & (data["run_name"] == name)]
            if sel.empty:
                row += ["—", "—"] + (["—"] if multi else [])
                continue
            r = sel.iloc[0]
            mark = marks.get((scale, name), "")
            if r["n_done"]:
                loss = fmt_pm(r["mean"], r["half"])
                loss = bold(loss) if math.isclose(r["mean"], best[scale]) else loss
                loss += mark
            else:
                loss = r["status"] + mark
            if r["reference"]:
                delta, p = "(ref.)", ""
            elif r["n_done"] and not math.isnan(r["delta"]):
                half = (r["delta_hi"] - r["delta_lo"]) / 2
                delta = fmt_pm(r["delta"], half, signed=True)
                p = fmt_p(r["p"]) + (_TEST_MARK[r["test"]] if mixed and not math.isnan(r["p"]) else "")
            else:
                delta, p = "—", "—"
            row += [loss, delta] + ([p] if multi else [])
        rows.append(row)

    refs = {s: references_at(study, s) for s in scales}
    ref_rows = []
    for name, label in REFERENCE_NAMES.items():
        if not any(name in refs[s] for s in scales):
            continue
        row = [label]
        for scale in scales:
            value = refs[scale].get(name)
            base = data.loc[(data["scale"] == scale) & data["reference"], "mean"]
            delta = value - float(base.iloc[0]) if value is not None and len(base) else math.nan
            row += ["—" if value is None else f"{value:.3f}", fmt_pm(delta, math.nan, signed=True)] + (
                [""] if multi else [])
        rows.append(row)
        ref_rows.append(name)

    seed_txt = []
    for s in scales:
        n = data.loc[(data["scale"] == s) & (data["n_done"] > 0), "n_done"]
        if len(n):
            lo, hi = int(n.min()), int(n.max())
            seed_txt.append(f"{s}: n = {lo}" if lo == hi else f"{s}: n = {lo}–{hi}")
    seed_txt = "; ".join(seed_txt)
    caption = (f"Final validation loss (nats/token) per variant and scale ({_steps_text(study, scales)}); "
               "Δ = variant − Full HOPE (positive = worse). Best per scale in bold. ")
    if multi:
        caption += (f"Mean ± half-width of the {CONFIDENCE:.0%} t-interval over n finished seeds per cell "
                    f"({seed_txt}); Δ's interval "
                    "from the same test as its p-value. ")
        if mixed:
            caption += "p: two-sided; ᵖ paired t-test by seed (same finished seeds), ʷ Welch t-test across seeds."
        elif tests:
            caption += f"p: two-sided {tests[0]}" + (" (both cells have the same finished seeds)." if tests[0] ==
                                                        PAIRED else " (the cells' finished seeds differ).")
    else:
        caption += f"One seed per cell ({seed_txt}): no interval or test."
    caption += " Failed or unfinished runs are excluded from the means and listed below." if notes else ""
    if ref_rows:
        caption += (" Unigram and bigram rows: cross-entropy on the validation split of an add-one unigram and a "
                    "Witten-Bell bigram fit on the training split, same tokenizer (hopelab.data.references); "
                    "Δ = reference − Full HOPE.")
    for name in REFERENCE_NAMES:  # the reference rows' numbers, as columns of every row of their scale
        data[f"ref_{name}"] = data["scale"].map(lambda s, n=name: refs[s].get(n, math.nan))

    data = data.assign(excluded=data["excluded"].map(" | ".join))
    md = markdown_table(header, rows)
    if notes:
        md += "\n\n" + "\n".join(f"{n}  " for n in notes)
    tex = latex_table(header, rows, f"{TITLE}. {caption}", "tab:ablation", notes=notes)
    return TableOut(NUMBER, STEM, TITLE, caption, md, tex, data)

