"""Surprise probe (section 4.4): the surprise distribution in the gate's own units, and the gate's pass rates.

Per layer with a surprise gate: quantiles of the per-token surprise, gate_pass_rate at the configured
threshold (component "gate": what the model did, from hook_gate) and over a fixed threshold grid. Apart
(layer null, so the two are never confused): ce_* quantiles of the per-token LM cross-entropy.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hopelab.data.synthetic import IGNORE_INDEX
from hopelab.probes.base import Probe
from hopelab.probes.forward import ProbeStep

# log-spaced 1-2-5 grid from 0.001 to 100; it contains the study's sweep 0.005, 0.01, 0.02, 0.05, 0.1
THRESHOLD_GRID: tuple[float, ...] = tuple(
    round(m * 10.0**e, 6) for e in range(-3, 3) for m in (1, 2, 5) if m * 10.0**e <= 100
)
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))


def summary_stats(values: torch.Tensor) -> dict[str, float]:
    """mean, std, min, p10, p50, p90, max of all entries."""
    v = values.detach().float().flatten()
    if v.numel() > (1 << 24):  # torch.quantile's input limit; a fixed stride keeps it deterministic
        v = v[:: math.ceil(v.numel() / (1 << 24))]
    qs = torch.quantile(v, torch.tensor([q for _, q in QUANTILES], device=v.device))
    stats = torch.stack([v.mean(), v.std(), v.min(), *qs, v.max()]).tolist()
    return dict(zip(["mean", "std", "min", *[n for n, _ in QUANTILES], "max"], stats))


class SurpriseProbe(Probe):
    name = "surprise"

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        # hopelab.lit imports the probes; importing its loss here keeps the package imports acyclic
        from hopelab.lit.module import lm_loss

        fwd = at.forward()
        rows: list[dict[str, Any]] = []
        ce = lm_loss(fwd.logits, fwd.targets, reduction="none")  # [B*T]
        ce = ce[fwd.targets.flatten() != IGNORE_INDEX]  # a synthetic task's answer positions only
        rows += [{"metric": f"ce_{k}", "value": v} for k, v in summary_stats(ce).items()]
        configured = float(at.model.config.surprise_threshold)
        for site in at.sites:
            s = fwd.hooks.get(f"{site.name}.hook_surprise")
            if s is None:  # no surprise gate at this site
                continue
            s = s.float()  # [B, T]
            rows += [{"layer": site.layer, "metric": k, "value": v} for k, v in summary_stats(s).items()]
            gate = fwd.hooks.get(f"{site.name}.hook_gate")  # [B, T]
            if gate is not None:  # what the model really did
                rate = float((gate.float() > 0.5).float().mean())
                rows.append({"layer": site.layer, "metric": "gate_pass_rate", "component": "gate",
                             "threshold": configured, "value": rate})
            grid = [t for t in THRESHOLD_GRID if gate is None or t != configured]
            # compared in the surprise's dtype, as the gate compares (s > τ)
            taus = torch.tensor(grid, dtype=s.dtype, device=s.device)  # [G]
            rates = (s.flatten().unsqueeze(0) > taus.unsqueeze(1)).float().mean(1).tolist()  # [G]
            rows += [{"layer": site.layer, "metric": "gate_pass_rate", "threshold": t, "value": r}
                     for t, r in zip(grid, rates)]
        return rows
