"""Probes: measure HOPE's mechanisms at every checkpoint, on one fixed held-out probe batch, into Parquet.

    callback = make_probes(run_dir / "probes", schedule, (probe_x, probe_y), labels)   # a Lightning callback

    cms       section 4.2: CMS level norms and drifts, output cosine between levels, fast-state drift
    selfmod   section 4.3: drift of the meta-learned initial states, fast-state drift from them
    surprise  section 4.4: surprise quantiles, gate pass rates; the LM cross-entropy apart
    gradflow  which parameters get gradient
    recall    exact-match accuracy on the answer positions (synthetic recall tasks), overall and by distance
    intervene what each in-context mechanism contributes: the loss with its writes switched off

The probe batch is drawn from val with `TrainConfig.probe_seed`, the same for every variant. Probes find
memories through `model.memory_sites()` (hopelab.models.sites), never by module names; a variant without a
mechanism simply has no rows for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hopelab.probes.base import Probe, ProbeCallback, RunLabels
from hopelab.probes.cms import CMSProbe
from hopelab.probes.gradflow import GradFlowProbe
from hopelab.probes.intervene import InterveneProbe
from hopelab.probes.recall import RecallProbe
from hopelab.probes.selfmod import SelfModProbe
from hopelab.probes.surprise import SurpriseProbe

if TYPE_CHECKING:
    from hopelab.lit.trainer import Schedule

PROBES: dict[str, type[Probe]] = {
    p.name: p for p in (CMSProbe, SelfModProbe, SurpriseProbe, GradFlowProbe, InterveneProbe, RecallProbe)
}


def make_probes(
    probe_dir: Path,
    schedule: Schedule,
    batch: tuple[torch.Tensor, torch.Tensor],
    labels: RunLabels,
    names: Iterable[str] = tuple(PROBES),
    probe_set: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ProbeCallback:
    """One callback running the named probes on the probe batch (x [B, T], y [B, T]) at `schedule`'s steps;
    the intervene probe evaluates `probe_set` (x, y [N, T], hopelab.interventions.probe_set) when given."""
    return ProbeCallback([PROBES[n]() for n in names], probe_dir, schedule, batch, labels, probe_set)


__all__ = ["PROBES", "Probe", "ProbeCallback", "RunLabels", "make_probes"]
