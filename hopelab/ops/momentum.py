"""Titans' memory update within one chunk: gradient descent with momentum and weight decay, fast and reference.

For every token t of a chunk, with the inner gradient ∇L_t = g_t k_tᵀ taken at the chunk-start state (Eq 90),

    S_t = β_t S_{t-1} − θ_t g_t k_tᵀ        (momentum: "surprise" accumulated over tokens; θ_t is the
                                             caller's step, e.g. lr·(1 − β_t) for an averaging momentum)
    M_t = a_t M_{t-1} + S_t                  (a_t = 1 − weight decay)
    read_t = M_t q_t                         (includes tokens s ≤ t, never s > t)

Fast path: with log-cumulative decays lb (of β) and la (of a), and Ā[t,r] = a-decay from r to t (r ≤ t),
B̄[r,s] = β-decay from s to r (s ≤ r), the chunk is

    M_t = e^{la_t} M_0 + c_t S_0 + Σ_{s≤t} D[t,s] (−θ_s g_s k_sᵀ),   D = Ā B̄,  c = Ā e^{lb}
    S_t = e^{lb_t} S_0 + Σ_{s≤t} B̄[t,s] (−θ_s g_s k_sᵀ)
"""

from __future__ import annotations

import torch

from hopelab.ops.dgd import _log_ratio_matrix


def momentum_chunk(M0, S0, keys, grads, lr, log_beta, log_keep, queries=None):
    """M0, S0 [..., out, in]; keys [..., C, in]; grads [..., C, out]; lr, log_beta, log_keep [..., C].

    Returns (reads [..., C, out] or None, M_end, S_end).
    """
    lb = torch.cumsum(log_beta, dim=-1)  # [..., C]
    la = torch.cumsum(log_keep, dim=-1)  # [..., C]
    A_bar = _log_ratio_matrix(la, la, strict=False)  # [..., C, C]
    B_bar = _log_ratio_matrix(lb, lb, strict=False)  # [..., C, C]
    D = A_bar @ B_bar  # [..., C, C]
    c = (A_bar @ torch.exp(lb).unsqueeze(-1)).squeeze(-1)  # [..., C]
    u = -lr.unsqueeze(-1) * grads  # [..., C, out]   −θ_s g_s
    reads = None
    if queries is not None:
        scores = D * (queries @ keys.transpose(-1, -2))  # [..., C, C]
        reads = (
            torch.exp(la).unsqueeze(-1) * (queries @ M0.transpose(-1, -2))
            + c.unsqueeze(-1) * (queries @ S0.transpose(-1, -2))
            + scores @ u
        )
    M_end = (
        torch.exp(la[..., -1])[..., None, None] * M0
        + c[..., -1, None, None] * S0
        + (D[..., -1, :].unsqueeze(-1) * u).transpose(-1, -2) @ keys
    )
    S_end = torch.exp(lb[..., -1])[..., None, None] * S0 + (B_bar[..., -1, :].unsqueeze(-1) * u).transpose(
        -1, -2
    ) @ keys
    return reads, M_end, S_end


def momentum_chunk_reference(M0, S0, keys, grads, lr, log_beta, log_keep, queries=None):
    """Token by token: S ← β S − θ g kᵀ; M ← a M + S; read_t = M_t q_t."""
    M, S = M0, S0
    reads = []
    for t in range(keys.shape[-2]):
        outer = grads[..., t, :].unsqueeze(-1) * keys[..., t, :].unsqueeze(-2)  # [..., out, in]
        S = torch.exp(log_beta[..., t])[..., None, None] * S - lr[..., t, None, None] * outer
        M = torch.exp(log_keep[..., t])[..., None, None] * M + S
        if queries is not None:
            reads.append((M @ queries[..., t, :].unsqueeze(-1)).squeeze(-1))
    return (torch.stack(reads, dim=-2) if queries is not None else None), M, S
