"""Gradient-flow probe: which parameters get gradient at all.

Per parameter tensor: grad_norm (null when there is no grad), grad_is_none, grad_is_zero, read before the
optimizer step that leads to a checkpoint; counts n_params_total, n_grad_none, n_grad_zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hopelab.probes.base import Probe
from hopelab.probes.forward import ProbeStep


def block_of_parameters(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> index of the block that holds it (parameters outside the blocks are absent)."""
    return {id(p): i for i, block in enumerate(getattr(model, "blocks", ())) for p in block.parameters()}


def gradflow_rows(model: nn.Module) -> list[dict[str, Any]]:
    named = list(model.named_parameters())
    with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
    norms = (
        torch.stack([g.detach().float().norm() for _, g in with_grad]).tolist() if with_grad else []
    )  # one device sync for all tensors
    norm_of = dict(zip((n for n, _ in with_grad), norms))
    layer_of = block_of_parameters(model)
    rows: list[dict[str, Any]] = []
    n_none = n_zero = 0
    for name, p in named:
        where = {"param": name, "layer": layer_of.get(id(p))}
        none = name not in norm_of
        zero = (not none) and norm_of[name] == 0.0
        n_none += none
        n_zero += zero
        rows.append({**where, "metric": "grad_norm", "value": None if none else norm_of[name]})
        rows.append({**where, "metric": "grad_is_none", "value": float(none)})
        rows.append({**where, "metric": "grad_is_zero", "value": float(zero)})
    rows.append({"metric": "n_params_total", "value": float(len(named))})
    rows.append({"metric": "n_grad_none", "value": float(n_none)})
    rows.append({"metric": "n_grad_zero", "value": float(n_zero)})
    return rows


class GradFlowProbe(Probe):
    """Its rows are read before the optimizer step (the gradients of the step before the checkpoint) and
    written with the checkpoint's other probes; step 0 has none."""

    name = "gradflow"

    def __init__(self) -> None:
        self.pending: tuple[int, list[dict[str, Any]]] | None = None  # (step, rows) until that step's probes

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.pending = None  # a failed read leaves nothing pending
        self.pending = (step, gradflow_rows(model))

    def collect(self, at: ProbeStep) -> list[dict[str, Any]]:
        if self.pending is None or self.pending[0] != at.step:
            return []
        rows = self.pending[1]
        self.pending = None
        return rows
