"""Self-modification probe (section 4.3): initialisation shift vs continual adaptation.

Per layer and component (k, v, q, eta, alpha, memory) of every Titans memory: drift_init and norm of the
meta-learned initial state, and rel_drift_meta_fast = ‖θ_fast − θ_meta‖/‖θ_meta‖ after the probe batch and
at every chunk end (`position`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hopelab.models.sites import MemorySite
from hopelab.probes.base import Probe
from hopelab.probes.forward import ProbeStep, fast_drift_rows, sites_of
from hopelab.probes.measure import snapshot, tensors_distance, tensors_norm


def memory_states(model: nn.Module, sites: list[MemorySite]) -> dict[str, dict[str, torch.Tensor]]:
    """initial-state key f"{site.name}.{component}" -> the meta-learned initial state of that memory."""
    states = model.initial_states() if sites else {}
    return {key: dict(states[key]) for s in sites for key in (f"{s.name}.{c}" for c in s.components)}


class SelfModProbe(Probe):
    name = "selfmod"

    def __init__(self) -> None:
        self.init: dict[str, dict[str, torch.Tensor]] = {}  # initial states at step 0

    def remember(self, model: nn.Module) -> None:
        self.init = snapshot(memory_states(model, sites_of(model)))

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init = state["init"]

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        states = memory_states(at.model, at.sites)
        if not states:
            return []
        fwd = at.forward()
        if fwd.trace_error:
            raise RuntimeError(fwd.trace_error)
        rows: list[dict[str, Any]] = []
        for site in at.sites:
            for comp in site.components:
                key = f"{site.name}.{comp}"
                state = states[key]
                where = {"layer": site.layer, "component": comp}
                rows.append({**where, "metric": "drift_init", "value": tensors_distance(state, self.init[key])})
                rows.append({**where, "metric": "norm", "value": tensors_norm(state.values())})
                rows += fast_drift_rows(key, state, fwd.records, where)
        return rows
