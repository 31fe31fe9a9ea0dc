"""One Continuum Memory System level (Eq 70-71), fast and reference.

A level is an MLP f(x) = x + W_down σ(W_up x + b_up) + b_down whose weights (W_up, W_down) are fast weights
that update in context, every C tokens of the sequence (Eq 71):

    θ_{i+1} = θ_i − η Σ_{t ∈ block} (1/C) ∇L(θ_i; k_t)   if the block ending at token i is complete, else θ_i

with the level's local objective L(θ; k_t) = ½ ‖f_θ(k_t) − v_t‖², v_t a learned (static) value projection of
the level's input and k_t its key: the input x_t itself (the layer's objective "reconstruct") or a learned key
projection ("kv"); the level is always read at x_t (Eq 70). Tokens of a block are read with the state reached
at the block's start, so the level is causal: a token never sees a write made from itself or a later token.
The initial state θ_0 is a parameter (meta-learned across sequences); the outer loss differentiates through
every update.
We average the block's gradients (η/C instead of η) so that η means the same at every period.

Fast path: `cms_level` computes the blocks of a stretch of tokens in dual form, without materialising the
weights block by block. Over a whole sequence the dual form costs O(T²) inner products, so the layer
(hopelab.layers.cms.CMSLevel) runs it in steps of a few whole blocks (`step_length`: at least STEP_TOKENS tokens)
with the weights materialised between steps: O(T·S), and every step has the same shapes, so one compiled graph
serves all of them.
"""

from __future__ import annotations

import torch

from hopelab.ops.memory import act, act_grad_times, huber_error


def _branch(x, up, down, b_up, b_down):
    pre = x @ up.transpose(-1, -2) + b_up  # [B, n, h]
    hidden = act(pre)  # [B, n, h]
    return hidden @ down.transpose(-1, -2) + b_down, pre, hidden  # [B, n, D]


def _block_grads(x, values, branch, pre, hidden, down, first_order: bool, clip: float | None = None):
    """Mean over the block of ∇_{W_up}, ∇_{W_down} of ½‖x + branch − v‖², x the keys the branch was taken at.
    first_order: e, δ and σ(a) are constants (hopelab.ops.memory, "First order"); the keys x stay differentiable.
    clip: each e_t capped at this norm (the Huber inner loss, hopelab.ops.memory.huber_error); None: L2."""
    n = x.shape[-2]
    err = huber_error(x + branch - values, clip)  # [B, n, D]   e_t = f(x_t) − v_t
    if first_order:
        err, pre, hidden = err.detach(), pre.detach(), hidden.detach()
    g_down = err.transpose(-1, -2) @ hidden / n  # [B, D, h]   Σ e_t u_tᵀ / n
    delta = act_grad_times(err @ down, pre)  # [B, n, h]   σ'(a) ⊙ W_downᵀ e
    if first_order:  # W_down, which multiplies e, as well
        delta = delta.detach()
    g_up = delta.transpose(-1, -2) @ x / n  # [B, h, D]   Σ δ_t x_tᵀ / n
    return g_up, g_down


