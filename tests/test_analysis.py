"""analysis/: loading a study directory, the tables' numbers, every figure and table file, the CLI.

Everything renders from the synthetic study of tests/synthetic_study.py (two scales, three seeds, a threshold
sweep and one failed run at the tiny scale, one running and one pending run at the small one). Figures are the
cost: the full report is drawn once for the tiny scale (`--scale` path) at a low dpi, figure 4 across both
scales through the CLI, and the tables for both scales.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from analysis import load_results, render_report
from analysis.artifacts import Skipped
from analysis.findings import GATE_NOOP, compute_findings
from analysis.intervention_findings import intervention_findings
from analysis.load import RUN_DTYPES
from analysis.report import render_figures, render_tables
from analysis.stats import PAIRED, WELCH, compare, mean_ci
from analysis.summary import reference_run_name

try:
    from synthetic_study import FAILED, build_synthetic_study
except ImportError:  # tests/ imported as a package
    from tests.synthetic_study import FAILED, build_synthetic_study

DPI = 40  # small PNGs: rendering is the cost of these tests


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    return build_synthetic_study(tmp_path_factory.mktemp("runs"), in_progress=True)


@pytest.fixture(scope="module")
def study(study_root):
    return load_results(study_root)


@pytest.fixture(scope="module")
def tiny(study_root):
    return load_results(study_root, scale="tiny")


@pytest.fixture(scope="module")
def report(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    render_report(tiny, out, command="hopelab report synth --scale tiny", dpi=DPI)
    return out


@pytest.fixture(scope="module")
def tables(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    render_tables(study, out)
    return out


def _manifests(root: Path) -> pd.DataFrame:
    """Final losses read straight from the run directories, without analysis.load."""
    rows = []
    for path in root.rglob("manifest.json"):
        man = json.loads(path.read_text())
        cfg = json.loads((path.parent / "config.json").read_text())
        spec = cfg["spec"]
        rows.append({"scale": spec["scale"], "run_name": path.parent.parent.name, "seed": spec["seed"],
                     "status": man["status"], "loss": man["final_val_loss"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- loading


def test_load_runs_metrics_probes_with_fixed_dtypes(study, study_root):
    runs = study.runs
    assert list(runs.columns) == list(RUN_DTYPES)
    assert {c: str(t) for c, t in runs.dtypes.items()} == {c: str(pd.Series([], dtype=d).dtype)
                                                            for c, d in RUN_DTYPES.items()}
    n_dirs = len(list(study_root.rglob("manifest.json")))
    assert len(runs) == n_dirs + 1  # + the pending run named only in study.json
    assert study.scales == ["tiny", "small"]
    assert set(runs["status"]) == {"done", "failed", "running", "pending"}
    scale, variant, seed, step = FAILED
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert (failed["scale"], failed["variant"], failed["seed"], failed["failed_step"]) == (scale, variant, seed, step)
    assert math.isnan(failed["final_val_loss"]) and failed["reason"] == "loss is NaN"
    sweep = runs[runs["run_name"] == "hope-tau0.005"]
    assert (sweep["tag"] == "tau0.005").all() and np.allclose(sweep["surprise_threshold"], 0.005)
    # every metric and probe row belongs to a known run and carries its run name
    assert set(study.metrics["run_id"]) <= set(runs["run_id"])
    assert study.metrics["run_name"].notna().all() and study.probes["run_name"].notna().all()
    assert set(study.probes["probe"]) == {"cms", "selfmod", "surprise", "gradflow", "intervene"}
    assert str(study.probes["layer"].dtype) == "Int64" and str(study.probes["threshold"].dtype) == "float64"


def test_load_one_scale_directory_and_scale_option(study_root, tiny):
    small = load_results(study_root / "small")
    assert small.scale == "small" and set(small.runs["scale"]) == {"small"}
    assert small.name == "synth" and small.meta.get("command", "").startswith("hopelab study")
    assert set(small.metrics["scale"]) == {"small"} and set(small.probes["scale"]) == {"small"}
    assert tiny.scale == "tiny" and set(tiny.runs["scale"]) == {"tiny"} and set(tiny.metrics["scale"]) == {"tiny"}


def test_load_survives_a_corrupt_probe_file(tmp_path):
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0,), variants=["hope", "transformer"],
                                 sweep=(), failed=None)
    bad = root / "tiny" / "hope" / "seed0" / "probes" / "cms-step50.parquet"
    bad.write_bytes(b"not parquet")
    study = load_results(root)
    assert any("cms-step50.parquet" in n for n in study.notes)
    cms = study.probes[study.probes["probe"] == "cms"]
    assert set(cms["step"]) == {0, 100, 150} and (study.probes["probe"] == "surprise").any()


# ---------------------------------------------------------------- statistics


def test_compare_paired_welch_and_single_seed_against_scipy():
    base = pd.Series([5.0, 5.1, 4.9], index=[0, 1, 2])
    other = pd.Series([5.3, 5.35, 5.2], index=[0, 1, 2])
    d = compare(base, other)
    diff = other - base
    lo, hi = stats.t.interval(0.95, 2, loc=diff.mean(), scale=diff.std(ddof=1) / math.sqrt(3))
    assert d.test == PAIRED and d.delta == pytest.approx(diff.mean())
    assert (d.lo, d.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert d.p == pytest.approx(stats.ttest_rel(other, base).pvalue)
    w = compare(base, other.iloc[:2])  # different seeds -> Welch
    assert w.test == WELCH and w.p == pytest.approx(stats.ttest_ind(other.iloc[:2], base, equal_var=False).pvalue)
    one = compare(base.iloc[:1], other.iloc[:1])
    assert math.isnan(one.p) and math.isnan(one.lo) and one.delta == pytest.approx(0.3)
    m = mean_ci([1.0, 2.0, 4.0])
    assert m.half == pytest.approx(stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3))


# ---------------------------------------------------------------- tables


def test_table1_numbers_equal_an_independent_computation(tables, study_root):
    data = pd.read_csv(tables / "table1_ablation.csv")
    md = (tables / "table1_ablation.md").read_text()
    raw = _manifests(study_root)
    done = raw[raw["status"] == "done"]
    sweep = {"hope-tau0.005", "hope-tau0.05"}
    assert set(data["run_name"]) == set(raw["run_name"]) - sweep
    for _, row in data.iterrows():
        cell = done[(done["scale"] == row["scale"]) & (done["run_name"] == row["run_name"])].set_index("seed")["loss"]
        base = done[(done["scale"] == row["scale"]) & (done["run_name"] == "hope")].set_index("seed")["loss"]
        n = len(cell)
        assert row["n_done"] == n
        assert row["mean"] == pytest.approx(cell.mean(), abs=1e-12)
        half = stats.t.ppf(0.975, n - 1) * cell.std(ddof=1) / math.sqrt(n)
        assert row["half"] == pytest.approx(half, abs=1e-12)
        assert f"{cell.mean():.3f} ± {half:.3f}" in md
        assert row["delta"] == pytest.approx(cell.mean() - base.mean(), abs=1e-12)
        if row["run_name"] == "hope":
            continue
        if set(cell.index) == set(base.index):
            assert row["test"] == PAIRED
            p = stats.ttest_rel(cell.sort_index(), base.sort_index()).pvalue
        else:
            assert row["test"] == WELCH
            p = stats.ttest_ind(cell, base, equal_var=False).pvalue
        assert row["p"] == pytest.approx(p, rel=1e-9)
    # best per scale in bold
    for scale in ("tiny", "small"):
        best = data[data["scale"] == scale].sort_values("mean").iloc[0]
        assert f"**{best['mean']:.3f} ± {best['half']:.3f}**" in md


def test_failed_run_is_marked_and_excluded_from_the_mean(report, tables):
    scale, variant, seed, step = FAILED
    md = (tables / "table1_ablation.md").read_text()
    assert f"seed {seed}: failed (loss is NaN at step {step})" in md
    assert "seed 3: running" in md and "seed 3: pending" in md  # the unfinished runs are listed too
    data = pd.read_csv(tables / "table1_ablation.csv")
    row = data[(data["scale"] == scale) & (data["run_name"] == variant)].iloc[0]
    assert row["n_failed"] == 1 and row["n_done"] == 2 and row["test"] == WELCH
    readme = (report / "README.md").read_text()
    assert f"{scale}/{variant}/seed{seed} failed (loss is NaN at step {step})" in readme
    assert "1 failed run(s)" in readme  # figure 5's caption


def test_a_cell_whose_runs_all_failed_shows_failed_with_one_seed(tmp_path):
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0,), sweep=(),
                                 variants=["hope", "hope_no_cms", "transformer"], failed=("tiny", "hope_no_cms", 0, 60))
    study = load_results(root)
    tables = render_tables(study, tmp_path / "tables")
    md = tables[0].markdown
    assert "failed (loss is NaN at step 60)" in md
    assert "tiny p" not in md  # one seed: no test column
    assert "One seed per cell" in tables[0].caption
    assert isinstance(tables[1], Skipped)  # no sweep
    text = " ".join(f.text for f in compute_findings(study))
    assert "single seed, no interval" in text


def test_table2_sweep_pass_rates_come_from_the_probes(report, study_root):
    data = pd.read_csv(report / "tables" / "table2_sweep.csv")
    assert list(data["run_name"]) == ["hope-tau0.005", "hope-tau0.05", "hope", "hope_no_surprise"]
    assert list(data["gate_off"]) == [False, False, False, True]  # absolute τ ascending, relative, gate off
    for _, row in data.iterrows():
        vals = []
        for seed_dir in (study_root / "tiny" / row["run_name"]).iterdir():
            p = pd.concat(pq.read_table(f).to_pandas() for f in (seed_dir / "probes").glob("surprise-*.parquet"))
            p = p[(p["metric"] == "gate_pass_rate") & np.isclose(p["threshold"], row["surprise_threshold"])]
            vals.append(p[p["step"] == p["step"].max()])
        v = pd.concat(vals)
        assert row["pass_rate"] == pytest.approx(v.groupby("layer")["value"].mean().mean(), abs=1e-12)
        assert row["pass_rate_min_layer"] == pytest.approx(v.groupby("layer")["value"].mean().min(), abs=1e-12)
    assert data.loc[3, "pass_rate"] == 1.0
    md = (report / "tables" / "table2_sweep.md").read_text()
    assert "0 (relative) (default)" in md and "hope-tau0.005" in md and "| gate off | hope_no_surprise |" in md


def test_a_sweep_study_without_untagged_hope_uses_the_default_threshold_as_reference(tmp_path):
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0, 1), variants=["hope_no_surprise"],
                                 sweep=(0.005, "relative", 0.05), failed=None, overrides={"dim": 32})
    study = load_results(root)
    assert reference_run_name(study, "tiny") == "hope-relative"  # its only own overrides are the default gate
    t1, t2, _, t4 = render_tables(study, tmp_path / "tables")
    assert isinstance(t4, Skipped)  # recall capacity: no run on a synthetic task
    assert list(t1.data["run_name"]) == ["hope-relative", "hope_no_surprise"] and t1.data["reference"].iloc[0]
    assert list(t2.data["run_name"]) == ["hope-tau0.005", "hope-tau0.05", "hope-relative", "hope_no_surprise"]
    assert "0 (relative) (default)" in t2.markdown and "| gate off |" in t2.markdown
    ref = t2.data.set_index("run_name").loc["hope-relative", "mean"]
    off = t2.data.set_index("run_name").loc["hope_no_surprise"]
    assert off["delta"] == pytest.approx(off["mean"] - ref, abs=1e-12)


def test_table3_deltas_equal_a_paired_computation_from_the_files(tables, study_root):
    """Table 3's Δ of each switch equals the mean over seeds of the per-sequence differences read straight from
    the intervene files at the last step; its interval covers the synthetic truth and excludes 0; a variant
    without the mechanism shows "—"."""
    from synthetic_study import intervene_delta

    data = pd.read_csv(tables / "table3_interventions.csv")
    files = [f for f in study_root.glob("tiny/hope/seed*/probes/intervene-step150.parquet")]
    rows = pd.concat([pq.read_table(f).to_pandas() for f in files])
    seq = rows[rows["metric"] == "seq_loss"].pivot_table(index=["seed", "level"], columns="component", values="value")
    T = int(rows.loc[rows["metric"] == "loss", "position"].max()) + 1
    for switch in ("selfmod_writes_off", "cms_writes_off", "all_writes_off"):
        by_hand = (seq[switch] - seq["none"]).groupby(level="seed").mean().mean()
        r = data[(data["scale"] == "tiny") & (data["run_name"] == "hope") & (data["switch"] == switch)].iloc[0]
        assert r["delta"] == pytest.approx(by_hand, abs=1e-12) and r["n"] == 48 and r["n_seeds"] == 3
        truth = intervene_delta(switch, "hope", 1.0, np.arange(T, dtype=float)).mean()
        assert r["delta_lo"] < truth < r["delta_hi"] and r["delta_lo"] > 0
    md = (tables / "table3_interventions.md").read_text()
    titans = next(line for line in md.splitlines() if line.startswith("| tiny | Titans"))
    assert titans.count("—") == 4  # no SR-Titans, CMS or gate: four switches do not apply
    gate_open = data[(data["run_name"] == "hope") & (data["switch"] == "gate_open")]
    assert (gate_open["delta_lo"] < 0).all() and (gate_open["delta_hi"] > 0).all()  # no effect: across 0


def _with_selfmod_delta(study, scale_by):
    """The study with hope's selfmod_writes_off rows replaced by the as-trained ones shifted by `scale_by(row)`."""
    probes = study.probes.copy()
    iv = (probes["probe"] == "intervene") & (probes["run_name"] == "hope")
    none = probes[iv & (probes["component"] == "none")]
    key = ["run_id", "step", "metric", "level", "position"]
    base = probes[iv & (probes["component"] == "selfmod_writes_off")].merge(none[key + ["value"]], on=key,
                                                                             suffixes=("", "_none"))
    shifted = base.assign(value=base["value_none"] + base.apply(scale_by, axis=1)).drop(columns="value_none")
    probes = pd.concat([probes[~(iv & (probes["component"] == "selfmod_writes_off"))], shifted], ignore_index=True)
    return type(study)(root=study.root, name=study.name, runs=study.runs, metrics=study.metrics, probes=probes,
                       meta=study.meta)


