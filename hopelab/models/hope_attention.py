"""Hope-Attention: the paper's simpler HOPE variant, causal softmax attention followed by the same Continuum
Memory System, at HOPE's width and depth. The control for "what does self-referential Titans add over attention
when both have a CMS".

    h = x + Attention(LN(x))          causal softmax attention (the Transformer's module)
    y = h + CMS(LN(h))                the CMS of Eq 70-71, as in HOPE

Choices the paper leaves open:
- No positional embedding (like HOPE's MemoryLM): order comes from the causal mask alone ("NoPE"), so the only
  difference from HOPE is the mixer. HOPE itself gets order from its conv and recurrence.
- Attention keeps no state across calls (no KV cache): a forward's attention sees that call's tokens only. A
  carried `state=` (streaming training, `--set segments=K`) carries the CMS levels alone, so attention reads
  one context window while the CMS persists over the stream, as the paper pairs a fixed attention window with
  slow CMS levels. Streaming therefore does not equal one pass over the concatenation for this variant.
"""

from __future__ import annotations

import torch

from hopelab.config import ModelConfig
from hopelab.layers.fast_memory import DEFAULT_EXECUTION, Execution, init_projection, residual_std
from hopelab.models.memory_lm import MemoryLM
from hopelab.models.transformer import CausalSelfAttention


class AttentionMixer(CausalSelfAttention):
    """The Transformer's causal self-attention with a mixer's interface: (x, state) -> (y, None)."""

    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(cfg)
        self.n_layers = cfg.n_layers

    def reset_parameters(self) -> None:
        """GPT-2's init: the output projection writes into the residual stream."""
        init_projection(self.qkv)
        init_projection(self.proj, residual_std(self.n_layers))

    def forward(self, x: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        return super().forward(x), None  # [B, T, D]


class HopeAttentionLM(MemoryLM):
    variant = "hope_attention"

    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(cfg, AttentionMixer, cfg.use_cms, execution)
