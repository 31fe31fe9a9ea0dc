"""Token embedding whose backward never waits for the host.

nn.Embedding's CUDA backward sorts the token ids once a batch holds more than 3072 of them (a `small` batch holds
4096) and reads a count back to the host (thrust::unique_by_key): a synchronisation every step, and an error inside
a CUDA graph capture. Gathering rows with index_select gives the same forward, and its backward is an index_add_
(atomic adds on CUDA, no host read; bit for bit nn.Embedding's on CPU). tests/test_gpu_guards.py checks both.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Embedding):
    """nn.Embedding (same parameter, init and state-dict key) without padding_idx, max_norm or sparse."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] -> [..., dim]"""
        return self.weight.index_select(0, tokens.reshape(-1)).view(*tokens.shape, self.embedding_dim)