def test_intervention_findings_rest_on_the_intervals(tiny):
    """Continual adaptation only when Δ(SR-Titans writes off) > 0 and rises with position (the synthetic truth);
    with the writes made harmless and the meta-state moved: an initialisation shift; with a flat Δ: neither."""
    def claim(study):
        return next(f for f in intervention_findings(study) if f.topic == "self-modification (intervention)")

    c = claim(tiny)
    assert c.numbers["tiny"]["verdict"] == "continual adaptation" and c.numbers["tiny"]["rise_lo"] > 0
    assert "continual adaptation" in c.text and f"{c.numbers['tiny']['delta']:+.4f}" in c.text
    def spread(r):  # ±0.01 by sequence and ±0.005 more late in the sequence: no mean effect, no mean rise
        if pd.isna(r["level"]):
            return 0.0
        sign, late = (1 if r["level"] % 2 else -1), (1 if r["level"] // 2 % 2 else -1)
        return 0.01 * sign + (0.005 * late if pd.notna(r["position"]) and r["position"] > 60 else 0.0)

    c = claim(_with_selfmod_delta(tiny, spread))
    assert c.numbers["tiny"]["lo"] < 0 < c.numbers["tiny"]["hi"] and c.numbers["tiny"]["meta_drift"] > 0.05
    assert "an initialisation shift" in c.text
    c = claim(_with_selfmod_delta(tiny, lambda r: 0.03 + spread(r)))  # helps, evenly along the sequence
    assert c.numbers["tiny"]["lo"] > 0 and "does not grow along the sequence" in c.text
    benefit = next(f for f in intervention_findings(tiny) if f.topic == "interventions")
    assert "gate open" in benefit.text and "(not detectable)" in benefit.text and "(counts)" in benefit.text


# ---------------------------------------------------------------- figures and report


def test_every_figure_and_table_file_is_written(report):
    figs = report / "figures"
    stems = [f"fig{n}_{k}_tiny" for n, k in [(1, "cms"), (2, "selfmod"), (3, "surprise"), (5, "curves"),
                                             (6, "interventions")]]
    stems += ["fig4_importance"]
    for stem in stems:
        png, pdf = figs / f"{stem}.png", figs / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000, stem
    for stem in ("table1_ablation", "table2_sweep", "table3_interventions"):
        for ext in ("md", "tex", "csv"):
            assert (report / "tables" / f"{stem}.{ext}").stat().st_size > 200
    tex = (report / "tables" / "table1_ablation.tex").read_text()
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex and "**" not in tex
    readme = (report / "README.md").read_text()
    for stem in stems:
        assert f"(figures/{stem}.png)" in readme and f"(figures/{stem}.pdf)" in readme
    assert "fig1_cms_small" not in readme  # --scale tiny
    for needed in ("hopelab report synth", "hopelab study synth", "Hardware:", "Wall time:", "seeds 0, 1, 2",
                   "steps 150", "## Findings", "### Table 1", "### Table 2"):
        assert needed in readme, needed


def test_the_report_names_no_folder_of_the_machine_that_made_it(report, study_root):
    readme = (report / "README.md").read_text()
    assert str(study_root.parent) not in readme and f"`{study_root.name}`" in readme


def test_findings_carry_the_computed_numbers(report, study):
    readme = (report / "README.md").read_text()
    data = pd.read_csv(report / "tables" / "table1_ablation.csv")
    r = data[(data["scale"] == "tiny") & (data["run_name"] == "hope_no_selfmod")].iloc[0]
    claim = f"At tiny, removing self-modification hurts: Δ = {r['delta']:+.3f} nats (95% CI [{r['delta_lo']:+.3f}"
    assert claim in readme
    both = " ".join(f.text for f in compute_findings(study))
    r2 = pd.read_csv(report / "tables" / "table1_ablation.csv")  # tiny only
    assert "at small, removing self-modification hurts" in both and "from tiny to small" in both
    assert len(r2["scale"].unique()) == 1
    assert "the gate is selective" in readme and "largely redundant" in readme


def test_findings_follow_the_numbers_not_a_script(study):
    """Make self-modification help and the gate selective: the wording must flip."""
    runs = study.runs.copy()
    base = runs[(runs["run_name"] == "hope")].set_index(["scale", "seed"])["final_val_loss"]
    sel = runs["run_name"] == "hope_no_selfmod"
    cells = zip(runs.loc[sel, "scale"], runs.loc[sel, "seed"])
    runs.loc[sel, "final_val_loss"] = [base[(s, k)] - 0.2 for s, k in cells]
    probes = study.probes.copy()
    gate = (probes["metric"] == "gate_pass_rate") & (probes["run_name"] == "hope")
    probes.loc[gate, "value"] = 0.5
    changed = type(study)(root=study.root, name=study.name, runs=runs, metrics=study.metrics, probes=probes,
                          meta=study.meta)
    text = " ".join(f.text for f in compute_findings(changed))
    assert "removing self-modification helps: Δ = -0.200" in text
    assert "50.00% of tokens pass" in text and "the gate is selective" in text
    assert GATE_NOOP > 0.5


def test_a_figure_without_data_is_skipped_with_a_note(tmp_path):
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0,), sweep=(), failed=None,
                                 variants=["hope", "transformer"])
    for path in root.rglob("probes/cms-step*.parquet"):
        path.unlink()
    study = load_results(root)
    results = render_figures(study, tmp_path / "figs", only=[1])
    assert len(results) == 1 and isinstance(results[0], Skipped) and "no CMS probe rows" in results[0].reason
    readme = render_report(study, tmp_path / "rep", only=[1]).read_text()
    assert "Figure 1 (CMS dynamics, tiny) skipped: no CMS probe rows" in readme


