"""Interventions: what each in-context mechanism contributes inside one trained model.

Take one trained model, evaluate the same validation sequences with and without a mechanism's in-context
writes, and compare sequence by sequence: one trained run gives confidence intervals, without retraining.

    switches = applicable_switches(model)                    # by name (hopelab.interventions.switches)
    with switched(model, "selfmod_writes_off"): model(x)     # the SR-Titans memories keep their initial state
    losses = evaluate_switches(model, (x, y), switches)      # switch -> per-position losses [N, T]
    effects = switch_effects(losses)                         # Δ vs none, 95% bootstrap interval over sequences
"""

from hopelab.interventions.evaluate import (
    PROBE,
    PROBE_SEQUENCES,
    STREAM_SEQUENCES,
    SwitchEffect,
    effects_from_rows,
    evaluate_switches,
    intervention_rows,
    position_losses,
    probe_set,
    switch_effects,
)
from hopelab.interventions.stats import Interval, bootstrap_ci, bucket_deltas, bucket_edges, seq_deltas
from hopelab.interventions.switches import (
    NONE,
    SWITCH_HELP,
    applicable_switches,
    applies,
    intervention,
    switched,
)

__all__ = [
    "NONE",
    "PROBE",
    "PROBE_SEQUENCES",
    "STREAM_SEQUENCES",
    "SWITCH_HELP",
    "Interval",
    "SwitchEffect",
    "applicable_switches",
    "applies",
    "bootstrap_ci",
    "bucket_deltas",
    "bucket_edges",
    "effects_from_rows",
    "evaluate_switches",
    "intervention",
    "intervention_rows",
    "position_losses",
    "probe_set",
    "seq_deltas",
    "switch_effects",
    "switched",
]
