"""The numbers behind Figure 7, Table 4 and the recall findings: MQAR accuracy per run, cell and distance.

    runs = recall_runs(study, scale)        # one row per finished MQAR run: pairs, length, dim, accuracy
    cells = recall_cells(runs)              # per (variant, length, dim, pairs): mean, 95% interval, min–max
    capacity(cells)                         # per (variant, length, dim): the largest pairs solved at >= 90%

A run's task is read from its data spec (hopelab.data.synthetic); its accuracy is the recall probe's overall
exact-match accuracy on the answer positions of the held-out probe batch at its last probed step. Failed runs
are left out (they are listed by the report's failure finding).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.claims import Claim
from analysis.load import StudyResults
from analysis.select import last_step_rows
from analysis.stats import CONFIDENCE, NO_TEST, Delta, compare, fmt_p, mean_ci, newcombe
from analysis.style import VARIANT_ORDER, display_name
from hopelab.data.synthetic import is_synthetic, parse_synthetic
from hopelab.run import STATUS_DONE

SOLVED = 0.90  # accuracy at or above which a number of pairs counts as solved (the capacity)
ACC_EPS = 0.05  # with one seed (no interval), |Δ accuracy| at or below this is "no difference"
NEWCOMBE = "Newcombe interval over the answer positions"
REMOVES = {"hope_no_selfmod": "self-modification", "hope_no_cms": "the CMS", "hope_no_surprise": "the surprise gate"}
BASELINES = ("titans", "transformer")
THRESHOLDS = [
    f"a number of pairs counts as solved when the mean accuracy over seeds is ≥ {SOLVED:.0%}; the capacity is the "
    "largest number of pairs solved",
    f"a change of recall accuracy counts when the {CONFIDENCE:.0%} interval of Δ (paired by seed) excludes 0 (with "
    "a single seed: when the Newcombe interval of the difference of the two accuracies over the probe batch's "
    f"answers excludes 0; without answer counts, when |Δ| > {ACC_EPS:.2f}, marked as untested)",
]


def _task(data) -> dict | None:
    if not isinstance(data, str) or not is_synthetic(data):
        return None
    task = parse_synthetic(data)
    return {"task": task.name, "pairs": getattr(task, "pairs", None), "length": task.len}


def is_recall_study(study: StudyResults) -> bool:
    """Every run trained on a synthetic task: its final losses are answer losses on different tasks, so the
    loss-based ablation (Table 1, Figure 4) does not apply; Table 4 and Figure 7 do."""
    data = study.runs["data"]
    return bool(len(data)) and all(isinstance(d, str) and is_synthetic(d) for d in data)


def recall_probe_rows(study: StudyResults, scale: str, switch: str | None = None) -> pd.DataFrame:
    """The recall rows at `scale`: as trained (switch None), or measured with one intervention switch on
    (their `component`, hopelab.probes.recall)."""
    p = study.probes
    p = p[(p["scale"] == scale) & (p["probe"] == "recall")]
    return p[p["component"].isna()] if switch is None else p[p["component"] == switch]


def recall_runs(study: StudyResults, scale: str) -> pd.DataFrame:
    """Finished MQAR runs at `scale` with their task and final accuracy (last probed step, all answers)."""
    runs = study.runs_at(scale)
    runs = runs[runs["status"] == STATUS_DONE]
    tasks = [_task(d) for d in runs["data"]]
    keep = [t is not None and t["task"] == "mqar" for t in tasks]
    runs = runs[keep].copy()
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "run_name", "variant", "seed", "pairs", "length", "dim", "accuracy",
                                     "answers"])
    info = pd.DataFrame([t for t, k in zip(tasks, keep) if k], index=runs.index)
    runs["pairs"] = info["pairs"].astype(int)
    runs["length"] = info["length"].fillna(runs["context_len"]).astype(int)
    rows = recall_probe_rows(study, scale)
    for metric in ("accuracy", "answers"):
        overall = last_step_rows(rows[(rows["metric"] == metric) & rows["position"].isna()])
        runs[metric] = runs["run_id"].map(overall.set_index("run_id")["value"]).astype(float)
    runs["dim"] = runs["dim"].astype(int)
    return runs[["run_id", "run_name", "variant", "seed", "pairs", "length", "dim", "accuracy", "answers"]].dropna(
        subset=["accuracy"]).reset_index(drop=True)


def variant_order(variants) -> list[str]:
    return sorted(set(variants), key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))


def recall_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, length, dim, pairs): mean accuracy, 95% t half-width, min, max and n over seeds."""
    out = []
    for (variant, length, dim, pairs), g in runs.groupby(["variant", "length", "dim", "pairs"]):
        m = mean_ci(g["accuracy"])
        out.append({"variant": variant, "length": length, "dim": dim, "pairs": pairs, "mean": m.mean,
                    "half": m.half, "lo": g["accuracy"].min(), "hi": g["accuracy"].max(), "n": m.n})
    return pd.DataFrame(out, columns=["variant", "length", "dim", "pairs", "mean", "half", "lo", "hi", "n"])


