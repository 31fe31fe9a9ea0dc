"""One Continuum Memory System level (Eq 70-71), fast and reference.

A level is an MLP f(x) = x + W_down σ(W_up x + b_up) + b_down whose weights (W_up, W_down) are fast weights
that update in context, every C tokens of the sequence (Eq 71):

    θ_{i+1} = θ_i − η Σ_{t ∈ block} (1/C) ∇L(θ_i; x_t)   if the block ending at token i is complete, else θ_i

with the level's local objective L(θ; x_t) = ½ ‖f_θ(x_t) − v_t‖², v_t a learned (static) value projection of
the level's input. Tokens of a block are read with the state reached at the block's start, so the level is
causal: a token never sees a write made from itself or a later token. The initial state θ_0 is a parameter
(meta-learned across sequences); the outer loss differentiates through every update.
We average the block's gradients (η/C instead of η) so that η means the same at every period.
"""

from __future__ import annotations

import torch

from hopelab.ops.memory import act, act_grad_times


def _branch(x, up, down, b_up, b_down):
    pre = x @ up.transpose(-1, -2) + b_up  # [B, n, h]
    hidden = act(pre)  # [B, n, h]
    return hidden @ down.transpose(-1, -2) + b_down, pre, hidden  # [B, n, D]


def _block_grads(x, values, branch, pre, hidden, down, first_order: bool):
    """Mean over the block of ∇_{W_up}, ∇_{W_down} of ½‖x + branch − v‖²."""
    n = x.shape[-2]
    err = x + branch - values  # [B, n, D]   e_t = f(x_t) − v_t
    if first_order:
        err, pre, hidden, x_in = err.detach(), pre.detach(), hidden.detach(), x.detach()
    else:
        x_in = x
    g_down = err.transpose(-1, -2) @ hidden / n  # [B, D, h]   Σ e_t u_tᵀ / n
    delta = act_grad_times(err @ down, pre)  # [B, n, h]   σ'(a) ⊙ W_downᵀ e
    g_up = delta.transpose(-1, -2) @ x_in / n  # [B, h, D]   Σ δ_t x_tᵀ / n
    return g_up, g_down


def cms_level(x, values, up, down, b_up, b_down, lr, period: int, first_order: bool = False, record=None):
    """Fast path: one batched block at a time. x, values [B, T, D]; up [B, h, D]; down [B, D, h].

    Returns (branch [B, T, D], (up, down) after the last complete block). `record(position, up, down)` is
    called after each update when given. Same math as the reference, with fewer ops per block (bias folded
    into baddbmm, x − v formed once for the whole sequence, 1/C folded into the step size).
    """
    T = x.shape[1]
    residual = x - values  # [B, T, D]   e_t = branch_t + (x_t − v_t)
    step = lr / period  # the block's gradients are averaged (Eq 71 with η/C)
    outs = []
    for start in range(0, T, period):
        xb = x[:, start : start + period]  # [B, n, D]
        pre = torch.baddbmm(b_up, xb, up.transpose(-1, -2))  # [B, n, h]
        hidden = act(pre)
        branch = torch.baddbmm(b_down, hidden, down.transpose(-1, -2))  # [B, n, D]
        outs.append(branch)
        if xb.shape[1] == period:  # Eq 71: update only when the block is complete
            err = branch + residual[:, start : start + period]  # [B, n, D]
            if first_order:
                err, pre, hidden, xb = err.detach(), pre.detach(), hidden.detach(), xb.detach()
            delta = act_grad_times(err @ down, pre)  # [B, n, h]   σ'(a) ⊙ W_downᵀ e
            up = up - step * (delta.transpose(-1, -2) @ xb)  # Σ δ_t x_tᵀ
            down = down - step * (err.transpose(-1, -2) @ hidden)  # Σ e_t u_tᵀ
            if record is not None:
                record(start + period, up, down)
    return torch.cat(outs, dim=1), (up, down)


def cms_level_reference(x, values, up, down, b_up, b_down, lr, period: int, first_order: bool = False):
    """Token by token, Eq 71 literally: accumulate ∇L over the block, apply it when i ≡ 0 (mod C)."""
    T = x.shape[1]
    outs = []
    acc_up, acc_down = 0.0, 0.0
    for t in range(T):
        xt, vt = x[:, t : t + 1], values[:, t : t + 1]  # [B, 1, D]
        branch, pre, hidden = _branch(xt, up, down, b_up, b_down)
        outs.append(branch)
        g_up, g_down = _block_grads(xt, vt, branch, pre, hidden, down, first_order)
        acc_up, acc_down = acc_up + g_up, acc_down + g_down
        if (t + 1) % period == 0:
            up, down = up - lr * acc_up / period, down - lr * acc_down / period
            acc_up, acc_down = 0.0, 0.0
    return torch.cat(outs, dim=1), (up, down)
