"""The recall report (Figure 7, Table 4, recall findings) on a hand-built study with known accuracies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from analysis import load_results, render_report
from analysis.recall import capacity, recall_cells, recall_runs
from hopelab.config import get_scale, to_dict
from hopelab.records import PROBE_SCHEMA, rows_to_table, write_json_atomic, write_parquet_atomic
from hopelab.run import RunSpec

PAIRS = (2, 4, 8, 16)
# true mean accuracy per variant and pairs; seeds add OFFSET[seed] (mean zero over the three seeds) and each run
# a fixed jitter of at most half a point, so paired differences have a small, non-zero spread
ACC = {
    "hope": (1.0, 0.97, 0.93, 0.50),
    "hope_no_selfmod": (0.98, 0.60, 0.30, 0.10),
    "hope_no_cms": (0.99, 0.96, 0.92, 0.51),
    "transformer": (0.80, 0.50, 0.20, 0.05),
}
OFFSET = (-0.02, 0.0, 0.02)
ANSWERS = 64  # answer positions per run's probe batch


def _write_run(root: Path, variant: str, pairs: int, seed: int, switches: bool = True) -> None:
    data = f"synthetic:mqar?pairs={pairs}&len=64"
    spec = RunSpec(variant, "tiny", seed=seed, study="rec", steps=100, out=str(root.parent), tag=f"p{pairs}",
                   data=data)
    model = dataclasses.replace(get_scale("tiny").model, context_len=64, vocab_size=256)
    write_json_atomic({"spec": dataclasses.asdict(spec), "model": to_dict(model), "train": {}, "variant": variant,
                       "scale": "tiny", "n_params": 1000}, spec.run_dir / "config.json")
    jitter = 0.005 * ((7 * seed + 3 * pairs + len(variant)) % 5 - 2) / 2
    acc = min(1.0, max(0.0, ACC[variant][PAIRS.index(pairs)] + OFFSET[seed] + jitter))
    ident = {"run_id": spec.run_id, "study": "rec", "variant": variant, "scale": "tiny", "seed": seed,
             "probe": "recall", "tokens": 0}
    rows = []
    for step, value in ((0, 0.0), (100, acc)):
        rows.append({**ident, "step": step, "metric": "accuracy", "value": value})
        rows.append({**ident, "step": step, "metric": "answers", "value": float(ANSWERS)})
        # near keys are recalled better: 2 tokens away at acc + 0.05, 64 away at acc − 0.05
        rows.append({**ident, "step": step, "metric": "accuracy", "position": 2, "value": min(1, value + 0.05)})
        rows.append({**ident, "step": step, "metric": "accuracy", "position": 64, "value": max(0, value - 0.05)})
    # the write switches: all writes off leaves 5%, CMS writes off changes nothing
    if switches and variant.startswith("hope"):
        for switch, value in (("all_writes_off", 0.05), ("cms_writes_off", acc)):
            rows.append({**ident, "step": 100, "component": switch, "metric": "accuracy", "value": value})
            rows.append({**ident, "step": 100, "component": switch, "metric": "answers", "value": float(ANSWERS)})
    write_parquet_atomic(rows_to_table(rows, PROBE_SCHEMA), spec.run_dir / "probes" / "recall-step000100.parquet")
    write_json_atomic({"run_id": spec.run_id, "status": "done", "final_val_loss": 1.0, "last_step": 100,
                       "wall_time_s": 10.0}, spec.run_dir / "manifest.json")


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recall") / "rec"
    for variant in ACC:
        for pairs in PAIRS:
            for seed in range(3):
                _write_run(root, variant, pairs, seed)
    write_json_atomic({"study": "rec", "command": "hopelab study rec"}, root / "study.json")
    return root


def test_accuracy_per_cell_and_capacity_come_from_the_probe_rows(study_root):
    study = load_results(study_root)
    runs = recall_runs(study, "tiny")
    assert len(runs) == len(ACC) * len(PAIRS) * 3 and set(runs["length"]) == {64}
    cells = recall_cells(runs).set_index(["variant", "pairs"])
    for variant, accs in ACC.items():
        for pairs, acc in zip(PAIRS, accs):
            # the last probed step (100), not step 0; seeds clipped at 1.0 only for hope at 2 pairs
            want = sum(min(1.0, acc + o) for o in OFFSET) / 3
            assert cells.loc[(variant, pairs), "mean"] == pytest.approx(want, abs=0.003)
    cap = capacity(recall_cells(runs)).set_index("variant")["capacity"]
    assert cap["hope"] == 8 and cap["hope_no_cms"] == 8 and cap["hope_no_selfmod"] == 2
    assert pd_isna(cap["transformer"])  # 80% at 2 pairs: nothing solved


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def test_the_report_has_the_recall_figure_capacity_table_and_findings(study_root, tmp_path):
    study = load_results(study_root)
    readme = render_report(study, tmp_path / "rep", command="hopelab report rec").read_text()
    png = tmp_path / "rep" / "figures" / "fig7_recall_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "rep" / "tables" / "table4_capacity.md").read_text()
    assert "| No Self-Mod | 64 | 64 | 2 |" in table and "| Transformer | 64 | 64 | < 2 |" in table
    findings = readme.split("## Findings")[1].split("<details>")[0]
    assert "Full HOPE 8 pairs" in findings and "No Self-Mod 2 pairs" in findings
    selfmod = next(line for line in findings.splitlines() if "removing self-modification" in line)
    assert "lowers recall accuracy at 4 pairs" in selfmod and "8 pairs" in selfmod  # Δ −37, −63 points
    assert "makes no detectable difference at 2 pairs" in selfmod  # −2 points, its interval spans 0
    cms = next(line for line in findings.splitlines() if "removing the CMS" in line)
    assert "lowers" not in cms and "raises" not in cms  # within a point of hope everywhere: not detectable
    assert "Lowest final validation loss" not in readme  # a recall study is judged by accuracy, not loss


def test_the_recall_figures_read_the_rows_as_trained_and_a_switch_reads_its_own():
    from types import SimpleNamespace

    import pandas as pd

    from analysis.recall import recall_probe_rows

    probes = pd.DataFrame({"scale": ["tiny"] * 3, "probe": ["recall"] * 3, "metric": ["accuracy"] * 3,
                           "component": [None, "all_writes_off", None], "value": [0.9, 0.1, 0.8]})
    study = SimpleNamespace(probes=probes)
    assert recall_probe_rows(study, "tiny")["value"].tolist() == [0.9, 0.8]
    assert recall_probe_rows(study, "tiny", "all_writes_off")["value"].tolist() == [0.1]


def test_switch_effects_pool_the_answers_and_give_newcombe_intervals(study_root):
    from analysis.recall_switches import newcombe, switch_effects, switch_findings

    # Newcombe's method 10, 0.8 − 0.6 over 100 trials each, by hand: Wilson (0.7112, 0.8666) and (0.5020, 0.6906),
    # lo = 0.2 − √(0.0888² + 0.0906²) = 0.0731, hi = 0.2 + √(0.0666² + 0.0980²) = 0.3185
    lo, hi = newcombe(0.8, 0.6, 100)
    assert (lo, hi) == pytest.approx((0.0731, 0.3185), abs=2e-4)
    study = load_results(study_root)
    e = switch_effects(study, "tiny").set_index(["variant", "pairs", "switch"])
    assert "transformer" not in set(e.index.get_level_values(0))  # no switch rows, no effects
    r = e.loc[("hope", 4, "all_writes_off")]
    assert r["answers"] == 3 * ANSWERS  # three seeds' answers pooled
    assert r["trained"] == pytest.approx(0.97, abs=0.005) and r["switched"] == pytest.approx(0.05)
    assert r["hi"] < 0 and r["lo"] < r["delta"] < r["hi"]
    same = e.loc[("hope", 4, "cms_writes_off")]
    assert same["delta"] == pytest.approx(0, abs=1e-12) and same["lo"] < 0 < same["hi"]
    claims = {c.topic: c.text for c in switch_findings(study, ["tiny"])}
    assert "its recall needs its in-context writes" in claims["recall switches: hope"]
    assert "recall switches: transformer" not in claims


def test_the_recall_figure_has_a_switch_panel_only_with_switch_rows(study_root, tmp_path):
    from analysis.fig7_recall import render_scale

    out = render_scale(load_results(study_root), "tiny", tmp_path)
    assert "Newcombe" in out.caption  # the switch panel is drawn and explained
    # panel (b) at 8 pairs, where the variants' means spread most; the switch panel at 2, where the switches act most
    assert "at 8 pairs (where the variants' means differ most)" in out.caption
    assert "at 2 pairs (where the switches change accuracy most)" in out.caption
    bare = tmp_path / "bare" / "rec"  # hope alone, without switch rows
    for pairs in PAIRS:
        for seed in range(2):
            _write_run(bare, "hope", pairs, seed, switches=False)
    write_json_atomic({"study": "rec", "command": "hopelab study rec"}, bare / "study.json")
    assert "Newcombe" not in render_scale(load_results(bare), "tiny", tmp_path / "fig").caption


def test_single_seed_comparisons_rest_on_a_newcombe_interval_over_the_answers(tmp_path):
    """One seed: no interval over seeds, but the two runs' accuracies over their 64 answers give one. The
    Transformer (80% at 2 pairs, 20% at 8) against hope (≈100%, 93%) is lower beyond its interval at both."""
    from analysis.recall import recall_findings

    root = tmp_path / "rec"
    for variant in ("hope", "transformer"):
        for pairs in (2, 8):
            _write_run(root, variant, pairs, 1)  # seed 1: OFFSET 0
    write_json_atomic({"study": "rec", "command": "hopelab study rec"}, root / "study.json")
    claims = {c.topic: c for c in recall_findings(load_results(root), ["tiny"])}
    text = claims["recall: transformer"].text
    assert "lowers recall accuracy at 2 pairs" in text and "8 pairs" in text and "Newcombe" in text
    assert "untested" not in text
    delta_2 = claims["recall: transformer"].numbers[(64, 64, 2)]
    assert delta_2 == pytest.approx(0.80 - 1.0, abs=0.01)


def test_the_carrier_finding_names_the_switches_that_lower_recall(study_root):
    """All writes off (5% left) lowers every hope variant's accuracy, stated at 2 pairs, where accuracy as trained
    is highest and so the switches act most; CMS writes off (no change) lowers none; the Transformer has no
    switch rows and is not named."""
    from analysis.recall_switches import carrier_findings

    (c,) = carrier_findings(load_results(study_root), ["tiny"])
    lead, body = c.text.split("most): ")
    assert lead == "Which in-context memory carries recall (tiny, len 64, dim 64, at 2 pairs, where the switches " \
                   "change accuracy "
    cms_off, all_off = body.rstrip(".").split("; ")
    assert cms_off == ("CMS writes off: lowers no variant's accuracy (no detectable drop in Full HOPE, No CMS, "
                       "No Self-Mod)")
    assert all_off.startswith("all writes off: lowers accuracy in ") and "no detectable drop" not in all_off
    assert all_off.count(" points [") == 3 and "Transformer" not in c.text
    assert c.numbers["all_writes_off"]["hope"] == pytest.approx(0.05 - 0.9967, abs=0.01)
