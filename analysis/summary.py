"""The numbers behind Table 1, Table 2, Figure 4 and the findings: one computation, used by all of them.

    ablation_summary(study)        one row per (scale, run name): final loss over seeds, Δ vs full HOPE
    sweep_summary(study, scale)    one row per surprise threshold of hope at a scale, with the gate pass rate

Means, intervals and tests use finished runs only (see analysis.stats); failed runs are counted and labelled.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.load import StudyResults, failure_label
from analysis.select import last_step_rows
from analysis.stats import compare, final_losses, losses_by_seed, mean_ci
from analysis.style import display_name, run_name_order
from hopelab.config import SCALES, ModelConfig, TrainConfig, get_scale, to_dict
from hopelab.errors import UserError
from hopelab.run import STATUS_DONE, STATUS_FAILED

BASELINE = "hope"  # the variant every Δ is measured against


def parse_overrides(text: str | None) -> dict | None:
    """A run's overrides from the runs table's JSON text ("" for none: {}); None when unreadable."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return None


def _norm(v):
    return json.loads(json.dumps(v, default=list))  # tuples and lists compare equal


def _is_default(overrides: dict, common: dict, scale: str) -> bool:
    """Whether a run's own overrides (those not shared by every run of the scale, such as a study-wide
    `--set dim=32`) leave the scale's preset config unchanged: hope-tau0.02 is then full HOPE."""
    try:
        preset = get_scale(scale)
        defaults = {**to_dict(preset.train), **to_dict(preset.model)}
    except UserError:
        defaults = {**to_dict(TrainConfig()), **to_dict(ModelConfig())}
    own = {k: v for k, v in overrides.items() if k not in common or _norm(common[k]) != _norm(v)}
    return all(k in defaults and _norm(v) == _norm(defaults[k]) for k, v in own.items())


def reference_run_name(study: StudyResults, scale: str) -> str | None:
    """Full HOPE at this scale: the untagged hope run, else a tagged hope run whose overrides equal the
    defaults (a sweep or periods study has no untagged hope: hope-tau0.02 or hope-p8-32 is the reference)."""
    runs = study.runs_at(scale)
    hope = runs[runs["variant"] == BASELINE]
    if (hope["run_name"] == BASELINE).any():
        return BASELINE
    per_name = {n: parse_overrides(g["overrides"].dropna().iloc[0]) for n, g in runs.groupby("run_name")
                if g["overrides"].notna().any()}
    per_name = {n: o for n, o in per_name.items() if o is not None}
    common = dict(set.intersection(*[{(k, json.dumps(_norm(v))) for k, v in o.items()} for o in per_name.values()])
                  ) if per_name else {}
    common = {k: json.loads(v) for k, v in common.items()}
    for name in run_name_order(hope["run_name"].dropna().unique()):
        if name in per_name and _is_default(per_name[name], common, scale):
            return name
    return None


def _gate_setting(runs: pd.DataFrame, run_name: str) -> tuple[float | None, str | None]:
    g = runs[runs["run_name"] == run_name]
    tau = g["surprise_threshold"].dropna()
    mode = g["surprise_mode"].dropna()
    return (float(tau.iloc[0]) if len(tau) else None), (str(mode.iloc[0]) if len(mode) else None)


def sweep_run_names(study: StudyResults, scale: str) -> list[str]:
    """hope runs (not the reference) whose surprise threshold or mode differs from the reference's."""
    runs = study.runs_at(scale)
    ref = reference_run_name(study, scale)
    if ref is not None:
        ref_tau, ref_mode = _gate_setting(runs, ref)
    else:
        preset = get_scale(scale).model if scale in SCALES else ModelConfig()
        ref_tau, ref_mode = preset.surprise_threshold, preset.surprise_mode
    names = []
    for name in runs.loc[(runs["variant"] == BASELINE) & (runs["run_name"] != ref), "run_name"].dropna().unique():
        tau, mode = _gate_setting(runs, name)
        if tau is None:
            continue
        if (mode or "absolute") != (ref_mode or "absolute") or ref_tau is None or not np.isclose(tau, ref_tau):
            names.append(name)
    return run_name_order(names)


