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

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.hooks import HookPoint
from hopelab.layers.self_ref_titans import CausalConv, _hooked, _logit
from hopelab.ops.memory import act, mlp_memory_apply, mlp_memory_inner_grad
from hopelab.ops.momentum import momentum_chunk, momentum_chunk_reference


class TitansMemory(nn.Module):
    components = ("memory",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, H, d = cfg.dim, cfg.n_heads, cfg.head_dim
        hid = d * cfg.memory_hidden_mult
        self.cfg, self.n_heads, self.head_dim = cfg, H, d
        self.conv = CausalConv(D, cfg.conv_window)
        self.W_k = nn.Linear(D, D, bias=False)
        self.W_v = nn.Linear(D, D, bias=False)
        self.W_q = nn.Linear(D, D, bias=False)
        self.W_lr = nn.Linear(D, H)
        self.W_momentum = nn.Linear(D, H)
        self.W_keep = nn.Linear(D, H)
        for lin, p in ((self.W_lr, cfg.eta_init / cfg.eta_max), (self.W_momentum, cfg.titans_momentum_init),
                       (self.W_keep, 1.0 - cfg.titans_decay_init)):
            lin._keep_init = True
            with torch.no_grad():
                lin.weight.mul_(0.1)
                lin.bias.fill_(_logit(p))
        self.init_W1 = nn.Parameter(torch.randn(H, d, hid) / math.sqrt(hid))  # [H, d, h]
        self.init_W2 = nn.Parameter(torch.randn(H, hid, d) / math.sqrt(d))  # [H, h, d]
        self.out_norm = nn.LayerNorm(D)
        self.W_o = nn.Linear(D, D, bias=False)
        for name in ("k", "v", "q", "eta", "alpha", "out"):
            setattr(self, f"hook_{name}", HookPoint())
        self.impl = "chunked"
        self._trace = None

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"memory": {"W1": self.init_W1, "W2": self.init_W2}}

    def forward(self, x: torch.Tensor, state: dict | None = None):
        cfg = self.cfg
        B, T, D = x.shape
        H, d, C = self.n_heads, self.head_dim, cfg.chunk_size
        state = state or {}
        xc, conv_tail = self.conv(x, state.get("conv"))
        heads = lambda t: t.view(B, T, H, d).transpose(1, 2)  # noqa: E731  [B, T, D] -> [B, H, T, d]
        k_all = F.normalize(heads(self.W_k(xc)), dim=-1)  # [B, H, T, d]
        v_all = F.normalize(heads(self.W_v(xc)), dim=-1)
        q_all = F.normalize(heads(self.W_q(xc)), dim=-1)
        lr_all = cfg.eta_max * torch.sigmoid(self.W_lr(xc)).transpose(1, 2)  # [B, H, T]  θ_t
        log_beta_all = F.logsigmoid(self.W_momentum(xc)).transpose(1, 2)  # [B, H, T]  log β_t
        log_keep_all = F.logsigmoid(self.W_keep(xc)).transpose(1, 2)  # [B, H, T]  log a_t
        if "mem" in state:
            W1, W2, S1, S2 = (state["mem"][n] for n in ("W1", "W2", "S1", "S2"))
        else:
            W1 = self.init_W1.expand(B, *self.init_W1.shape)  # [B, H, d, h]
            W2 = self.init_W2.expand(B, *self.init_W2.shape)  # [B, H, h, d]
            S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)  # momentum starts at rest
        chunk_op = momentum_chunk_reference if self.impl == "reference" else momentum_chunk
        pos0 = state.get("pos", 0)
        outs = []
        for start in range(0, T, C):
            end = min(start + C, T)
            sl = slice(start, end)
            k, v, q = k_all[:, :, sl], v_all[:, :, sl], q_all[:, :, sl]  # [B, H, n, d]
            lr, lb, lk = lr_all[:, :, sl], log_beta_all[:, :, sl], log_keep_all[:, :, sl]
            mk, pre_k, hidden_k = mlp_memory_apply(W1, W2, k)  # chunk-start state (Eq 90)
            error = mk - v  # [B, H, n, d]
            if cfg.chunk_grad == "mean":  # as in HOPE: average the chunk's gradients taken at one state
                error = error / C
            delta = mlp_memory_inner_grad(W1, pre_k, error)  # [B, H, n, h]
            if cfg.inner_grad == "first_order":
                error, delta, hidden_k = error.detach(), delta.detach(), hidden_k.detach()
            step = lr * -torch.expm1(lb)  # θ_t (1 − β_t): the momentum is an average of gradients
            p, W2n, S2 = chunk_op(W2, S2, k, delta, step, lb, lk, q)  # p_t = W2_t q_t
            r, W1n, S1 = chunk_op(W1, S1, hidden_k, error, step, lb, lk, act(p))
            W1, W2 = W1n, W2n
            outs.append(q + r)  # o_t = M_t(q_t)
            if self._trace is not None and end - start == C:
                self._trace("memory", pos0 + end, {"W1": W1.detach(), "W2": W2.detach()})
        o = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, T, D)
        if _hooked(self.hook_k):
            self.hook_k(k_all.transpose(1, 2).reshape(B, T, D))
        if _hooked(self.hook_v):
            self.hook_v(v_all.transpose(1, 2).reshape(B, T, D))
        if _hooked(self.hook_q):
            self.hook_q(q_all.transpose(1, 2).reshape(B, T, D))
        if _hooked(self.hook_eta):
            self.hook_eta(lr_all.transpose(1, 2))
        if _hooked(self.hook_alpha):
            self.hook_alpha(log_keep_all.exp().transpose(1, 2))
        out = self.hook_out(self.W_o(self.out_norm(o)))
        return out, {"mem": {"W1": W1, "W2": W2, "S1": S1, "S2": S2}, "conv": conv_tail, "pos": pos0 + T}
