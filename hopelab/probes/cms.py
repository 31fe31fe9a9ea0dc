"""CMS probe (section 4.2): do fast and slow CMS levels learn different things?

Per layer and level: param_norm, drift_prev (since the previous probe step), drift_init (since step 0) of the
level's parameters; per level pair: cos_sim of the levels' outputs on the probe batch; per level:
rel_drift_meta_fast, how far the level's fast state moves from its meta-learned initial state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.models.sites import MemorySite
from hopelab.probes.base import Probe
from hopelab.probes.forward import ProbeStep, fast_drift_rows, sites_of
from hopelab.probes.measure import snapshot, tensors_distance, tensors_norm


def mean_token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """a, b [B, T, D] -> mean over tokens of cos(a[b, t], b[b, t])."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def cms_sites(sites: list[MemorySite]) -> list[MemorySite]:
    return [s for s in sites if s.kind == "cms"]


def level_params(sites: list[MemorySite]) -> dict[str, dict[str, torch.Tensor]]:
    """site name -> {parameter name in the model: parameter} of every CMS level (its initial state included)."""
    return {s.name: dict(s.module.named_parameters(prefix=s.name)) for s in cms_sites(sites)}


class CMSProbe(Probe):
    name = "cms"

    def __init__(self) -> None:
        self.init: dict[str, dict[str, torch.Tensor]] = {}  # level parameters at step 0
        self.prev: dict[str, dict[str, torch.Tensor]] = {}  # level parameters at the previous probe step

    def remember(self, model: nn.Module) -> None:
        self.init = snapshot(level_params(sites_of(model)))
        self.prev = snapshot(self.init)

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init, "prev": self.prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init, self.prev = state["init"], state["prev"]

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        sites = cms_sites(at.sites)
        if not sites:
            return []
        params = level_params(sites)
        rows: list[dict[str, Any]] = []
        for site in sites:
            where = {"layer": site.layer, "level": site.level}
            p = params[site.name]
            rows.append({**where, "metric": "param_norm", "value": tensors_norm(p.values())})
            rows.append({**where, "metric": "drift_prev", "value": tensors_distance(p, self.prev[site.name])})
            rows.append({**where, "metric": "drift_init", "value": tensors_distance(p, self.init[site.name])})
        self.prev = snapshot(params)
        fwd = at.forward()
        layers = sorted({s.layer for s in sites})
        for layer in layers:
            outs = {s.level: fwd.hooks[f"{s.name}.hook_out"] for s in sites
                    if s.layer == layer and f"{s.name}.hook_out" in fwd.hooks}  # level -> [B, T, D]
            ids = sorted(outs)
            for i, a in enumerate(ids):
                for b in ids[i + 1 :]:
                    cos = mean_token_cosine(outs[a], outs[b])
                    rows.append({"layer": layer, "level": a, "level_other": b, "metric": "cos_sim", "value": cos})
        metas = at.model.initial_states()
        for site in sites:
            where = {"layer": site.layer, "level": site.level}
            rows += fast_drift_rows(site.name, metas[site.name], fwd.records, where)
        return rows
