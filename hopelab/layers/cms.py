"""Continuum Memory System (Eq 70-71): a chain of MLP levels whose fast weights update every C_ℓ tokens.

    combine="chain" (Eq 70):  z_0 = x,  z_ℓ = z_{ℓ-1} + branch_ℓ(z_{ℓ-1}),  output z_L − x
    combine="gated":          output Σ_ℓ g_ℓ(x) branch_ℓ(x),  g = softmax(W_g x) over levels, per token

Each level's W_up, W_down are fast weights with meta-learned initial states (parameters), updated in context
by hopelab.ops.cms (Eq 71) from a local objective (Eq 71's f = ∇L), chosen by `cms_objective`:
- "reconstruct" (default): ½‖f(x_t) − W_v x_t‖², W_v learned by the outer loop and starting at the identity
  (the level is first asked to reproduce its input). At W_v = I the inner error f(x_t) − x_t is the level's
  own branch output: every in-context write is a gradient step on ½‖branch(x)‖², pushing what the level adds
  toward zero. The outer loop moves W_v away from I slowly (‖W_v − I‖/‖I‖ ≈ 0.04 after 300 tiny steps), so
  the writes stay close to that.
- "kv": ½‖f(W_k x_t) − W_v x_t‖², a key/value association on learned projections initialised at random
  (N(0, 1/D), away from the identity), as in Titans; the level is still read at x_t (Eq 70).
The level's in-context learning rate is learned too (softplus). `hook_out` of level ℓ is branch_ℓ: what the
level adds.

A level runs its sequence in steps of a few whole blocks (hopelab.ops.cms.step_length), the weights
materialised between steps and each step in dual form (hopelab.ops.cms.cms_level).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import CMSObjective, ModelConfig
from hopelab.layers.fast_memory import (
    DEFAULT_EXECUTION,
    Execution,
    FastMemory,
    Record,
    fast_state_recorder,
    init_projection,
)
from hopelab.layers.hooks import HookPoint
from hopelab.ops.cms import block_grad_sums, cms_level, cms_level_reference, read_block, step_length


@dataclass
class CMSLevelState:
    """Where a CMS level stands in a sequence; carried across calls when streaming."""

    up: torch.Tensor  # [B, h, D]   W_up at the start of the current block
    down: torch.Tensor  # [B, D, h]   W_down at the start of the current block
    pos: int  # tokens consumed
    # Σ ∇W_up, Σ ∇W_down over the tokens of the current block read so far ([B, h, D], [B, D, h]); None at a
    # block boundary. A stream whose calls end inside a block (periods longer than a call) carries them, so
    # the block's update (Eq 71), once its last token arrives, sums the gradients of all of its tokens.
    acc: tuple[torch.Tensor, torch.Tensor] | None = None


class CMSLevel(FastMemory):
    def __init__(self, dim: int, hidden: int, period: int, lr_init: float, n_layers: int, first_order: bool = False,
                 execution: Execution = DEFAULT_EXECUTION, objective: CMSObjective = "reconstruct",
                 error_clip: float | None = None) -> None:
        super().__init__(execution)
        self.period = period
        # the Huber cap of the inner error, in its own units: the error lives at the scale of the level's input
        # (a LayerNorm output, norm ≈ √D), so ModelConfig.cms_error_clip is given in units of √D
        self.error_clip = None if error_clip is None else error_clip * math.sqrt(dim)
        self.first_order = first_order
        self.objective = objective
        self.chunk_tokens = step_length(period)
        self.init_up = nn.Parameter(torch.randn(hidden, dim) * 0.02)  # [h, D]  meta-learned θ_0
        self.init_down = nn.Parameter(torch.randn(dim, hidden) * 0.02 / math.sqrt(2 * n_layers))  # [D, h]
        self.b_up = nn.Parameter(torch.zeros(hidden))
        self.b_down = nn.Parameter(torch.zeros(dim))
        self.W_value = nn.Linear(dim, dim, bias=False)
        if objective == "reconstruct":
            with torch.no_grad():  # the level is first asked to reproduce its input
                self.W_value.weight.copy_(torch.eye(dim))
        else:  # "kv": a key/value association, projections away from the identity
            self.W_key = nn.Linear(dim, dim, bias=False)
            for lin in (self.W_value, self.W_key):
                nn.init.normal_(lin.weight, 0.0, 1.0 / math.sqrt(dim))
        self.lr_raw = nn.Parameter(torch.tensor(math.log(math.expm1(lr_init))))  # softplus⁻¹(lr_init)
        self.hook_out = HookPoint()  # [B, T, D]   branch_ℓ, what the level adds

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"": {"W_up": self.init_up, "W_down": self.init_down}}

    def initial_state(self, batch: int) -> CMSLevelState:
        # one contiguous copy per sample: every step sees the same layout (one compiled graph for all)
        up = self.init_up.expand(batch, *self.init_up.shape).contiguous()  # [B, h, D]
        down = self.init_down.expand(batch, *self.init_down.shape).contiguous()  # [B, D, h]
        return CMSLevelState(up, down, pos=0)

    def fast_states(self, carry) -> dict[str, dict[str, torch.Tensor]]:
        up, down = carry
        return {"": {"W_up": up, "W_down": down}}

    def reset_carry(self, carry):
        state = self.initial_state(carry[0].shape[0])
        return state.up, state.down

    def forward(self, x: torch.Tensor, state: CMSLevelState | None = None):
        """x [B, T, D] -> (branch [B, T, D], the state after it). A state inside a block (a stream read in calls
        that are not multiples of the period) first finishes that block, then the rest runs block-aligned."""
        state = state if state is not None else self.initial_state(x.shape[0])
        values = self.W_value(x)  # [B, T, D]
        keys = self.W_key(x) if self.objective == "kv" else None  # [B, T, D]; None: the inner loss at x
        lr = F.softplus(self.lr_raw)
        intervention = self.execution.intervention
        if intervention.freezes_cms_level(self.period):  # no write: the in-context learning rate masked to 0 (Eq 71)
            lr = torch.zeros_like(lr)
        up, down, acc, pos = state.up, state.down, state.acc, state.pos
        head = min(self.period - pos % self.period, x.shape[1]) if pos % self.period else 0
        branches = []
        if head:
            if intervention.reset_every is not None:
                raise ValueError("reset_every needs a CMS state at a block boundary")
            head_keys = None if keys is None else keys[:, :head]
            branch, (up, down), acc = self._continue_block(x[:, :head], values[:, :head], head_keys, up, down, acc,
                                                           lr, pos)
            branches.append(branch)
            x, values = x[:, head:], values[:, head:]
            keys = None if keys is None else keys[:, head:]
        if x.shape[1]:
            branch, (up, down) = self._aligned(x, values, keys, up, down, lr, pos + head)
            branches.append(branch)
            tail = x.shape[1] % self.period
            if tail:  # the stream ends inside a block: carry its gradients so far
                at = (x if keys is None else keys)[:, -tail:]
                acc = block_grad_sums(at, values[:, -tail:], up, down, self.b_up, self.b_down, self.first_order,
                                      self.error_clip)
        branch = branches[0] if len(branches) == 1 else torch.cat(branches, dim=1)
        return self.hook_out(branch), CMSLevelState(up, down, pos + head + x.shape[1], acc)

    def _aligned(self, x, values, keys, up, down, lr, pos: int):
        """The tokens from a block boundary on, in steps of whole blocks -> (branch [B, T, D], the weights
        after the last complete block)."""
        S = self.chunk_tokens
        reset = self.execution.intervention.reset_every
        if reset is not None and reset < S:  # steps of R tokens, so a reset falls between steps
            if reset % self.period and self.period % reset:
                raise ValueError(f"reset_every={reset} and the CMS period {self.period} must divide one another")
            S = reset
        chunks = [(xs.shape[1], (xs, vs, lr)) for xs, vs in zip(x.split(S, dim=1), values.split(S, dim=1))]
        if keys is not None:  # the keys ride along as the step's last argument
            chunks = [(n, (*args, ks)) for (n, args), ks in zip(chunks, keys.split(S, dim=1))]
        branches, carry = self.run_chunks((up, down), chunks, pos)
        return torch.cat(branches, dim=1), carry

    def _continue_block(self, x, values, keys, up, down, acc, lr, pos: int):
        """The next tokens of the block a stream stands in: read at the block-start weights, their gradients
        added to the carried ones; the update applied if they complete the block (Eq 71, η/C as in ops.cms).
        -> (branch [B, n, D], (W_up, W_down), the carried gradient sums or None)"""
        branch = read_block(x, up, down, self.b_up, self.b_down)  # [B, n, D]
        g_up, g_down = block_grad_sums(x if keys is None else keys, values, up, down, self.b_up, self.b_down,
                                       self.first_order, self.error_clip)
        if acc is not None:
            g_up, g_down = acc[0] + g_up, acc[1] + g_down
        n = x.shape[1]
        if (pos + n) % self.period:
            return branch, (up, down), (g_up, g_down)
        step_size = lr / self.period
        up, down = up - step_size * g_up, down - step_size * g_down
        record = fast_state_recorder(self, pos)
        if record is not None:
            record(0, n, (up, down))
        return branch, (up, down), None

    def step(self, carry, x, values, lr, keys=None, record: Record | None = None):
        """A few whole blocks (Eq 71). carry: (W_up [B, h, D], W_down [B, D, h]); x, values [B, S, D]; keys
        [B, S, D] under the "kv" objective, else None (the inner loss at x). -> (branch [B, S, D], the carry at
        the step's end)"""
        up, down = carry
        level = cms_level_reference if self.execution.impl == "reference" else cms_level
        return level(x, values, up, down, self.b_up, self.b_down, lr, self.period, self.first_order,
                     None if record is None else functools.partial(_record_pair, record), keys=keys,
                     clip=self.error_clip)


def _record_pair(record: Record, position: int, up: torch.Tensor, down: torch.Tensor) -> None:
    """The ops' record(position, up, down) as the layer's record(position, carry)."""
    record(position, (up, down))


class ContinuumMemory(nn.Module):
    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.cms_hidden_mult * cfg.dim
        first_order = cfg.inner_grad == "first_order"
        self.levels = nn.ModuleList(
            CMSLevel(cfg.dim, hidden, p, cfg.cms_lr_init, cfg.n_layers, first_order, execution, cfg.cms_objective,
                     cfg.cms_error_clip)
            for p in cfg.cms_periods
        )
        self.gate = nn.Linear(cfg.dim, len(self.levels)) if cfg.cms_combine == "gated" else None

    def reset_parameters(self) -> None:
        """GPT-2's init of the level gate; the levels keep the init they were given where they were made."""
        if self.gate is not None:
            init_projection(self.gate)

    def forward(self, x: torch.Tensor, state: tuple[CMSLevelState, ...] | None = None):
        """x [B, T, D] -> (what the CMS adds to the residual stream [B, T, D], the levels' states after it)."""
        level_states = state if state is not None else (None,) * len(self.levels)
        new_states = []
        if self.gate is None:  # chain (Eq 70)
            z = x
            for level, s in zip(self.levels, level_states):
                branch, ns = level(z, s)
                z = z + branch
                new_states.append(ns)
            delta = z - x
        else:
            weights = torch.softmax(self.gate(x), dim=-1)  # [B, T, L]
            delta = 0.0
            for i, (level, s) in enumerate(zip(self.levels, level_states)):
                branch, ns = level(x, s)
                delta = delta + weights[..., i : i + 1] * branch
                new_states.append(ns)
        return delta, tuple(new_states)
