"""The Titans baseline memory layer: static projections, one MLP memory per head updated in context by
gradient descent with momentum and weight decay (hopelab.ops.momentum), chunk-wise and causal like HOPE's.

    k_t, v_t, q_t = x_t W_k, x_t W_v, x_t W_q  (k, v, q L2-normalised per head, as in HOPE)
    θ_t, β_t, a_t = per-token, per-head learning rate, momentum and (1 − decay), from static projections
    S_t = β_t S_{t-1} − (1 − β_t) θ_t ∇L(M; k_t, v_t),  M_t = a_t M_{t-1} + S_t,  o_t = M_t(q_t),
    M(z) = z + W1 σ(W2 z)

The momentum is normalised as an exponential moving average of gradients, so θ_t is the step size whatever
β_t is. Titans' raw form (S_t = β_t S_{t-1} − θ_t ∇L) multiplies the step by up to 1/(1 − β_t) and diverged
in training here (NaN at step 13 of the tiny ablation with θ = 0.5, β = 0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.conv import CausalConv
from hopelab.layers.fast_memory import (
    DEFAULT_EXECUTION,
    Execution,
    FastMemory,
    Record,
    init_projection,
    logit,
    residual_std,
)
from hopelab.layers.hooks import HookPoint
from hopelab.ops.memory import act, huber_error, mlp_memory_apply, mlp_memory_inner_grad
from hopelab.ops.momentum import momentum_chunk, momentum_chunk_reference


@dataclass
class TitansState:
    """Where a Titans memory layer stands in a sequence; carried across calls when streaming."""

    weights: tuple[torch.Tensor, torch.Tensor]  # (W1 [B, H, d, h], W2 [B, H, h, d]): M_t
    momentum: tuple[torch.Tensor, torch.Tensor]  # (S1, S2), shaped like the weights: S_t
    conv: torch.Tensor  # [B, w − 1, D] the conv's last inputs
    pos: int  # tokens consumed


class TitansMemory(FastMemory):
    components = ("memory",)

    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(execution)
        D, H, d = cfg.dim, cfg.n_heads, cfg.head_dim
        hid = d * cfg.memory_hidden_mult
        self.cfg, self.n_heads, self.head_dim = cfg, H, d
        self.chunk_tokens = cfg.chunk_size
        self.conv = CausalConv(D, cfg.conv_window)
        self.W_k = nn.Linear(D, D, bias=False)
        self.W_v = nn.Linear(D, D, bias=False)
        self.W_q = nn.Linear(D, D, bias=False)
        self.W_lr = nn.Linear(D, H)
        self.W_momentum = nn.Linear(D, H)
        self.W_keep = nn.Linear(D, H)
        # the rate producers start near their typical values
        for lin, p in ((self.W_lr, cfg.eta_init / cfg.eta_max), (self.W_momentum, cfg.titans_momentum_init),
                       (self.W_keep, 1.0 - cfg.titans_decay_init)):
            with torch.no_grad():
                lin.weight.mul_(0.1)
                lin.bias.fill_(logit(p))
        self.init_W1 = nn.Parameter(torch.randn(H, d, hid) / math.sqrt(hid))  # [H, d, h]
        self.init_W2 = nn.Parameter(torch.randn(H, hid, d) / math.sqrt(d))  # [H, h, d]
        self.out_norm = nn.LayerNorm(D)
        self.W_o = nn.Linear(D, D, bias=False)
        # emitted where they are computed, before the chunk loop (observation only)
        self.hook_k = HookPoint()  # [B, T, D]   k_t
        self.hook_v = HookPoint()  # [B, T, D]   v_t
        self.hook_q = HookPoint()  # [B, T, D]   q_t
        self.hook_eta = HookPoint()  # [B, T, H]   θ_t, the step size
        self.hook_alpha = HookPoint()  # [B, T, H]   a_t = 1 − weight decay
        self.hook_out = HookPoint()  # [B, T, D]   the layer's output

    def reset_parameters(self) -> None:
        """GPT-2's init of the static projections (W_o writes into the residual stream). The memory's initial
        state, the conv and the rate producers keep the init they were given where they were made; the LM
        calls this once every module exists, so a seed draws the same numbers."""
        for lin in (self.W_k, self.W_v, self.W_q):
            init_projection(lin)
        init_projection(self.W_o, residual_std(self.cfg.n_layers))

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"memory": {"W1": self.init_W1, "W2": self.init_W2}}

    def initial_state(self, batch: int) -> TitansState:
        # expanded, not copied (a compiled step traces this first chunk's layout as a second graph)
        W1 = self.init_W1.expand(batch, *self.init_W1.shape)  # [B, H, d, h]
        W2 = self.init_W2.expand(batch, *self.init_W2.shape)  # [B, H, h, d]
        momentum = (torch.zeros_like(W1), torch.zeros_like(W2))  # the momentum starts at rest
        return TitansState((W1, W2), momentum, self.conv.initial_tail(batch), pos=0)

    def reset_carry(self, carry):
        state = self.initial_state(carry[0].shape[0])
        return (*state.weights, *state.momentum)

    def fast_states(self, carry) -> dict[str, dict[str, torch.Tensor]]:
        W1, W2, _, _ = carry
        return {"memory": {"W1": W1, "W2": W2}}

    def forward(self, x: torch.Tensor, state: TitansState | None = None):
        """x [B, T, D] -> (out [B, T, D], the state after it)."""
        cfg = self.cfg
        B, T, D = x.shape
        H, d, C = self.n_heads, self.head_dim, cfg.chunk_size
        state = state if state is not None else self.initial_state(B)
        xc, conv_tail = self.conv(x, state.conv)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, d]
            return t.view(B, T, H, d).transpose(1, 2)

        k_all = F.normalize(heads(self.W_k(xc)), dim=-1)  # [B, H, T, d]
        v_all = F.normalize(heads(self.W_v(xc)), dim=-1)
        q_all = F.normalize(heads(self.W_q(xc)), dim=-1)
        lr_all = cfg.eta_max * torch.sigmoid(self.W_lr(xc)).transpose(1, 2)  # [B, H, T]  θ_t
        log_beta_all = F.logsigmoid(self.W_momentum(xc)).transpose(1, 2)  # [B, H, T]  log β_t
        log_keep_all = F.logsigmoid(self.W_keep(xc)).transpose(1, 2)  # [B, H, T]  log a_t
        if self.hook_k.has_hooks:
            self.hook_k(k_all.transpose(1, 2).reshape(B, T, D))
        if self.hook_v.has_hooks:
            self.hook_v(v_all.transpose(1, 2).reshape(B, T, D))
        if self.hook_q.has_hooks:
            self.hook_q(q_all.transpose(1, 2).reshape(B, T, D))
        if self.hook_eta.has_hooks:
            self.hook_eta(lr_all.transpose(1, 2))
        if self.hook_alpha.has_hooks:
            self.hook_alpha(log_keep_all.exp().transpose(1, 2))
        per_token = (k_all, v_all, q_all, lr_all, log_beta_all, log_keep_all)
        chunks = [(c[0].shape[2], c) for c in zip(*(t.split(C, dim=2) for t in per_token))]
        outs, (W1, W2, S1, S2) = self.run_chunks((*state.weights, *state.momentum), chunks, state.pos)
        o = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, T, D)
        out = self.hook_out(self.W_o(self.out_norm(o)))
        return out, TitansState((W1, W2), (S1, S2), conv_tail, state.pos + T)

    def step(self, carry, k, v, q, lr, log_beta, log_keep, record: Record | None = None):
        """One chunk: inner gradients at the chunk-start state (Eq 90), then the momentum writes and the causal
        reads (hopelab.ops.momentum). carry: (W1, W2, S1, S2); k, v, q [B, H, n, d]; lr, log β, log a [B, H, n].
        -> (o [B, H, n, d], the carry at the chunk end)"""
        cfg = self.cfg
        C = cfg.chunk_size
        W1, W2, S1, S2 = carry
        if self.execution.intervention.freezes("memory"):  # no write: read the chunk-start (= initial) memory
            if record is not None and k.shape[2] == C:
                record(C, carry)
            return mlp_memory_apply(W1, W2, q)[0], carry
        chunk_op = momentum_chunk_reference if self.execution.impl == "reference" else momentum_chunk
        mk, pre_k, hidden_k = mlp_memory_apply(W1, W2, k)  # chunk-start state (Eq 90)
        error = huber_error(mk - v, cfg.inner_error_clip)  # [B, H, n, d]
        if cfg.chunk_grad == "mean":  # as in HOPE: average the chunk's gradients taken at one state
            error = error / C
        delta = mlp_memory_inner_grad(W1, pre_k, error)  # [B, H, n, h]
        if cfg.inner_grad == "first_order":  # hopelab.ops.memory, "First order": e, all of δ and σ(W2 k)
            error, delta, hidden_k = error.detach(), delta.detach(), hidden_k.detach()
        step = lr * -torch.expm1(log_beta)  # θ_t (1 − β_t): the momentum is an average of gradients
        p, W2, S2 = chunk_op(W2, S2, k, delta, step, log_beta, log_keep, q)  # p_t = W2_t q_t
        r, W1, S1 = chunk_op(W1, S1, hidden_k, error, step, log_beta, log_keep, act(p))
        carry = (W1, W2, S1, S2)
        if record is not None and k.shape[2] == C:
            record(C, carry)
        return q + r, carry  # o_t = M_t(q_t)
