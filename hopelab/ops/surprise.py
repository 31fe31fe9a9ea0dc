"""Surprise and the surprise gate.

Per-token surprise (units): the inner L2 loss of M_memory at that token,
    s_t = mean over heads of ½ ‖M_memory(k_t) − v̂_memory,t‖²
computed with the chunk-start state (so it depends only on tokens ≤ t). It is *not* the LM cross-entropy.

Gate modes:
    absolute  write where s_t > τ (the dissection study's mechanism)
    relative  write where the causal z-score of s_t exceeds τ: z_t = (s_t − mean_{≤t}) / std_{≤t} over this
              sample's tokens so far (running sums carried across chunks and calls), the fix the study suggests
    off       every token writes
The gate scales the token's write: η_t ← g_t η_t and log α_t ← g_t log α_t (a closed gate leaves the memory
untouched by that token: no write, no decay).
"""

from __future__ import annotations

import torch


def surprise_from_error(error: torch.Tensor) -> torch.Tensor:
    """error [B, H, C, d] -> s [B, C]"""
    return 0.5 * (error * error).sum(-1).mean(1)


def surprise_gate(surprise: torch.Tensor, mode: str, threshold: float, stats: torch.Tensor | None):
    """surprise [B, C] -> (gate [B, C] in {0, 1}, stats [B, 3] = running (count, sum, sum of squares))."""
    B, C = surprise.shape
    if stats is None:
        stats = surprise.new_zeros(B, 3)
    s = surprise.detach()
    if mode == "off":
        return torch.ones_like(s), stats
    if mode == "absolute":
        return (s > threshold).to(s.dtype), stats
    if mode == "relative":
        count = stats[:, :1] + torch.arange(1, C + 1, dtype=s.dtype, device=s.device)  # [B, C]
        total = stats[:, 1:2] + torch.cumsum(s, dim=1)
        total_sq = stats[:, 2:3] + torch.cumsum(s * s, dim=1)
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        z = (s - mean) / torch.sqrt(var + 1e-12)
        new_stats = torch.stack([count[:, -1], total[:, -1], total_sq[:, -1]], dim=1)
        return (z > threshold).to(s.dtype), new_stats
    raise ValueError(f"unknown surprise mode {mode!r}; choose absolute, relative or off")
