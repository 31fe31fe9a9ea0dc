"""The short causal depthwise convolution in front of the Titans memories (Hope, Section 8.3)."""

from __future__ import annotations

import torch
from torch import nn


class CausalConv(nn.Module):
    """Depthwise causal conv over time; carries its last (window − 1) inputs for streaming."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(dim, dim, kernel_size=window, groups=dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Near the identity: the newest token dominates."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, -1] = 1.0
            self.conv.weight.add_(torch.randn_like(self.conv.weight) * 0.02)
            self.conv.bias.zero_()

    def initial_tail(self, batch: int) -> torch.Tensor:
        """The inputs before a sequence starts: zeros [B, window − 1, D]."""
        w = self.conv.weight
        return w.new_zeros(batch, self.window - 1, w.shape[0])

    def forward(self, x: torch.Tensor, tail: torch.Tensor):
        """x [B, T, D], tail [B, window − 1, D] -> (y [B, T, D], the new tail)."""
        xp = torch.cat([tail, x], dim=1)  # [B, w-1+T, D]
        y = self.conv(xp.transpose(1, 2)).transpose(1, 2)  # [B, T, D]
        return y, xp[:, -(self.window - 1) :] if self.window > 1 else tail