def ablation_run_names(study: StudyResults, scale: str) -> list[str]:
    """The reference first, then every run name that is not part of the surprise sweep (paper order)."""
    sweep = set(sweep_run_names(study, scale))
    ref = reference_run_name(study, scale)
    names = [n for n in run_name_order(study.runs_at(scale)["run_name"].dropna().unique()) if n not in sweep]
    return ([ref] if ref in names else []) + [n for n in names if n != ref]


def _cell(study: StudyResults, scale: str, run_name: str, base_losses: pd.Series, reference: str | None) -> dict:
    runs = study.runs_at(scale)
    cell = runs[runs["run_name"] == run_name].sort_values("seed")
    ok = final_losses(cell)
    losses = pd.Series(ok["final_val_loss"].to_numpy(), index=ok["seed"].astype(int).to_numpy(), dtype="float64")
    m = mean_ci(losses)
    d = compare(base_losses, losses)
    not_done = cell[cell["status"] != STATUS_DONE]
    excluded = [f"seed {int(r.seed) if not pd.isna(r.seed) else '?'}: {failure_label(r._asdict())}"
                for r in not_done.itertuples(index=False)]
    status = STATUS_DONE if m.n else (
        failure_label(not_done.iloc[0].to_dict()) if len(not_done) else "no runs")
    return {
        "scale": scale, "run_name": run_name, "variant": str(cell["variant"].iloc[0]) if len(cell) else run_name,
        "display": display_name(run_name), "reference": run_name == reference, "n_runs": len(cell), "n_done": m.n,
        "n_failed": int((cell["status"] == STATUS_FAILED).sum()), "status": status, "excluded": excluded,
        "seeds": ",".join(str(s) for s in losses.index), "mean": m.mean, "half": m.half, "lo": m.lo, "hi": m.hi,
        "delta": d.delta, "delta_lo": d.lo, "delta_hi": d.hi, "p": d.p, "test": d.test,
        "n_params": float(cell["n_params"].dropna().mean()) if cell["n_params"].notna().any() else math.nan,
        "surprise_threshold": float(cell["surprise_threshold"].dropna().iloc[0])
        if cell["surprise_threshold"].notna().any() else math.nan,
        "surprise_mode": str(cell["surprise_mode"].dropna().iloc[0]) if cell["surprise_mode"].notna().any() else "",
    }


def _base_losses(study: StudyResults, scale: str, reference: str | None) -> pd.Series:
    if reference is None:
        return pd.Series(dtype="float64")
    return losses_by_seed(study.runs, scale, reference)


def ablation_summary(study: StudyResults, scales: list[str] | None = None) -> pd.DataFrame:
    """One row per (scale, ablation run name), reference first. delta = mean(run) − mean(reference)."""
    rows = []
    for scale in scales or study.scales:
        ref = reference_run_name(study, scale)
        base = _base_losses(study, scale, ref)
        rows += [_cell(study, scale, name, base, ref) for name in ablation_run_names(study, scale)]
    return pd.DataFrame(rows)


def gate_pass_rate(study: StudyResults, scale: str, run_name: str, threshold: float) -> tuple[float, float, int]:
    """(mean over layers and seeds, min over layers of the seed mean, n seeds) of the gate pass rate at
    `threshold`, at each finished run's last probed step. NaN when the probe has no row at that threshold."""
    runs = study.runs_at(scale)
    ids = set(runs.loc[(runs["run_name"] == run_name) & (runs["status"] == STATUS_DONE), "run_id"])
    p = study.probes
    rows = p[p["run_id"].isin(ids) & (p["probe"] == "surprise") & (p["metric"] == "gate_pass_rate")]
    rows = last_step_rows(rows)
    rows = rows[np.isclose(rows["threshold"].astype(float), threshold, rtol=1e-6, atol=1e-12)]
    if rows.empty:
        return math.nan, math.nan, 0
    per_layer = rows.groupby(["layer"], dropna=False)["value"].mean()  # mean over seeds per layer
    return float(per_layer.mean()), float(per_layer.min()), int(rows["seed"].nunique())