def cms_level(x, values, up, down, b_up, b_down, lr, period: int, first_order: bool = False, record=None,
              keys=None, clip: float | None = None):
    """Dual form over all of x (the layer calls it once per step of step_length(period) tokens).
    x, values [B, T, D]; up [B, h, D] or [h, D]; down [B, D, h] or [D, h]; keys [B, T, D] where the inner loss
    is taken (None: at x itself).

    Returns (branch [B, T, D], (up, down) after the last complete block [B, h, D], [B, D, h]).
    `record(position, up, down)` is called after each update when given.

    The fast weights are never materialised block by block. With s = lr/C and block i's factors
    Δ_i = σ'(a_i) ⊙ (E_i W_down,i) [n, h], the errors E_i [n, D] and the hidden U_i = σ(a_i) [n, h],
    the weights reached before block j are (Eq 71 unrolled)
        W_up,j   = W_up,0   − s Σ_{i<j} Δ_iᵀ X_i          W_down,j = W_down,0 − s Σ_{i<j} E_iᵀ U_i
    so block j reads them through inner products with earlier tokens, as linear attention does:
        a_j      = X_j W_up,0ᵀ + b_up − s (X_j X_{<j}ᵀ) Δ_{<j}
        branch_j = U_j W_down,0ᵀ + b_down − s (U_j U_{<j}ᵀ) E_{<j}
        E_j W_down,j = E_j W_down,0 − s (E_j E_{<j}ᵀ) U_{<j}
    Same math as the reference; O(T²) inner products instead of one [h, D] weight pair per block.
    With separate keys K, the errors and Δ are taken at K (a, U and the branch again, with K_j in place of X_j)
    and the histories X_{<j}, U_{<j} are those of the keys.
    """
    T = x.shape[1]
    step_size = lr / period  # the block's gradients are averaged (Eq 71 with η/C)
    separate_keys = keys is not None
    keys = x if keys is None else keys  # [B, T, D]   where the inner loss is taken
    residual = keys - values  # [B, T, D]   e_t = branch(k_t) + (k_t − v_t)
    # per-block views by split, not slicing: one gradient concatenation instead of a zero-filled full-size
    # gradient per block
    pre_init = (torch.matmul(x, up.transpose(-1, -2)) + b_up).split(period, dim=1)  # [B, n, h]  a_t under W_up,0
    gram = torch.matmul(x, keys.transpose(-1, -2)).split(period, dim=1)  # [B, n, T]   x_t · k_s
    if separate_keys:
        key_pre_init = (torch.matmul(keys, up.transpose(-1, -2)) + b_up).split(period, dim=1)  # [B, n, h]
        key_gram = torch.matmul(keys, keys.transpose(-1, -2)).split(period, dim=1)  # [B, n, T]   k_t · k_s
    residual = residual.split(period, dim=1)  # [B, n, D]
    outs = []
    # histories of the complete blocks so far, the step size folded in: s Δ_{<j} [B, t, h], s E_{<j} [B, t, D], U_{<j}
    s_deltas = s_errs = hiddens = None
    for j, start in enumerate(range(0, T, period)):
        end = min(start + period, T)
        pre = pre_init[j]  # [B, n, h]
        if start:
            pre = torch.baddbmm(pre, gram[j][..., :start], s_deltas, alpha=-1)  # − s (X_j X_{<j}ᵀ) Δ_{<j}
        hidden = act(pre)  # [B, n, h]
        branch = torch.matmul(hidden, down.transpose(-1, -2)) + b_down  # [B, n, D]
        if start:  # − s (U_j U_{<j}ᵀ) E_{<j}
            branch = torch.baddbmm(branch, hidden @ hiddens.transpose(-1, -2), s_errs, alpha=-1)
        outs.append(branch)
        if end - start < period:  # Eq 71: only a complete block updates
            break
        if separate_keys:  # the branch again, at the keys
            pre = key_pre_init[j]  # [B, n, h]
            if start:
                pre = torch.baddbmm(pre, key_gram[j][..., :start], s_deltas, alpha=-1)
            hidden = act(pre)  # [B, n, h]
            branch = torch.matmul(hidden, down.transpose(-1, -2)) + b_down  # [B, n, D]
            if start:
                branch = torch.baddbmm(branch, hidden @ hiddens.transpose(-1, -2), s_errs, alpha=-1)
        err = huber_error(branch + residual[j], clip)  # [B, n, D]   E_j, each row capped at `clip`
        if first_order:  # hopelab.ops.memory, "First order"
            err, pre, hidden = err.detach(), pre.detach(), hidden.detach()
        err_down = torch.matmul(err, down)  # [B, n, h]   E_j W_down,0 ...
        if start:  # ... − s (E_j E_{<j}ᵀ) U_{<j} = E_j W_down,j
            err_down = torch.baddbmm(err_down, err @ s_errs.transpose(-1, -2), hiddens, alpha=-1)
        delta = act_grad_times(err_down, pre)  # [B, n, h]   Δ_j = σ'(a_j) ⊙ E_j W_down,j
        if first_order:  # W_down,j, which multiplies E_j, as well
            delta = delta.detach()
        s_delta, s_err = step_size * delta, step_size * err
        s_deltas = s_delta if s_deltas is None else torch.cat([s_deltas, s_delta], dim=1)
        s_errs = s_err if s_errs is None else torch.cat([s_errs, s_err], dim=1)
        hiddens = hidden if hiddens is None else torch.cat([hiddens, hidden], dim=1)
        if record is not None:
            record(end, *_cms_state(up, down, s_deltas, s_errs, hiddens, keys[:, :end]))
    new_state = (up, down) if hiddens is None else _cms_state(up, down, s_deltas, s_errs, hiddens,
                                                              keys[:, : hiddens.shape[1]])
    return torch.cat(outs, dim=1), new_state


