"""Continuum Memory System (Eq 70-71): a chain of MLP levels whose fast weights update every C_ℓ tokens.

    combine="chain" (Eq 70):  z_0 = x,  z_ℓ = z_{ℓ-1} + branch_ℓ(z_{ℓ-1}),  output z_L − x
    combine="gated":          output Σ_ℓ g_ℓ(x) branch_ℓ(x),  g = softmax(W_g x) over levels, per token

Each level's W_up, W_down are fast weights with meta-learned initial states (parameters), updated in context
by hopelab.ops.cms (Eq 71) from the local objective ½‖f(x_t) − W_v x_t‖²; W_v starts at the identity (the
level is first asked to reproduce its input) and is learned by the outer loop. The level's in-context
learning rate is learned too (softplus). `hook_out` of level ℓ is branch_ℓ: what the level adds.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.hooks import HookPoint
from hopelab.layers.recompute import call_step
from hopelab.ops.cms import cms_level, cms_level_reference, cms_level_stepped


class CMSLevel(nn.Module):
    def __init__(self, dim: int, hidden: int, period: int, lr_init: float, n_layers: int) -> None:
        super().__init__()
        self.period = period
        self.init_up = nn.Parameter(torch.randn(hidden, dim) * 0.02)  # [h, D]  meta-learned θ_0
        self.init_down = nn.Parameter(torch.randn(dim, hidden) * 0.02 / math.sqrt(2 * n_layers))  # [D, h]
        self.b_up = nn.Parameter(torch.zeros(hidden))
        self.b_down = nn.Parameter(torch.zeros(dim))
        self.W_value = nn.Linear(dim, dim, bias=False)
        self.W_value._keep_init = True
        with torch.no_grad():
            self.W_value.weight.copy_(torch.eye(dim))
        self.lr_raw = nn.Parameter(torch.tensor(math.log(math.expm1(lr_init))))  # softplus⁻¹(lr_init)
        self.hook_out = HookPoint()
        self.impl = "chunked"
        self.compiled_step = None  # torch.compile(ops.cms.cms_level), set by hopelab.models.compile_chunks
        self.recompute = False  # keep only each step's inputs for backward (hopelab.models.recompute_chunks)
        self._trace = None

    def initial_states(self) -> dict[str, torch.Tensor]:
        return {"W_up": self.init_up, "W_down": self.init_down}

    def forward(self, x: torch.Tensor, state: tuple | None, pos0: int, first_order: bool):
        B = x.shape[0]
        # the initial state enters unexpanded ([h, D], [D, h]): the fast path broadcasts it over the batch
        up, down = state if state is not None else (self.init_up, self.init_down)
        values = self.W_value(x)  # [B, T, D]
        lr = F.softplus(self.lr_raw)
        if self.impl == "reference":
            branch, new = cms_level_reference(x, values, up, down, self.b_up, self.b_down, lr, self.period, first_order)
        else:
            record = None
            if self._trace is not None:
                record = lambda p, u, d: self._trace(pos0 + p, {"W_up": u.detach(), "W_down": d.detach()})  # noqa: E731
            # the compiled step serves training steps; inference runs eager (no graph compiled for it)
            compiled = self.compiled_step is not None and torch.is_grad_enabled()
            step = self.compiled_step if compiled else cms_level
            if self.recompute:
                step = functools.partial(call_step, step, True)
            branch, new = cms_level_stepped(x, values, up, down, self.b_up, self.b_down, lr, self.period,
                                            first_order, record, step=step)
        up, down = new  # [B, h, D], [B, D, h]; the reference leaves them unexpanded if no block was complete
        return self.hook_out(branch), (up.expand(B, *self.init_up.shape), down.expand(B, *self.init_down.shape))


class ContinuumMemory(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.cms_hidden_mult * cfg.dim
        self.levels = nn.ModuleList(
            CMSLevel(cfg.dim, hidden, p, cfg.cms_lr_init, cfg.n_layers) for p in cfg.cms_periods
        )
        self.gate = nn.Linear(cfg.dim, len(self.levels)) if cfg.cms_combine == "gated" else None

    def forward(self, x: torch.Tensor, state: dict | None = None):
        """x [B, T, D] -> (what the CMS adds to the residual stream [B, T, D], new state)."""
        state = state or {}
        pos0 = state.get("pos", 0)
        level_states = state.get("levels", [None] * len(self.levels))
        first_order = self.cfg.inner_grad == "first_order"
        new_states = []
        if self.gate is None:  # chain (Eq 70)
            z = x
            for level, s in zip(self.levels, level_states):
                branch, ns = level(z, s, pos0, first_order)
                z = z + branch
                new_states.append(ns)
            delta = z - x
        else:
            weights = torch.softmax(self.gate(x), dim=-1)  # [B, T, L]
            delta = 0.0
            for i, (level, s) in enumerate(zip(self.levels, level_states)):
                branch, ns = level(x, s, pos0, first_order)
                delta = delta + weights[..., i : i + 1] * branch
                new_states.append(ns)
        return delta, {"levels": new_states, "pos": pos0 + x.shape[1]}