# ---------------------------------------------------------------- CLI


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from hopelab.cli import main

    monkeypatch.setattr(sys, "argv", ["hopelab", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, study_root):
    (tmp_path / "empty").mkdir()
    cases = [("report", tmp_path / "missing"), ("tables", tmp_path / "empty"),
             ("figures", study_root, "--only", "1,9"), ("report", study_root, "--scale", "huge"),
             ("report", study_root / "small", "--scale", "tiny")]
    for args in cases:
        code, _, err = _cli(monkeypatch, capsys, *args)
        assert code == 2, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)


def test_cli_tables_and_one_figure(monkeypatch, capsys, tmp_path, study_root):
    code, out, _ = _cli(monkeypatch, capsys, "tables", study_root / "small", "--out", tmp_path / "t")
    assert code == 0 and (tmp_path / "t" / "table1_ablation.tex").stat().st_size > 0
    assert "skipped Table 2" in out  # the sweep is at the tiny scale only
    code, out, _ = _cli(monkeypatch, capsys, "figures", study_root, "--only", "4", "--dpi", "30", "--out",
                        tmp_path / "f")
    assert code == 0 and sorted(p.name for p in (tmp_path / "f").iterdir()) == ["fig4_importance.pdf",
                                                                              "fig4_importance.png"]


