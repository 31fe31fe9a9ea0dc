"""Intervention probe: what each in-context mechanism contributes to the trained model's loss, by position.

At every probe step the model is evaluated on the intervention probe set with its writes switched off
(hopelab.interventions), paired sequence by sequence with the model as trained. Its rows are
hopelab.interventions.intervention_rows (per-position mean loss, per-sequence and per-bucket means).

What it costs is kept under a tenth of a tiny run's wall time by two tiers:
- the run's last step: every switch that applies but the resets, on the whole probe set (PROBE_SEQUENCES);
- every other probe step (Δ over training): the TRACKED switches on the first TRACKED_SEQUENCES sequences.
`hopelab intervene RUN_DIR` evaluates any kept checkpoint with every switch, the resets included.
"""

from __future__ import annotations

from typing import Any

from hopelab.interventions import (
    NONE,
    PROBE,
    applicable_switches,
    evaluate_switches,
    intervention,
    intervention_rows,
)
from hopelab.probes.base import Probe
from hopelab.probes.forward import ProbeStep, forward_context

TRACKED = ("selfmod_writes_off", "all_writes_off")  # followed over training
TRACKED_SEQUENCES = 8


class InterveneProbe(Probe):
    name = PROBE

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        switches = applicable_switches(at.model)
        if switches == [NONE] and not at.final:  # nothing to switch off (the Transformer): its per-sequence
            return []  # losses at the last step still pair it with the other variants (analysis.within_run)
        x, y = at.probe_set
        if at.final:
            switches = [s for s in switches if intervention(s).reset_every is None]
        else:
            switches = [s for s in switches if s in (NONE, *TRACKED)]
            x, y = x[:TRACKED_SEQUENCES], y[:TRACKED_SEQUENCES]
        losses = evaluate_switches(at.model, (x, y), switches, context=lambda: forward_context(at.trainer))
        return intervention_rows(losses)
