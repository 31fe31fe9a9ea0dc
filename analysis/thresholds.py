"""The thresholds that turn numbers into words in the findings (listed in every report)."""

from __future__ import annotations

from analysis.intervention_findings import INIT_SHIFT_DRIFT
from analysis.stats import CONFIDENCE, POWER

# Thresholds that turn numbers into words (listed in the report).
DELTA_EPS = 0.01  # nats: with one seed (no interval), |Δ| at or below this is "no difference"
COS_REDUNDANT = 0.7  # cosine similarity of CMS level outputs at or above: levels largely redundant
COS_DISTINCT = 0.3  # at or below: levels differentiated
GATE_NOOP = 0.99  # gate pass rate at the configured τ at or above: the gate is effectively a no-op
GATE_SELECTIVE = 0.90  # at or below: the gate is selective
POSITION_GROWTH = 0.20  # relative drift at the last position / first position − 1 above: continual adaptation
EARLY_DRIFT = 0.80  # meta-state drift at the first checkpoint / last: "moved early, then flat" at or above
UNIGRAM_MARGIN = 0.5  # nats: a variant ending less than this below the unigram reference has learned little
# more than token frequencies, and comparing such variants measures early training, not the architectures

THRESHOLDS = [
    f"a variant whose final loss is less than {UNIGRAM_MARGIN} nats below the unigram reference (an add-one "
    "unigram fit on train, scored on val) has learned little beyond token frequencies; when one does, the "
    "report says its comparison measures early training, not the architectures",
    f"an effect of removing/replacing a mechanism counts when the {CONFIDENCE:.0%} interval of Δ excludes 0 and "
    "|Δ| exceeds the seed-to-seed spread (the pooled standard deviation of a cell's final loss over seeds); "
    f"with a single seed: when |Δ| > {DELTA_EPS} nats, marked as untested, unless both runs have per-sequence "
    "losses on the fixed probe set: then it counts when the 95% bootstrap interval of the per-sequence Δ excludes 0 "
    "(a within-run interval: it does not include seed-to-seed variation, and the finding says so)",
    f"the minimum detectable effect: the |Δ| a paired t-test over the study's seeds detects with {POWER:.0%} power "
    f"at {CONFIDENCE:.0%} confidence, given the spread of the per-seed differences, and never less than the "
    "seed-to-seed spread",
    f"CMS levels are called redundant when the cosine similarity of their outputs is ≥ {COS_REDUNDANT}, "
    f"differentiated when ≤ {COS_DISTINCT}",
    f"the surprise gate is called a no-op when ≥ {GATE_NOOP:.0%} of tokens pass at the configured τ, selective "
    f"when ≤ {GATE_SELECTIVE:.0%}",
    f"the fast state is called continually adapting when its relative drift from the meta-state grows by more "
    f"than {POSITION_GROWTH:.0%} from the first to the last chunk of the probe sequence; otherwise a one-off "
    "(initialisation) shift",
    f"the meta-state is said to move early when ≥ {EARLY_DRIFT:.0%} of its final drift from initialisation is "
    "reached at the first checkpoint",
    "interventions (Table 3, Figure 6): a switch counts when the 95% bootstrap interval of Δ = loss(switch) − "
    "loss(as trained) over the probe sequences (seeds resampled first) excludes 0; self-modification is called "
    "continual adaptation only when Δ(SR-Titans writes off) > 0 with its interval excluding 0 and Δ over the last "
    "position bucket exceeds Δ over the first (the paired interval of the difference excludes 0); an "
    f"initialisation shift when Δ's interval includes 0 while the meta-learned initial states moved from their "
    f"initialisation by ≥ {INIT_SHIFT_DRIFT:.0%} of their norm",
]
