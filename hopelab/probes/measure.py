"""Measurements on groups of tensors, shared by the probe families (unit-tested directly)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


def tensors_norm(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of the concatenation of all tensors."""
    total = sum((t.detach().float().pow(2).sum() for t in tensors), torch.tensor(0.0))
    return float(torch.as_tensor(total).sqrt())


def tensors_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """‖a − b‖ over the concatenation of the tensors named in `a` (both must hold the same names)."""
    return tensors_norm(a[n].detach().float() - b[n].detach().float().to(a[n].device) for n in a)


def rel_drift_per_sample(fast: Mapping[str, torch.Tensor], meta: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """‖θ_fast[b] − θ_meta‖ / ‖θ_meta‖ per sample b. fast: {name: [B, ...]}, meta: {name: [...]} -> [B]."""
    num = None
    den = torch.tensor(0.0)
    for name, m in meta.items():
        m = m.detach().float()
        f = fast[name].detach().float().to(m.device)  # [B, ...]
        sq = (f - m.unsqueeze(0)).pow(2).flatten(1).sum(1)  # [B]
        num = sq if num is None else num + sq
        den = den.to(m.device) + m.pow(2).sum()
    return num.sqrt() / den.sqrt()


def snapshot(groups: Mapping[Any, Mapping[str, torch.Tensor]]) -> dict[Any, dict[str, torch.Tensor]]:
    """A detached copy of {group: {name: tensor}}, what later drift is measured from."""
    return {k: {n: t.detach().clone() for n, t in g.items()} for k, g in groups.items()}