def capacity(cells: pd.DataFrame, solved: float = SOLVED) -> pd.DataFrame:
    """Per (variant, length, dim): the largest pairs whose mean accuracy is >= `solved` (None: none is), the
    pairs tested, and the best accuracy with its pairs."""
    out = []
    for (variant, length, dim), g in cells.groupby(["variant", "length", "dim"]):
        ok = g[g["mean"] >= solved]
        best = g.loc[g["mean"].idxmax()]
        out.append({"variant": variant, "length": length, "dim": dim,
                    "capacity": int(ok["pairs"].max()) if len(ok) else None,
                    "tested": ",".join(str(int(p)) for p in sorted(g["pairs"])),
                    "best": float(best["mean"]), "best_pairs": int(best["pairs"])})
    return pd.DataFrame(out, columns=["variant", "length", "dim", "capacity", "tested", "best", "best_pairs"])


def accuracy_by_distance(study: StudyResults, scale: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run of `runs` and distance bucket (lower edge, tokens): accuracy at the run's last probed step."""
    rows = recall_probe_rows(study, scale)
    rows = last_step_rows(rows[rows["run_id"].isin(set(runs["run_id"]))])
    acc = rows[(rows["metric"] == "accuracy") & rows["position"].notna()]
    acc = acc.merge(runs[["run_id", "pairs", "length", "dim"]], on="run_id")  # variant: already a column
    return acc.rename(columns={"position": "distance"})


# ------------------------------------------------------------------------------------------------- findings


def claim(topic: str, lead: str, parts: list[str], numbers: dict | None = None) -> Claim | None:
    """One sentence: `lead` then the parts joined by "; " (capitalised); None when there is nothing to say."""
    if not parts:
        return None
    text = lead + "; ".join(parts) + "."
    return Claim(topic, text[0].upper() + text[1:], numbers or {})


def _effect(d) -> str:
    if math.isnan(d.delta):
        return "unknown"
    if d.test == NO_TEST or math.isnan(d.lo):
        return "none" if abs(d.delta) <= ACC_EPS else ("untested-up" if d.delta > 0 else "untested-down")
    return "up" if d.lo > 0 else "down" if d.hi < 0 else "none"


def _fmt(d) -> str:
    s = f"Δ = {100 * d.delta:+.1f} points"
    if d.test == NO_TEST or math.isnan(d.lo):
        return s + " (single seed)"
    if d.test == NEWCOMBE:
        return s + f" [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}], single seed: {NEWCOMBE}"
    return s + f" [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}], p = {fmt_p(d.p)}"


def _answers_delta(base: pd.DataFrame, mine: pd.DataFrame) -> Delta:
    """Δ accuracy (mine − base) over seeds (paired t); with one seed a side, Newcombe's interval over the answer
    positions of the two runs' probe batches (the same sequences; the interval treats them as independent)."""
    d = compare(base["accuracy"], mine["accuracy"])
    if d.test != NO_TEST or len(base) != 1 or len(mine) != 1:
        return d
    n = float(min(base["answers"].iloc[0], mine["answers"].iloc[0]))
    if not n > 0:
        return d
    lo, hi = newcombe(float(mine["accuracy"].iloc[0]), float(base["accuracy"].iloc[0]), n)
    return Delta(d.delta, lo, hi, math.nan, NEWCOMBE, d.n_base, d.n_other)


def _comparison(runs: pd.DataFrame, other: str, what: str, scale: str) -> Claim | None:
    """Δ accuracy (other − hope) at every (length, dim, pairs) where both ran, summarised by direction."""
    parts, numbers = [], {}
    for (length, dim), g in runs.groupby(["length", "dim"]):
        by = {}
        for pairs, cell in g.groupby("pairs"):
            base = cell[cell["variant"] == "hope"].set_index("seed")
            mine = cell[cell["variant"] == other].set_index("seed")
            if len(base) and len(mine):
                by[int(pairs)] = _answers_delta(base, mine)
        if not by:
            continue
        words = {"up": [], "down": [], "none": [], "untested-up": [], "untested-down": [], "unknown": []}
        for pairs, d in sorted(by.items()):
            words[_effect(d)].append(f"{pairs} pairs ({_fmt(d)})")
            numbers[(length, dim, pairs)] = d.delta
        said = []
        for key, verb in (("down", "lowers"), ("up", "raises"), ("untested-down", "lowers (untested)"),
                          ("untested-up", "raises (untested)")):
            if words[key]:
                said.append(f"{verb} recall accuracy at {', '.join(words[key])}")
        if words["none"]:
            said.append(f"makes no detectable difference at {', '.join(p.split(' (')[0] for p in words['none'])}")
        parts.append(f"at {scale}, len {length}, dim {dim}, {what} " + "; ".join(said))
    return claim(f"recall: {other}", "", parts, numbers)


def recall_findings(study: StudyResults, scales: list[str]) -> list[Claim]:
    """Capacity per variant, then each mechanism's and baseline's effect on recall accuracy vs Full HOPE."""
    out: list[Claim | None] = []
    for scale in scales:
        runs = recall_runs(study, scale)
        if runs.empty:
            continue
        cap = capacity(recall_cells(runs))
        parts = []
        for (length, dim), g in cap.groupby(["length", "dim"]):
            items = []
            for _, r in g.set_index("variant").loc[variant_order(g["variant"])].reset_index().iterrows():
                got = f"{int(r['capacity'])} pairs" if not pd.isna(r["capacity"]) else (
                    f"none (best {100 * r['best']:.0f}% at {r['best_pairs']} pairs)")
                items.append(f"{display_name(r['variant'])} {got}")
            text = f"at {scale}, len {length}, dim {dim} (pairs tested {g['tested'].iloc[0]}): " + ", ".join(items)
            cells = recall_cells(runs[(runs["length"] == length) & (runs["dim"] == dim)])
            below = [v for v, c in cells.groupby("variant") if (c["mean"] < 1 / c["pairs"]).all()]
            if below:  # 1/pairs: guessing among the sequence's own values
                text += (" — below 1/pairs (the accuracy of guessing among the sequence's own values) at every "
                         "number of pairs tested: " + ", ".join(display_name(v) for v in variant_order(below)))
            parts.append(text)
        out.append(claim("recall capacity", f"Recall capacity (largest pairs at ≥ {SOLVED:.0%} accuracy): ",
                         parts))
        if "hope" in set(runs["variant"]):
            for variant, what in REMOVES.items():
                if variant in set(runs["variant"]):
                    out.append(_comparison(runs, variant, f"removing {what} (vs Full HOPE)", scale))
            for variant in BASELINES:
                if variant in set(runs["variant"]):
                    out.append(_comparison(runs, variant, f"{display_name(variant)} instead of Full HOPE", scale))
    return [c for c in out if c is not None]
