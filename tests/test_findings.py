"""Findings wording against synthetic studies with a known answer (tests/synthetic_study.py): the reference
lines (unigram / bigram) and where the variants sit between them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.findings import UNIGRAM_MARGIN, compute_findings
from analysis.load import load_results
from analysis.table1_ablation import build as build_table1
from analysis.table2_sweep import build as build_table2

try:
    from synthetic_study import BASE_LOSS, RELATIVE_PASS, TRUE_DELTA, build_synthetic_study
except ImportError:  # tests/ imported as a package
    from tests.synthetic_study import BASE_LOSS, RELATIVE_PASS, TRUE_DELTA, build_synthetic_study


def _study(tmp_path, variants, references, seeds=(0, 1)):
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=seeds, variants=variants, sweep=(), failed=None,
                                 references=references)
    return load_results(root)


def _claim(study, topic):
    return next((c for c in compute_findings(study) if c.topic == topic), None)


def test_variants_near_unigram_are_said_to_measure_early_training(tmp_path):
    # hope ends at 5.40, titans at 5.40 + 0.362: with unigram 5.70 both are within the margin
    assert 5.70 - BASE_LOSS["tiny"] < UNIGRAM_MARGIN
    claim = _claim(_study(tmp_path, ["hope", "titans"], {"tiny": (5.70, 4.90)}), "training regime")
    assert "every variant is within 0.5 nats of unigram" in claim.text
    assert "measures early training" in claim.text and "2 of 2 above the bigram reference (4.900)" in claim.text
    assert claim.numbers["tiny"]["n_near_unigram"] == 2


def test_only_the_variants_near_unigram_are_named(tmp_path):
    # transformer ends 0.336 under hope: 5.70 - 5.064 = 0.64 nats below unigram, outside the margin
    assert 5.70 - (BASE_LOSS["tiny"] + TRUE_DELTA["transformer"][0]) > UNIGRAM_MARGIN
    text = _claim(_study(tmp_path, ["hope", "transformer"], {"tiny": (5.70, 4.90)}), "training regime").text
    assert "Full HOPE within 0.5 nats of unigram" in text and "Transformer within" not in text
    assert "every variant" not in text


def test_variants_far_below_unigram_make_no_early_training_remark(tmp_path):
    study = _study(tmp_path, ["hope", "transformer"], {"tiny": (8.0, 6.0)})  # both end under the bigram too
    text = _claim(study, "training regime").text
    assert "early training" not in text and "0 of 2 above the bigram" in text
    gap = study.runs.groupby("run_name")["final_val_loss"].mean() - 8.0
    assert f"final loss − unigram reference (8.000) = −{-gap.min():.2f} to −{-gap.max():.2f} nats" in text


def test_table1_carries_the_reference_rows_and_old_studies_do_without(tmp_path):
    table = build_table1(_study(tmp_path / "a", ["hope", "transformer"], {"tiny": (8.0, 5.0)}))
    assert "| Unigram (reference) | 8.000 |" in table.markdown
    assert "| Bigram (reference) | 5.000 |" in table.markdown and "Witten-Bell" in table.caption
    assert (table.data["ref_unigram"] == 8.0).all() and (table.data["ref_bigram"] == 5.0).all()
    old = build_table1(_study(tmp_path / "b", ["hope", "transformer"], {}))
    assert "reference)" not in old.markdown
    assert _claim(_study(tmp_path / "c", ["hope"], {}), "training regime") is None


def test_a_variant_above_unigram_counts_as_near(tmp_path):
    text = _claim(_study(tmp_path, ["hope"], {"tiny": (5.0, 4.0)}), "training regime").text
    assert "every variant is within" in text and "(5.000) = +0.4" in text


def test_each_gated_run_says_whether_its_gate_could_close(tmp_path):
    """hope-tau0.005 sits below the smallest synthetic surprise (≈0.043), hope-tau0.05 above it; the default
    (relative) gate passes RELATIVE_PASS of the tokens; the gate-off variant is not a gated run."""
    root = build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0,), variants=["hope", "hope_no_surprise"],
                                 sweep=(0.005, 0.05), failed=None)
    study = load_results(root)
    claim = _claim(study, "gate closure")
    shut, _, rest = claim.text.partition("it could close in")
    assert "could not close" in shut and "Full HOPE [tau0.005] (τ = 0.005, smallest surprise 0.043" in shut
    assert "tau0.05]" not in shut and "Full HOPE [tau0.05] (τ = 0.05" in rest
    assert f"Full HOPE (relative, z > 0, smallest surprise 0.0432, {100 * RELATIVE_PASS:.2f}% pass)" in rest
    assert "No Surprise" not in claim.text
    table = build_table2(study)
    row = table.data.set_index("run_name")
    assert row.loc["hope-tau0.005", "tau_below_min"] and not row.loc["hope-tau0.05", "tau_below_min"]
    assert "0.0432 > τ: could not close" in table.markdown and table.markdown.count("could not close") == 1
    assert row.loc["hope", "pass_rate"] == RELATIVE_PASS  # the realised rate of the relative gate


def _with_losses(study, losses: dict[str, list[float]]):
    """The study with the final losses of its tiny runs replaced: {run_name: [seed 0, seed 1, ...]}."""
    runs = study.runs.copy()
    for name, values in losses.items():
        for seed, value in enumerate(values):
            runs.loc[(runs["run_name"] == name) & (runs["seed"] == seed), "final_val_loss"] = value
    return type(study)(root=study.root, name=study.name, runs=runs, metrics=study.metrics, probes=study.probes,
                       meta=study.meta)


def test_no_effect_is_claimed_below_the_seed_spread_and_the_detectable_effect_is_stated(tmp_path):
    hope = np.array([5.00, 5.10, 4.90])  # seed-to-seed spread: standard deviation 0.1 in every cell
    losses = {
        "hope": hope,
        "hope_no_cms": hope + [0.050, 0.051, 0.049],  # Δ = 0.05: interval excludes 0, but below the spread
        "hope_no_selfmod": hope + [0.300, 0.302, 0.298],  # Δ = 0.3: above it
        "hope_no_surprise": hope + [0.0, 0.02, -0.02],  # Δ = 0: the interval covers 0
    }
    study = _with_losses(_study(tmp_path, list(losses), {}, seeds=(0, 1, 2)), losses)
    spread = math.sqrt(np.mean([np.var(v, ddof=1) for v in losses.values()]))  # pooled over the cells
    assert 0.1 <= spread < 0.11
    claims = {c.topic: c for c in compute_findings(study)}
    cms = claims["the CMS"].text
    assert f"removing the CMS makes no difference beyond the seed-to-seed spread ({spread:.3f} nats)" in cms
    assert "95% CI [+0.04" in cms  # its interval does exclude 0: the spread rule is what holds the claim back
    assert "removing self-modification hurts" in claims["self-modification"].text
    assert "removing the surprise gate makes no detectable difference" in claims["the surprise gate"].text
    diffs = np.stack([losses[n] - hope for n in ("hope_no_cms", "hope_no_selfmod", "hope_no_surprise")])
    s_d = math.sqrt(np.var(diffs, axis=1, ddof=1).mean())  # pooled: equal seeds per cell
    mde = max((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * s_d / math.sqrt(3), spread)
    seeds = claims["seeds"]
    assert seeds.numbers["tiny"]["spread"] == pytest.approx(spread)
    assert seeds.numbers["tiny"]["mde"] == pytest.approx(mde)
    assert (f"n = 3 seeds per cell: seed-to-seed spread {spread:.3f} nats; minimum detectable effect {mde:.3f} "
            "nats") in seeds.text


def test_one_seed_states_no_spread(tmp_path):
    study = _study(tmp_path, ["hope", "hope_no_cms"], {}, seeds=(0,))
    claims = {c.topic: c for c in compute_findings(study)}
    assert "seeds" not in claims and "single seed, no interval" in claims["the CMS"].text


def test_one_seed_rests_on_the_within_run_interval_over_the_probe_sequences(tmp_path):
    """With one seed, a comparison pairs the two runs' per-sequence losses on the shared probe set: the
    Transformer (0.336 nats under hope at tiny) is found lower there, with the caveat that seeds are not in it;
    removing the CMS (−0.015) is worded from its own interval, never as an effect over seeds."""
    study = _study(tmp_path, ["hope", "hope_no_cms", "transformer"], {}, seeds=(0,))
    claims = {c.topic: c for c in compute_findings(study)}
    base = claims["baselines"].text
    assert "Transformer is lower on the probe sequences" in base and "seed-to-seed variation is not in it" in base
    assert "over 16 probe sequences" in base  # the synthetic probe set's size
    cms = claims["the CMS"]
    assert cms.numbers["tiny"]["effect"].startswith("within-run-") and "on the probe sequences" in cms.text
    multi = {c.topic: c for c in compute_findings(_study(tmp_path / "two", ["hope", "transformer"], {}))}
    assert "probe sequences" not in multi["baselines"].text  # with seeds, the interval over seeds is used


def test_each_setting_of_a_study_is_compared_with_the_reference_run(tmp_path):
    """The tagged runs that are not a gate sweep (here levels1, 0.06 nats under Full HOPE, and levels2, no
    difference) against the untagged Full HOPE: over three seeds the gain is found and the null is not; with
    one seed, on the shared probe sequences."""
    def settings(seeds, where):
        root = build_synthetic_study(where, scales=("tiny",), seeds=seeds, variants=["hope"], sweep=(0.005,),
                                     failed=None, settings=("levels1", "levels2"))
        return _claim(load_results(root), "settings")

    c = settings((0, 1, 2), tmp_path / "three")
    parts = c.text.split(": ", 1)[1].rstrip(".").split("; ")
    assert len(parts) == 2 and "tau" not in c.text  # the gate sweep is Table 2's
    assert parts[0].startswith("tiny: Full HOPE [levels1] Δ = -0.06") and parts[0].endswith(
        "— Full HOPE [levels1] is better")
    assert parts[1].startswith("tiny: Full HOPE [levels2]") and "is better" not in parts[1]
    assert c.numbers[("tiny", "hope-levels1")] == pytest.approx(-0.06, abs=0.01)
    one = settings((0,), tmp_path / "one")
    assert "Full HOPE [levels1] is lower on the probe sequences" in one.text and "probe sequences" not in c.text


def test_zero_gradients_of_a_streamed_run_are_said_to_be_expected(tmp_path):
    """A run trained on streams (`segments` K > 1) gives its meta-learned initial states a gradient on a stream's
    first window only: the gradient-flow finding says so for it, and not for a run on independent windows."""
    import json

    study = load_results(build_synthetic_study(tmp_path, scales=("tiny",), seeds=(0,), variants=["hope"], sweep=(),
                                               failed=None))
    p = study.probes
    zero = (p["probe"] == "gradflow") & (p["metric"] == "n_grad_zero") & (p["step"] == p["step"].max())
    assert zero.sum() == 1
    p.loc[zero, "value"] = 8.0  # eight tensors without gradient at the last probed step, as a streamed run has
    plain = _claim(study, "gradient flow")
    assert "parameter tensor(s)" in plain.text and "streaming" not in plain.text
    study.runs["overrides"] = json.dumps({"segments": 24, "context_len": 128})  # as study.json stores them
    streamed = _claim(study, "gradient flow")
    assert "when streaming: a step trains one window of a 24-window stream" in streamed.text