def test_persistent_cms_finding_names_each_run_with_its_interval():
    """The streamed-levels finding reads the cms_writes_off_from_R rows alone: 'read' only when the interval is
    above 0, 'no detectable effect' across 0; nothing is said without such rows."""
    from analysis.intervention_findings import _persistent_levels

    cols = ["run_name", "switch", "delta", "delta_lo", "delta_hi", "n"]
    e = pd.DataFrame([("hope", "cms_writes_off_from_128", 0.02, 0.01, 0.03, 16),
                      ("hope-levels2", "cms_writes_off_from_128", 0.001, -0.002, 0.004, 16),
                      ("hope", "cms_writes_off", 0.5, 0.4, 0.6, 16)], columns=cols)
    c = _persistent_levels(["tiny"], {"tiny": e})
    assert "period ≥ 128 tokens" in c.text
    assert "Full HOPE: Δ = +0.0200 nats (95% CI [+0.0100, +0.0300], n = 16 sequences) (read)" in c.text
    assert "Full HOPE [levels2]: Δ = +0.0010" in c.text and "(no detectable effect)" in c.text
    assert "+0.5000" not in c.text  # cms_writes_off (every level) is another finding's
    assert _persistent_levels(["tiny"], {"tiny": e[e["switch"] == "cms_writes_off"]}) is None