def read_block(x, up, down, b_up, b_down):
    """x [B, n, D] read at one state of the level's fast weights -> branch [B, n, D]."""
    return _branch(x, up, down, b_up, b_down)[0]


def block_grad_sums(keys, values, up, down, b_up, b_down, first_order: bool = False, clip: float | None = None):
    """Σ over the tokens of an incomplete block of ∇W_up, ∇W_down of ½‖f(k_t) − v_t‖², at the block-start
    weights (Eq 71): what a stream carries from one call to the next until the block completes. keys, values
    [B, n, D] -> ([B, h, D], [B, D, h])."""
    branch, pre, hidden = _branch(keys, up, down, b_up, b_down)
    g_up, g_down = _block_grads(keys, values, branch, pre, hidden, down, first_order, clip)  # means over n
    n = keys.shape[-2]
    return g_up * n, g_down * n


STEP_TOKENS = 32  # a level's step: the fewest whole blocks that cover this many tokens


def step_length(period: int) -> int:
    """Tokens per step of a CMS level: whole blocks, at least STEP_TOKENS when the period is shorter."""
    return period * max(1, STEP_TOKENS // period)


def _cms_state(up, down, s_deltas, s_errs, hiddens, inputs):
    """The fast weights after the blocks whose factors are given: W_up,0 − s Δᵀ X, W_down,0 − s Eᵀ U."""
    return up - s_deltas.transpose(-1, -2) @ inputs, down - s_errs.transpose(-1, -2) @ hiddens


def cms_level_reference(x, values, up, down, b_up, b_down, lr, period: int, first_order: bool = False, record=None,
                        keys=None, clip: float | None = None):
    """Token by token, Eq 71 literally: accumulate ∇L over the block, apply it when i ≡ 0 (mod C).
    `record(position, up, down)` is called after each update when given."""
    T = x.shape[1]
    outs = []
    acc_up, acc_down = 0.0, 0.0
    for t in range(T):
        xt, vt = x[:, t : t + 1], values[:, t : t + 1]  # [B, 1, D]
        branch, pre, hidden = _branch(xt, up, down, b_up, b_down)  # the read at x_t
        outs.append(branch)
        if keys is not None:  # the inner loss at k_t
            xt = keys[:, t : t + 1]  # [B, 1, D]
            branch, pre, hidden = _branch(xt, up, down, b_up, b_down)
        g_up, g_down = _block_grads(xt, vt, branch, pre, hidden, down, first_order, clip)
        acc_up, acc_down = acc_up + g_up, acc_down + g_down
        if (t + 1) % period == 0:
            up, down = up - lr * acc_up / period, down - lr * acc_down / period
            acc_up, acc_down = 0.0, 0.0
            if record is not None:
                record(t + 1, up, down)
    return torch.cat(outs, dim=1), (up, down)