def smallest_surprise(study: StudyResults, scale: str, run_name: str) -> float:
    """The smallest per-token surprise the probe saw in a run (min over layers and finished seeds) at each run's
    last probed step; NaN without surprise rows."""
    runs = study.runs_at(scale)
    ids = set(runs.loc[(runs["run_name"] == run_name) & (runs["status"] == STATUS_DONE), "run_id"])
    p = study.probes
    rows = last_step_rows(p[p["run_id"].isin(ids) & (p["probe"] == "surprise") & (p["metric"] == "min")
                            & p["layer"].notna()])
    return float(rows["value"].min()) if len(rows) else math.nan


def gate_operating_points(study: StudyResults, scale: str) -> pd.DataFrame:
    """One row per gated run name at `scale` (any hope run whose gate is not off): its gate mode and τ, the
    realised pass rate at the last checkpoint, the smallest surprise it saw, and `could_close`: False when an
    absolute τ is below that smallest surprise or every token passed (the gate did nothing), NaN unknown."""
    runs = study.runs_at(scale)
    rows = []
    for name in run_name_order(runs["run_name"].dropna().unique()):
        tau, mode = _gate_setting(runs, name)
        if tau is None or mode == "off" or not (runs.loc[runs["run_name"] == name, "status"] == STATUS_DONE).any():
            continue
        rate, _, _ = gate_pass_rate(study, scale, name, tau)
        floor = smallest_surprise(study, scale, name)
        below = mode != "relative" and not math.isnan(floor) and tau < floor
        could = math.nan if math.isnan(rate) and math.isnan(floor) else float(not (below or rate >= 1.0))
        rows.append({"scale": scale, "run_name": name, "display": display_name(name), "surprise_mode": mode or "",
                     "surprise_threshold": tau, "pass_rate": rate, "surprise_min": floor, "tau_below_min": below,
                     "could_close": could})
    return pd.DataFrame(rows)


def sweep_summary(study: StudyResults, scale: str) -> pd.DataFrame:
    """The reference (default τ), every sweep run, and the gate-off variant when the study has it; absolute
    thresholds in increasing order, then relative-mode runs, then the gate off."""
    names = sweep_run_names(study, scale)
    if not names:
        return pd.DataFrame()
    ref = reference_run_name(study, scale)
    base = _base_losses(study, scale, ref)
    present = set(study.runs_at(scale)["run_name"].dropna())
    off = [n for n in ("hope_no_surprise",) if n in present]
    rows = [_cell(study, scale, n, base, ref) for n in ([ref] if ref else []) + names + off]
    for r in rows:
        tau = r["surprise_threshold"]
        r["gate_off"] = r["surprise_mode"] == "off"
        r["pass_rate"], r["pass_rate_min_layer"], r["pass_rate_seeds"] = (
            gate_pass_rate(study, scale, r["run_name"], tau) if not math.isnan(tau) else (math.nan, math.nan, 0))
        r["surprise_min"] = smallest_surprise(study, scale, r["run_name"])
        r["tau_below_min"] = (not r["gate_off"] and r["surprise_mode"] != "relative"
                              and bool(tau < r["surprise_min"]))  # the gate could not close
        r["order"] = (2 if r["gate_off"] else 1 if r["surprise_mode"] == "relative" else 0, tau)
    out = pd.DataFrame(rows).sort_values("order", kind="stable").drop(columns="order")
    return out.reset_index(drop=True)


REFERENCE_NAMES = {"unigram": "Unigram (reference)", "bigram": "Bigram (reference)"}


def references_at(study: StudyResults, scale: str) -> dict[str, float]:
    """{"unigram": nats, "bigram": nats} of the data the runs at `scale` trained on (hopelab.data.references),
    taken from full HOPE's runs when they have them, else from any run; {} when no run recorded them (a
    study trained before references were stored). Runs on other data (a --set vocab_size cell) differ: the
    reference run's data is the one Table 1 compares against."""
    runs = study.runs_at(scale)
    ref = reference_run_name(study, scale)
    own = runs[runs["run_name"] == ref] if ref else runs.iloc[:0]
    out = {}
    for name in REFERENCE_NAMES:
        values = own[f"ref_{name}"].dropna()
        values = values if len(values) else runs[f"ref_{name}"].dropna()
        if len(values):
            out[name] = float(values.median())
    return out
